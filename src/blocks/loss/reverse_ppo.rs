//! `reverse_ppo`: the reverse-cross-entropy term of Symmetric PPO.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reverse_ppo",
    summary: "reverse cross-entropy term of symmetric PPO (SPPO), active where PPO's clip is",
    source: "Symmetric RL loss (Byun & Perrault 2024), SPPO; `rce_Z`",
    family: Family::Loss,
    formula: "Ω = 1 − e^{logp};  ℓ = −f · A · z · Ω / e^{old},  f = 1 where the PPO term has gradient",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        num("eps", 0.2, Range::OpenUnit, "the PPO clip that defines f"),
        ParamSpec {
            name: "eps_high",
            ty: ParamTy::Float,
            default: DefaultRule::SameAs("eps"),
            range: Range::Positive,
            doc: "upper clip",
        },
        num("z", -1.0, Range::Negative, "the clamped log 0 constant Z"),
    ],
    output: OutputKind::Tensor(Level::Token),
    ..BASE
};
