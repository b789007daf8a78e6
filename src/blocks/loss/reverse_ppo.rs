//! `reverse_ppo`: the reverse-cross-entropy term of Symmetric PPO.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reverse_ppo",
    summary: "reverse cross-entropy term of symmetric PPO (SPPO), active where PPO's clip is",
    source: "Symmetric RL loss (Byun & Perrault 2024), SPPO; `rce_Z`",
    family: Family::Loss,
    formula: "Ω = 1 − e^{logp};  ℓ = −f · A · z · Ω · e^{min(−old, 20)},  f = 1 where the PPO term has gradient (ratio e^{clamp(logp − old, ±20)})",
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
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let (lo, hi) = (1.0 - ctx.num("eps")?, 1.0 + ctx.num("eps_high")?);
    // f: where the PPO surrogate has gradient (inside the trust region, or the unclipped branch is the min).
    // Log-ratios are clamped to ±20 before exp (verl's safety bound), here and in 1/π_old.
    let ratio = logp.sub(old)?.clamped(-20.0, 20.0)?.exp()?.detach();
    let inside =
        ratio.ge(lo)?.to_dtype(ratio.dtype())?.mul(&ratio.le(hi)?.to_dtype(ratio.dtype())?)?;
    let unclipped_min =
        ratio.mul(adv)?.le(&ratio.clamped(lo, hi)?.mul(adv)?)?.to_dtype(ratio.dtype())?;
    let f = inside.max_with(&unclipped_min)?;
    // Ω = 1 − π(a) keeps its gradient; π_old is a constant.
    let omega = (1.0 - logp.exp()?)?;
    let inv_old = old.neg()?.clamped(-20.0, 20.0)?.exp()?;
    let loss = (f.mul(adv)?.mul(&omega)?.mul(&inv_old)? * -ctx.num("z")?)?;
    Ok(Value::Tensor(loss))
}
