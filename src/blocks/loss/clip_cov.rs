//! `clip_cov`: Clip-Cov — removes the gradient of a few random tokens whose covariance of
//! advantage and log-probability lies in a band.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;
use crate::rng::Rng;

pub static SPEC: BlockSpec = BlockSpec {
    name: "clip_cov",
    summary: "Clip-Cov: PPO's loss with the gradient removed from a random few unclipped tokens whose advantage–log-probability covariance lies in [lb, ub]",
    source: "The Entropy Mechanism of RL for Reasoning LMs (Cui et al. 2025, arXiv 2505.22617); verl `clip_cov` (`clip_cov_ratio` 2e-4, `clip_cov_lb` 1, `clip_cov_ub` 5)",
    family: Family::Loss,
    formula: "PPO ℓ = max(−Aρ, −A·clamp(ρ, 1 − eps, 1 + eps_high));  candidates: unclipped response tokens with lb < (A − mean A)(logp − mean logp) < ub;  k = max(1, ⌊ratio·N⌋) of them, drawn without replacement (seeded by `seed` and the batch), get ℓ·0",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        num("eps", 0.2, Range::OpenUnit, "PPO's lower clip"),
        ParamSpec {
            name: "eps_high",
            ty: ParamTy::Float,
            default: DefaultRule::SameAs("eps"),
            range: Range::Positive,
            doc: "PPO's upper clip",
        },
        num(
            "ratio",
            2e-4,
            Range::OpenUnit,
            "fraction of response tokens whose gradient is removed",
        ),
        num("lb", 1.0, Range::Any, "lower bound of the covariance band"),
        num("ub", 5.0, Range::Any, "upper bound of the covariance band"),
        num(
            "seed",
            0.0,
            Range::NonNegative,
            "seed of the draw (verl draws with `randperm`; rlx makes it reproducible)",
        ),
    ],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let mask = ctx.input_mask(0)?;
    let ratio = logp.sub(old)?.clamped(-20.0, 20.0)?.exp()?;
    let (lo, hi) = (1.0 - ctx.num("eps")?, 1.0 + ctx.num("eps_high")?);
    let unclipped = adv.mul(&ratio)?.neg()?;
    let clipped = adv.mul(&ratio.clamped(lo, hi)?)?.neg()?;
    let loss = unclipped.max_with(&clipped)?;
    let is_clipped = host::flat(&clipped.gt(&unclipped)?.to_dtype(logp.dtype())?)?;
    let (cov, real) = super::kl_cov::covariances(logp, adv, mask)?;
    let (lb, ub) = (ctx.num("lb")?, ctx.num("ub")?);
    // Filtered, then sorted: the candidates in covariance order, without sorting every token.
    let mut candidates: Vec<usize> = real
        .iter()
        .copied()
        .filter(|&i| is_clipped[i] == 0.0 && cov[i] > lb && cov[i] < ub)
        .collect();
    candidates.sort_unstable_by(super::kl_cov::by_covariance(&cov));
    let n = real.len();
    let k = ((ctx.num("ratio")? * n as f64).floor() as usize).max(1).min(candidates.len());
    // Reproducible randomness: the seed and the advantages of the response tokens, to four
    // decimals (so float rounding in how they were computed does not change the draw).
    let m = host::flat(mask)?;
    let bits = host::flat(adv)?
        .iter()
        .zip(&m)
        .filter(|(_, m)| **m != 0.0)
        .fold(ctx.num("seed")? as u64, |h, (a, _)| {
            (h ^ (a * 1e4).round() as i64 as u64).wrapping_mul(0x0100_0000_01b3)
        });
    let mut rng = Rng::new(bits);
    let mut pool = candidates;
    let mut keep = vec![1f32; logp.elem_count()];
    for _ in 0..k {
        let j = rng.below(pool.len());
        keep[pool.swap_remove(j)] = 0.0;
    }
    let keep = host::from_flat32(keep, logp.dims(), logp)?;
    Ok(Value::Tensor(loss.mul(&keep)?))
}
