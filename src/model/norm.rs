//! Layer norm, `(x − mean)/√(var + ε)·w + b`, and RMS norm, `x/√(mean(x²) + ε)·w`, over the
//! last dimension, as fused ops on CPU f32 tensors with fused backwards; candle's composed ops
//! elsewhere.
//!
//! Composed from candle ops a training norm is four or five tensors forward (mean, centred,
//! squares, variance, normed) and about fifteen backward; here each row is two passes forward
//! and two backward, the statistics recomputed from `x` instead of kept. The weight (and bias)
//! gradients are summed per thread over its rows, then across threads.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::host::{each_chunk, read_host, storage_slice};

/// Rows per parallel task.
const ROWS: usize = 64;

/// Layer norm of `x [.., C]` with `weight`, `bias` `[C]`; differentiable in all three.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    let fusable = x.device().is_cpu()
        && [x.dtype(), weight.dtype(), bias.dtype()].iter().all(|t| *t == DType::F32)
        && weight.dims() == [c]
        && bias.dims() == [c];
    if !fusable {
        return composed(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// The same from candle's differentiable ops (the reference the fused op is tested against).
pub fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// A row's mean and 1/√(var + ε).
#[inline]
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `f(x_row, out_row)` over the rows of width `c` of `x`, in parallel tasks of `ROWS` rows.
fn map_rows(x: &[f32], c: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let n = ROWS * c;
    each_chunk(&mut out, n, x.len() <= n, |i, o| {
        o.chunks_mut(c).zip(x[i * n..].chunks(c)).for_each(|(o, x)| f(x, o));
    });
    out
}

/// A backward row by row: `f(x_row, g_row, dx_row, sums)` writes the row's `dx` and adds its
/// share of `K` per-column sums (the parameter gradients), summed per task, then across tasks.
fn grad_rows<const K: usize>(
    x: &[f32],
    g: &[f32],
    c: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32], &mut [Vec<f32>; K]) + Sync,
) -> (Vec<f32>, [Vec<f32>; K]) {
    let zeros = || std::array::from_fn(|_| vec![0f32; c]);
    let mut dx = vec![0f32; x.len()];
    let task = |(dx, (x, g)): (&mut [f32], (&[f32], &[f32]))| {
        let mut sums = zeros();
        for ((dx, x), g) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)) {
            f(x, g, dx, &mut sums);
        }
        sums
    };
    let sums = if x.len() <= ROWS * c {
        task((&mut dx, (x, g)))
    } else {
        // Each task's partial sums, collected in task order and added in that order: a rayon
        // `reduce` would combine them in an order set by work stealing, so two runs (or two
        // thread counts) could differ in the last bits of every parameter gradient.
        let parts: Vec<[Vec<f32>; K]> = dx
            .par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c).zip(g.par_chunks(ROWS * c)))
            .map(task)
            .collect();
        parts.into_iter().fold(zeros(), |mut a, b| {
            a.iter_mut().zip(b).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
            a
        })
    };
    (dx, sums)
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "rlx-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = storage_slice::<f32>(s1, l1, "layer norm")?;
        let (w, b) = (
            storage_slice::<f32>(s2, l2, "layer norm")?,
            storage_slice::<f32>(s3, l3, "layer norm")?,
        );
        let out = map_rows(x, w.len(), |x, o| {
            let (mean, rstd) = stats(x, self.eps);
            for (((o, x), w), b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mean) * rstd * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let grad = grad.contiguous()?;
        let (dx, [dw, db]) = read_host(x, |x| {
            read_host(w, |w| {
                read_host(&grad, |g| {
                    grad_rows(x, g, c, |x, g, dx, [dw, db]| {
                        let (mean, rstd) = stats(x, self.eps);
                        // dx = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂)).
                        let (mut s, mut sx) = (0f32, 0f32);
                        for i in 0..c {
                            let xhat = (x[i] - mean) * rstd;
                            let gw = g[i] * w[i];
                            s += gw;
                            sx += gw * xhat;
                            dw[i] += g[i] * xhat;
                            db[i] += g[i];
                        }
                        let (s, sx) = (s / c as f32, sx / c as f32);
                        for i in 0..c {
                            let xhat = (x[i] - mean) * rstd;
                            dx[i] = rstd * (g[i] * w[i] - s - xhat * sx);
                        }
                    })
                })
            })
        })???;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, w.shape(), device)?),
            Some(Tensor::from_vec(db, w.shape(), device)?),
        ))
    }
}

