//! Scaled dot-product attention with an additive bias, `softmax(q·kᵀ·scale + bias)·v`, as one
//! fused op on CPU f32 tensors, with a fused backward; candle's own ops elsewhere.
//!
//! Composed from candle ops, attention materialises the `[B, H, Lq, Lk]` scores several times
//! over (product, scaled, biased, max, exp, sum, quotient, and as many again backward) and
//! copies keys and values per query head for grouped-query attention. Here each (row, head)
//! streams its scores through one `Lk` buffer, reads grouped keys and values in place, and
//! skips masked keys (bias ≤ −1e8, whose weight underflows to exactly 0 in the composed form
//! too). The backward recomputes the softmax row from `q`, `k` and the bias, as
//! flash-attention does, instead of keeping it.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{Kernel, dispatch, dot, exp, sum};
use crate::host::{each_chunk, read_host, storage_slice};

mod packed;
pub use packed::attend_packed;

/// Bias values at or below this mark a key the query may not read.
const MASKED: f32 = -1e8;
/// Multiply-adds below which one thread does the whole op (a sampling step's attention).
const SERIAL_WORK: usize = 1 << 16;

/// `softmax(q·kᵀ·scale + bias)·v` for `q [B, H, Lq, D]`, `k`/`v` `[B, G, Lk, D]` (H a multiple
/// of G: each key/value head serves H/G query heads) and `bias [B, 1, Lq, Lk]`; `[B, H, Lq, D]`.
/// Half-precision scores are taken in f32, as HF's eager attention does. Without `grad` the
/// composed form may use candle's softmax kernel, which has no backward.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    grad: bool,
) -> Result<Tensor> {
    let (b, h, lq, _) = q.dims4()?;
    let (_, g, lk, _) = k.dims4()?;
    let fusable = q.device().is_cpu()
        && [q.dtype(), k.dtype(), v.dtype(), bias.dtype()].iter().all(|t| *t == DType::F32)
        && h % g == 0
        && bias.dims() == [b, 1, lq, lk];
    if !fusable {
        return composed(q, k, v, bias, scale, grad);
    }
    let op = Attention { scale: scale as f32, bias: bias.clone() };
    // Without gradient, keys and values are read in place from a cache's buffers, whose
    // heads sit `capacity` columns apart (`KvCache`); the backward wants them packed.
    let keys = |t: &Tensor| {
        if !grad && heads_of_rows(t.layout()).is_some() { Ok(t.clone()) } else { t.contiguous() }
    };
    q.contiguous()?.apply_op3(&keys(k)?, &keys(v)?, op)
}

/// For `[B, G, L, D]` keys or values whose rows are packed (`D` apart, unit stride), the
/// strides between batch rows and between heads; `None` for other layouts.
fn heads_of_rows(l: &Layout) -> Option<(usize, usize)> {
    let dims = l.dims();
    match *l.stride() {
        [row, head, s, 1] if s == dims[3] || dims[2] <= 1 => Some((row, head)),
        _ => None,
    }
}

/// `D` values per row, `stride` apart from `values`' first: one head's queries, keys, values,
/// outputs or their gradients.
#[derive(Clone, Copy)]
struct Rows<'a> {
    values: &'a [f32],
    stride: usize,
    d: usize,
}

impl<'a> Rows<'a> {
    #[inline(always)]
    fn row(&self, j: usize) -> &'a [f32] {
        &self.values[j * self.stride..j * self.stride + self.d]
    }
}

/// A `[B, G, L, D]` input as its storage from the view's first value, and where each (batch
/// row, head)'s rows start in it and how far apart they are.
struct HeadBlocks<'a> {
    values: &'a [f32],
    row: usize,
    head: usize,
    g: usize,
    stride: usize,
    d: usize,
}

