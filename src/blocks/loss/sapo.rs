//! `sapo`: Soft Adaptive Policy Optimization — a smooth gate instead of a hard clip.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "sapo",
    summary: "SAPO: a sigmoid gate on the importance ratio, steeper for negative advantages, in place of PPO's clip",
    source: "SAPO (Qwen team 2025, arXiv 2511.20347); verl `sapo` (aggregate with `seq_mean_token_mean`), TRL `sapo`",
    family: Family::Loss,
    formula: "ρ = e^{clamp(logp − old, ±20)};  f_τ(ρ) = (4/τ)·σ(τ(ρ − 1)), τ = tau_pos if A > 0 else tau_neg;  ℓ = −f_τ(ρ)·A  (f′(1) = 1: on-policy it is the plain policy gradient)",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        num("tau_pos", 1.0, Range::Positive, "gate temperature for positive advantages"),
        num("tau_neg", 1.05, Range::Positive, "gate temperature for negative advantages"),
    ],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let ratio = logp.sub(old)?.clamped(-20.0, 20.0)?.exp()?;
    let (pos, neg) = (ctx.num("tau_pos")?, ctx.num("tau_neg")?);
    let tau = adv
        .gt(0.0)?
        .where_cond(&adv.ones_like()?.affine(pos, 0.0)?, &adv.ones_like()?.affine(neg, 0.0)?)?;
    let gate = candle_nn::ops::sigmoid(&(ratio - 1.0)?.mul(&tau)?)?.mul(&tau.recip()?)? * 4.0;
    Ok(Value::Tensor(gate?.mul(adv)?.neg()?))
}
