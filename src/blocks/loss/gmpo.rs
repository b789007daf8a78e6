//! `gmpo`: Geometric-Mean Policy Optimization — the geometric mean of clipped token ratios.

use candle_core::{D, Result};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "gmpo",
    summary: "GMPO: the sequence's geometric-mean ratio of token ratios clipped in log space, times the mean advantage",
    source: "GMPO (Zhao et al. 2025, arXiv 2507.20673); verl `geo_mean` (`compute_policy_loss_geo_mean`, verl/trainer/ppo/core_algos.py 0.9.1; a plain batch mean: aggregate with `seq_mean`)",
    family: Family::Loss,
    formula: "σ = sign(A) (0 at A = 0);  Δ* = σ·min(σ(logp − old), σ·clamp(logp − old, −eps, eps_high));  L_b = Σ_t m + 1e-8;  ρ_b = e^{Σ_t Δ*·m / L_b};  ℓ_b = −ρ_b · Σ_t A·m / L_b",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        num("eps", 0.4, Range::Positive, "lower clip of each token's log-ratio (paper: 0.4)"),
        ParamSpec {
            name: "eps_high",
            ty: ParamTy::Float,
            default: DefaultRule::SameAs("eps"),
            range: Range::Positive,
            doc: "upper clip of each token's log-ratio",
        },
    ],
    output: OutputKind::Tensor(Level::Seq),
    forward: Some(forward),
    peers: &[peer(
        "verl 0.9.1",
        "the defaults with `eps = clip_ratio_low`, `eps_high = clip_ratio_high` and `seq_mean` (verl's `geo_mean` ignores `loss_agg_mode`); verl does not clamp the mean log-ratio, rlx clamps it at ±20",
    )],
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let mask = ctx.input_mask(0)?;
    let keep = mask.ne(0.0)?;
    let delta = logp.sub(old)?.kept(mask)?;
    let (lo, hi) = (ctx.num("eps")?, ctx.num("eps_high")?);
    // sign(A) as torch.sign: +1, −1, and 0 where A = 0, which drops that token's log-ratio
    // from the geometric mean (it still counts in the length, as in verl).
    let dtype = logp.dtype();
    let sign = adv.gt(0.0)?.to_dtype(dtype)?.sub(&adv.lt(0.0)?.to_dtype(dtype)?)?;
    // For A ≥ 0 the ratio is capped above, for A < 0 below (the pessimistic side, as PPO).
    let clipped = delta.clamped(-lo, hi)?;
    let star = sign.mul(&sign.mul(&delta)?.min_with(&sign.mul(&clipped)?)?)?;
    // verl divides by the real-token count + 1e-8 (an empty row gives ratio 1, advantage 0).
    let lengths = (keep.to_dtype(dtype)?.sum(D::Minus1)? + 1e-8)?;
    let log_ratio = star.sum(D::Minus1)?.div(&lengths)?.clamped(-20.0, 20.0)?;
    let mean_adv = adv.kept(mask)?.sum(D::Minus1)?.div(&lengths)?;
    Ok(Value::Tensor(log_ratio.exp()?.mul(&mean_adv)?.neg()?))
}