impl<'a> HeadBlocks<'a> {
    fn of(storage: &'a CpuStorage, l: &Layout) -> Result<HeadBlocks<'a>> {
        let Some((row, head)) = heads_of_rows(l) else {
            candle_core::bail!("attention: keys and values need packed rows")
        };
        let values = &storage.as_slice::<f32>()?[l.start_offset()..];
        let d = l.dims()[3];
        Ok(HeadBlocks { values, row, head, g: l.dims()[1], stride: d, d })
    }

    /// Packed `[B, G, L, D]` values: blocks of `L × D` values one after another.
    fn packed(values: &'a [f32], g: usize, l: usize, d: usize) -> HeadBlocks<'a> {
        HeadBlocks { values, row: g * l * d, head: l * d, g, stride: d, d }
    }

    /// `G` heads of `D` values side by side in rows of `width` values, `L` rows per batch row:
    /// the packed projections' queries, keys or values (`values` starting at that part's first
    /// column), or the outputs in the layout the next linear layer reads.
    fn interleaved(values: &'a [f32], g: usize, l: usize, d: usize, width: usize) -> Self {
        HeadBlocks { values, row: l * width, head: d, g, stride: width, d }
    }

    /// The rows of batch row and head number `bg` (row · G + head).
    fn block(&self, bg: usize) -> Rows<'a> {
        let at = (bg / self.g) * self.row + (bg % self.g) * self.head;
        Rows { values: &self.values[at..], stride: self.stride, d: self.d }
    }
}

/// The same from candle's differentiable ops (the reference the fused op is tested against).
pub fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    grad: bool,
) -> Result<Tensor> {
    let rep = q.dim(1)? / k.dim(1)?;
    let (k, v) = (repeat_kv(k, rep)?, repeat_kv(v, rep)?);
    let att = (q.matmul(&k.t()?)? * scale)?;
    let att = match att.dtype() {
        DType::BF16 | DType::F16 => att.to_dtype(DType::F32)?,
        _ => att,
    };
    let att = att.broadcast_add(&bias.to_dtype(att.dtype())?)?;
    let att = if grad {
        candle_nn::ops::softmax(&att, candle_core::D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&att)?
    };
    att.to_dtype(q.dtype())?.matmul(&v)
}

/// Grouped-query attention: each key/value head serves `rep` query heads (HF's `repeat_kv`).
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, l, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, rep, l, d))?.contiguous()?.reshape((b, kv * rep, l, d))
}

struct Attention {
    scale: f32,
    /// `[B, 1, Lq, Lk]`, read in place (every layer of a forward shares one).
    bias: Tensor,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    g: usize,
    lq: usize,
    lk: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout) -> Result<Dims> {
        let (b, h, lq, d) = q.shape().dims4()?;
        let (_, g, lk, _) = k.shape().dims4()?;
        Ok(Dims { b, h, g, lq, lk, d })
    }

    fn serial(&self) -> bool {
        self.b * self.h * self.lq * self.lk * self.d < SERIAL_WORK
    }
}

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    storage_slice(storage, layout, "attention")
}

