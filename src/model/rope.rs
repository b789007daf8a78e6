//! Rotary position embedding in Hugging Face's half-split layout, `[x1, x2] → [x1·c − x2·s,
//! x2·c + x1·s]`, as one fused op on CPU f32 tensors with a fused backward; candle's composed
//! ops elsewhere.
//!
//! Composed, each call is two narrowed views, four broadcast products, a difference, a sum and
//! a concatenation forward, and backward about twenty tensors (each product's gradient added
//! into a zero-filled buffer, the two halves padded back to full rows) — for queries and keys
//! of every layer of a Llama-family model. Fused it is one pass each way. Rows carry their own
//! positions (left padding), so the tables are per batch row: `cos`, `sin` `[B, 1, L, D/2]`.
//!
//! The values are the composed ops' to the bit, forward and backward: the same products,
//! rounded one by one, summed in the order candle's autograd sums them, starting from its
//! zero-filled buffers (`0 + x`, which turns a −0 into +0). The tests hold the two to it.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};

use crate::host::{each_chunk, read_host, storage_slice};

/// Rows (of `D` values) per parallel task.
const ROWS: usize = 64;

/// Rotates `x [B, H, L, D]` by the per-row tables `cos`, `sin` `[B, 1, L, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let fusable = x.device().is_cpu()
        && [x.dtype(), cos.dtype(), sin.dtype()].iter().all(|t| *t == DType::F32)
        && x.rank() == 4
        && x.dim(3)? % 2 == 0
        && cos.dims() == [x.dim(0)?, 1, x.dim(2)?, x.dim(3)? / 2]
        && sin.dims() == cos.dims();
    if !fusable {
        return composed(x, cos, sin);
    }
    x.contiguous()?.apply_op1(Rope { cos: cos.contiguous()?, sin: sin.contiguous()? })
}

/// The same from candle's differentiable ops (elsewhere than CPU f32, and the tests' reference).
pub fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(3)? / 2;
    let (x1, x2) = (x.narrow(3, 0, half)?, x.narrow(3, half, half)?);
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[&a, &b], 3)
}

/// One row `x` rotated into `o`, with its table rows `c`, `s` (half a row each).
#[inline(always)]
pub(super) fn rotate(x: &[f32], c: &[f32], s: &[f32], o: &mut [f32]) {
    let half = c.len();
    let (x1, x2) = x.split_at(half);
    let (a, b) = o.split_at_mut(half);
    for i in 0..half {
        a[i] = x1[i] * c[i] - x2[i] * s[i];
        b[i] = x2[i] * c[i] + x1[i] * s[i];
    }
}

/// One row's input gradient `dx` from its output gradient `g`, summed as autograd sums it.
#[inline(always)]
pub(super) fn rotate_back(g: &[f32], c: &[f32], s: &[f32], dx: &mut [f32]) {
    let half = c.len();
    let (ga, gb) = g.split_at(half);
    let (d1, d2) = dx.split_at_mut(half);
    for i in 0..half {
        // x1 feeds x1·c (into a) and x1·s (into b); x2 feeds −x2·s (into a) and x2·c (into
        // b). Each sum starts from candle's zero-filled buffer.
        d1[i] = (0.0 + ga[i] * c[i]) + gb[i] * s[i];
        d2[i] = (0.0 + (0.0 - ga[i]) * s[i]) + gb[i] * c[i];
    }
}

struct Rope {
    /// `[B, 1, L, D/2]`, read in place.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// `f(table_row, x_row, out_row)` over the `D`-value rows of `x` (`[B, H, L, D]`) in
    /// parallel tasks, with the index of the tables' row for each.
    fn rows(
        &self,
        x: &[f32],
        dims: &[usize],
        f: impl Fn(usize, &[f32], &mut [f32]) + Sync + Send,
    ) -> Vec<f32> {
        let (h, l, d) = (dims[1], dims[2], dims[3]);
        let mut out = vec![0f32; x.len()];
        let n = ROWS * d;
        each_chunk(&mut out, n, x.len() <= n, |task, chunk| {
            for (i, o) in chunk.chunks_mut(d).enumerate() {
                let r = task * ROWS + i;
                // Row r is (batch b, head, position p): its table row is b · L + p.
                let (b, p) = (r / (h * l), r % l);
                f(b * l + p, &x[r * d..(r + 1) * d], o);
            }
        });
        out
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rlx-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_slice::<f32>(s, l, "rotary embedding")?;
        let half = l.dims()[3] / 2;
        let out = read_host(&self.cos, |cos| {
            read_host(&self.sin, |sin| {
                self.rows(x, l.dims(), |t, x, o| {
                    rotate(x, &cos[t * half..][..half], &sin[t * half..][..half], o)
                })
            })
        })??;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if grad.dims() != x.dims() {
            bail!("rotary embedding: gradient {:?} for input {:?}", grad.dims(), x.dims())
        }
        let half = x.dim(3)? / 2;
        let grad = grad.contiguous()?;
        let dx = read_host(&self.cos, |cos| {
            read_host(&self.sin, |sin| {
                read_host(&grad, |g| {
                    self.rows(g, x.dims(), |t, g, o| {
                        rotate_back(g, &cos[t * half..][..half], &sin[t * half..][..half], o)
                    })
                })
            })
        })???;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
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

    #[test]
    fn fused_is_the_composed_ops_to_the_bit() {
        // More rows than one task; a single row.
        for (b, h, l, d) in [(2, 3, 40, 8), (1, 1, 1, 2), (3, 2, 5, 16)] {
            let x = Var::from_tensor(&random(&[b, h, l, d], 1)).unwrap();
            let angles = (random(&[b, 1, l, d / 2], 2) * 3.0).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let w = random(&[b, h, l, d], 3);
            let run = |f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
                // The input as the model makes it: a tracked product.
                let y = f(&(x.as_tensor() * 1.5).unwrap(), &cos, &sin).unwrap();
                let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                (bits(&y), bits(g.get(x.as_tensor()).unwrap()))
            };
            let (fused, reference) = (run(rope), run(composed));
            assert_eq!(fused.0, reference.0, "values, {:?}", (b, h, l, d));
            assert_eq!(fused.1, reference.1, "gradients, {:?}", (b, h, l, d));
        }
    }

    #[test]
    fn rotates_each_pair_by_its_angle() {
        // [x1, x2] = [1, 0] at angle θ: [cos θ, sin θ]; the gradient of the first output is
        // [cos θ, −sin θ].
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 0.0], (1, 1, 1, 2), &dev).unwrap();
        let t = 0.7f32;
        let cos = Tensor::from_vec(vec![t.cos()], (1, 1, 1, 1), &dev).unwrap();
        let sin = Tensor::from_vec(vec![t.sin()], (1, 1, 1, 1), &dev).unwrap();
        let y = rope(x.as_tensor(), &cos, &sin).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![t.cos(), t.sin()]);
        let g = y.narrow(3, 0, 1).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![t.cos(), -t.sin()]);
    }
}
