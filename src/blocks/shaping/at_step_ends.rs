//! `at_step_ends`: place step values on the last token of each step.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "at_step_ends",
    summary: "place each step's value on the last token of that step",
    source: "process reward models (Lightman et al. 2023); per-step reward placement",
    family: Family::Shaping,
    formula: "out[b, t] = x[b, i] if t is the last token of step i, else 0",
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
