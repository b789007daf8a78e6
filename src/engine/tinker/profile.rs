//! The reduction profile of a server, found and checked before any training step. Servers
//! reduce `cross_entropy` differently (`surrogate`): summed over tokens and datums, or
//! normalised per datum by Σ weights. A throwaway adapter takes backwards at learning rate 0 and
//! the gradient norms the server reports decide: doubling the weights doubles the norm on a
//! summing server and leaves it unchanged on a normalising one. Then the surrogate rlx would
//! send for that profile, for a datum whose ∂L/∂ℓ sums below zero (where the plain form breaks
//! on normalising servers), must scale exactly linearly. Anything else refuses the server.

use super::Remote;
use crate::engine::surrogate::{Reduction, datum_backward};
use crate::engine::{Adam, Engine, ModelId, Seq};

/// Relative tolerance of the norm ratios (servers compute in bf16/f32).
const TOLERANCE: f64 = 0.02;

fn grad_norm(metrics: &[(String, f64)]) -> Option<f64> {
    metrics.iter().find(|(k, _)| k.ends_with("grad_norm")).map(|(_, v)| *v)
}

/// The server's reduction, from the self-test on `model`, a throwaway adapter; `expected`,
/// where given, must agree.
pub fn detect(
    remote: &mut Remote,
    model: &ModelId,
    expected: Option<Reduction>,
) -> Result<Reduction, String> {
    let label = remote.label();
    let still =
        Adam { lr: 0.0, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, clip_grad: None };
    let seq = Seq { ctx: vec![1, 2], toks: vec![3, 4, 5, 6] };
    let g = [0.5, -1.0, 0.25, -0.75];
    let norm_of = |remote: &mut Remote,
                   reduction: Reduction,
                   grad: &[f64]|
     -> Result<Option<f64>, String> {
        let logp =
            remote.logp(Some(model), &crate::engine::Sampler::Base, std::slice::from_ref(&seq))?;
        let logp: Vec<f64> = logp[0].iter().map(|&l| l as f64).collect();
        let d = datum_backward(reduction, grad, &logp, 1);
        remote.backward(model, std::slice::from_ref(&seq), &[d])?;
        Ok(grad_norm(&remote.optim_step(model, &still)?))
    };
    (|| {
        // Plain cross-entropy at weights 1 and 2 (`Sum`'s form with ∂L/∂ℓ = −w).
        let once = norm_of(remote, Reduction::Sum, &[-1.0; 4])?;
        let twice = norm_of(remote, Reduction::Sum, &[-2.0; 4])?;
        let (Some(once), Some(twice)) = (once, twice) else {
            return match expected {
                Some(r) => Ok(r),
                None => Err(format!(
                    "{label} reports no gradient norm after `optim_step`, so its reduction cannot be checked: say it with `--reduction sum` (hosted Tinker, SkyRL FSDP/Megatron, verl_tinker) or `--reduction mean` (SkyRL JAX, skyrl-tx)"
                )),
            };
        };
        let ratio = twice / once;
        let found = if (ratio - 2.0).abs() < 2.0 * TOLERANCE {
            Reduction::Sum
        } else if (ratio - 1.0).abs() < TOLERANCE {
            Reduction::PerSequenceMean
        } else {
            return Err(format!(
                "{label}: doubling a backward's weights scaled the gradient norm by {ratio:.4}; a summing server gives 2, a per-sequence-mean one 1 — its reduction is unknown to rlx, so no step is taken"
            ));
        };
        if let Some(e) = expected.filter(|e| *e != found) {
            return Err(format!(
                "{label}: `--reduction {}` was given, but the self-test finds `{}`",
                e.name(),
                found.name()
            ));
        }
        // The surrogate of that profile, for ∂L/∂ℓ summing below zero, at g and 2g.
        let a = norm_of(remote, found, &g)?.unwrap_or(f64::NAN);
        let g2: Vec<f64> = g.iter().map(|x| 2.0 * x).collect();
        let b = norm_of(remote, found, &g2)?.unwrap_or(f64::NAN);
        if !(a.is_finite() && b.is_finite() && a > 0.0 && ((b / a) - 2.0).abs() < 2.0 * TOLERANCE) {
            return Err(format!(
                "{label}: rlx's backward for a `{}` server is not linear there (gradient norms {a:.4e} at g, {b:.4e} at 2g): no step is taken",
                found.name()
            ));
        }
        Ok(found)
    })()
}
