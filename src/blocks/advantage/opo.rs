//! `opo`: On-Policy RL with Optimal reward baseline — a length-weighted group baseline.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "opo",
    summary: "OPO: reward minus the length-weighted mean reward of its group, on every response token",
    source: "OPO (Hao et al. 2025, arXiv 2505.23585); verl `opo`",
    family: Family::Advantage,
    formula: "b_g = Σ_{j∈g} L_j·r_j / Σ_{j∈g} L_j (a lone sample: b = 0);  A[b,t] = m[b,t]·(r_b − b_g)",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[],
    output: OutputKind::Tensor(Level::Token),
    demand: Demand::Groups,
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let r = ctx.tensor(0)?;
    let rewards = host::vec(r)?;
    let mask = ctx.out_mask()?;
    let lengths = host::vec(&mask.sum(1)?)?;
    let mut baseline = vec![0.0; rewards.len()];
    for members in host::group_members(&ctx.group_ids()?) {
        let total: f64 = members.iter().map(|&i| lengths[i]).sum();
        if members.len() > 1 && total > 0.0 {
            let b = members.iter().map(|&i| lengths[i] * rewards[i]).sum::<f64>() / total;
            members.iter().for_each(|&i| baseline[i] = b);
        }
    }
    // One value per sequence on the host, spread over its tokens on the device.
    let per_seq: Vec<f64> = rewards.iter().zip(&baseline).map(|(r, b)| r - b).collect();
    let per_seq = host::from_flat(per_seq, &[rewards.len(), 1], r)?;
    Ok(Value::Tensor(per_seq.broadcast_mul(&mask.to_dtype(r.dtype())?)?))
}
