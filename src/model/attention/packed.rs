//! Attention over the packed projections of the built-in GPT (`[B·L, 3D]` in, `[B·L, D]` rows
//! out), with the parent module's kernels reading and writing those layouts in place.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::{BackwardGroup, Dims, ForwardBlock, GroupGrads, HeadBlocks, Inputs, attend, slice};
use crate::host::{each_chunk, read_host};
use crate::model::fastmath::dispatch;

/// Self-attention over packed projections `qkv [B·L, (H + 2G)·D]` (each row its queries, then
/// its keys, then its values, head after head) with `bias [B, 1, L, L]`: `[B·L, H·D]`, each row
/// its heads' outputs side by side. Both are the layouts the linear layers around attention
/// read and write, so no split, transpose or copy stands between them — nor, backward, the
/// zero-padded gradient of each split and the sums of them, which cost a training step of the
/// built-in GPT more than attention itself. The same values, forward and backward, as
/// splitting the heads out for [`attend`]: the same kernels read the same numbers in place.
pub fn attend_packed(
    qkv: &Tensor,
    bias: &Tensor,
    (heads, kv_heads): (usize, usize),
    scale: f64,
    grad: bool,
) -> Result<Tensor> {
    let (b, _, l, lk) = bias.dims4()?;
    let width = qkv.dim(1)?;
    let d = width / (heads + 2 * kv_heads);
    if qkv.dims() != [b * l, (heads + 2 * kv_heads) * d] || lk != l || heads % kv_heads != 0 {
        candle_core::bail!(
            "attention: projections {:?} do not hold {heads} query and {kv_heads} key/value heads \
             for a bias {:?}",
            qkv.dims(),
            bias.dims()
        )
    }
    let fusable = qkv.device().is_cpu() && qkv.dtype() == DType::F32 && bias.dtype() == DType::F32;
    if !fusable {
        let part = |at: usize, n: usize| -> Result<Tensor> {
            qkv.narrow(1, at * d, n * d)?.reshape((b, l, n, d))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) =
            (part(0, heads)?, part(heads, kv_heads)?, part(heads + kv_heads, kv_heads)?);
        let y = attend(&q, &k, &v, bias, scale, grad)?;
        return y.transpose(1, 2)?.reshape((b * l, heads * d));
    }
    let n = Dims { b, h: heads, g: kv_heads, lq: l, lk: l, d };
    qkv.contiguous()?.apply_op1(PackedAttention { scale: scale as f32, bias: bias.clone(), n })
}

struct PackedAttention {
    scale: f32,
    bias: Tensor,
    n: Dims,
}

impl PackedAttention {
    /// The queries, keys and values of packed projections `qkv`.
    fn inputs<'a>(&self, qkv: &'a [f32], bias: &'a [f32]) -> Inputs<'a> {
        let Dims { h, g, lq, d, .. } = self.n;
        let width = (h + 2 * g) * d;
        let part =
            |at: usize, heads: usize| HeadBlocks::interleaved(&qkv[at * d..], heads, lq, d, width);
        Inputs {
            q: part(0, h),
            k: part(h, g),
            v: part(h + g, g),
            bias,
            n: self.n,
            scale: self.scale,
        }
    }
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "rlx-attention-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s, l)?;
        let Dims { b, h, lq, d, .. } = self.n;
        let width = h * d;
        let mut out = vec![0f32; b * lq * width];
        // One task per batch row: every head's outputs, side by side in its `Lq` rows.
        read_host(&self.bias, |bias| {
            let x = self.inputs(qkv, bias);
            each_chunk(&mut out, lq * width, self.n.serial(), |row, y| {
                for head in 0..h {
                    dispatch(ForwardBlock(&x, row * h + head, &mut y[head * d..], width));
                }
            })
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b * lq, width))))
    }

    fn bwd(&self, qkv: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Dims { h, g, lq, d, .. } = self.n;
        let (width, rep) = ((h + 2 * g) * d, h / g);
        let grad = grad.contiguous()?;
        let mut dqkv = vec![0f32; qkv.elem_count()];
        read_host(qkv, |qkv| {
            read_host(res, |o| {
                read_host(&grad, |dout| {
                    read_host(&self.bias, |bias| {
                        let x = self.inputs(qkv, bias);
                        let o = HeadBlocks::interleaved(o, h, lq, d, h * d);
                        let dout = HeadBlocks::interleaved(dout, h, lq, d, h * d);
                        // One task per batch row: it alone writes that row's gradients.
                        each_chunk(&mut dqkv, lq * width, self.n.serial(), |row, out| {
                            for kv in 0..g {
                                let mut grads = InterleavedGrads {
                                    out,
                                    width,
                                    q_at: kv * rep * d,
                                    k_at: (h + kv) * d,
                                    v_at: (h + g + kv) * d,
                                    d,
                                };
                                dispatch(BackwardGroup(&x, &o, &dout, row * g + kv, &mut grads));
                            }
                        })
                    })
                })
            })
        })????;
        Ok(Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?))
    }
}

/// [`PackedAttention`]'s: columns of one batch row's packed `dqkv` rows (`width` apart).
struct InterleavedGrads<'a> {
    out: &'a mut [f32],
    width: usize,
    q_at: usize,
    k_at: usize,
    v_at: usize,
    d: usize,
}

impl GroupGrads for InterleavedGrads<'_> {
    fn dq(&mut self, r: usize, i: usize) -> &mut [f32] {
        let at = i * self.width + self.q_at + r * self.d;
        &mut self.out[at..at + self.d]
    }
    fn dk(&mut self, j: usize) -> &mut [f32] {
        let at = j * self.width + self.k_at;
        &mut self.out[at..at + self.d]
    }
    fn dv(&mut self, j: usize) -> &mut [f32] {
        let at = j * self.width + self.v_at;
        &mut self.out[at..at + self.d]
    }
}
