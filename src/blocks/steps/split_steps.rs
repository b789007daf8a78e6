//! `split_steps`: segment a response into reasoning steps.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "split_steps",
    summary: "split a response into reasoning steps at a delimiter",
    source: "VinePPO (Kazemnejad et al. 2024): GSM8K steps are lines",
    family: Family::Steps,
    formula: "steps = pieces of the text ending at each delimiter; their join is the text",
    inputs: &[text("text", "the text to segment, usually `response`")],
    params: &[ParamSpec {
        name: "on",
        ty: ParamTy::Str,
        default: DefaultRule::Str("\n"),
        range: Range::Any,
        doc: "the delimiter that ends a step",
    }],
    output: OutputKind::Steps,
    axis_from: Some(0),
    ..BASE
};
