//! `split_steps`: segment a response into reasoning steps.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, StepsData, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "split_steps",
    summary: "split a response into reasoning steps at a delimiter",
    source: "VinePPO (Kazemnejad et al. 2024): GSM8K steps are lines",
    family: Family::Steps,
    formula: "steps = pieces of the text ending at each delimiter; their join is the text",
    inputs: &[text("text", "the text to segment, usually `response`")],
    params: &[ParamSpec {
        name: "on",
        ty: ParamTy::Str,
        default: DefaultRule::Str("\n"),
        range: Range::Any,
        doc: "the delimiter that ends a step",
    }],
    output: OutputKind::Steps,
    axis_from: Some(0),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let text = ctx.text(0)?;
    let Some(ids) = &text.step_ids else {
        candle_core::bail!("`split_steps` needs the step of every token of `{}`", text.name)
    };
    let mask = host::step_mask(ids)?;
    Ok(Value::Steps(StepsData { text: text.name.clone(), ids: ids.clone(), mask }))
}
