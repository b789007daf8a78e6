//! `to_tokens`: give every token the value of the step it belongs to.

use candle_core::{Result, Tensor};

use crate::blocks::ctx::{Ctx, Value, host};
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
    let ids_flat = ids.flatten_all()?.to_vec1::<i64>()?;
    let mask = host::flat32(ctx.out_mask()?)?;
    // A real token inside a step reads that step's value; every other token reads 0.
    let reads = |s: i64, m: f32| s >= 0 && m != 0.0;
    if !x.track_op() {
        // No gradient to carry (an advantage): read the step values directly.
        let (cols, steps) = (ids.dim(1)?.max(1), x.dim(1)?);
        let xs = host::flat(x)?;
        let mut out = vec![0.0; ids_flat.len()];
        let rows = out.chunks_mut(cols).zip(ids_flat.chunks(cols).zip(mask.chunks(cols)));
        for (r, (out, (ids, mask))) in rows.enumerate() {
            let values = &xs[r * steps..(r + 1) * steps];
            for ((o, &s), &m) in out.iter_mut().zip(ids).zip(mask) {
                if reads(s, m) {
                    *o = *values.get(s as usize).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "step id {s} is past the {steps} steps of the values"
                        ))
                    })?;
                }
            }
        }
        return Ok(Value::Tensor(host::from_flat(out, ids.dims(), x)?));
    }
    // Which step each token reads (0 where none), and whether it reads one at all.
    let index: Vec<u32> = ids_flat.iter().map(|&s| s.max(0) as u32).collect();
    let inside: Vec<f32> =
        ids_flat.iter().zip(&mask).map(|(&s, &m)| if reads(s, m) { 1.0 } else { 0.0 }).collect();
    let index = Tensor::from_vec(index, ids.dims(), x.device())?;
    let inside = host::from_flat32(inside, ids.dims(), x)?;
    Ok(Value::Tensor(x.contiguous()?.gather(&index, 1)?.mul(&inside)?))
}
