//! `calibrate`: RCfD's reward calibrated to the demonstration's reward.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "calibrate",
    summary: "negative distance between a reward and the demonstration's reward (RCfD)",
    source: "RCfD (Rita et al. 2024), Eq. 3",
    family: Family::Shaping,
    formula: "squared: −(r − r_demo)²;  absolute: −|r − r_demo|",
    inputs: &[
        detached("reward", Level::Seq, "reward of the response, e.g. `rm(response)`"),
        detached("target", Level::Seq, "reward of the demonstration, e.g. `rm(demonstration)`"),
    ],
    params: &[choice("distance", &["squared", "absolute"], "squared", "the distance")],
    output: OutputKind::Tensor(Level::Seq),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let d = ctx.tensor(0)?.sub(ctx.tensor(1)?)?;
    let dist = if ctx.choice("distance")? == "squared" { d.sqr()? } else { d.abs()? };
    Ok(Value::Tensor(dist.neg()?))
}
