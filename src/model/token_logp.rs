//! The log-probability of each target token, `logit[y] − logsumexp(logits)`, as one fused op on
//! CPU f32 logits `[B, T, V]`, with a fused backward; candle's composed ops elsewhere.
//!
//! Composed, this is the costliest non-matmul work of a training step at a real vocabulary: a
//! maximum, a shifted copy, its exponential and their sum forward — four passes over `B·T·V`
//! values on one thread — and about ten backward (zero-filled gradient buffers, a broadcast, a
//! product, a scatter, three additions). Fused it is one parallel pass each way: the forward
//! keeps the exponentials it computes, the backward writes each row's gradient once.
//!
//! It is the composed graph bit for bit, forward and backward, so that no run's numbers move:
//! the same `f32::exp` and `f32::ln`, candle's own row sum (its SIMD lane order is kept by
//! summing the kept exponentials with candle's reduction), and the backward's products and
//! sums in the order candle's autograd forms them, down to the `0 + x` with which it
//! accumulates every gradient into a zero-filled buffer (which turns a −0 into +0). The tests
//! below hold the two to identical bits.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, D, DType, Device, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::host::{read_host, storage_slice};

/// Rows per parallel task.
const ROWS: usize = 16;

/// `logit[y] − logsumexp(logits)` `[B, T, 1]` for logits `[B, T, V]` and targets `[B, T]` (u32):
/// fused on CPU f32, the composed ops elsewhere.
pub fn token_logp(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 && targets.dtype() == DType::U32 {
        logits.contiguous()?.apply_op2(&targets.contiguous()?, TokenLogp::default())
    } else {
        composed(logits, targets)
    }
}

/// The same from candle's differentiable ops (elsewhere than CPU f32, and the tests' reference).
pub fn composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse =
        logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.broadcast_add(&max)?;
    let picked = logits.gather(&targets.unsqueeze(2)?.contiguous()?, 2)?;
    picked - lse
}

/// What the forward keeps for the backward: `exp(logit − max)` `[B·T, V]` and each row's sum.
struct Kept {
    exps: Tensor,
    sums: Vec<f32>,
}

#[derive(Default)]
struct TokenLogp {
    kept: Mutex<Option<Kept>>,
}

/// `f(row_index, chunk…)` over tasks of `ROWS` rows, in parallel when there is more than one.
fn row_tasks<T: Send>(out: &mut [T], per_row: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let n = ROWS * per_row;
    if out.len() <= n {
        f(0, out);
    } else {
        out.par_chunks_mut(n).enumerate().for_each(|(i, c)| f(i * ROWS, c));
    }
}

impl CustomOp2 for TokenLogp {
    fn name(&self) -> &'static str {
        "rlx-token-logp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = storage_slice::<f32>(s1, l1, "token log-probability")?;
        let y = storage_slice::<u32>(s2, l2, "token log-probability")?;
        let dims = l1.dims();
        let v = *dims.last().unwrap_or(&0);
        if v == 0 || x.len() != y.len() * v {
            bail!("token log-probability: logits {:?} do not match targets {:?}", dims, l2.dims());
        }
        if let Some(&bad) = y.iter().find(|&&t| t as usize >= v) {
            bail!("token log-probability: target {bad} is outside the vocabulary of {v}");
        }
        let rows = y.len();
        // Each row's maximum (as candle's `max`: `f32::max` from the first value on) and the
        // exponentials of the shifted row.
        let mut maxes = vec![0f32; rows];
        for_row_pairs(&mut maxes, x, v, |m, row| {
            *m = row[1..].iter().fold(row[0], |a, &b| a.max(b));
        });
        let mut exps = vec![0f32; x.len()];
        row_tasks(&mut exps, v, |first, chunk| {
            for (i, e) in chunk.chunks_mut(v).enumerate() {
                let (row, m) = (&x[(first + i) * v..][..v], maxes[first + i]);
                e.iter_mut().zip(row).for_each(|(e, x)| *e = (x - m).exp());
            }
        });
        // candle's own row sum, so its lane order (and so every bit) is kept.
        let exps = Tensor::from_vec(exps, (rows, v), &Device::Cpu)?;
        let sums = exps.sum(1)?.to_vec1::<f32>()?;
        let out: Vec<f32> =
            (0..rows).map(|r| x[r * v + y[r] as usize] - (sums[r].ln() + maxes[r])).collect();
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(Kept { exps, sums });
        let mut shape = dims.to_vec();
        *shape.last_mut().unwrap() = 1;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (exps, sums) = {
            let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let Some(k) = kept.as_ref() else {
                bail!("token log-probability: backward before forward")
            };
            (k.exps.clone(), k.sums.clone())
        };
        let v = logits.dim(D::Minus1)?;
        let y = targets.flatten_all()?.to_vec1::<u32>()?;
        let grad = grad.contiguous()?;
        // candle's autograd adds each gradient into a zero-filled buffer: `0 + x`.
        let z = |x: f32| 0.0f32 + x;
        let dx = read_host(&exps, |e| {
            read_host(&grad, |g| {
                let mut dx = vec![0f32; e.len()];
                row_tasks(&mut dx, v, |first, chunk| {
                    for (i, d) in chunk.chunks_mut(v).enumerate() {
                        let r = first + i;
                        let b = g[r];
                        // d lse = 0 − b; d s = (d lse)/s; d exp = d s; d logit = d exp · exp.
                        let q = z(z(0.0 - b) / sums[r]);
                        let row = &e[r * v..][..v];
                        d.iter_mut().zip(row).for_each(|(d, e)| *d = z(q * e));
                        // The gathered logit's own gradient, b.
                        let t = y[r] as usize;
                        d[t] += z(b);
                    }
                });
                dx
            })
        })??;
        Ok((Some(Tensor::from_vec(dx, logits.shape(), logits.device())?), None))
    }
}

