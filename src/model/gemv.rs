//! Matrix products with few rows (a decoding step: one row per sequence) that need no
//! gradient, on CPU f32 tensors: each weight is streamed once, in place, by row or column
//! blocks in parallel; for a few hundred rows and a Hugging Face `[out, in]` weight, `gemm`
//! with the weight on the left; candle's `matmul` otherwise.
//!
//! A decoding step of a large model is bound by reading its weights. candle's `gemm` packs
//! the weight operand before multiplying, which for a handful of rows costs more than the
//! product (with its AVX-512 kernels, 3.2 s against 2.1 s for 16 steps of a 0.5B model).
//! For `x · wᵀ` it packs the whole `[out, in]` weight on the calling thread alone (its
//! "prepacked" left operand), while the other cores wait: a third of a 32-row decoding step
//! of a 6 × 384 Qwen2. Asked for `(w · xᵀ)ᵀ` instead, it packs `x` — a few rows — and reads
//! the weight in place; the transpose back is one parallel pass over the small output.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::fastmath::{Kernel, dispatch, dot};
use crate::host::storage_slice;

/// Rows of `x` up to which the streaming product is used.
const MAX_ROWS: usize = 16;
/// Weight values per parallel task.
const BLOCK: usize = 1 << 16;

/// `x [M, K] · wᵀ` for a weight `w [N, K]` (Hugging Face's `[out, in]`): `[M, N]`.
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if streams(x, w) {
        return x.apply_op2_no_bwd(w, &Product { transposed: true });
    }
    if plain_no_grad(x, w) && puts_weight_left(x.dims()[0], w.dims()[0], w.dims()[1]) {
        return weight_left(x, w);
    }
    x.matmul(&w.t()?)
}

/// `x [M, K] · w` for a weight `w [K, N]` (the built-in model's `[in, out]`): `[M, N]`.
pub fn matmul_nn(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if streams(x, w) {
        return x.apply_op2_no_bwd(w, &Product { transposed: false });
    }
    x.matmul(w)
}

/// Whether the streaming product applies: few rows, and `plain_no_grad`.
fn streams(x: &Tensor, w: &Tensor) -> bool {
    x.dims().first().is_some_and(|&rows| rows <= MAX_ROWS) && plain_no_grad(x, w)
}

/// Matrices on the CPU, f32, packed, and no gradient through either (the ops here have no
/// backward, so they must never stand where one is needed).
fn plain_no_grad(x: &Tensor, w: &Tensor) -> bool {
    x.rank() == 2
        && w.rank() == 2
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.is_contiguous()
        && w.is_contiguous()
        && !x.track_op()
        && !w.track_op()
}

struct Product {
    /// `w` is `[N, K]` (else `[K, N]`).
    transposed: bool,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "rlx-streamed-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, wk) = match (l2.shape().dims2()?, self.transposed) {
            ((n, k), true) => (n, k),
            ((k, n), false) => (n, k),
        };
        if wk != k {
            bail!("streamed matmul: {m} × {k} by a weight of inner size {wk}")
        }
        let x = storage_slice::<f32>(s1, l1, "streamed matmul")?;
        let w = storage_slice::<f32>(s2, l2, "streamed matmul")?;
        let out = if self.transposed { by_rows(x, w, m, k, n) } else { by_columns(x, w, m, k, n) };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `w [N, K]`: tasks own blocks of weight rows (outputs); each output is `M` dot products
/// with one weight row, written `[N, M]` and transposed at the end.
fn by_rows(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let rows = (BLOCK / k.max(1)).max(1);
    let mut t = vec![0f32; n * m];
    (t.par_chunks_mut(rows * m).zip(w.par_chunks(rows * k)))
        .for_each(|(out, w)| dispatch(RowDots { out, x, w, k }));
    let mut out = vec![0f32; m * n];
    for (j, row) in t.chunks(m).enumerate() {
        for (i, v) in row.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

struct RowDots<'a> {
    /// `[rows, M]`.
    out: &'a mut [f32],
    x: &'a [f32],
    /// `[rows, K]`.
    w: &'a [f32],
    k: usize,
}

impl Kernel for RowDots<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let m = self.x.len() / self.k;
        for (out, w) in self.out.chunks_mut(m).zip(self.w.chunks(self.k)) {
            for (o, x) in out.iter_mut().zip(self.x.chunks(self.k)) {
                *o = dot(x, w);
            }
        }
    }
}

