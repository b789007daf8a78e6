//! `normalize`: affine normalisation with fixed statistics.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "normalize",
    summary: "normalise a reward with fixed statistics, e.g. a reward model's stored mean and std",
    source: "OpenRLHF `--normalize_reward` (RTO)",
    family: Family::Shaping,
    formula: "(x − mean) / std",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Generic, GradRule::Detached),
        doc: "a reward",
    }],
    params: &[
        num("mean", 0.0, Range::Any, "subtracted"),
        num("std", 1.0, Range::Positive, "divides"),
    ],
    output: OutputKind::Generic,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let std = ctx.num("std")?;
    Ok(Value::Tensor(ctx.tensor(0)?.affine(1.0 / std, -ctx.num("mean")? / std)?))
}