/// Softmax weights of query row `qi` over the keys `k` (`Lk` rows) with bias row `bias` into
/// `p`; masked keys get exactly 0.
#[inline(always)]
fn weights(qi: &[f32], k: Rows, bias: &[f32], scale: f32, p: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for (j, (pj, bj)) in p.iter_mut().zip(bias).enumerate() {
        *pj = if *bj <= MASKED { f32::NEG_INFINITY } else { dot(qi, k.row(j)) * scale + bj };
        max = max.max(*pj);
    }
    // Masked keys get exactly 0 (the vectorised `exp` of −∞ is tiny, not 0).
    for pj in p.iter_mut() {
        *pj = if *pj == f32::NEG_INFINITY { 0.0 } else { exp(*pj - max) };
    }
    let inv = 1.0 / sum(p);
    p.iter_mut().for_each(|pj| *pj *= inv);
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "rlx-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = Dims::of(ql, kl)?;
        let q = HeadBlocks::packed(slice(qs, ql)?, n.h, n.lq, n.d);
        let (k, v) = (HeadBlocks::of(ks, kl)?, HeadBlocks::of(vs, vl)?);
        let mut out = vec![0f32; ql.shape().elem_count()];
        // One task per (row, query head): its `Lq × D` outputs.
        read_host(&self.bias, |bias| {
            let x = Inputs { q, k, v, bias, n, scale: self.scale };
            each_chunk(&mut out, n.lq * n.d, n.serial(), |bh, y| {
                dispatch(ForwardBlock(&x, bh, y, n.d))
            })
        })?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, lq, d) = q.dims4()?;
        let (_, g, lk, _) = k.dims4()?;
        let n = Dims { b, h, g, lq, lk, d };
        let host = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (qv, kv, vv, ov, gv) = (host(q)?, host(k)?, host(v)?, host(res)?, host(grad)?);
        let rep = h / g;
        let mut dq = vec![0f32; qv.len()];
        let mut dkv = vec![0f32; 2 * kv.len()];
        // One task per (row, key/value head): the `rep` query heads it serves write their own
        // dq rows, and it alone accumulates its keys' and values' gradients (no races).
        let group = rep * lq * d;
        let tasks: Vec<GroupTask> =
            dq.chunks_mut(group).zip(dkv.chunks_mut(2 * lk * d)).enumerate().collect();
        read_host(&self.bias, |bias| {
            let x = Inputs {
                q: HeadBlocks::packed(&qv, h, lq, d),
                k: HeadBlocks::packed(&kv, g, lk, d),
                v: HeadBlocks::packed(&vv, g, lk, d),
                bias,
                n,
                scale: self.scale,
            };
            let (o, dout) = (HeadBlocks::packed(&ov, h, lq, d), HeadBlocks::packed(&gv, h, lq, d));
            let run = |(bg, (dq, dkv)): GroupTask| {
                let mut grads = SplitGrads { dq, dkv, lq, lk, d };
                dispatch(BackwardGroup(&x, &o, &dout, bg, &mut grads))
            };
            if n.serial() {
                tasks.into_iter().for_each(run);
            } else {
                tasks.into_par_iter().for_each(run);
            }
        })?;
        let (dk, dv) = dkv_split(&dkv, b * g, lk * d);
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// What every task of one call reads.
struct Inputs<'a> {
    q: HeadBlocks<'a>,
    k: HeadBlocks<'a>,
    v: HeadBlocks<'a>,
    /// `[B, 1, Lq, Lk]`.
    bias: &'a [f32],
    n: Dims,
    scale: f32,
}

/// `y += a · x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// The outputs of one (row, query head) `bh`: `Lq` rows of `y`, `stride` apart.
struct ForwardBlock<'a, 'b>(&'b Inputs<'a>, usize, &'b mut [f32], usize);

impl Kernel for ForwardBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        forward_block(self.0, self.1, self.2, self.3)
    }
}

#[inline(always)]
fn forward_block(x: &Inputs, bh: usize, y: &mut [f32], stride: usize) {
    let Dims { h, g, lq, lk, d, .. } = x.n;
    let (row, head) = (bh / h, bh % h);
    let kv = row * g + head / (h / g);
    let (q, kr, vr) = (x.q.block(bh), x.k.block(kv), x.v.block(kv));
    let mut p = vec![0f32; lk];
    for i in 0..lq {
        let bias = &x.bias[(row * lq + i) * lk..(row * lq + i + 1) * lk];
        weights(q.row(i), kr, bias, x.scale, &mut p);
        let yi = &mut y[i * stride..i * stride + d];
        for (j, &pj) in p.iter().enumerate() {
            if pj != 0.0 {
                axpy(yi, pj, vr.row(j));
            }
        }
    }
}