/// `w [K, N]`: tasks own blocks of columns; each streams its slice of every weight row,
/// `y[i, cols] += x[i, r] · w[r, cols]`.
fn by_columns(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let cols = (BLOCK / k.max(1)).clamp(16, n.max(16));
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(cols))
        .into_par_iter()
        .map(|b| {
            let (c0, c1) = (b * cols, ((b + 1) * cols).min(n));
            (c0, dispatch(ColumnBlock { x, w, m, k, n, c0, c1 }))
        })
        .collect();
    let mut out = vec![0f32; m * n];
    for (c0, block) in blocks {
        let width = block.len() / m;
        for i in 0..m {
            out[i * n + c0..i * n + c0 + width].copy_from_slice(&block[i * width..(i + 1) * width]);
        }
    }
    out
}

struct ColumnBlock<'a> {
    x: &'a [f32],
    w: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
    c0: usize,
    c1: usize,
}

impl Kernel for ColumnBlock<'_> {
    type Output = Vec<f32>;

    /// `[M, c1 − c0]`.
    #[inline(always)]
    fn run(self) -> Vec<f32> {
        let width = self.c1 - self.c0;
        let mut y = vec![0f32; self.m * width];
        for r in 0..self.k {
            let wr = &self.w[r * self.n + self.c0..r * self.n + self.c1];
            for (i, yi) in y.chunks_mut(width).enumerate() {
                let a = self.x[i * self.k + r];
                yi.iter_mut().zip(wr).for_each(|(y, w)| *y += a * w);
            }
        }
        y
    }
}

/// Whether `x [M, K] · wᵀ` for `w [N, K]` is faster as `weight_left`, measured on a 2-core
/// AMD EPYC (AVX-512; `weight_left_timings`) at a 6 × 384 Qwen2's and Qwen2.5-0.5B's shapes:
/// 1.2–3.6× at 32 rows; 1.2–2.3× at 64 where `N ≤ 2K` (0.74× for a 384 → 1536 MLP
/// projection); 1.1–1.4× up to 256 where `K ≥ 4N` (the MLP's down projection, whose packing
/// costs most); at parity or slower beyond.
fn puts_weight_left(m: usize, n: usize, k: usize) -> bool {
    m <= 32 || (m <= 64 && n <= 2 * k) || (m <= 256 && k >= 4 * n)
}

/// `(w · xᵀ)ᵀ` for `x [M, K]`, `w [N, K]`: candle's product writes `[N, M]` (packing `x`, not
/// `w`), one parallel tiled transpose gives `[M, N]`. The same multiply-add chains as
/// `x.matmul(&w.t())`, so the same bits (tested).
fn weight_left(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    w.matmul(&x.t()?)?.apply_op1_no_bwd(&Transposed)
}

/// A row-major `[R, C]` matrix as row-major `[C, R]`.
struct Transposed;

impl CustomOp1 for Transposed {
    fn name(&self) -> &'static str {
        "rlx-transposed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, c) = l.shape().dims2()?;
        let t = storage_slice::<f32>(s, l, "transpose")?;
        Ok((CpuStorage::F32(transpose(t, r, c)), Shape::from((c, r))))
    }
}

