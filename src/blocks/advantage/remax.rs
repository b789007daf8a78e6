//! `remax`: ReMax, the reward of a greedy response as the baseline.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "remax",
    summary: "ReMax: reward minus the reward of the greedy response to the same prompt",
    source: "ReMax (Li et al. 2024); verl `remax`",
    family: Family::Advantage,
    formula: "A = r(y) − r(y_greedy)",
    inputs: &[
        detached("rewards", Level::Seq, "reward of each sampled response"),
        detached("baseline", Level::Seq, "reward of the greedy response, e.g. `rm(greedy)`"),
    ],
    output: OutputKind::Tensor(Level::Seq),
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(ctx.tensor(0)?.broadcast_sub(ctx.tensor(1)?)?.detach()))
}
