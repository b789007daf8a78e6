//! What a server's sampling can be trusted with, found by the self-test before any training
//! step. Servers differ where the Tinker protocol is silent (read in SkyRL's source, not in its
//! docs): the FSDP and Megatron backends (`skyrl_train_backend.py` `sample`) route a request to
//! the model's adapter as last synced by `save_weights_for_sampler`, whichever snapshot it
//! names, and refuse the base model (`unknown model_id ['']`); the JAX backend
//! (`jax.py` `load_sampler_weights`) loads the named snapshot into the model's own adapter slot
//! — the one it trains — unless it loaded that snapshot last. Either way a snapshot of a model
//! trained since is not a frozen copy: reading `ref` from the policy's stage-start snapshot reads
//! the current policy (a KL of zero, silently) or rewinds the policy. So the self-test saves a
//! snapshot, moves the throwaway adapter by one optimiser step, syncs it, reads the first
//! snapshot again, and then the adapter's own forward.

use super::Remote;
use crate::engine::surrogate::{Reduction, datum_backward};
use crate::engine::{Adam, Engine, ModelId, Sampler, Sampling, Seq, Snapshots};

/// A step large enough to move any adapter's log-probabilities well past bf16 noise.
const PROBE_LR: f64 = 0.05;
/// How far the step must move the probe (mean |Δ log p| per token) to tell the cases apart.
const MOVED: f64 = 1e-3;

/// Mean |a − b| over two sequences' log-probabilities (NaN if they differ in length).
pub(crate) fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / a.len() as f64
}

/// Probes `model`, a throwaway adapter of the server whose reduction is `reduction` (the
/// adapter is moved). A step too small to tell counts as snapshots that follow their model:
/// rlx then reads no snapshot of a model trained since, which is right on every server.
pub fn detect(
    remote: &mut Remote,
    model: &ModelId,
    reduction: Reduction,
) -> Result<Sampling, String> {
    let seq = Seq { ctx: vec![1, 2], toks: vec![3, 4, 5, 6] };
    let one = std::slice::from_ref(&seq);
    // A refusal of the base model is what is being asked; any other failure shows again below.
    let base = remote.logp(None, &Sampler::Base, one).is_ok();
    let saved = remote.sampler(model, "rlx-selftest-saved")?;
    let before = remote.logp(None, &saved, one)?.remove(0);
    let forward = |remote: &mut Remote| -> Result<Vec<f32>, String> {
        Ok(remote.logp(Some(model), &Sampler::Base, one)?.remove(0))
    };
    let logp: Vec<f64> = forward(remote)?.iter().map(|&l| l as f64).collect();
    // Cross-entropy on the probe: every token's log-probability pushed up.
    remote.backward(model, one, &[datum_backward(reduction, &[-1.0; 4], &logp, 1)])?;
    let step = Adam {
        lr: PROBE_LR,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
        clip_grad: None,
    };
    remote.optim_step(model, &step)?;
    let trained = forward(remote)?;
    let synced = remote.sampler(model, "rlx-selftest-moved")?;
    let after = remote.logp(None, &synced, one)?.remove(0);
    let again = remote.logp(None, &saved, one)?.remove(0);
    let model_now = forward(remote)?;
    let moved = mean_abs_diff(&before, &after);
    // NaN (a server that returned nothing comparable) counts as too small a move.
    let told = moved > MOVED;
    let snapshots = if !told || mean_abs_diff(&again, &after) <= mean_abs_diff(&again, &before) {
        Snapshots::FollowModel
    } else if mean_abs_diff(&model_now, &trained) > mean_abs_diff(&model_now, &before) {
        Snapshots::LoadIntoModel
    } else {
        Snapshots::Kept
    };
    Ok(Sampling { snapshots, base })
}
