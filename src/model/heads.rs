//! Between the linear layers' rows `[B, L, n·D]` and attention's heads `[B, n, L, D]`, as one
//! fused op each way on CPU f32 tensors (the split optionally applying the rotary embedding on
//! the way); candle's reshape, transpose and copy elsewhere.
//!
//! Composed, a split is a reshape, a transposed view and its packed copy (then the rotary
//! embedding), and a merge a transposed view and its reshaping copy; backward, each of those is
//! a gradient added into a zero-filled buffer, some through strided views. Fused, each is one
//! pass each way. The values are the composed ops' to the bit: data moved, the rotation's
//! arithmetic shared with [`super::rope`], and each gradient written as `0 + g` the way
//! autograd's zero-filled buffers leave it.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::rope::{rotate, rotate_back};
use crate::host::{each_chunk, read_host, storage_slice};

/// Values below which one thread does the whole op (a sampling step's few rows).
const SERIAL: usize = 1 << 14;

/// Heads `[B, n, L, D]` (packed) of rows `x [B, L, n·D]`, each rotated by the per-row tables
/// `(cos, sin)` `[B, 1, L, D/2]` when given.
pub fn split_heads(x: &Tensor, n: usize, rotary: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let (b, l, w) = x.dims3()?;
    let d = w / n;
    let tables_fit = rotary.is_none_or(|(c, s)| {
        c.dtype() == DType::F32 && c.dims() == [b, 1, l, d / 2] && s.dims() == c.dims()
    });
    if !(x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.is_multiple_of(n)
        && d.is_multiple_of(2)
        && tables_fit)
    {
        let heads = x.reshape((b, l, n, d))?.transpose(1, 2)?.contiguous()?;
        return match rotary {
            Some((cos, sin)) => super::rope::rope(&heads, cos, sin),
            None => Ok(heads),
        };
    }
    let tables = match rotary {
        Some((c, s)) => Some((c.contiguous()?, s.contiguous()?)),
        None => None,
    };
    x.contiguous()?.apply_op1(SplitHeads { n, tables })
}

/// Rows `[B, L, n·D]` of heads `y [B, n, L, D]`.
pub fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, n, l, d) = y.dims4()?;
    if !(y.device().is_cpu() && y.dtype() == DType::F32) {
        return y.transpose(1, 2)?.reshape((b, l, n * d));
    }
    y.contiguous()?.apply_op1(MergeHeads)
}

/// `f(row, chunk)` over `out` in chunks of `rows` rows of `width` values, in parallel unless
/// small; `row` is the chunk's first row.
fn by_rows(
    out: &mut [f32],
    width: usize,
    rows: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let chunk = rows * width;
    each_chunk(out, chunk, out.len() <= SERIAL, |i, c| f(i * rows, c));
}

struct SplitHeads {
    n: usize,
    /// `cos`, `sin` `[B, 1, L, D/2]`, read in place.
    tables: Option<(Tensor, Tensor)>,
}

impl SplitHeads {
    /// `f(cos, sin)` with the tables' values (empty without a rotation).
    fn with_tables<R>(&self, f: impl FnOnce(&[f32], &[f32]) -> R) -> Result<R> {
        match &self.tables {
            Some((c, s)) => read_host(c, |c| read_host(s, |s| f(c, s)))?,
            None => Ok(f(&[], &[])),
        }
    }
}