/// `[R, C]` row-major to `[C, R]`: each task writes 32 output rows, reading 32 consecutive
/// values of every input row (its output rows' cache lines stay in L1 meanwhile).
fn transpose(t: &[f32], r: usize, c: usize) -> Vec<f32> {
    const BAND: usize = 32;
    let mut out = vec![0f32; r * c];
    if r == 0 || c == 0 {
        return out;
    }
    out.par_chunks_mut(BAND * r).enumerate().for_each(|(b, band)| {
        let (c0, height) = (b * BAND, band.len() / r);
        for (i, row) in t.chunks(c).enumerate() {
            for (j, v) in row[c0..c0 + height].iter().enumerate() {
                band[j * r + i] = *v;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    /// Both layouts equal candle's matmul for several row counts and shapes (one task and
    /// many, ragged last blocks).
    #[test]
    fn equals_candles_matmul() {
        for (m, k, n) in [(1, 7, 5), (4, 96, 1000), (16, 300, 257), (3, 1, 40_000)] {
            let x = random((m, k), 1);
            let (wt, w) = (random((n, k), 2), random((k, n), 3));
            assert!(streams(&x, &wt));
            let got = matmul_nt(&x, &wt).unwrap();
            let want = x.matmul(&wt.t().unwrap()).unwrap();
            assert_eq!(got.dims(), [m, n]);
            assert!(max_diff(&got, &want) < 1e-4, "nt {m} {k} {n}");
            let got = matmul_nn(&x, &w).unwrap();
            assert!(max_diff(&got, &x.matmul(&w).unwrap()) < 1e-4, "nn {m} {k} {n}");
        }
    }

    /// With the weight on the left, `x · wᵀ` is candle's to the bit (the same multiply-add
    /// chains; inner sizes past `gemm`'s 512-deep blocks included), for ragged tiles too.
    #[test]
    fn weight_left_equals_candles_matmul_to_the_bit() {
        for (m, k, n) in
            [(17, 384, 1536), (32, 1536, 384), (33, 96, 1001), (256, 4864, 70), (40, 1, 3)]
        {
            let x = random((m, k), 8);
            let w = random((n, k), 9);
            let got = weight_left(&x, &w).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            assert_eq!(got.dims(), [m, n]);
            let (got, want) = (got.flatten_all().unwrap(), want.flatten_all().unwrap());
            let bits = |t: Tensor| {
                t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            assert!(bits(got) == bits(want), "{m} {k} {n}");
        }
    }

    /// The tiled transpose at sizes around its tile.
    #[test]
    fn transpose_moves_every_value() {
        for (r, c) in [(1, 1), (31, 33), (64, 5), (7, 100), (0, 4)] {
            let t: Vec<f32> = (0..r * c).map(|v| v as f32).collect();
            let out = transpose(&t, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(out[j * r + i], t[i * c + j]);
                }
            }
        }
    }

    /// Times candle's `x · wᵀ` against the weight-left product for row counts around
    /// `puts_weight_left`'s bounds at a 6 × 384 Qwen2's and Qwen2.5-0.5B's shapes: `cargo test
    /// --release --lib weight_left_timings -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn weight_left_timings() {
        for (k, n) in [
            (384, 384),
            (384, 128),
            (384, 1536),
            (1536, 384),
            (896, 896),
            (896, 128),
            (896, 4864),
            (4864, 896),
        ] {
            let w = random((n, k), 10);
            for m in [32, 64, 128, 256, 512, 1024] {
                let x = random((m, k), 11);
                let time = |f: &dyn Fn() -> Tensor| {
                    let mut best = f64::MAX;
                    for _ in 0..7 {
                        let t = std::time::Instant::now();
                        std::hint::black_box(f());
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                    best
                };
                let candle = time(&|| x.matmul(&w.t().unwrap()).unwrap());
                let left = time(&|| weight_left(&x, &w).unwrap());
                eprintln!(
                    "k {k} n {n} m {m}: candle {:.3} ms, weight left {:.3} ms ({:.2}×)",
                    candle * 1e3,
                    left * 1e3,
                    candle / left
                );
            }
        }
    }

    /// The weight-left path is taken at a decoding step's 32 rows and for down projections up to
    /// 256, not for many rows nor for 64 rows into a wide MLP.
    #[test]
    fn weight_left_where_measured_faster() {
        assert!(puts_weight_left(32, 1536, 384) && puts_weight_left(200, 384, 1536));
        assert!(!puts_weight_left(64, 1536, 384) && !puts_weight_left(512, 384, 384));
    }

    /// Where a gradient is needed, or rows are many, candle's matmul runs (with its backward).
    #[test]
    fn never_stands_where_a_gradient_is_needed() {
        let x = random((2, 8), 4);
        let w = Var::from_tensor(&random((8, 6), 5)).unwrap();
        assert!(!streams(&x, w.as_tensor()));
        let y = matmul_nn(&x, w.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(w.as_tensor()).is_some());
        assert!(!streams(&random((17, 8), 6), &random((8, 6), 7)));
    }
}
