//! `length`: the number of tokens of a text.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "length",
    summary: "number of tokens of each response (RCfD's length reward is its negative)",
    source: "RCfD (Rita et al. 2024), use case 3: R_length = −|y|",
    family: Family::Shaping,
    formula: "Σ_t mask[b, t]",
    inputs: &[text("text", "a text, e.g. `response`")],
    output: OutputKind::Tensor(Level::Seq),
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(ctx.text(0)?.mask.sum(1)?))
}
