//! `at_step_ends`: place step values on the last token of each step.

use candle_core::{Result, Tensor};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "at_step_ends",
    summary: "place each step's value on the last token of that step",
    source: "process reward models (Lightman et al. 2023); per-step reward placement",
    family: Family::Shaping,
    formula: "out[b, t] = x[b, i] if t is the last token of step i, else 0",
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
    let ids = ctx.steps(1)?.ids.to_vec2::<i64>()?;
    // Each token gathers its step's value; only a step's last token keeps it.
    let (mut index, mut keep) = (Vec::new(), Vec::new());
    for row in &ids {
        for (t, id) in row.iter().enumerate() {
            let last = *id >= 0 && row.get(t + 1) != Some(id);
            index.push((*id).max(0));
            keep.push(if last { 1.0 } else { 0.0 });
        }
    }
    let shape = (ids.len(), ids.first().map_or(0, |r| r.len()));
    let index = Tensor::from_vec(index, shape, x.device())?;
    let keep = Tensor::from_vec(keep, shape, x.device())?.to_dtype(x.dtype())?;
    Ok(Value::Tensor(x.contiguous()?.gather(&index, 1)?.mul(&keep)?))
}
