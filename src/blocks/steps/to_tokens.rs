//! `to_tokens`: give every token the value of the step it belongs to.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "to_tokens",
    summary: "give every token the value of the step that contains its first character",
    source: "VinePPO (Kazemnejad et al. 2024): EOS inherits the last step",
    family: Family::Steps,
    formula: "out[b, t] = x[b, step(t)]",
    inputs: &[
        tensor("x", Level::Step, "one value per step"),
        InputSpec {
            name: "steps",
            kind: InputKind::Steps,
            doc: "the segmentation, from `split_steps`",
        },
    ],
    output: OutputKind::Tensor(Level::Token),
    axis_from: Some(1),
    ..BASE
};
