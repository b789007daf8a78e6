//! `ppo_clip`: the PPO clipped surrogate, per token.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
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
        ParamSpec {
            name: "max_log_ratio",
            ty: ParamTy::OptFloat,
            default: DefaultRule::Num(20.0),
            range: Range::Positive,
            doc: "clamp logp − old into ±this before exp, as verl and OpenRLHF do; `none` as in TRL (still clamped at ±80, where f32's exp would overflow)",
        },
    ],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    // `none` (TRL) still stops short of f32's exp overflow (e^88.7): a finite log-ratio never
    // becomes an inf ratio, whose zero-gradient clip branch would give NaN.
    let m = ctx.opt_num("max_log_ratio").unwrap_or(80.0).min(80.0);
    let delta = logp.sub(old)?.clamped(-m, m)?;
    let ratio = delta.exp()?;
    let (lo, hi) = (1.0 - ctx.num("eps")?, 1.0 + ctx.num("eps_high")?);
    let unclipped = adv.mul(&ratio)?.neg()?;
    let clipped = adv.mul(&ratio.clamped(lo, hi)?)?.neg()?;
    let mut loss = unclipped.max_with(&clipped)?;
    if let Some(c) = ctx.opt_num("dual_clip") {
        // For A < 0 the loss is bounded by −A·c.
        let bound = (adv * -c)?;
        loss = adv.lt(0.0)?.where_cond(&loss.min_with(&bound)?, &loss)?;
    }
    Ok(Value::Tensor(loss))
}
