//! `returns`: Monte-Carlo reward-to-go.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "returns",
    summary: "discounted reward-to-go over the response tokens",
    source: "REINFORCE (Williams 1992); torchrl `reward2go`, rlax `discounted_returns`",
    family: Family::Advantage,
    formula: "G_t = Σ_{k≥t} γ^{k−t} r_k over unmasked tokens (masked holes are skipped)",
    inputs: &[detached("rewards", Level::Token, "token rewards")],
    params: &[num("gamma", 1.0, Range::Probability, "discount")],
    output: OutputKind::Tensor(Level::Token),
    ..BASE
};
