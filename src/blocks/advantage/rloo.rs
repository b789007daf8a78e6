//! `rloo`: REINFORCE leave-one-out baseline.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "rloo",
    summary: "leave-one-out baseline: reward minus the mean of the other samples of its prompt",
    source: "RLOO (Ahmadian et al. 2024); verl `rloo`, TRL RLOOTrainer, OpenRLHF",
    family: Family::Advantage,
    formula: "A_i = r_i − (Σ_{j≠i} r_j)/(n − 1); singleton groups: see `singleton`",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[choice(
        "singleton",
        &["zero", "raw"],
        "zero",
        "a group of one sample: advantage 0 (TRL) or its raw reward (verl)",
    )],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Groups,
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let r = ctx.tensor(0)?;
    let rewards = host::vec(r)?;
    let raw = ctx.choice("singleton")? == "raw";
    let mut out = vec![0.0; rewards.len()];
    for members in host::group_members(&ctx.group_ids()?) {
        let n = members.len() as f64;
        let total: f64 = members.iter().map(|&i| rewards[i]).sum();
        for &i in &members {
            out[i] = if members.len() == 1 {
                if raw { rewards[i] } else { 0.0 }
            } else {
                rewards[i] - (total - rewards[i]) / (n - 1.0)
            };
        }
    }
    Ok(Value::Tensor(host::from_vec(out, r)?))
}
