//! `reinforce_pp_baseline`: REINFORCE++ with a group-mean baseline, then batch whitening.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reinforce_pp_baseline",
    summary: "REINFORCE++-baseline: subtract the group mean, then whiten over the batch",
    source: "REINFORCE++ (Hu 2025); verl `reinforce_plus_plus_baseline`, OpenRLHF `reinforce_baseline`",
    family: Family::Advantage,
    formula: "A = whiten_batch(r − mean_g(r))",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[num("eps", 1e-8, Range::NonNegative, "added to the variance")],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Groups,
    ..BASE
};
