//! `split_steps`: segment a response into reasoning steps.

use candle_core::{Result, Tensor};

use crate::blocks::ctx::{Ctx, StepsData, Value};
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
    let rows = ids.to_vec2::<i64>()?;
    let counts: Vec<i64> = rows.iter().map(|r| r.iter().copied().max().unwrap_or(-1) + 1).collect();
    let width = counts.iter().copied().max().unwrap_or(0).max(1) as usize;
    let mask: Vec<f32> = counts
        .iter()
        .flat_map(|c| (0..width).map(move |j| if (j as i64) < *c { 1.0 } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (rows.len(), width), ids.device())?;
    Ok(Value::Steps(StepsData { text: text.name.clone(), ids: ids.clone(), mask }))
}
