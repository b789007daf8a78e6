//! `gspo`: Group Sequence Policy Optimization — one importance ratio per sequence.

use candle_core::{D, Result};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "gspo",
    summary: "GSPO: PPO's clip on the length-normalised sequence ratio, written per token (GSPO-token)",
    source: "GSPO (Zheng et al. 2025, arXiv 2507.18071), GSPO-token form; verl `gspo` (aggregate with `seq_mean_token_mean`), TRL `importance_sampling_level = sequence`, OpenRLHF `gspo`",
    family: Family::Loss,
    formula: "s_b = Σ_t (logp − old)·m / L_b;  ρ_bt = e^{min(logp − sg(logp) + sg(s_b), 10)} (value e^{s_b}, gradient e^{s_b}·∇logp);  ℓ = max(−Aρ, −A·clamp(ρ, 1 − eps, 1 + eps_high))",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages (GSPO uses one per sequence, `spread(...)`)"),
    ],
    params: &[
        num("eps", 3e-4, Range::OpenUnit, "lower clip of the sequence ratio (paper: 3e-4)"),
        num("eps_high", 4e-4, Range::Positive, "upper clip of the sequence ratio (paper: 4e-4)"),
    ],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let mask = ctx.input_mask(0)?;
    let keep = mask.ne(0.0)?;
    // Padding may hold anything (−inf log-probabilities): it is read as 0.
    let delta = logp.sub(old)?.detach().kept(mask)?;
    let lengths = keep.to_dtype(logp.dtype())?.sum_keepdim(D::Minus1)?.maximum(1.0)?;
    let s = delta.sum_keepdim(D::Minus1)?.div(&lengths)?;
    let lp = logp.kept(mask)?;
    let lambda = lp.sub(&lp.detach())?.broadcast_add(&s)?.at_most(10.0)?;
    let ratio = lambda.exp()?;
    let (lo, hi) = (1.0 - ctx.num("eps")?, 1.0 + ctx.num("eps_high")?);
    let unclipped = adv.mul(&ratio)?.neg()?;
    let clipped = adv.mul(&ratio.clamped(lo, hi)?)?.neg()?;
    Ok(Value::Tensor(unclipped.max_with(&clipped)?))
}
