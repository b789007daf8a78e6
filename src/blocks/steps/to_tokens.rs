//! `to_tokens`: give every token the value of the step it belongs to.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "to_tokens",
    summary: "give every token the value of the step that contains its first character",
    source: "VinePPO (Kazemnejad et al. 2024): EOS inherits the last step",
    family: Family::Steps,
    formula: "out[b, t] = x[b, step(t)]",
    inputs: &[
        tensor("x", Level::Step, "one value per step"),
        InputSpec {
            name: "steps",
            kind: InputKind::Steps,
            doc: "the segmentation, from `split_steps`",
        },
    ],
    output: OutputKind::Tensor(Level::Token),
    axis_from: Some(1),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let x = ctx.tensor(0)?;
    let ids = &ctx.steps(1)?.ids;
    let inside = ids.ge(0i64)?.to_dtype(x.dtype())?.mul(&ctx.out_mask()?.to_dtype(x.dtype())?)?;
    let index = ids.maximum(0i64)?.contiguous()?;
    Ok(Value::Tensor(x.contiguous()?.gather(&index, 1)?.mul(&inside)?))
}
