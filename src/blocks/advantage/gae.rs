//! `gae`: generalised advantage estimation over token rewards and a critic's values.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "gae",
    summary: "generalised advantage estimation from token rewards and critic values",
    source: "Schulman et al. 2016; verl `compute_gae_advantage_return`, OpenRLHF",
    family: Family::Advantage,
    formula: "δ_t = r_t + γ·V_{t+1} − V_t;  A_t = δ_t + γλ·A_{t+1}, over unmasked tokens, V past the end = 0",
    inputs: &[
        detached("rewards", Level::Token, "token rewards (place sequence rewards with `at_end`)"),
        detached("values", Level::Token, "critic values at sampling time, `old.values`"),
    ],
    params: &[
        num("gamma", 1.0, Range::Probability, "discount"),
        num(
            "lambda",
            0.95,
            Range::Probability,
            "bias-variance trade-off; 1 gives Monte-Carlo returns minus V",
        ),
    ],
    output: OutputKind::Tensor(Level::Token),
    ..BASE
};
