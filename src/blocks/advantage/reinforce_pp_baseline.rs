//! `reinforce_pp_baseline`: REINFORCE++ with a group-mean baseline, then batch whitening.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reinforce_pp_baseline",
    summary: "REINFORCE++-baseline: subtract the group mean, then whiten over the batch",
    source: "REINFORCE++ (Hu 2025); verl `reinforce_plus_plus_baseline`, OpenRLHF `reinforce_baseline`",
    family: Family::Advantage,
    formula: "A = whiten_batch(r − mean_g(r))",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[num("eps", 1e-8, Range::NonNegative, "added to the variance")],
    output: OutputKind::Tensor(Level::Seq),
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
    let (mean, var, _) = host::mean_var(&centred, &vec![1.0; centred.len()], true);
    let scale = host::inverse_std(var, ctx.num("eps")?, false);
    Ok(Value::Tensor(host::from_vec(centred.iter().map(|x| (x - mean) * scale).collect(), r)?))
}
