//! Branch-free scalar maths that the compiler vectorises inside loops (baseline x86-64 has no
//! vector `exp`, and a float sum in one accumulator is a serial dependency chain): the fused
//! CPU ops and the sampler use these in their inner loops.

/// A loop body to compile once per instruction set. `run` must be `#[inline(always)]`, as
/// must everything it calls in its loops: it is then inlined into `pulp`'s per-instruction-set
/// copies. (A closure, or a function called through `FnOnce`, is not inlined there and stays
/// compiled for baseline x86-64, four lanes wide.)
pub trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs a kernel compiled for the widest vector instructions the CPU has (AVX-512, AVX2 + FMA,
/// else baseline x86-64), chosen at run time by `pulp`, or for a narrower set when `RLX_SIMD`
/// caps it. Every copy computes the same values: Rust neither reassociates nor fuses float
/// operations, whatever the vector width.
#[inline(always)]
pub fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    arch().dispatch(Simd(kernel))
}

/// The widest copy of the kernels rlx may run: `RLX_SIMD=avx2` or `RLX_SIMD=baseline` runs the
/// AVX2 + FMA or baseline x86-64 copy on a CPU that has more — to measure and test those
/// copies on an AVX-512 machine (candle's own matmuls are not capped). Read once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Widest,
    Avx2,
    Baseline,
}

pub fn cap() -> Cap {
    static CAP: std::sync::OnceLock<Cap> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("RLX_SIMD").as_deref() {
        Ok("avx2") => Cap::Avx2,
        Ok("baseline") => Cap::Baseline,
        _ => Cap::Widest,
    })
}

/// The copy to run, detected once: one load per kernel call (detecting the CPU's features on
/// every call, as `pulp::Arch::new` does, costs several).
#[inline(always)]
fn arch() -> pulp::Arch {
    static ARCH: std::sync::OnceLock<pulp::Arch> = std::sync::OnceLock::new();
    *ARCH.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> pulp::Arch {
    match cap() {
        Cap::Widest => pulp::Arch::new(),
        Cap::Avx2 => pulp::x86::V3::try_new().map_or(pulp::Arch::Scalar, pulp::Arch::V3),
        Cap::Baseline => pulp::Arch::Scalar,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> pulp::Arch {
    pulp::Arch::new()
}

/// The name of the copy `dispatch` runs, for benchmark reports.
pub fn kernel_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        match arch() {
            pulp::Arch::V4(_) => "AVX-512 (x86-64-v4)",
            pulp::Arch::V3(_) => "AVX2 + FMA (x86-64-v3)",
            _ => "baseline x86-64",
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "portable"
    }
}

struct Simd<K>(K);

impl<K: Kernel> pulp::WithSimd for Simd<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> K::Output {
        self.0.run()
    }
}

/// `eˣ` in f32 to about 2 ulp (Cephes' `expf`: x = n·ln 2 + r, a degree-6 polynomial in r,
/// 2ⁿ from the exponent bits), without branches or library calls. Arguments are clamped to
/// the finite range, so `exp(−∞)` is ~1e-38, not 0: callers that need an exact 0 for masked
/// values select it themselves. NaN propagates.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest by the 1.5·2²³ trick (no `round` call on baseline x86-64).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Lanes of the partial sums in `dot`, `sum` and `max` (two SSE registers; one with AVX).
const LANES: usize = 8;

/// `Σ aᵢ·bᵢ` over the shorter of the two, in `LANES` partial sums (vectorised; the order of
/// the additions differs from a left-to-right sum by rounding only).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ aᵢ` in `LANES` partial sums (vectorised).
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for i in 0..LANES {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest value (−∞ for none; NaN is skipped), in `LANES` partial maxima (vectorised).
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in chunks {
        for i in 0..LANES {
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    acc.into_iter().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_whole_range_and_nan_propagates() {
        for i in 0..=20_000 {
            let x = -87.0 + i as f32 * (175.0 / 20_000.0);
            let (ours, e) = (exp(x) as f64, (x as f64).exp());
            assert!((ours - e).abs() <= 3e-7 * e, "exp({x}) = {ours}, exact {e}");
        }
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn dot_sum_and_max_agree_with_plain_loops_at_every_length() {
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 / 3.0 - 1.5).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 / 2.0 - 1.0).collect();
            let d: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let s: f64 = a.iter().map(|x| *x as f64).sum();
            assert!((dot(&a, &b) as f64 - d).abs() < 1e-5, "n {n}");
            assert!((sum(&a) as f64 - s).abs() < 1e-5, "n {n}");
            assert_eq!(max(&a), a.iter().copied().fold(f32::NEG_INFINITY, f32::max), "n {n}");
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0]), 14.0);
    }
}