/// Where one (row, key/value head)'s backward writes: the `dq` row of its query head `r`'s
/// query `i`, and its key `j`'s `dk` and `dv` rows.
trait GroupGrads {
    fn dq(&mut self, r: usize, i: usize) -> &mut [f32];
    fn dk(&mut self, j: usize) -> &mut [f32];
    fn dv(&mut self, j: usize) -> &mut [f32];
}

/// [`Attention`]'s: its query heads' `dq` rows and its own `[dk | dv]` block.
struct SplitGrads<'a> {
    dq: &'a mut [f32],
    dkv: &'a mut [f32],
    lq: usize,
    lk: usize,
    d: usize,
}

impl GroupGrads for SplitGrads<'_> {
    fn dq(&mut self, r: usize, i: usize) -> &mut [f32] {
        let at = (r * self.lq + i) * self.d;
        &mut self.dq[at..at + self.d]
    }
    fn dk(&mut self, j: usize) -> &mut [f32] {
        &mut self.dkv[j * self.d..(j + 1) * self.d]
    }
    fn dv(&mut self, j: usize) -> &mut [f32] {
        let at = (self.lk + j) * self.d;
        &mut self.dkv[at..at + self.d]
    }
}

/// The gradients of one (row, key/value head) `bg`, given the outputs `o` and their gradients
/// `dout`.
struct BackwardGroup<'a, 'b, G>(
    &'b Inputs<'a>,
    &'b HeadBlocks<'a>,
    &'b HeadBlocks<'a>,
    usize,
    &'b mut G,
);

impl<G: GroupGrads> Kernel for BackwardGroup<'_, '_, G> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let BackwardGroup(x, o, dout, bg, grads) = self;
        backward_group(x, o, dout, bg, grads)
    }
}

#[inline(always)]
fn backward_group(
    x: &Inputs,
    o: &HeadBlocks,
    dout: &HeadBlocks,
    bg: usize,
    grads: &mut impl GroupGrads,
) {
    let Dims { g, lq, lk, d, .. } = x.n;
    let rep = x.n.h / g;
    let row = bg / g;
    let (kr, vr) = (x.k.block(bg), x.v.block(bg));
    let mut p = vec![0f32; lk];
    let mut dqi = vec![0f32; d];
    for r in 0..rep {
        let bh = bg * rep + r;
        let (q, ob, gb) = (x.q.block(bh), o.block(bh), dout.block(bh));
        for i in 0..lq {
            let (qi, oi, gi) = (q.row(i), ob.row(i), gb.row(i));
            let bias = &x.bias[(row * lq + i) * lk..(row * lq + i + 1) * lk];
            weights(qi, kr, bias, x.scale, &mut p);
            // dS = P ⊙ (dO·vᵀ − rowsum(dO ⊙ O)).
            let centre = dot(gi, oi);
            dqi.fill(0.0);
            for (j, &pj) in p.iter().enumerate() {
                if pj == 0.0 {
                    continue;
                }
                let (kj, vj) = (kr.row(j), vr.row(j));
                let ds = pj * (dot(gi, vj) - centre) * x.scale;
                axpy(&mut dqi, ds, kj);
                axpy(grads.dk(j), ds, qi);
                axpy(grads.dv(j), pj, gi);
            }
            grads.dq(r, i).copy_from_slice(&dqi);
        }
    }
}

/// A backward task of [`Attention`]: its (row, key/value head) index, its query heads' `dq`
/// rows and its own `[dk | dv]` block.
type GroupTask<'a> = (usize, (&'a mut [f32], &'a mut [f32]));

