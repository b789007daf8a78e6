//! `at_end`: place a sequence value on the last response token.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "at_end",
    summary: "place a sequence value on the last response token (the EOS), zero elsewhere",
    source: "PPO-RLHF practice (Ziegler et al. 2019); verl, OpenRLHF, TRL",
    family: Family::Shaping,
    formula: "out[b, t] = x[b] if t is the last unmasked token of b, else 0",
    inputs: &[tensor("x", Level::Seq, "one value per sequence")],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let x = ctx.tensor(0)?;
    let mask = ctx.out_mask()?;
    // One-hot of each row's last real token.
    let rows: Vec<Vec<f64>> = host::rows(mask)?
        .into_iter()
        .map(|m| {
            let last = m.iter().rposition(|v| *v != 0.0);
            (0..m.len()).map(|t| if Some(t) == last { 1.0 } else { 0.0 }).collect()
        })
        .collect();
    let onehot = host::from_rows(&rows, mask)?.to_dtype(x.dtype())?;
    Ok(Value::Tensor(onehot.broadcast_mul(&x.unsqueeze(1)?)?))
}