/// `f(out_row_value, row)` for each row of width `v` of `x`, in parallel tasks of `ROWS` rows.
fn for_row_pairs(out: &mut [f32], x: &[f32], v: usize, f: impl Fn(&mut f32, &[f32]) + Sync) {
    row_tasks(out, 1, |first, chunk| {
        for (i, o) in chunk.iter_mut().enumerate() {
            f(o, &x[(first + i) * v..][..v]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Values and logit gradients of Σ logp·w (w with zeros, like a mask) under `f`, as bits.
    fn run(
        f: fn(&Tensor, &Tensor) -> Result<Tensor>,
        (b, t, v): (usize, usize, usize),
        scale: f32,
    ) -> (Vec<u32>, Vec<u32>) {
        let dev = Device::Cpu;
        let x = Var::from_vec(data(b * t * v, 1, scale), (b, t, v), &dev).unwrap();
        let y: Vec<u32> = data(b * t, 2, 1.0)
            .iter()
            .map(|r| ((r.abs() * v as f32) as u32).min(v as u32 - 1))
            .collect();
        let y = Tensor::from_vec(y, (b, t), &dev).unwrap();
        let mut w = data(b * t, 3, 1.0);
        w.iter_mut().step_by(5).for_each(|w| *w = 0.0);
        let w = Tensor::from_vec(w, (b, t), &dev).unwrap();
        // The logits as the model makes them: a tracked product, here `x · 1.5`.
        let logits = (x.as_tensor() * 1.5).unwrap();
        let out = f(&logits, &y).unwrap().squeeze(2).unwrap().mul(&w).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        (bits(&out), bits(grads.get(x.as_tensor()).unwrap()))
    }

    #[test]
    fn fused_matches_the_composed_graph_bit_for_bit() {
        // Vocabularies below, at and past candle's 32-lane sum blocks, with tails; one row and
        // many (several parallel tasks); logits small and large (rows dominated by one token).
        for shape in [(1, 1, 3), (2, 3, 32), (3, 7, 77), (4, 16, 515), (2, 40, 1000)] {
            for scale in [0.5, 30.0] {
                let (a, ga) = run(token_logp, shape, scale);
                let (b, gb) = run(composed, shape, scale);
                assert_eq!(a, b, "values, {shape:?} × {scale}");
                assert_eq!(ga, gb, "gradients, {shape:?} × {scale}");
            }
        }
    }

    #[test]
    fn gradient_is_onehot_minus_softmax() {
        // d/dx (x_y − logsumexp x) = 1[v = y] − softmax(x)_v, by hand for one row.
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2.0, 0.5], (1, 1, 3), &dev).unwrap();
        let y = Tensor::from_vec(vec![1u32], (1, 1), &dev).unwrap();
        let out = token_logp(x.as_tensor(), &y).unwrap();
        let z: f64 = [1f64, 2.0, 0.5].iter().map(|v| v.exp()).sum();
        let lp = out.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((lp - (2.0 - z.ln())).abs() < 1e-6);
        let g = out.sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (v, (&gv, xv)) in g.iter().zip([1f64, 2.0, 0.5]).enumerate() {
            let want = if v == 1 { 1.0 } else { 0.0 } - xv.exp() / z;
            assert!((gv as f64 - want).abs() < 1e-6, "{v}: {gv} vs {want}");
        }
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4), DType::F32, &dev).unwrap();
        let y = Tensor::from_vec(vec![0u32, 4], (1, 2), &dev).unwrap();
        let e = token_logp(&x, &y).unwrap_err().to_string();
        assert!(e.contains("target 4 is outside the vocabulary of 4"), "{e}");
    }

    #[test]
    fn non_finite_logits_give_non_finite_values() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(vec![0f32, f32::NAN, 1.0, 2.0], (1, 1, 4), &dev).unwrap();
        let y = Tensor::from_vec(vec![2u32], (1, 1), &dev).unwrap();
        let v = token_logp(&x, &y).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v[0].is_nan());
    }
}
