//! `reverse_pg`: the reverse-cross-entropy term of SA2C.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reverse_pg",
    summary: "reverse cross-entropy term of symmetric A2C (SA2C)",
    source: "Symmetric RL loss (Byun & Perrault 2024), SA2C",
    family: Family::Loss,
    formula: "ℓ = −A · z · (1 − e^{logp})",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[num("z", -1.0, Range::Negative, "the clamped log 0 constant Z")],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let omega = (1.0 - ctx.tensor(0)?.exp()?)?;
    let loss = (ctx.tensor(1)?.mul(&omega)? * -ctx.num("z")?)?;
    Ok(Value::Tensor(loss))
}
