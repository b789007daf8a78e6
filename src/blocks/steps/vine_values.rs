//! `vine_values`: Monte-Carlo values of the states at step boundaries.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "vine_values",
    summary: "Monte-Carlo value of the state before each step, from extra rollouts",
    source: "VinePPO (Kazemnejad et al. 2024): K = 9, rollouts from θ_old, identical prefixes share one estimate",
    family: Family::Steps,
    formula: "V(s_i) = (1/k) Σ_j reward(s_i ⊕ rollout_j),  rollout_j ~ π_old(·|s_i), i = 0..S−1",
    inputs: &[
        InputSpec {
            name: "steps",
            kind: InputKind::Steps,
            doc: "the segmentation, from `split_steps`",
        },
        InputSpec {
            name: "reward",
            kind: InputKind::Scorer,
            doc: "the reward of a finished rollout, e.g. `arith.correct`",
        },
    ],
    params: &[
        int("k", 9.0, "rollouts per state"),
        ParamSpec {
            name: "max_steps",
            ty: ParamTy::Int,
            default: DefaultRule::Off,
            range: Range::Count,
            doc: "estimate only the first steps; later ones get advantage 0",
        },
    ],
    output: OutputKind::Tensor(Level::Step),
    grad: OutputGrad::Never,
    axis_from: Some(0),
    demand: Demand::StepRollouts { count_param: "k" },
    forward: Some(forward),
    ..BASE
};

/// The sampler computes these values (the runtime, or `vine_values` in an `rlx eval` batch).
fn forward(_: &Ctx) -> Result<Value> {
    candle_core::bail!(
        "`vine_values` comes from extra rollouts; supply it as the input `vine_values`"
    )
}
