//! `rlmec_pg`: RLMEC's clipped policy gradient with a detached weight.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "rlmec_pg",
    summary: "policy gradient with a detached, clipped importance weight (clipped tokens keep gradient)",
    source: "RLMEC (Chen et al. 2024), `LlamaForRLMEC.forward`",
    family: Family::Loss,
    formula: "ρ = e^{clamp(logp − ref, ±20)};  ℓ = −sg(min(ρr, clamp(ρ, 1 − eps, 1 + eps)·r)) · logp",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("ref", Level::Token, "log-probabilities of the fixed sampling model"),
        detached("reward", Level::Token, "token rewards, used directly as advantages"),
    ],
    params: &[num("eps", 0.3, Range::OpenUnit, "clip of the importance weight")],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, reference, reward) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let eps = ctx.num("eps")?;
    // Log-ratio clamped to ±20 before exp (verl's safety bound): e^{Δ} must not overflow.
    let ratio = logp.sub(reference)?.clamped(-20.0, 20.0)?.exp()?;
    // The weight is detached: clipped tokens keep the gradient (1 ± eps)·r·∇logp, unlike PPO.
    let weight =
        ratio.mul(reward)?.min_with(&ratio.clamped(1.0 - eps, 1.0 + eps)?.mul(reward)?)?.detach();
    let loss = weight.mul(logp)?.neg()?;
    Ok(Value::Tensor(loss))
}
