//! `gpg`: Group Policy Gradient's advantage — group-centred, rescaled by the share of
//! samples with a non-zero reward.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "gpg",
    summary: "GPG: reward minus its group mean, scaled by the batch size over the number of non-zero rewards (pair with `pg`)",
    source: "GPG (Chu et al. 2025, arXiv 2504.02546); verl `gpg` advantage and policy loss",
    family: Family::Advantage,
    formula: "α = B / max(#{i: r_i ≠ 0}, 1);  A_i = α·(r_i − mean_g(r)) (a lone sample: mean 0)",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Groups,
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let r = ctx.tensor(0)?;
    let rewards = host::vec(r)?;
    let nonzero = rewards.iter().filter(|x| **x != 0.0).count().max(1);
    let alpha = rewards.len() as f64 / nonzero as f64;
    let mut out = rewards.clone();
    for members in host::group_members(&ctx.group_ids()?) {
        let mean = if members.len() > 1 {
            members.iter().map(|&i| rewards[i]).sum::<f64>() / members.len() as f64
        } else {
            0.0
        };
        members.iter().for_each(|&i| out[i] = alpha * (rewards[i] - mean));
    }
    Ok(Value::Tensor(host::from_vec(out, r)?))
}
