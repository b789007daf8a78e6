//! `group_zscore`: GRPO's group-relative advantage (and Dr.GRPO with `scale = none`).

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "group_zscore",
    summary: "group-relative advantage: reward minus its group mean, over the group std",
    source: "GRPO (Shao et al. 2024); Dr.GRPO (Liu et al. 2025) with `scale = none`; verl `grpo`, TRL; `leave_one_out`: NeMo-RL `calculate_baseline_and_std_per_prompt` + `GRPOAdvantageEstimator` (nemo_rl/algorithms/utils.py, advantage_estimator.py)",
    family: Family::Advantage,
    formula: "A_i = (r_i − mean_g(r)) / (std_g(r) + eps); singleton groups: see `singleton`;  leave_one_out: A_i = (r_i − mean_{g∖i}) / (std_{g∖i} + eps), std over the other n − 1 samples with `var` (unbiased, as NeMo-RL); unscaled where that std is 0",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[
        choice("scale", &["std", "none"], "std", "`none` only centres (Dr.GRPO)"),
        num(
            "eps",
            1e-6,
            Range::NonNegative,
            "added to the std (verl and TRL use 1e-6; OpenRLHF 1e-9)",
        ),
        choice(
            "var",
            &["unbiased", "biased"],
            "unbiased",
            "variance convention (torch `std` is unbiased)",
        ),
        choice(
            "singleton",
            &["zero", "raw"],
            "zero",
            "a group of one sample: advantage 0 (TRL) or its raw reward (verl)",
        ),
        choice(
            "baseline",
            &["mean", "leave_one_out"],
            "mean",
            "`leave_one_out` (NeMo-RL `use_leave_one_out_baseline`): the mean and the std (`var` convention; NeMo-RL's is unbiased) of the group's other samples, plus `eps`; a zero std leaves the advantage unscaled",
        ),
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Groups,
    grad: OutputGrad::Never,
    forward: Some(forward),
    peers: &[
        peer(
            "verl 0.9.1",
            "`grpo`: the defaults (unbiased std, eps 1e-6); `singleton = raw` (a lone sample: mean 0, std 1)",
        ),
        peer(
            "TRL 1.16",
            "`eps = 1e-4` (trl/trainer/grpo_trainer.py: std + 1e-4), `singleton = zero`; `scale_rewards = none` is `scale = none`",
        ),
        peer(
            "NeMo-RL",
            "`baseline = leave_one_out` (the others' mean; their unbiased std + 1e-6, only where positive); `singleton = zero`",
        ),
        peer("OpenRLHF", "`eps = 1e-9`"),
    ],
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let r = ctx.tensor(0)?;
    let rewards = host::vec(r)?;
    let groups = ctx.group_ids()?;
    let by_std = ctx.choice("scale")? == "std";
    let (eps, unbiased, raw) =
        (ctx.num("eps")?, ctx.choice("var")? == "unbiased", ctx.choice("singleton")? == "raw");
    let mut out = vec![0.0; rewards.len()];
    for members in host::group_members(&groups) {
        let xs: Vec<f64> = members.iter().map(|&i| rewards[i]).collect();
        if xs.len() == 1 {
            // verl treats a lone sample as mean 0, std 1; TRL gives it advantage 0.
            let i = members[0];
            out[i] = if raw { if by_std { xs[0] / (1.0 + eps) } else { xs[0] } } else { 0.0 };
            continue;
        }
        if ctx.choice("baseline")? == "leave_one_out" {
            for (k, &i) in members.iter().enumerate() {
                out[i] = leave_one_out(&xs, k, by_std, unbiased, eps);
            }
            continue;
        }
        let (mean, var, _) = host::mean_var(&xs, &vec![1.0; xs.len()], unbiased);
        let denom = var.sqrt() + eps;
        for &i in &members {
            let centred = rewards[i] - mean;
            // Zero spread gives 0; a NaN reward must stay NaN so the executor reports it.
            out[i] = if !by_std {
                centred
            } else if denom == 0.0 {
                0.0
            } else {
                centred / denom
            };
        }
    }
    Ok(Value::Tensor(host::from_vec(out, r)?))
}

/// Sample `k`'s advantage against the group's other samples, as NeMo-RL computes it: their mean
/// as the baseline and their std (unbiased by default: NeMo-RL scales E[x²] − E[x]² by
/// m/(m − 1) over the m = n − 1 others) plus `eps` as the scale, applied only where that std is
/// positive ("don't sharpen the ones with no variation"). NeMo-RL forms the variance as
/// E[x²] − E[x]², whose rounding can leave a tiny positive value for equal rewards and then
/// divide by ~1e-6; the two-pass variance here is exactly 0 for equal rewards, so those samples
/// stay unscaled as NeMo-RL intends.
fn leave_one_out(xs: &[f64], k: usize, by_std: bool, unbiased: bool, eps: f64) -> f64 {
    let others: Vec<f64> =
        xs.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, x)| *x).collect();
    let (mean, var, _) = host::mean_var(&others, &vec![1.0; others.len()], unbiased);
    let centred = xs[k] - mean;
    let std = var.sqrt();
    if by_std && std > 0.0 { centred / (std + eps) } else { centred }
}
