//! The Llama-family MLP's gate, `silu(gate) · up` (SwiGLU), as one fused op on CPU f32 tensors
//! with a fused backward; candle's `silu` and product elsewhere.
//!
//! Composed, candle's `silu` is a scalar `exp` per element forward and a handful of full-size
//! tensors backward, then the product keeps both factors and builds two more; here each
//! direction is one vectorised pass (`fastmath::exp`, compiled per instruction set).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::fastmath::{Kernel, dispatch, exp};
use crate::host::{each_chunk, read_host, storage_slice};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `silu(gate) · up` for tensors of one shape; differentiable in both.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fusable = gate.device().is_cpu()
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.shape() == up.shape();
    if !fusable {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

/// σ(x) = 1 / (1 + e⁻ˣ), branch-free.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "rlx-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = storage_slice::<f32>(s1, l1, "silu gate")?;
        let u = storage_slice::<f32>(s2, l2, "silu gate")?;
        if g.len() != u.len() {
            bail!("silu gate: {} gates, {} up projections", g.len(), u.len())
        }
        let mut out = vec![0f32; g.len()];
        each_chunk(&mut out, CHUNK, g.len() < 2 * CHUNK, |i, out| {
            let at = i * CHUNK..i * CHUNK + out.len();
            dispatch(Forward { out, g: &g[at.clone()], u: &u[at] })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        read_host(gate, |g| {
            read_host(up, |u| {
                read_host(grad, |d| {
                    if n < 2 * CHUNK {
                        dispatch(Backward { dg: &mut dg, du: &mut du, g, u, d });
                    } else {
                        let outs = dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK));
                        let ins =
                            g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK).zip(d.par_chunks(CHUNK)));
                        outs.zip(ins).for_each(|((dg, du), (g, (u, d)))| {
                            dispatch(Backward { dg, du, g, u, d })
                        });
                    }
                })
            })
        })???;
        let dev = gate.device();
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), dev)?),
            Some(Tensor::from_vec(du, up.shape(), dev)?),
        ))
    }
}

/// `out = g·σ(g)·u`.
struct Forward<'a> {
    out: &'a mut [f32],
    g: &'a [f32],
    u: &'a [f32],
}

impl Kernel for Forward<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for (o, (g, u)) in self.out.iter_mut().zip(self.g.iter().zip(self.u)) {
            *o = g * sigmoid(*g) * u;
        }
    }
}

/// `dg = d·u·σ(g)(1 + g(1 − σ(g)))`, `du = d·g·σ(g)`.
struct Backward<'a> {
    dg: &'a mut [f32],
    du: &'a mut [f32],
    g: &'a [f32],
    u: &'a [f32],
    d: &'a [f32],
}

impl Kernel for Backward<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let outs = self.dg.iter_mut().zip(self.du.iter_mut());
        let ins = self.g.iter().zip(self.u.iter().zip(self.d));
        for ((dg, du), (&g, (&u, &d))) in outs.zip(ins) {
            let s = sigmoid(g);
            *dg = d * u * s * (1.0 + g * (1.0 - s));
            *du = d * g * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u64, scale: f64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| (scale * rng.normal()) as f32).collect()
    }

    /// Value and both gradients against the exact function in f64 and candle's `silu() * up`
    /// (one task and many), and the gate's gradient against central finite differences.
    #[test]
    fn equals_the_exact_function_the_composed_ops_and_finite_differences() {
        let dev = Device::Cpu;
        for n in [37, 100_003] {
            let g = Var::new(values(n, 1, 4.0), &dev).unwrap();
            let u = Var::new(values(n, 2, 1.0), &dev).unwrap();
            let w = Tensor::new(values(n, 3, 1.0), &dev).unwrap();
            let run = |fused: bool| {
                let y = if fused {
                    silu_mul(g.as_tensor(), u.as_tensor()).unwrap()
                } else {
                    (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap()
                };
                let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.to_vec1::<f32>().unwrap();
                [flat(&y), flat(grads.get(&g).unwrap()), flat(grads.get(&u).unwrap())]
            };
            let (ours, theirs) = (run(true), run(false));
            let flat = |t: &Tensor| t.to_vec1::<f32>().unwrap();
            let (gv, uv, wv) = (flat(g.as_tensor()), flat(u.as_tensor()), flat(&w));
            for i in 0..n {
                let (x, up, d) = (gv[i] as f64, uv[i] as f64, wv[i] as f64);
                let s = 1.0 / (1.0 + (-x).exp());
                let exact = [x * s * up, d * up * s * (1.0 + x * (1.0 - s)), d * x * s];
                for (k, e) in exact.iter().enumerate() {
                    let (a, b) = (ours[k][i] as f64, theirs[k][i] as f64);
                    assert!(
                        (a - e).abs() <= 2e-6 * (1.0 + e.abs()),
                        "{n} [{k}] at {i}: {a} vs {e}"
                    );
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{n} [{k}] at {i}: candle {b}"
                    );
                }
            }
            let f = |x: f64, i: usize| x / (1.0 + (-x).exp()) * uv[i] as f64 * wv[i] as f64;
            for i in (0..n).step_by(n / 7 + 1) {
                let h = 1e-4;
                let fd = (f(gv[i] as f64 + h, i) - f(gv[i] as f64 - h, i)) / (2.0 * h);
                let got = ours[1][i] as f64;
                assert!((got - fd).abs() < 1e-4 * (1.0 + fd.abs()), "{i}: {got} vs {fd}");
            }
        }
    }

    #[test]
    fn extremes() {
        let dev = Device::Cpu;
        let g = Tensor::new(&[-200f32, 200.0, 0.0, f32::NAN], &dev).unwrap();
        let u = Tensor::new(&[1f32, 1.0, 1.0, 1.0], &dev).unwrap();
        let y = silu_mul(&g, &u).unwrap().to_vec1::<f32>().unwrap();
        assert!(y[0].abs() < 1e-30 && y[1] == 200.0 && y[2] == 0.0 && y[3].is_nan());
    }
}
