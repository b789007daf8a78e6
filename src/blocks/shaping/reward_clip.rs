//! `reward_clip`: clip rewards into a range.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reward_clip",
    summary: "clip a reward into [lo, hi]",
    source: "OpenRLHF `--reward.clip_range` (default ±10), TRL RLOO `reward_clip_range`",
    family: Family::Shaping,
    formula: "clamp(x, lo, hi)",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Generic, GradRule::Detached),
        doc: "a reward",
    }],
    params: &[
        num("lo", -10.0, Range::Any, "lower bound"),
        num("hi", 10.0, Range::Any, "upper bound"),
    ],
    output: OutputKind::Generic,
    validate: Some(super::super::maths::lo_below_hi),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(ctx.tensor(0)?.clamped(ctx.num("lo")?, ctx.num("hi")?)?))
}
