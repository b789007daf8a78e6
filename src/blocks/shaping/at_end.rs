//! `at_end`: place a sequence value on the last response token.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "at_end",
    summary: "place a sequence value on the last response token (the EOS), zero elsewhere",
    source: "PPO-RLHF practice (Ziegler et al. 2019); verl, OpenRLHF, TRL",
    family: Family::Shaping,
    formula: "out[b, t] = x[b] if t is the last unmasked token of b, else 0",
    inputs: &[tensor("x", Level::Seq, "one value per sequence")],
    output: OutputKind::Tensor(Level::Token),
    ..BASE
};
