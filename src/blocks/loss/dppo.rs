//! `dppo`: Divergence PPO — a trust region on the divergence of the sampled token's
//! distribution, not on the ratio.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "dppo",
    summary: "DPPO: policy gradient with a truncated, detached ratio, masked where the token's probability left a divergence region",
    source: "DPPO (2025); verl `dppo_tv` and `dppo_kl` (clip ratios read as divergence thresholds, truncation 20)",
    family: Family::Loss,
    formula: "p = e^{logp}, p₀ = e^{old};  tv: valid = A > 0 ? p − p₀ ≤ eps_high : p − p₀ ≥ −eps;  kl: D = p₀(old − logp) + (1 − p₀)·ln((1 − p₀ + 1e-8)/(1 − p + 1e-8)), valid = A > 0 ? (D ≤ eps_high or p ≤ p₀) : (D ≤ eps or p ≥ p₀);  ℓ = −A·sg(min(e^{logp − old}, cap))·logp·sg(valid)",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        choice(
            "divergence",
            &["tv", "kl"],
            "tv",
            "total variation (`dppo_tv`) or binary KL (`dppo_kl`) of the sampled token",
        ),
        num("eps", 0.2, Range::Positive, "threshold for negative advantages"),
        ParamSpec {
            name: "eps_high",
            ty: ParamTy::Float,
            default: DefaultRule::SameAs("eps"),
            range: Range::Positive,
            doc: "threshold for positive advantages",
        },
        num("cap", 20.0, Range::Positive, "truncation of the detached ratio"),
    ],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    peers: &[peer(
        "verl 0.9.1",
        "`cap = 3`: `dppo_tv`/`dppo_kl` fall back to 20 only without a config, and `ActorConfig.clip_ratio_c` is 3.0, so every verl run truncates the ratio at 3 (rlx's default 20 is that fallback); `eps`/`eps_high` are `clip_ratio_low`/`clip_ratio_high`",
    )],
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let (lo, hi) = (ctx.num("eps")?, ctx.num("eps_high")?);
    let lp = logp.detach();
    // Clamped only against overflow: log-probabilities are ≤ 0.
    let (p, p0) = (lp.clamped(-80.0, 20.0)?.exp()?, old.clamped(-80.0, 20.0)?.exp()?);
    let positive = adv.gt(0.0)?;
    let dtype = logp.dtype();
    let valid = match ctx.choice("divergence")? {
        "kl" => {
            let log_one_minus = |q: &candle_core::Tensor| (1.0 - q)? + 1e-8;
            let d = (p0.mul(&old.sub(&lp)?)?
                + (1.0 - &p0)?
                    .mul(&log_one_minus(&p0)?.log()?.sub(&log_one_minus(&p)?.log()?)?)?)?;
            let up = d.le(hi)?.to_dtype(dtype)?.maximum(&p.le(&p0)?.to_dtype(dtype)?)?;
            let down = d.le(lo)?.to_dtype(dtype)?.maximum(&p.ge(&p0)?.to_dtype(dtype)?)?;
            positive.where_cond(&up, &down)?
        }
        _ => {
            let diff = p.sub(&p0)?;
            positive.where_cond(&diff.le(hi)?.to_dtype(dtype)?, &diff.ge(-lo)?.to_dtype(dtype)?)?
        }
    };
    let ratio = lp.sub(old)?.clamped(-20.0, 20.0)?.exp()?.at_most(ctx.num("cap")?)?;
    let weight = ratio.mul(&valid)?.mul(adv)?.detach();
    Ok(Value::Tensor(weight.mul(logp)?.neg()?))
}