/// RMS norm of `x [.., C]` with `weight [C]` (Llama's, computed in f32); differentiable in both.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    if !(x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.dims() == [c])
    {
        return rms_composed(x, weight, eps);
    }
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

/// The same from candle's differentiable ops, normalising in f32 (the test reference).
pub fn rms_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(weight)
}

/// A row's 1/√(mean(x²) + ε).
#[inline]
fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rlx-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) =
            (storage_slice::<f32>(s1, l1, "rms norm")?, storage_slice::<f32>(s2, l2, "rms norm")?);
        let out = map_rows(x, w.len(), |x, o| {
            let r = rms_scale(x, self.eps);
            for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                *o = x * r * w;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let grad = grad.contiguous()?;
        let (dx, [dw]) = read_host(x, |x| {
            read_host(w, |w| {
                read_host(&grad, |g| {
                    // dx = r·(g·w − x̂·mean(g·w·x̂)), x̂ = r·x;  dw = Σ g·x̂.
                    grad_rows(x, g, c, |x, g, dx, [dw]| {
                        let r = rms_scale(x, self.eps);
                        let mut sx = 0f32;
                        for i in 0..c {
                            let xhat = x[i] * r;
                            sx += g[i] * w[i] * xhat;
                            dw[i] += g[i] * xhat;
                        }
                        let sx = sx / c as f32;
                        for i in 0..c {
                            dx[i] = r * (g[i] * w[i] - x[i] * r * sx);
                        }
                    })
                })
            })
        })???;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, w.shape(), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Value and gradients (x, w, b) of Σ norm(x)·r under `f`.
    fn run(
        f: fn(&Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>,
        rows: usize,
        c: usize,
    ) -> Vec<Vec<f32>> {
        let dev = Device::Cpu;
        let x = Var::from_vec(data(rows * c, 1), (rows, c), &dev).unwrap();
        let w = Var::from_vec(data(c, 2), c, &dev).unwrap();
        let b = Var::from_vec(data(c, 3), c, &dev).unwrap();
        let r = Tensor::from_vec(data(rows * c, 4), (rows, c), &dev).unwrap();
        let y = f(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let g = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        vec![
            flat(&y),
            flat(g.get(x.as_tensor()).unwrap()),
            flat(g.get(w.as_tensor()).unwrap()),
            g.get(b.as_tensor()).map(flat).unwrap_or_default(),
        ]
    }

    /// Each named output of `ours` within 2e-5 relative (floor 1) of `theirs`.
    fn assert_close(ours: &[Vec<f32>], theirs: &[Vec<f32>], names: &[&str], rows: usize) {
        for (what, (a, b)) in names.iter().zip(ours.iter().zip(theirs)) {
            let worst =
                a.iter().zip(b).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
            assert!(worst < 2e-5, "{rows} rows, {what}: relative difference {worst}");
        }
    }

    #[test]
    fn fused_equals_composed_in_value_and_every_gradient() {
        // One task (a sampling step's rows) and many (a training batch).
        for rows in [3, 300] {
            let (ours, theirs) = (run(layer_norm, rows, 48), run(composed, rows, 48));
            assert_close(&ours, &theirs, &["value", "dx", "dw", "db"], rows);
        }
    }

    #[test]
    fn fused_rms_norm_equals_composed_in_value_and_both_gradients() {
        let rms = |x: &Tensor, w: &Tensor, _b: &Tensor, eps| rms_norm(x, w, eps);
        let rms_ref = |x: &Tensor, w: &Tensor, _b: &Tensor, eps| rms_composed(x, w, eps);
        for rows in [3, 300] {
            let (ours, theirs) = (run(rms, rows, 48), run(rms_ref, rows, 48));
            // Index 3 (the bias gradient) is absent from both.
            assert_close(&ours, &theirs, &["value", "dx", "dw"], rows);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let (rows, c) = (4, 6);
        let xs: Vec<f64> = data(rows * c, 7).iter().map(|&v| v as f64).collect();
        let (w, b) = (
            Tensor::from_vec(data(c, 8), c, &dev).unwrap(),
            Tensor::from_vec(data(c, 9), c, &dev).unwrap(),
        );
        let r: Vec<f64> = data(rows * c, 10).iter().map(|&v| v as f64).collect();
        let x = Var::from_vec(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), (rows, c), &dev)
            .unwrap();
        let rt = Tensor::from_vec(r.iter().map(|&v| v as f32).collect::<Vec<_>>(), (rows, c), &dev)
            .unwrap();
        let g = layer_norm(x.as_tensor(), &w, &b, 1e-5)
            .unwrap()
            .mul(&rt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The objective in f64, row by row.
        let (wv, bv) = (w.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let objective = |xs: &[f64]| -> f64 {
            xs.chunks(c)
                .zip(r.chunks(c))
                .map(|(row, rr)| {
                    let mean = row.iter().sum::<f64>() / c as f64;
                    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
                    row.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            ((v - mean) / (var + 1e-5).sqrt() * wv[i] as f64 + bv[i] as f64) * rr[i]
                        })
                        .sum::<f64>()
                })
                .sum()
        };
        let h = 1e-5;
        for i in 0..rows * c {
            let (mut up, mut down) = (xs.clone(), xs.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (objective(&up) - objective(&down)) / (2.0 * h);
            assert!(
                (fd - g[i] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "x[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn rms_norm_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let (rows, c) = (4, 6);
        let xs: Vec<f64> = data(rows * c, 11).iter().map(|&v| v as f64).collect();
        let wv = data(c, 12);
        let r: Vec<f64> = data(rows * c, 13).iter().map(|&v| v as f64).collect();
        let x = Var::from_vec(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), (rows, c), &dev)
            .unwrap();
        let w = Var::from_vec(wv.clone(), c, &dev).unwrap();
        let rt = Tensor::from_vec(r.iter().map(|&v| v as f32).collect::<Vec<_>>(), (rows, c), &dev)
            .unwrap();
        let y = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
        let g = y.mul(&rt).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gw = g.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let objective = |xs: &[f64], ws: &[f64]| -> f64 {
            xs.chunks(c)
                .zip(r.chunks(c))
                .map(|(row, rr)| {
                    let ms = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
                    let k = 1.0 / (ms + 1e-6).sqrt();
                    row.iter().zip(ws).zip(rr).map(|((v, w), r)| v * k * w * r).sum::<f64>()
                })
                .sum()
        };
        let ws: Vec<f64> = wv.iter().map(|&v| v as f64).collect();
        let h = 1e-5;
        for i in 0..rows * c {
            let (mut up, mut down) = (xs.clone(), xs.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (objective(&up, &ws) - objective(&down, &ws)) / (2.0 * h);
            assert!(
                (fd - gx[i] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "x[{i}]: fd {fd} vs {}",
                gx[i]
            );
        }
        for i in 0..c {
            let (mut up, mut down) = (ws.clone(), ws.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (objective(&xs, &up) - objective(&xs, &down)) / (2.0 * h);
            assert!(
                (fd - gw[i] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "w[{i}]: fd {fd} vs {}",
                gw[i]
            );
        }
    }
}
