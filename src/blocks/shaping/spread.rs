//! `spread`: copy a sequence value onto every response token.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "spread",
    summary: "copy a sequence value onto every response token",
    source: "outcome-reward methods (GRPO, RLOO, RCfD) broadcast the sequence advantage",
    family: Family::Shaping,
    formula: "out[b, t] = x[b] · mask[b, t]",
    inputs: &[tensor("x", Level::Seq, "one value per sequence")],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let x = ctx.tensor(0)?;
    Ok(Value::Tensor(x.unsqueeze(1)?.broadcast_mul(&ctx.out_mask()?.to_dtype(x.dtype())?)?))
}
