//! `ppo_clip`: the PPO clipped surrogate, per token.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "ppo_clip",
    summary: "PPO clipped surrogate loss per token, with optional clip-higher and dual clip",
    source: "PPO (Schulman et al. 2017), Eq. 7; clip-higher (DAPO); dual clip (Ye et al. 2020), verl `clip_ratio_c`",
    family: Family::Loss,
    formula: "ρ = e^{logp − old};  ℓ = max(−Aρ, −A·clamp(ρ, 1 − eps, 1 + eps_high));  A < 0: min(ℓ, −A·dual_clip)",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        num("eps", 0.2, Range::OpenUnit, "lower clip: ρ ≥ 1 − eps"),
        ParamSpec {
            name: "eps_high",
            ty: ParamTy::Float,
            default: DefaultRule::SameAs("eps"),
            range: Range::Positive,
            doc: "upper clip: ρ ≤ 1 + eps_high (DAPO's clip-higher uses 0.28)",
        },
        ParamSpec {
            name: "dual_clip",
            ty: ParamTy::Float,
            default: DefaultRule::Off,
            range: Range::Above(1.0),
            doc: "bound on the loss of negative advantages (verl uses 3)",
        },
    ],
    output: OutputKind::Tensor(Level::Token),
    ..BASE
};
