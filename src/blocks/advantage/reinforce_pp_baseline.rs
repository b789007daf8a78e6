//! `reinforce_pp_baseline`: REINFORCE++ with a group-mean baseline, then batch whitening over
//! every response token.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reinforce_pp_baseline",
    summary: "REINFORCE++-baseline: subtract the group mean, spread over the response, whiten over every response token of the batch",
    source: "REINFORCE++ (Hu 2025); verl `compute_reinforce_plus_plus_baseline_outcome_advantage` (token-weighted `masked_whiten`), OpenRLHF `reinforce_baseline`",
    family: Family::Advantage,
    formula: "c_b = r_b − mean_g(r) (a lone sample keeps r_b);  A[b,t] = m[b,t]·(c_b − μ)/sqrt(v + eps), μ and v over every response token (a sequence of L tokens counts L times)",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[
        num("eps", 1e-8, Range::NonNegative, "added to the variance"),
        choice(
            "var",
            &["unbiased", "biased"],
            "unbiased",
            "variance over tokens: `unbiased` (verl `masked_whiten`) or `biased` (OpenRLHF)",
        ),
    ],
    output: OutputKind::Tensor(Level::Token),
    demand: Demand::Groups,
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let r = ctx.tensor(0)?;
    let rewards = host::vec(r)?;
    let mut centred = rewards.clone();
    for members in host::group_members(&ctx.group_ids()?) {
        // A lone sample keeps its reward (group mean taken as 0, as in verl).
        if members.len() > 1 {
            let mean = members.iter().map(|&i| rewards[i]).sum::<f64>() / members.len() as f64;
            for &i in &members {
                centred[i] = rewards[i] - mean;
            }
        }
    }
    // Token weights: each sequence's value counts once per response token.
    let mask = ctx.out_mask()?;
    let (m, cols, lengths) = host::row_lengths(mask)?;
    let (mean, var, _) = host::mean_var(&centred, &lengths, ctx.choice("var")? == "unbiased");
    let scale = host::inverse_std(var, ctx.num("eps")?, false);
    let out: Vec<f64> =
        m.iter().enumerate().map(|(i, w)| w * (centred[i / cols] - mean) * scale).collect();
    Ok(Value::Tensor(host::from_flat(out, mask.dims(), r)?))
}
