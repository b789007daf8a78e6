//! `weighted_nll`: per-token weighted negative log-likelihood (imitation).

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "weighted_nll",
    summary: "negative log-likelihood weighted per token, for imitation of a target text",
    source: "RLMEC (Chen et al. 2024) imitation term; SPPO/TRIL target regularisation",
    family: Family::Loss,
    formula: "ℓ = −w · logp",
    inputs: &[
        tensor(
            "logp",
            Level::Token,
            "log-probabilities of the target text, e.g. `policy.logp(fix)`",
        ),
        detached("weights", Level::Token, "one weight per target token, e.g. from `edit_weights`"),
    ],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let loss = ctx.tensor(1)?.mul(ctx.tensor(0)?)?.neg()?;
    Ok(Value::Tensor(loss))
}
