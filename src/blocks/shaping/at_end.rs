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
    let cols = mask.dim(1)?.max(1);
    // One-hot of each row's last real token.
    let mut onehot = host::flat32(mask)?;
    for row in onehot.chunks_mut(cols) {
        let last = row.iter().rposition(|v| *v != 0.0);
        row.iter_mut().for_each(|v| *v = 0.0);
        if let Some(t) = last {
            row[t] = 1.0;
        }
    }
    let onehot = host::from_flat32(onehot, mask.dims(), x)?;
    Ok(Value::Tensor(onehot.broadcast_mul(&x.unsqueeze(1)?)?))
}
