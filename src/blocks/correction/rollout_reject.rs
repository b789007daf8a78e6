//! `rollout_reject`: rejection of tokens or sequences whose sampler diverged from the trainer.

use candle_core::{D, Result};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "rollout_reject",
    summary: "a 0/1 mask that rejects tokens or whole sequences whose trainer/sampler divergence exceeds a threshold",
    source: "verl `rollout_rs` (token, seq_sum, seq_mean, seq_max of k1/k2/k3); TRL off-policy sequence masks",
    family: Family::Shaping,
    formula: "Δ = old − rollout;  k1 = −Δ, k2 = Δ²/2, k3 = e^{Δ} − 1 − Δ (Δ clamped to ±20);  token: keep where lo ≤ k ≤ hi;  seq_sum / seq_mean / seq_max: keep sequence b where its aggregate of k is in [lo, hi]",
    inputs: &[
        detached(
            "old",
            Level::Token,
            "the trainer's log-probabilities at sampling time, `old.logp`",
        ),
        detached("rollout", Level::Token, "the sampler's own log-probabilities, `rollout.logp`"),
    ],
    params: &[
        choice(
            "divergence",
            &["k1", "k2", "k3"],
            "k3",
            "per-token divergence of sampler from trainer",
        ),
        choice(
            "over",
            &["token", "seq_sum", "seq_mean", "seq_max"],
            "token",
            "what is compared with the bounds",
        ),
        num("lo", -1e30, Range::Any, "smallest accepted divergence (k1 can be negative)"),
        num("hi", 2.0, Range::Any, "largest accepted divergence"),
    ],
    output: OutputKind::Tensor(Level::Token),
    grad: OutputGrad::Never,
    validate: Some(crate::blocks::maths::lo_below_hi),
    forward: Some(forward),
    peers: &[peer(
        "verl 0.9.1",
        "with `k1`, verl's `rollout_rs_threshold` is a pair of ratio bounds `lower_upper` (one number u means 1/u and u) and compares k1 with their logarithms; rlx's `lo`/`hi` are those logarithms: verl `0.5_2.0` is `lo = -0.693147, hi = 0.693147`, verl `2.0` the same. For k2/k3 both take one upper bound, `hi`",
    )],
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let mask = ctx.out_mask()?;
    let keep = mask.ne(0.0)?;
    let delta = ctx.tensor(0)?.sub(ctx.tensor(1)?)?.clamped(-20.0, 20.0)?;
    let delta = delta.kept(mask)?;
    let k = match ctx.choice("divergence")? {
        "k1" => delta.neg()?,
        "k2" => (delta.sqr()? * 0.5)?,
        _ => ((delta.exp()? - 1.0)? - &delta)?,
    };
    let lengths = mask.sum_keepdim(D::Minus1)?.maximum(1.0)?;
    let stat = match ctx.choice("over")? {
        "seq_sum" => k.sum_keepdim(D::Minus1)?.broadcast_as(k.shape())?.contiguous()?,
        "seq_mean" => {
            k.sum_keepdim(D::Minus1)?.div(&lengths)?.broadcast_as(k.shape())?.contiguous()?
        }
        "seq_max" => {
            let masked = keep.where_cond(&k, &(k.ones_like()? * -1e30)?)?;
            masked.max_keepdim(D::Minus1)?.broadcast_as(k.shape())?.contiguous()?
        }
        _ => k,
    };
    let inside = stat.ge(ctx.num("lo")?)?.mul(&stat.le(ctx.num("hi")?)?)?.to_dtype(mask.dtype())?;
    Ok(Value::Tensor(inside.mul(mask)?))
}
