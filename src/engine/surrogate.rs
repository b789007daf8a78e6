//! The backward a training server runs for any rlx loss.
//!
//! Every loss term of a recipe reaches a trained model only through log-probabilities ℓ of token
//! sequences, and the executor returns g = ∂L/∂ℓ for each such input. A server backward whose
//! loss S(ℓ) has ∂S/∂ℓ = g at the current ℓ moves the weights exactly as L would: the
//! linearisation of L in ℓ. Servers reduce their built-in losses differently, so the inputs
//! depend on the server's **reduction**:
//!
//! - `Sum` (hosted Tinker, SkyRL's FSDP/Megatron backends, verl_tinker): cross-entropy is
//!   S = Σ_datums Σ_t w_t·(−ℓ_t); send `cross_entropy` with w = −g.
//! - `PerSequenceMean` (SkyRL's JAX backend, skyrl-tx): a datum's loss is
//!   Σ_t w_t·x_t / max(Σ_t w_t, 1e-9), averaged over the N datums of the optimiser step. With
//!   w = −g that divides by Σ_t w_t, which is ≤ 0 for many datums (a DPO pair's rejected side): a
//!   wrong gradient, or one 1e9 times too large. Send `importance_sampling` instead: weights =
//!   the mask (Σ = n_i tokens), `logprobs` = the ℓ the forward returned (the ratio is 1 there),
//!   advantages A_t = −N·n_i·g_t; its loss Σ_t m_t·(−A_t·e^{ℓ_t − ℓ_t^old}) / n_i, averaged over N,
//!   has gradient g_t at ℓ = ℓ^old.
//!
//! (From the `tinker` SDK 0.38's `forward_backward_custom` — weights = −∂C/∂logprobs — and the
//! SkyRL 0.4.0 JAX backend's `loss_for_lora`, as read and measured in
//! `../shared/reference/tinker-2026.md` §3.)

use candle_core::{DType, Result, Tensor};

/// How a server reduces a built-in loss over tokens and datums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Summed over every token of every datum until the optimiser step.
    Sum,
    /// Per datum Σ_t w·x / Σ_t w, then the mean over the optimiser step's datums.
    PerSequenceMean,
}

impl Reduction {
    /// As `--reduction` names it.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::PerSequenceMean => "mean",
        }
    }
}

/// The server loss a datum's backward uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossFn {
    /// `cross_entropy`: Σ_t weights_t·(−ℓ_t), reduced as the server does.
    CrossEntropy,
    /// `importance_sampling`: Σ_t weights_t·(−advantages_t·e^{ℓ_t − logprobs_t}).
    ImportanceSampling,
}

/// One datum's backward inputs, over its response tokens (the masked positions, in order).
#[derive(Debug, Clone, PartialEq)]
pub struct DatumBackward {
    pub loss_fn: LossFn,
    pub weights: Vec<f64>,
    /// `importance_sampling` only: the log-probabilities the forward returned.
    pub logprobs: Vec<f64>,
    /// `importance_sampling` only.
    pub advantages: Vec<f64>,
}

/// The backward inputs for one log-probability input of the stage: `grad` = ∂L/∂ℓ, `logp` = ℓ
/// as the server's forward returned it, `mask` = the text's mask, all `[B, T]`; `datums` = how
/// many datums the optimiser step accumulates in all (N of the per-sequence mean).
pub fn backward_inputs(
    grad: &Tensor,
    logp: &Tensor,
    mask: &Tensor,
    reduction: Reduction,
    datums: usize,
) -> Result<Vec<DatumBackward>> {
    let rows = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec2::<f64>();
    let (g, l, m) = (rows(grad)?, rows(logp)?, rows(mask)?);
    let mut out = Vec::with_capacity(g.len());
    for ((g, l), m) in g.iter().zip(&l).zip(&m) {
        let live: Vec<usize> = (0..m.len()).filter(|&t| m[t] > 0.0).collect();
        let g: Vec<f64> = live.iter().map(|&t| g[t]).collect();
        let l: Vec<f64> = live.iter().map(|&t| l[t]).collect();
        out.push(datum_backward(reduction, &g, &l, datums));
    }
    Ok(out)
}

/// One datum's backward inputs from ∂L/∂ℓ `grad` and the forward's ℓ `logp` over its text
/// tokens, in an optimiser step of `datums` datums.
pub fn datum_backward(
    reduction: Reduction,
    grad: &[f64],
    logp: &[f64],
    datums: usize,
) -> DatumBackward {
    let n = grad.len() as f64;
    match reduction {
        Reduction::Sum => DatumBackward {
            loss_fn: LossFn::CrossEntropy,
            weights: grad.iter().map(|g| -g).collect(),
            logprobs: vec![],
            advantages: vec![],
        },
        Reduction::PerSequenceMean => DatumBackward {
            loss_fn: LossFn::ImportanceSampling,
            weights: vec![1.0; grad.len()],
            logprobs: logp.to_vec(),
            advantages: grad.iter().map(|g| -(datums as f64) * n * g).collect(),
        },
    }
}

/// What a server computes from a datum's backward inputs and its current log-probabilities
/// `logp` (the datum's response tokens), before the reduction over datums: the model of the
/// servers in §3.2 of the reference, used to check the inputs and, in tests, as a fake server.
pub fn server_datum_loss(d: &DatumBackward, logp: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let n = d.weights.len();
    let dev = logp.device();
    let w = Tensor::from_vec(d.weights.clone(), n, dev)?.to_dtype(logp.dtype())?;
    let per_token = match d.loss_fn {
        LossFn::CrossEntropy => logp.neg()?,
        LossFn::ImportanceSampling => {
            let old = Tensor::from_vec(d.logprobs.clone(), n, dev)?.to_dtype(logp.dtype())?;
            let adv = Tensor::from_vec(d.advantages.clone(), n, dev)?.to_dtype(logp.dtype())?;
            adv.mul(&(logp - old)?.exp()?)?.neg()?
        }
    };
    let summed = w.mul(&per_token)?.sum_all()?;
    match reduction {
        Reduction::Sum => Ok(summed),
        Reduction::PerSequenceMean => summed / d.weights.iter().sum::<f64>().max(1e-9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn inputs_by_hand() {
        let dev = Device::Cpu;
        let g = Tensor::new(&[[0.5f64, -1.0, 9.0]], &dev).unwrap();
        let l = Tensor::new(&[[-0.1f64, -2.0, 0.0]], &dev).unwrap();
        let m = Tensor::new(&[[1f64, 1.0, 0.0]], &dev).unwrap();
        let sum = backward_inputs(&g, &l, &m, Reduction::Sum, 2).unwrap();
        assert_eq!(sum[0].loss_fn, LossFn::CrossEntropy);
        assert_eq!(sum[0].weights, [-0.5, 1.0]);
        let mean = backward_inputs(&g, &l, &m, Reduction::PerSequenceMean, 2).unwrap();
        assert_eq!(mean[0].loss_fn, LossFn::ImportanceSampling);
        assert_eq!(mean[0].weights, [1.0, 1.0]);
        assert_eq!(mean[0].logprobs, [-0.1, -2.0]);
        // A = −N·n·g with N = 2 datums in the step and n = 2 tokens.
        assert_eq!(mean[0].advantages, [-2.0, 4.0]);
    }
}
