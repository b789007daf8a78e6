//! `spread`: copy a sequence value onto every response token.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "spread",
    summary: "copy a sequence value onto every response token",
    source: "outcome-reward methods (GRPO, RLOO, RCfD) broadcast the sequence advantage",
    family: Family::Shaping,
    formula: "out[b, t] = x[b] · mask[b, t]",
    inputs: &[tensor("x", Level::Seq, "one value per sequence")],
    output: OutputKind::Tensor(Level::Token),
    ..BASE
};
