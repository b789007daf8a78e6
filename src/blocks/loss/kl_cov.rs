//! `kl_cov`: KL-Cov — a KL penalty on the few tokens whose log-probability covaries most with
//! the advantage (the ones that collapse entropy).

use candle_core::{Result, Tensor};

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "kl_cov",
    summary: "KL-Cov: unclipped policy gradient, plus |logp − old| on the top fraction of tokens by advantage–log-probability covariance",
    source: "The Entropy Mechanism of RL for Reasoning LMs (Cui et al. 2025, arXiv 2505.22617); verl `kl_cov` (`kl_cov_ratio` 2e-4, `ppo_kl_coef`: 1 in the paper's scripts, 0.1 in verl's yaml)",
    family: Family::Loss,
    formula: "cov = (A − mean A)(logp − mean logp) over response tokens (detached);  top k = max(1, ⌊ratio·N⌋) tokens by cov: ℓ = −A·ρ + coef·|logp − old|;  others ℓ = −A·ρ,  ρ = e^{clamp(logp − old, ±20)}",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        num("ratio", 2e-4, Range::OpenUnit, "fraction of response tokens penalised"),
        num("coef", 1.0, Range::NonNegative, "weight of the |log-ratio| penalty"),
    ],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    peers: &[
        peer(
            "verl 0.9.1",
            "`coef = 0.1` (actor.yaml `policy_loss.ppo_kl_coef`; 1.0 only where the config leaves it null), `ratio = 2e-4` (`kl_cov_ratio`); verl does not clamp log ρ before e^x, rlx clamps it at ±20 (equal below e^20)",
        ),
        peer("paper scripts", "`coef = 1`, `ratio = 2e-3` at 7B (rlx's `coef` default)"),
    ],
    ..BASE
};

/// Each token's advantage–log-probability covariance (0 on padding), and the response tokens'
/// positions in token order.
pub(crate) fn covariances(
    logp: &Tensor,
    adv: &Tensor,
    mask: &Tensor,
) -> Result<(Vec<f64>, Vec<usize>)> {
    let (lp, a, m) = (host::flat(&logp.detach())?, host::flat(adv)?, host::flat(mask)?);
    let real: Vec<usize> = (0..m.len()).filter(|&i| m[i] != 0.0).collect();
    let n = real.len().max(1) as f64;
    let mean_a = real.iter().map(|&i| a[i]).sum::<f64>() / n;
    let mean_lp = real.iter().map(|&i| lp[i]).sum::<f64>() / n;
    let mut cov = vec![0.0; m.len()];
    for &i in &real {
        cov[i] = (a[i] - mean_a) * (lp[i] - mean_lp);
    }
    Ok((cov, real))
}

/// Highest covariance first; ties in token order, so every choice is deterministic.
pub(crate) fn by_covariance(cov: &[f64]) -> impl Fn(&usize, &usize) -> std::cmp::Ordering + '_ {
    |&x, &y| cov[y].total_cmp(&cov[x]).then(x.cmp(&y))
}

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let mask = ctx.input_mask(0)?;
    let delta = logp.sub(old)?;
    let pg = delta.clamped(-20.0, 20.0)?.exp()?.mul(adv)?.neg()?;
    let (cov, mut real) = covariances(logp, adv, mask)?;
    let k = ((ctx.num("ratio")? * real.len() as f64).floor() as usize).max(1).min(real.len());
    let mut picked = vec![0f32; logp.elem_count()];
    if k > 0 {
        // The k highest, unordered: a selection, not a sort of every token.
        real.select_nth_unstable_by(k - 1, by_covariance(&cov));
        for &i in &real[..k] {
            picked[i] = 1.0;
        }
    }
    let picked = host::from_flat32(picked, logp.dims(), logp)?;
    let penalty = (delta.abs()?.mul(&picked)? * ctx.num("coef")?)?;
    Ok(Value::Tensor((pg + penalty)?))
}
