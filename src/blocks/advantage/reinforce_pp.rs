//! `reinforce_pp`: REINFORCE++, returns whitened over the whole batch.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reinforce_pp",
    summary: "REINFORCE++: discounted returns whitened over the batch",
    source: "REINFORCE++ (Hu 2025); verl `reinforce_plus_plus`, OpenRLHF `reinforce`",
    family: Family::Advantage,
    formula: "A = whiten_batch(G), G_t = Σ_{k≥t} γ^{k−t} r_k",
    inputs: &[detached("rewards", Level::Token, "token rewards (KL usually folded in)")],
    params: &[
        num("gamma", 1.0, Range::Probability, "discount"),
        num("eps", 1e-8, Range::NonNegative, "added to the variance"),
    ],
    output: OutputKind::Tensor(Level::Token),
    ..BASE
};
