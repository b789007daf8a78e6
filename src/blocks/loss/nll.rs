//! `nll`: negative log-likelihood per token.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "nll",
    summary: "negative log-likelihood per token (supervised fine-tuning)",
    source: "maximum likelihood",
    family: Family::Loss,
    formula: "ℓ = −logp",
    inputs: &[tensor("logp", Level::Token, "log-probabilities of the target text")],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let loss = ctx.tensor(0)?.neg()?;
    Ok(Value::Tensor(loss))
}
