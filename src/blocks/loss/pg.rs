//! `pg`: the vanilla policy-gradient (REINFORCE) loss.

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
    ..BASE
};
