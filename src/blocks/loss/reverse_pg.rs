//! `reverse_pg`: the reverse-cross-entropy term of SA2C.

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
    ..BASE
};
