//! `length`: the number of tokens of a text.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "length",
    summary: "number of tokens of each response (RCfD's length reward is its negative)",
    source: "RCfD (Rita et al. 2024), use case 3: R_length = −|y|",
    family: Family::Shaping,
    formula: "Σ_t mask[b, t]",
    inputs: &[text("text", "a text, e.g. `response`")],
    output: OutputKind::Tensor(Level::Seq),
    grad: OutputGrad::Never,
    ..BASE
};
