//! Corrections for a sampler that is not the trainer (an inference engine, bf16 sampling, stale
//! weights): importance weights and rejection masks from `old.logp` and `rollout.logp`.

pub mod mis;
pub mod rollout_reject;
pub mod tis;

use candle_core::{D, Result, Tensor};

use crate::blocks::ctx::Ctx;
use crate::blocks::fused::Fused;

/// The trainer/sampler ratio e^{old − rollout} per token, or per sequence on every token
/// (`level`), with log-ratios clamped to ±20; padding holds 1.
pub(crate) fn weights(ctx: &Ctx) -> Result<Tensor> {
    let mask = ctx.out_mask()?;
    let delta = ctx.tensor(0)?.sub(ctx.tensor(1)?)?;
    let delta = delta.kept(mask)?;
    let log_w = match ctx.choice("level")? {
        "sequence" => delta.sum_keepdim(D::Minus1)?.broadcast_as(delta.shape())?.contiguous()?,
        _ => delta,
    };
    log_w.clamped(-20.0, 20.0)?.exp()
}
