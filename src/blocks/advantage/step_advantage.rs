//! `step_advantage`: VinePPO's step advantages from Monte-Carlo step values.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "step_advantage",
    summary: "advantage of each reasoning step from the values of the states around it",
    source: "VinePPO (Kazemnejad et al. 2024)",
    family: Family::Advantage,
    formula: "A_i = r_i + V(s_i) − V(s_{i−1}), r only on the last step, V(terminal) = 0",
    inputs: &[
        detached("reward", Level::Seq, "outcome reward of each response"),
        detached("values", Level::Step, "value of the state before each step, from `vine_values`"),
    ],
    output: OutputKind::Tensor(Level::Step),
    ..BASE
};