impl CustomOp1 for SplitHeads {
    fn name(&self) -> &'static str {
        "rlx-split-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_slice::<f32>(s, layout, "split heads")?;
        let (b, l, w) = layout.shape().dims3()?;
        let (n, d) = (self.n, w / self.n);
        let half = d / 2;
        let mut out = vec![0f32; x.len()];
        self.with_tables(|cos, sin| {
            // One chunk per (batch row, head): its `L × D` block.
            by_rows(&mut out, d, l, |first, block| {
                let (row, head) = (first / l / n, first / l % n);
                for (p, o) in block.chunks_mut(d).enumerate() {
                    let t = row * l + p;
                    let src = &x[t * w + head * d..][..d];
                    if cos.is_empty() {
                        o.copy_from_slice(src);
                    } else {
                        rotate(src, &cos[t * half..][..half], &sin[t * half..][..half], o);
                    }
                }
            })
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, n, l, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, l, w) = x.dims3()?;
        let (n, d) = (self.n, w / self.n);
        let half = d / 2;
        let grad = grad.contiguous()?;
        let mut dx = vec![0f32; x.elem_count()];
        read_host(&grad, |g| {
            self.with_tables(|cos, sin| {
                // Chunks of whole rows `[n·D]`: each head's gradient row put back in place.
                by_rows(&mut dx, w, 16, |first, rows| {
                    for (i, dx) in rows.chunks_mut(w).enumerate() {
                        let t = first + i;
                        let (row, p) = (t / l, t % l);
                        for head in 0..n {
                            let g = &g[((row * n + head) * l + p) * d..][..d];
                            let dx = &mut dx[head * d..][..d];
                            if cos.is_empty() {
                                dx.iter_mut().zip(g).for_each(|(dx, g)| *dx = 0.0 + g);
                            } else {
                                let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
                                rotate_back(g, c, s, dx);
                            }
                        }
                    }
                })
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

struct MergeHeads;

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "rlx-merge-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = storage_slice::<f32>(s, layout, "merge heads")?;
        let (b, n, l, d) = layout.shape().dims4()?;
        let w = n * d;
        let mut out = vec![0f32; y.len()];
        by_rows(&mut out, w, 16, |first, rows| {
            for (i, o) in rows.chunks_mut(w).enumerate() {
                let (row, p) = ((first + i) / l, (first + i) % l);
                for head in 0..n {
                    o[head * d..][..d].copy_from_slice(&y[((row * n + head) * l + p) * d..][..d]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, l, w))))
    }

    fn bwd(&self, y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, n, l, d) = y.dims4()?;
        let w = n * d;
        let grad = grad.contiguous()?;
        let mut dy = vec![0f32; y.elem_count()];
        read_host(&grad, |g| {
            // One chunk per (batch row, head).
            by_rows(&mut dy, d, l, |first, block| {
                let (row, head) = (first / l / n, first / l % n);
                for (p, dy) in block.chunks_mut(d).enumerate() {
                    let g = &g[(row * l + p) * w + head * d..][..d];
                    dy.iter_mut().zip(g).for_each(|(dy, g)| *dy = 0.0 + g);
                }
            })
        })?;
        Ok(Some(Tensor::from_vec(dy, y.shape(), y.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Split (with and without the rotation), attend-like use, merge: the fused ops' values
    /// and gradients are the composed ops' to the bit, at sizes under and over the serial cut.
    #[test]
    fn fused_split_and_merge_are_the_composed_ops_to_the_bit() {
        for (b, l, n, d) in [(2, 5, 3, 4), (3, 40, 4, 16), (1, 1, 2, 2)] {
            let x = Var::from_tensor(&random(&[b, l, n * d], 1)).unwrap();
            let angles = (random(&[b, 1, l, d / 2], 2) * 3.0).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let w = random(&[b, l, n * d], 3);
            for rotary in [false, true] {
                let tables = rotary.then_some((&cos, &sin));
                let run = |fused: bool| {
                    let input = (x.as_tensor() * 1.5).unwrap();
                    let heads = if fused {
                        split_heads(&input, n, tables).unwrap()
                    } else {
                        let h = input.reshape((b, l, n, d)).unwrap().transpose(1, 2).unwrap();
                        let h = h.contiguous().unwrap();
                        match tables {
                            Some((c, s)) => super::super::rope::composed(&h, c, s).unwrap(),
                            None => h,
                        }
                    };
                    // Something per head in between, as attention is.
                    let heads = (heads.sqr().unwrap() * 0.5).unwrap();
                    let rows = if fused {
                        merge_heads(&heads).unwrap()
                    } else {
                        heads.transpose(1, 2).unwrap().reshape((b, l, n * d)).unwrap()
                    };
                    let g = (&rows * &w).unwrap().sum_all().unwrap().backward().unwrap();
                    (bits(&rows), bits(g.get(x.as_tensor()).unwrap()))
                };
                let (fused, reference) = (run(true), run(false));
                assert_eq!(fused.0, reference.0, "values {:?} rotary {rotary}", (b, l, n, d));
                assert_eq!(fused.1, reference.1, "gradients {:?} rotary {rotary}", (b, l, n, d));
            }
        }
    }
}
