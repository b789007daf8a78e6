//! `rlmec_pg`: RLMEC's clipped policy gradient with a detached weight.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "rlmec_pg",
    summary: "policy gradient with a detached, clipped importance weight (clipped tokens keep gradient)",
    source: "RLMEC (Chen et al. 2024), `LlamaForRLMEC.forward`",
    family: Family::Loss,
    formula: "ρ = e^{logp − ref};  ℓ = −sg(min(ρr, clamp(ρ, 1 − eps, 1 + eps)·r)) · logp",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("ref", Level::Token, "log-probabilities of the fixed sampling model"),
        detached("reward", Level::Token, "token rewards, used directly as advantages"),
    ],
    params: &[num("eps", 0.3, Range::OpenUnit, "clip of the importance weight")],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    ..BASE
};
