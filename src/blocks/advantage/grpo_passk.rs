//! `grpo_passk`: GRPO for pass@k — only each group's best sample learns, by its margin.

use candle_core::{Result, bail};

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "grpo_passk",
    summary: "pass@k GRPO: each group's best sample gets its margin over the second best (over the group std), every other sample 0",
    source: "Pass@k training (Chen et al. 2025, arXiv 2508.10751); verl `grpo_passk`",
    family: Family::Advantage,
    formula: "per group: i* = argmax r (first on ties), A_{i*} = (r_max − r_2nd) / (std_g(r) + eps) (or unscaled), others 0",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[
        choice(
            "scale",
            &["std", "none"],
            "std",
            "divide the margin by the group std (verl `norm_adv_by_std_in_grpo`)",
        ),
        num("eps", 1e-6, Range::NonNegative, "added to the std"),
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Groups,
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let r = ctx.tensor(0)?;
    let rewards = host::vec(r)?;
    let by_std = ctx.choice("scale")? == "std";
    let eps = ctx.num("eps")?;
    let mut out = vec![0.0; rewards.len()];
    for members in host::group_members(&ctx.group_ids()?) {
        if members.len() < 2 {
            bail!("pass@k advantages need at least 2 samples per prompt (`sample {{ n }}`)");
        }
        let mut order = members.clone();
        // Best first; ties keep the first sample.
        order.sort_by(|&a, &b| rewards[b].total_cmp(&rewards[a]));
        let (best, second) = (order[0], order[1]);
        let margin = rewards[best] - rewards[second];
        let xs: Vec<f64> = members.iter().map(|&i| rewards[i]).collect();
        let (_, var, _) = host::mean_var(&xs, &vec![1.0; xs.len()], true);
        out[best] = if by_std { margin / (var.sqrt() + eps) } else { margin };
    }
    Ok(Value::Tensor(host::from_vec(out, r)?))
}
