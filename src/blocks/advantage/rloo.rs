//! `rloo`: REINFORCE leave-one-out baseline.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "rloo",
    summary: "leave-one-out baseline: reward minus the mean of the other samples of its prompt",
    source: "RLOO (Ahmadian et al. 2024); verl `rloo`, TRL RLOOTrainer, OpenRLHF",
    family: Family::Advantage,
    formula: "A_i = r_i − (Σ_{j≠i} r_j)/(n − 1); singleton groups give 0",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Groups,
    ..BASE
};
