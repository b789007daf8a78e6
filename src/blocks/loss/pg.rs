//! `pg`: the vanilla policy-gradient (REINFORCE) loss.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "pg",
    summary: "vanilla policy-gradient loss per token",
    source: "REINFORCE (Williams 1992); A2C; rlax `policy_gradient_loss`",
    family: Family::Loss,
    formula: "ℓ = −A · logp",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let loss = ctx.tensor(1)?.mul(ctx.tensor(0)?)?.neg()?;
    Ok(Value::Tensor(loss))
}