/// The per-(row, head) `[dk | dv]` blocks the backward accumulates, as separate `dk` and `dv`.
fn dkv_split(dkv: &[f32], blocks: usize, size: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut dk, mut dv) = (Vec::with_capacity(blocks * size), Vec::with_capacity(blocks * size));
    for block in dkv.chunks(2 * size) {
        dk.extend_from_slice(&block[..size]);
        dv.extend_from_slice(&block[size..]);
    }
    (dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::positions_and_bias;
    use candle_core::{Device, IndexOp, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A causal, padded bias for rows whose first `pads[r]` columns are padding.
    fn bias(pads: &[usize], lq: usize, lk: usize) -> Tensor {
        let valid: Vec<bool> = pads.iter().flat_map(|p| (0..lk).map(move |j| j >= *p)).collect();
        let (_, full) = positions_and_bias(&valid, pads.len(), lk);
        // The last `lq` queries (a prefill or a cached step reads every key).
        let rows: Vec<f32> =
            full.chunks(lk * lk).flat_map(|r| r[(lk - lq) * lk..].to_vec()).collect();
        Tensor::from_vec(rows, (pads.len(), 1, lq, lk), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn fused_equals_composed_with_groups_padding_and_cached_queries() {
        for (h, g, lq, lk, d) in
            [(4, 4, 7, 7, 8), (6, 2, 9, 9, 16), (4, 1, 1, 12, 8), (2, 2, 3, 10, 5)]
        {
            let pads = [0, 3];
            let (q, k, v) =
                (random(&[2, h, lq, d], 1), random(&[2, g, lk, d], 2), random(&[2, g, lk, d], 3));
            let bias = bias(&pads, lq, lk);
            let scale = 1.0 / (d as f64).sqrt();
            let fused = attend(&q, &k, &v, &bias, scale, true).unwrap();
            let reference = composed(&q, &k, &v, &bias, scale, true).unwrap();
            assert!(max_diff(&fused, &reference) < 1e-5, "h {h} g {g} lq {lq} lk {lk}");
        }
    }

    /// Keys and values read in place from a cache's wider buffers (heads `capacity` columns
    /// apart) give exactly what packed copies give.
    #[test]
    fn cached_views_are_read_in_place_exactly() {
        let (h, g, lk, cap, d) = (4, 2, 5, 9, 8);
        let q = random(&[2, h, 1, d], 11);
        let (kb, vb) = (random(&[2, g, cap, d], 12), random(&[2, g, cap, d], 13));
        let (k, v) = (kb.narrow(2, 0, lk).unwrap(), vb.narrow(2, 0, lk).unwrap());
        assert!(!k.is_contiguous() && heads_of_rows(k.layout()).is_some());
        let bias = bias(&[0, 2], 1, lk);
        let in_place = attend(&q, &k, &v, &bias, 0.3, false).unwrap();
        let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
        let packed = attend(&q, &kc, &vc, &bias, 0.3, false).unwrap();
        assert_eq!(max_diff(&in_place, &packed), 0.0);
        assert!(max_diff(&in_place, &composed(&q, &kc, &vc, &bias, 0.3, false).unwrap()) < 1e-5);
        // The composed path (bf16, GPU) multiplies the strided views directly.
        assert!(max_diff(&in_place, &composed(&q, &k, &v, &bias, 0.3, false).unwrap()) < 1e-5);
        let (q1, k1, v1) = (q.narrow(1, 0, 2).unwrap().contiguous().unwrap(), k.clone(), v.clone());
        let same_heads = composed(&q1, &k1, &v1, &bias, 0.3, false).unwrap();
        let packed = attend(&q1, &kc, &vc, &bias, 0.3, false).unwrap();
        assert!(max_diff(&same_heads, &packed) < 1e-5);
    }

    #[test]
    fn gradients_equal_the_composed_ops_and_finite_differences() {
        let (b, h, g, l, d) = (2, 4, 2, 6, 4);
        let (q, k, v) =
            (random(&[b, h, l, d], 4), random(&[b, g, l, d], 5), random(&[b, g, l, d], 6));
        let bias = bias(&[0, 2], l, l);
        let w = random(&[b, h, l, d], 7);
        let scale = 0.5;
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor, fused: bool| -> Tensor {
            let y = if fused {
                attend(q, k, v, &bias, scale, true)
            } else {
                composed(q, k, v, &bias, scale, true)
            };
            (y.unwrap() * &w).unwrap().sum_all().unwrap()
        };
        let vars = [
            Var::from_tensor(&q).unwrap(),
            Var::from_tensor(&k).unwrap(),
            Var::from_tensor(&v).unwrap(),
        ];
        let grads_of = |fused: bool| {
            let l = loss(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), fused);
            let gs = l.backward().unwrap();
            vars.iter().map(|x| gs.get(x).unwrap().clone()).collect::<Vec<_>>()
        };
        let (fused, reference) = (grads_of(true), grads_of(false));
        for (a, r) in fused.iter().zip(&reference) {
            assert!(max_diff(a, r) < 1e-5, "{}", max_diff(a, r));
        }
        // Central differences in f64 of the fused forward, on a few coordinates of each input.
        let inputs = [&q, &k, &v];
        for (which, grad) in fused.iter().enumerate() {
            let flat = inputs[which].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for at in [0, 5, flat.len() / 2, flat.len() - 1] {
                let eps = 1e-2f32;
                let shifted = |delta: f32| {
                    let mut x = flat.clone();
                    x[at] += delta;
                    let x = Tensor::from_vec(x, inputs[which].shape(), &Device::Cpu).unwrap();
                    let mut args = [q.clone(), k.clone(), v.clone()];
                    args[which] = x;
                    loss(&args[0], &args[1], &args[2], true).to_scalar::<f32>().unwrap() as f64
                };
                let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
                assert!(
                    (fd - g[at] as f64).abs() < 2e-3,
                    "input {which} at {at}: {fd} vs {}",
                    g[at]
                );
            }
        }
    }

    /// Packed projections in, rows out: the values and the gradient of the split-heads path
    /// to the bit, with grouped keys and values, padding and several batch rows.
    #[test]
    fn packed_attention_is_the_split_heads_path_to_the_bit() {
        for (h, g) in [(4, 4), (6, 2)] {
            let (b, l, d) = (3, 7, 5);
            let qkv = Var::from_tensor(&random(&[b * l, (h + 2 * g) * d], 21)).unwrap();
            let bias = bias(&[0, 2, 5], l, l);
            let w = random(&[b * l, h * d], 22);
            let split = |qkv: &Tensor| -> Tensor {
                let part = |at: usize, n: usize| {
                    let t = qkv.narrow(1, at * d, n * d).unwrap().reshape((b, l, n, d)).unwrap();
                    t.transpose(1, 2).unwrap().contiguous().unwrap()
                };
                let y = attend(&part(0, h), &part(h, g), &part(h + g, g), &bias, 0.4, true);
                y.unwrap().transpose(1, 2).unwrap().reshape((b * l, h * d)).unwrap()
            };
            let packed = attend_packed(qkv.as_tensor(), &bias, (h, g), 0.4, true).unwrap();
            let reference = split(qkv.as_tensor());
            let bits = |t: &Tensor| {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(bits(&packed), bits(&reference), "values, {h} heads, {g} groups");
            let grad = |y: &Tensor| {
                let gs = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                gs.get(qkv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            assert_eq!(grad(&packed), grad(&reference), "gradients, {h} heads, {g} groups");
        }
    }

    #[test]
    fn masked_keys_get_no_weight_and_no_gradient() {
        let (q, k, v) =
            (random(&[1, 2, 4, 3], 8), random(&[1, 2, 4, 3], 9), random(&[1, 2, 4, 3], 10));
        let bias = bias(&[2], 4, 4);
        let kv = Var::from_tensor(&k).unwrap();
        let y = attend(&q, kv.as_tensor(), &v, &bias, 1.0, true).unwrap();
        let dk = y.sum_all().unwrap().backward().unwrap().get(&kv).unwrap().clone();
        // Keys 0 and 1 are padding: nothing reads them.
        let dk = dk.i((0, .., 0..2, ..)).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(dk.to_scalar::<f32>().unwrap(), 0.0);
    }
}
