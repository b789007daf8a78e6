//! GELU in its tanh approximation (GPT-2's `gelu_new`) as one fused op on CPU f32 tensors, with
//! a fused backward. candle's `gelu` is a single-threaded map forward and about a dozen tensor
//! operations backward (two `powf`s among them); this is one parallel, vectorised pass each way.
//! It computes the same function as `x·σ(2u)` with its own `exp`, within 1e-6 relative (1e-9
//! absolute in the far negative tail) of the
//! exact value (candle's `1 + tanh` form loses more where tanh ≈ −1); the backward is its exact
//! derivative.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use super::fastmath::{Kernel, dispatch, exp};
use crate::host::{each_chunk, storage_slice};

/// √(2/π) as candle writes it.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
const CUBIC: f32 = 0.044715;
/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `gelu_new(x)`: fused on CPU f32, candle's own op elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu()
    }
}

/// `½x(1 + tanh u) = x·σ(2u)` with u = √(2/π)(x + 0.044715x³): one exponential and one
/// division, both branch-free, so the loops vectorise (libm's `tanhf` is a scalar call).
#[inline(always)]
fn forward(v: f32) -> f32 {
    v / (1.0 + exp(-2.0 * SQRT_TWO_OVER_PI * v * (1.0 + CUBIC * v * v)))
}

/// d/dx x·σ(2u) = s + 2x·s(1 − s)·u′ with s = σ(2u), u′ = √(2/π)(1 + 3·0.044715x²).
#[inline(always)]
fn derivative(v: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-2.0 * SQRT_TWO_OVER_PI * v * (1.0 + CUBIC * v * v)));
    s + 2.0 * v * s * (1.0 - s) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * CUBIC * v * v)
}

/// `out = gelu(x)`, compiled per instruction set.
struct Forward<'a>(&'a mut [f32], &'a [f32]);

impl Kernel for Forward<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        self.0.iter_mut().zip(self.1).for_each(|(o, x)| *o = forward(*x));
    }
}

/// `out = g · gelu′(x)`, compiled per instruction set.
struct Backward<'a>(&'a mut [f32], &'a [f32], &'a [f32]);

impl Kernel for Backward<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let xg = self.1.iter().zip(self.2);
        self.0.iter_mut().zip(xg).for_each(|(o, (x, g))| *o = g * derivative(*x));
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "rlx-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = storage_slice::<f32>(storage, layout, "gelu")?;
        let mut out = vec![0f32; xs.len()];
        // One token's activations while sampling: threads would cost more than they save.
        each_chunk(&mut out, CHUNK, xs.len() < 2 * CHUNK, |i, o| {
            dispatch(Forward(o, &xs[i * CHUNK..][..o.len()]))
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// (x, g) ↦ g · gelu′(x).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "rlx-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, gs) = (
            storage_slice::<f32>(s1, l1, "gelu backward")?,
            storage_slice::<f32>(s2, l2, "gelu backward")?,
        );
        if xs.len() != gs.len() {
            bail!("gelu backward: {} inputs, {} gradients", xs.len(), gs.len())
        }
        let mut out = vec![0f32; xs.len()];
        each_chunk(&mut out, CHUNK, xs.len() < 2 * CHUNK, |i, o| {
            let at = i * CHUNK..i * CHUNK + o.len();
            dispatch(Backward(o, &xs[at.clone()], &gs[at]))
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn inputs() -> Vec<f32> {
        (0..40_001).map(|i| (i as f32 - 20_000.0) / 2_000.0).collect()
    }

    /// gelu_new in f64: ½x(1 + tanh u) as x·σ(2u), which stays accurate where tanh u rounds
    /// to −1.
    fn exact(v: f64) -> f64 {
        v / (1.0 + (-2.0 * 0.797_884_560_802_865_4 * v * (1.0 + 0.044715 * v * v)).exp())
    }

    #[test]
    fn forward_is_within_a_micro_of_the_exact_function_and_candles() {
        let x = Tensor::new(inputs(), &Device::Cpu).unwrap();
        let ours = gelu(&x).unwrap().to_vec1::<f32>().unwrap();
        let theirs = x.gelu().unwrap().to_vec1::<f32>().unwrap();
        for ((v, o), t) in inputs().iter().zip(&ours).zip(&theirs) {
            let e = exact(*v as f64);
            let err = (*o as f64 - e).abs();
            assert!(err <= 1e-6 * e.abs() + 1e-9, "x = {v}: {o} vs exact {e}");
            assert!((o - t).abs() <= 1e-6 * t.abs() + 1e-7, "x = {v}: {o} vs candle {t}");
        }
        // Non-contiguous input (a transpose) gives the same values as contiguous.
        let m = Tensor::new(inputs()[..40_000].to_vec(), &Device::Cpu)
            .unwrap()
            .reshape((200, 200))
            .unwrap();
        let t = m.t().unwrap();
        assert_eq!(
            gelu(&t).unwrap().to_vec2::<f32>().unwrap(),
            gelu(&t.contiguous().unwrap()).unwrap().to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn extremes_and_nan() {
        assert!(forward(f32::NAN).is_nan() && derivative(f32::NAN).is_nan());
        assert_eq!(forward(200.0), 200.0);
        assert!(forward(-200.0).abs() < 1e-30);
        assert_eq!(forward(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn backward_matches_finite_differences_and_candles_backward() {
        let xs = inputs();
        let x = Var::new(xs.clone(), &Device::Cpu).unwrap();
        let w: Vec<f32> = (0..xs.len()).map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0).collect();
        let w = Tensor::new(w, &Device::Cpu).unwrap();
        let ours = gelu(x.as_tensor()).unwrap().mul(&w).unwrap().sum_all().unwrap();
        let g = ours.backward().unwrap().get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let wv = w.to_vec1::<f32>().unwrap();
        // Central differences in f64 of the exact function.
        let f = exact;
        let h = 1e-4;
        for (i, (&v, &gi)) in xs.iter().zip(&g).enumerate().step_by(97) {
            let fd = wv[i] as f64 * (f(v as f64 + h) - f(v as f64 - h)) / (2.0 * h);
            assert!((gi as f64 - fd).abs() <= 1e-5 + 1e-5 * fd.abs(), "x = {v}: {gi} vs {fd}");
        }
        // candle's backward uses rounded constants: close, not equal.
        let theirs = x.as_tensor().gelu().unwrap().mul(&w).unwrap().sum_all().unwrap();
        let gc = theirs.backward().unwrap().get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let worst = g.iter().zip(&gc).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "max |ours − candle's| = {worst}");
    }
}
