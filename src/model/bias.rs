//! `y + b` for activations `y [.., C]` and a bias `b [C]`, as one fused op on CPU f32 tensors;
//! candle's `broadcast_add` elsewhere.
//!
//! Through `broadcast_add`, the bias gradient is candle's `sum_keepdim` over the rows: a
//! strided reduction that walks one column at a time, scalar (about 7 % of a training step
//! of the built-in GPT at 16 × 192 tokens). Here the column sums are accumulated row by row in
//! vector registers, per task of rows, then across tasks; the activations' gradient is the
//! incoming one, passed on without a copy.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{Kernel, dispatch};
use crate::host::{each_chunk, read_host, storage_slice};

/// Values per parallel task (whole rows).
const CHUNK: usize = 1 << 15;

/// `y + b`, broadcasting `b [C]` over the rows of `y [.., C]`; differentiable in both.
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = y.dims().last().copied().unwrap_or(0);
    let fusable = y.device().is_cpu()
        && y.dtype() == DType::F32
        && b.dtype() == DType::F32
        && b.dims() == [c]
        && c > 0;
    if !fusable {
        return y.broadcast_add(b);
    }
    y.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
}

/// Rows per task: about `CHUNK` values, at least one row.
fn rows_per_task(c: usize) -> usize {
    (CHUNK / c).max(1)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "rlx-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = storage_slice::<f32>(s1, l1, "bias")?;
        let b = storage_slice::<f32>(s2, l2, "bias")?;
        let c = b.len();
        let mut out = vec![0f32; y.len()];
        let n = rows_per_task(c) * c;
        each_chunk(&mut out, n, y.len() <= n, |i, o| {
            let y = &y[i * n..][..o.len()];
            dispatch(AddRows { o, y, b })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = b.elem_count();
        let sums = read_host(grad, |g| column_sums(g, c))?;
        Ok((Some(grad.clone()), Some(Tensor::from_vec(sums, c, b.device())?)))
    }
}

/// `o = y + b` row by row.
struct AddRows<'a> {
    o: &'a mut [f32],
    y: &'a [f32],
    b: &'a [f32],
}

impl Kernel for AddRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let c = self.b.len();
        for (o, y) in self.o.chunks_mut(c).zip(self.y.chunks(c)) {
            for ((o, y), b) in o.iter_mut().zip(y).zip(self.b) {
                *o = y + b;
            }
        }
    }
}

/// The sums over the rows of `g` (rows of width `c`) of each column.
fn column_sums(g: &[f32], c: usize) -> Vec<f32> {
    let n = rows_per_task(c) * c;
    if g.len() <= n {
        return dispatch(SumRows { g, c });
    }
    // Partial sums in chunk order, added in that order (not rayon's `reduce`, whose combining
    // order follows work stealing): the same bits whatever the scheduling or thread count.
    let parts: Vec<Vec<f32>> = g.par_chunks(n).map(|g| dispatch(SumRows { g, c })).collect();
    parts.into_iter().fold(vec![0f32; c], |mut a, b| {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        a
    })
}

/// Column sums of some rows.
struct SumRows<'a> {
    g: &'a [f32],
    c: usize,
}

impl Kernel for SumRows<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn run(self) -> Vec<f32> {
        let mut acc = vec![0f32; self.c];
        for row in self.g.chunks(self.c) {
            acc.iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// Values and both gradients equal candle's `broadcast_add` (serial and parallel paths),
    /// and the bias gradient equals central finite differences in f64.
    #[test]
    fn equals_broadcast_add_and_finite_differences() {
        let dev = Device::Cpu;
        for (rows, c) in [(3, 5), (700, 96), (41, 1024)] {
            let y = Var::new(values(rows * c, 1), &dev).unwrap();
            let y3 = y.as_tensor().reshape((rows, 1, c)).unwrap();
            let b = Var::new(values(c, 2), &dev).unwrap();
            let w = Tensor::new(values(rows * c, 3), &dev).unwrap().reshape((rows, 1, c)).unwrap();
            let loss = |fused: bool| {
                let out = if fused {
                    add_bias(&y3, b.as_tensor())
                } else {
                    y3.broadcast_add(b.as_tensor())
                };
                let out = out.unwrap();
                let l = (&out * &w).unwrap().sum_all().unwrap();
                let g = l.backward().unwrap();
                let (gy, gb) = (g.get(&y).unwrap().clone(), g.get(&b).unwrap().clone());
                (out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), gy, gb)
            };
            let (fv, fy, fb) = loss(true);
            let (cv, cy, cb) = loss(false);
            assert_eq!(fv, cv, "{rows} × {c}");
            let gy = (fy - cy).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(gy.to_scalar::<f32>().unwrap(), 0.0);
            let gb = (&fb - cb).unwrap().abs().unwrap().max_all().unwrap();
            assert!(gb.to_scalar::<f32>().unwrap() < 1e-4 * rows as f32, "{rows} × {c}");
            // d/db_j Σ w·(y + b) = Σ_rows w[., j], in f64.
            let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let fb = fb.to_vec1::<f32>().unwrap();
            for j in [0, c / 2, c - 1] {
                let exact: f64 = (0..rows).map(|r| wv[r * c + j] as f64).sum();
                assert!((fb[j] as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{j}");
            }
        }
    }
}
