//! `reward_clip`: clip rewards into a range.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reward_clip",
    summary: "clip a reward into [lo, hi]",
    source: "OpenRLHF `--reward.clip_range` (default ±10), TRL RLOO `reward_clip_range`",
    family: Family::Shaping,
    formula: "clamp(x, lo, hi)",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Generic, GradRule::Detached),
        doc: "a reward",
    }],
    params: &[
        num("lo", -10.0, Range::Any, "lower bound"),
        num("hi", 10.0, Range::Any, "upper bound"),
    ],
    output: OutputKind::Generic,
    validate: Some(super::super::maths::lo_below_hi),
    ..BASE
};
