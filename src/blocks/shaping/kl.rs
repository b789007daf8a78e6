//! `kl`: per-token KL estimators between the policy and a reference.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "kl",
    summary: "per-token KL estimate between two log-probabilities of the same tokens",
    source: "Schulman 2020 (k1, k2, k3); verl `kl_penalty`, TRL, OpenRLHF",
    family: Family::Shaping,
    formula: "d = logp − ref;  k1 = d,  k2 = mse = d²/2,  k3 = e^{−d} + d − 1,  abs = |d|",
    inputs: &[
        tensor(
            "logp",
            Level::Token,
            "`policy.logp` (gradient: KL as a loss) or `old.logp` (KL in the reward)",
        ),
        detached("ref", Level::Token, "the reference log-probabilities, `ref.logp`"),
    ],
    params: &[choice("estimator", &["k1", "k2", "k3", "abs", "mse"], "k1", "which estimator")],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    ..BASE
};
