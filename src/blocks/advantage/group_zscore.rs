//! `group_zscore`: GRPO's group-relative advantage (and Dr.GRPO with `scale = none`).

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "group_zscore",
    summary: "group-relative advantage: reward minus its group mean, over the group std",
    source: "GRPO (Shao et al. 2024); Dr.GRPO (Liu et al. 2025) with `scale = none`; verl `grpo`, TRL",
    family: Family::Advantage,
    formula: "A_i = (r_i − mean_g(r)) / (std_g(r) + eps); singleton groups give 0",
    inputs: &[detached("rewards", Level::Seq, "one reward per sample")],
    params: &[
        choice("scale", &["std", "none"], "std", "`none` only centres (Dr.GRPO)"),
        num(
            "eps",
            1e-6,
            Range::NonNegative,
            "added to the std (verl and TRL use 1e-6; OpenRLHF 1e-9)",
        ),
        choice(
            "var",
            &["unbiased", "biased"],
            "unbiased",
            "variance convention (torch `std` is unbiased)",
        ),
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Groups,
    ..BASE
};
