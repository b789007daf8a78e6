//! `edit_weights`: per-token weights of a rewrite from the minimum-edit alignment.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "edit_weights",
    summary: "weight each token of a rewrite by whether the minimum edit from the original changed it",
    source: "RLMEC (Chen et al. 2024): token Levenshtein alignment, 1.0 edited, 0.5 kept",
    family: Family::Loss,
    formula: "w_j = edited if rewrite token j is inserted or substituted on the alignment path, else kept",
    inputs: &[
        text("original", "the text that was rewritten, usually `response`"),
        text("rewrite", "the rewrite, e.g. `grm.rewrite(response)`"),
    ],
    params: &[
        num("edited", 1.0, Range::NonNegative, "weight of changed tokens"),
        num("kept", 0.5, Range::NonNegative, "weight of kept tokens"),
    ],
    output: OutputKind::Tensor(Level::Token),
    grad: OutputGrad::Never,
    axis_from: Some(1),
    ..BASE
};
