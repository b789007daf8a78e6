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

/// One datum of a critic's backward (SkyRL's `ppo_critic`), over its text tokens: the server's
/// loss is ½·Σ_t w_t·max((V_t^clip − R_t)², (V_t − R_t)²) / Σ_t w_t per datum, averaged over the
/// datums of the optimiser step, with V^clip = V^old + clip(V − V^old, ±value_clip).
#[derive(Debug, Clone, PartialEq)]
pub struct CriticBackward {
    pub weights: Vec<f64>,
    /// V^old: here the values the critic's forward just returned, so the clip never binds.
    pub values: Vec<f64>,
    pub returns: Vec<f64>,
}

/// The critic backward whose gradient at the current values is g = ∂L/∂V, for any value
/// objective L of the stage graph (not only a clipped squared error): with weights 1 and
/// V^old = V the datum's gradient is (V_t − R_t)/(N·n_i), so returns R_t = V_t − N·n_i·g_t.
/// `grad`, `values`, `mask` are `[B, T]`; `datums` = N, the datums of the optimiser step.
pub fn critic_inputs(
    grad: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    datums: usize,
) -> Result<Vec<CriticBackward>> {
    let rows = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec2::<f64>();
    let (g, v, m) = (rows(grad)?, rows(values)?, rows(mask)?);
    let mut out = Vec::with_capacity(g.len());
    for ((g, v), m) in g.iter().zip(&v).zip(&m) {
        let live: Vec<usize> = (0..m.len()).filter(|&t| m[t] > 0.0).collect();
        let scale = (datums * live.len()) as f64;
        out.push(CriticBackward {
            weights: vec![1.0; live.len()],
            values: live.iter().map(|&t| v[t]).collect(),
            returns: live.iter().map(|&t| v[t] - scale * g[t]).collect(),
        });
    }
    Ok(out)
}

/// What a server's `ppo_critic` computes for one datum from the critic's current values `v`
/// (its text tokens), before the mean over datums; `value_clip` as the server is configured.
pub fn critic_datum_loss(
    d: &CriticBackward,
    v: &Tensor,
    value_clip: Option<f64>,
) -> Result<Tensor> {
    let n = d.weights.len();
    let dev = v.device();
    let f = |x: &[f64]| Tensor::from_vec(x.to_vec(), n, dev)?.to_dtype(v.dtype());
    let (w, old, ret) = (f(&d.weights)?, f(&d.values)?, f(&d.returns)?);
    let plain = (v - &ret)?.sqr()?;
    let per_token = match value_clip {
        Some(c) => {
            let clipped = (&old + (v - &old)?.clamp(-c, c)?)?;
            plain.maximum(&(clipped - &ret)?.sqr()?)?
        }
        None => plain,
    };
    (w.mul(&per_token)?.sum_all()? * 0.5)? / d.weights.iter().sum::<f64>().max(1e-9)
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

    #[test]
    fn critic_inputs_give_the_value_gradient_back() {
        let dev = Device::Cpu;
        let g = Tensor::new(&[[0.5f64, -1.0, 9.0], [0.25, 0.0, 0.0]], &dev).unwrap();
        let v = Tensor::new(&[[0.3f64, -0.2, 7.0], [1.5, 0.0, 0.0]], &dev).unwrap();
        let m = Tensor::new(&[[1f64, 1.0, 0.0], [1.0, 0.0, 0.0]], &dev).unwrap();
        let data = critic_inputs(&g, &v, &m, 2).unwrap();
        // R = V − N·n·g: N = 2 datums, n = 2 and 1 tokens.
        assert_eq!(data[0].returns, [0.3 - 4.0 * 0.5, -0.2 + 4.0]);
        assert_eq!(data[1].returns, [1.5 - 2.0 * 0.25]);
        assert_eq!((data[0].weights.len(), data[1].values.as_slice()), (2, [1.5].as_slice()));
        // The server's loss, averaged over the 2 datums, has gradient g at V, clip or none.
        for clip in [None, Some(0.2)] {
            let vars: Vec<candle_core::Var> = data
                .iter()
                .map(|d| candle_core::Var::new(d.values.as_slice(), &dev).unwrap())
                .collect();
            let mut total = Tensor::new(0f64, &dev).unwrap();
            for (d, var) in data.iter().zip(&vars) {
                total = (total + critic_datum_loss(d, var.as_tensor(), clip).unwrap()).unwrap();
            }
            let grads = (total / 2.0).unwrap().backward().unwrap();
            let got: Vec<Vec<f64>> =
                vars.iter().map(|v| grads.get(v).unwrap().to_vec1().unwrap()).collect();
            let want = [vec![0.5, -1.0], vec![0.25]];
            for (got, want) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((got - want).abs() < 1e-12, "clip {clip:?}: {got} vs {want}");
            }
        }
    }
}
