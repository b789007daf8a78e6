//! Clamps, masks and element-wise max/min as single CPU ops with one-pass backwards.
//!
//! Composed from candle ops these dominate small objectives: `x.clamp(lo, hi)` is a `maximum`
//! then a `minimum` against a broadcast scalar, and each of them back-propagates through about
//! seven full-size tensors (two equality masks, their conversions, a product, a quotient, and a
//! zero-filled gradient for the scalar); `where_cond(m, x, 0)` allocates zeros forward and two
//! `where_cond`s plus zeros backward. Here each is one pass forward and one pass backward.
//!
//! Values and gradients are bit-identical to candle's composition, ties and NaN included:
//! `max(a, b)` is `a < b ? b : a`, and at a tie each side gets half the gradient. Other
//! devices and dtypes use candle's ops (the reference the tests compare with).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use candle_core::{WithDType, bail};

use crate::host::storage_slice;
use crate::model::fastmath::{self, Kernel};

/// Elements below which one thread does the whole op.
const SERIAL: usize = 1 << 17;

/// `x` clamped into `[lo, hi]`, either bound optional (candle's `maximum(lo)` then `minimum(hi)`).
pub fn clamp(x: &Tensor, lo: Option<f64>, hi: Option<f64>) -> Result<Tensor> {
    if !fusable(&[x]) {
        let mut y = x.clone();
        if let Some(lo) = lo {
            y = y.maximum(lo)?;
        }
        if let Some(hi) = hi {
            y = y.minimum(hi)?;
        }
        return Ok(y);
    }
    x.contiguous()?.apply_op1(Clamp { lo, hi })
}

/// `x` where `mask` ≠ 0, else 0 (`mask.ne(0).where_cond(x, 0)`): padding may hold anything,
/// even NaN, and reads as 0. The gradient flows to `x` only.
pub fn keep(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if !fusable(&[x, mask]) || x.dims() != mask.dims() {
        return mask.ne(0.0)?.where_cond(x, &x.zeros_like()?);
    }
    x.contiguous()?.apply_op2(&mask.to_dtype(x.dtype())?.contiguous()?, Keep)
}

/// The element-wise maximum of two tensors of one shape.
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    extremum(a, b, Extremum::Max)
}

/// The element-wise minimum of two tensors of one shape.
pub fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    extremum(a, b, Extremum::Min)
}

/// The fused ops as methods, so that blocks read as chains: `logp.sub(old)?.clamped(-20.0, 20.0)?`.
pub trait Fused {
    /// [`clamp`] into `[lo, hi]`.
    fn clamped(&self, lo: f64, hi: f64) -> Result<Tensor>;
    /// [`clamp`] from above.
    fn at_most(&self, hi: f64) -> Result<Tensor>;
    /// [`keep`]: the values where `mask` ≠ 0, else 0.
    fn kept(&self, mask: &Tensor) -> Result<Tensor>;
    /// [`maximum`] with a tensor of the same shape.
    fn max_with(&self, other: &Tensor) -> Result<Tensor>;
    /// [`minimum`] with a tensor of the same shape.
    fn min_with(&self, other: &Tensor) -> Result<Tensor>;
}

impl Fused for Tensor {
    fn clamped(&self, lo: f64, hi: f64) -> Result<Tensor> {
        clamp(self, Some(lo), Some(hi))
    }
    fn at_most(&self, hi: f64) -> Result<Tensor> {
        clamp(self, None, Some(hi))
    }
    fn kept(&self, mask: &Tensor) -> Result<Tensor> {
        keep(self, mask)
    }
    fn max_with(&self, other: &Tensor) -> Result<Tensor> {
        maximum(self, other)
    }
    fn min_with(&self, other: &Tensor) -> Result<Tensor> {
        minimum(self, other)
    }
}

fn extremum(a: &Tensor, b: &Tensor, which: Extremum) -> Result<Tensor> {
    if !fusable(&[a, b]) || a.dims() != b.dims() || a.dtype() != b.dtype() {
        return match which {
            Extremum::Max => a.broadcast_maximum(b),
            Extremum::Min => a.broadcast_minimum(b),
        };
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, which)
}

fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64))
}

/// The contiguous values of a CPU storage.
fn values<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    storage_slice(s, l, "fused op")
}

/// An element-wise function of one, two or three values. `at` must be `#[inline(always)]`: it
/// is then compiled into each instruction set's copy of the loop (see `fastmath::Kernel`).
trait Elementwise: Sync {
    fn at<T: WithDType>(&self, a: T, b: T, c: T) -> T;
}

/// `out[i] = f(a[i], b[i], c[i])` (unused inputs are empty slices, read as 0), compiled for the
/// widest vector instructions the CPU has.
struct Apply<'a, T, F> {
    f: &'a F,
    inputs: [&'a [T]; 3],
    out: &'a mut [T],
}

impl<T: WithDType, F: Elementwise> Kernel for Apply<'_, T, F> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let [a, b, c] = self.inputs;
        let zero = T::from_f64(0.0);
        match (b.is_empty(), c.is_empty()) {
            (true, _) => {
                for (o, &a) in self.out.iter_mut().zip(a) {
                    *o = self.f.at(a, zero, zero);
                }
            }
            (false, true) => {
                for ((o, &a), &b) in self.out.iter_mut().zip(a).zip(b) {
                    *o = self.f.at(a, b, zero);
                }
            }
            (false, false) => {
                for (((o, &a), &b), &c) in self.out.iter_mut().zip(a).zip(b).zip(c) {
                    *o = self.f.at(a, b, c);
                }
            }
        }
    }
}

/// `x[start..start + n]`, or `x` itself when it is empty (an unused input).
fn part<T>(x: &[T], start: usize, n: usize) -> &[T] {
    if x.is_empty() { x } else { &x[start..start + n] }
}

/// `f` over up to three slices of `a`'s length, element-wise; in parallel for large tensors.
fn map<T: WithDType, F: Elementwise>(f: &F, a: &[T], b: &[T], c: &[T]) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); a.len()];
    let serial = a.len() < SERIAL;
    crate::host::each_chunk(&mut out, SERIAL / 4, serial, |i, out| {
        let (start, n) = (i * (SERIAL / 4), out.len());
        let inputs = [part(a, start, n), part(b, start, n), part(c, start, n)];
        fastmath::dispatch(Apply { f, inputs, out })
    });
    out
}

/// candle's `maximum`/`minimum` kernels.
#[inline(always)]
fn max_of<T: WithDType>(a: T, b: T) -> T {
    if a < b { b } else { a }
}
#[inline(always)]
fn min_of<T: WithDType>(a: T, b: T) -> T {
    if a > b { b } else { a }
}

/// The gradient share of one side of a max/min whose result is `node`: candle's
/// `[node = side] · g / ([node = other] + 1)`, with the division by 1 or 2 as the (exact)
/// multiplication by 1 or ½.
#[inline(always)]
fn share<T: WithDType>(node: T, side: T, other: T, g: T) -> T {
    let mine = if node == side { T::from_f64(1.0) } else { T::from_f64(0.0) };
    let v = mine * g;
    let v = if node == other { v * T::from_f64(0.5) } else { v };
    // candle adds each share to a zero-filled gradient: the same `+ 0` turns −0 into +0.
    T::from_f64(0.0) + v
}

/// Dispatches `$body` with `$t` bound to the element type of storage `$s`.
macro_rules! by_dtype {
    ($s:expr, $t:ident => $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => bail!("fused op: only f32 and f64"),
        }
    };
}

/// A forward over two same-shape inputs, element by element with `$f` (an `Elementwise`), as a
/// custom op's `cpu_fwd` result.
macro_rules! binary_fwd {
    ($s1:expr, $l1:expr, $s2:expr, $l2:expr, $f:expr) => {{
        let out = by_dtype!($s1, T => {
            let (x, y) = (values::<T>($s1, $l1)?, values::<T>($s2, $l2)?);
            T::to_cpu_storage_owned(map($f, x, y, &[]))
        });
        Ok((out, $l1.shape().clone()))
    }};
}

#[derive(Clone, Copy)]
struct Clamp {
    lo: Option<f64>,
    hi: Option<f64>,
}

impl Clamp {
    #[inline(always)]
    fn forward<T: WithDType>(&self, x: T) -> T {
        let y = self.lo.map_or(x, |lo| max_of(x, T::from_f64(lo)));
        self.hi.map_or(y, |hi| min_of(y, T::from_f64(hi)))
    }

    /// The gradient at `x` given the output's gradient `g`, as candle's two steps compute it.
    #[inline(always)]
    fn backward<T: WithDType>(&self, x: T, g: T) -> T {
        let y = self.lo.map_or(x, |lo| max_of(x, T::from_f64(lo)));
        let g = match self.hi {
            Some(hi) => share(min_of(y, T::from_f64(hi)), y, T::from_f64(hi), g),
            None => g,
        };
        match self.lo {
            Some(lo) => share(y, x, T::from_f64(lo), g),
            None => g,
        }
    }
}

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "fused-clamp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = by_dtype!(s, T => {
            let x = values::<T>(s, l)?;
            T::to_cpu_storage_owned(map(self, x, &[], &[]))
        });
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &ClampGrad(*self))?))
    }
}

/// `(x, g) ↦ ∂clamp(x)·g`.
struct ClampGrad(Clamp);

impl CustomOp2 for ClampGrad {
    fn name(&self) -> &'static str {
        "fused-clamp-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        binary_fwd!(s1, l1, s2, l2, self)
    }
}

/// `(x, m) ↦ m ≠ 0 ? x : 0`; its own backward with the output's gradient as `x`.
struct Keep;

impl CustomOp2 for Keep {
    fn name(&self) -> &'static str {
        "fused-keep"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        binary_fwd!(s1, l1, s2, l2, self)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.contiguous()?.apply_op2_no_bwd(mask, &Keep)?), None))
    }
}

#[derive(Clone, Copy)]
enum Extremum {
    Max,
    Min,
}

impl Extremum {
    #[inline(always)]
    fn of<T: WithDType>(self, a: T, b: T) -> T {
        match self {
            Extremum::Max => max_of(a, b),
            Extremum::Min => min_of(a, b),
        }
    }
}

impl CustomOp2 for Extremum {
    fn name(&self) -> &'static str {
        match self {
            Extremum::Max => "fused-maximum",
            Extremum::Min => "fused-minimum",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        binary_fwd!(s1, l1, s2, l2, self)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let ga = a.apply_op3_no_bwd(b, &grad, &ExtremumGrad { which: *self, first: true })?;
        let gb = a.apply_op3_no_bwd(b, &grad, &ExtremumGrad { which: *self, first: false })?;
        Ok((Some(ga), Some(gb)))
    }
}

/// `(a, b, g) ↦` the gradient share of `a` (or of `b`) in `max(a, b)` (or `min`).
struct ExtremumGrad {
    which: Extremum,
    first: bool,
}

impl CustomOp3 for ExtremumGrad {
    fn name(&self) -> &'static str {
        "fused-extremum-grad"
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
        let out = by_dtype!(s1, T => {
            let (a, b, g) = (values::<T>(s1, l1)?, values::<T>(s2, l2)?, values::<T>(s3, l3)?);
            T::to_cpu_storage_owned(map(self, a, b, g))
        });
        Ok((out, l1.shape().clone()))
    }
}

impl Elementwise for Clamp {
    #[inline(always)]
    fn at<T: WithDType>(&self, x: T, _: T, _: T) -> T {
        self.forward(x)
    }
}

impl Elementwise for ClampGrad {
    #[inline(always)]
    fn at<T: WithDType>(&self, x: T, g: T, _: T) -> T {
        self.0.backward(x, g)
    }
}

impl Elementwise for Keep {
    #[inline(always)]
    fn at<T: WithDType>(&self, x: T, m: T, _: T) -> T {
        if m != T::from_f64(0.0) { x } else { T::from_f64(0.0) }
    }
}

impl Elementwise for Extremum {
    #[inline(always)]
    fn at<T: WithDType>(&self, a: T, b: T, _: T) -> T {
        self.of(a, b)
    }
}

impl Elementwise for ExtremumGrad {
    #[inline(always)]
    fn at<T: WithDType>(&self, a: T, b: T, g: T) -> T {
        let node = self.which.of(a, b);
        if self.first { share(node, a, b, g) } else { share(node, b, a, g) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values with ties at the bounds, at ±20, infinities and NaN.
    fn awkward(dtype: DType) -> Tensor {
        let v = [-30.0, -20.0, -1.5, -0.2, 0.0, 0.2, 0.2, 1.0, 20.0, 25.0, f64::NAN, f64::INFINITY];
        Tensor::new(&v, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    /// Value and gradient of `f` under a weighted sum, fused and composed.
    fn both(
        x: &Tensor,
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        composed: impl Fn(&Tensor) -> Result<Tensor>,
    ) {
        let w = Tensor::arange(1.0, 1.0 + x.elem_count() as f64, &Device::Cpu)
            .unwrap()
            .to_dtype(x.dtype())
            .unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let v = Var::from_tensor(x).unwrap();
            let y = f(v.as_tensor()).unwrap();
            let g = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(v.as_tensor()).unwrap().clone())
        };
        let ((yf, gf), (yc, gc)) = (run(&fused), run(&composed));
        assert_eq!(bits(&yf), bits(&yc), "values");
        assert_eq!(bits(&gf), bits(&gc), "gradients");
    }

    #[test]
    fn clamp_equals_candle_bit_for_bit() {
        for dtype in [DType::F32, DType::F64] {
            let x = awkward(dtype);
            both(&x, |x| x.clamped(-20.0, 20.0), |x| x.clamp(-20.0, 20.0));
            both(&x, |x| x.clamped(0.2, 0.2), |x| x.clamp(0.2, 0.2));
            both(&x, |x| clamp(x, Some(0.0), None), |x| x.maximum(0.0));
            both(&x, |x| clamp(x, None, Some(1.0)), |x| x.minimum(1.0));
        }
    }

    #[test]
    fn keep_equals_where_cond_and_stops_nan() {
        for dtype in [DType::F32, DType::F64] {
            let x = awkward(dtype);
            let m = Tensor::new(
                &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            both(&x, |x| keep(x, &m), |x| m.ne(0.0)?.where_cond(x, &x.zeros_like()?));
            let kept = keep(&x, &m).unwrap().sum_all().unwrap();
            assert!(kept.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap().is_finite());
        }
    }

    #[test]
    fn extrema_equal_candle_bit_for_bit_for_both_sides() {
        for dtype in [DType::F32, DType::F64] {
            let a = awkward(dtype);
            let v = [25.0, -20.0, 0.2, -0.2, 0.0, 0.2, 1.0, 1.0, f64::NAN, 25.0, 1.0, -1.0];
            let b = Tensor::new(&v, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            both(&a, |a| maximum(a, &b), |a| a.maximum(&b));
            both(&a, |a| minimum(a, &b), |a| a.minimum(&b));
            both(&b, |b| maximum(&a, b), |b| a.maximum(b));
            both(&b, |b| minimum(&a, b), |b| a.minimum(b));
            // A tie everywhere: half the gradient each.
            both(&a, |a| maximum(a, &a.detach()), |a| a.maximum(&a.detach()));
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = Tensor::new(&[-3.0f64, -0.5, 0.1, 0.7, 2.5], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0.3f64, -0.4, 0.6, 0.2, 3.0], &Device::Cpu).unwrap();
        let m = Tensor::new(&[1.0f64, 0.0, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
        type F = fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;
        let cases: [F; 4] = [
            |x, _, _| x.clamped(-1.0, 1.0),
            |x, _, m| keep(x, m),
            |x, y, _| maximum(x, y)?.sqr(),
            |x, y, _| minimum(x, y)?.sqr(),
        ];
        for f in cases {
            let v = Var::from_tensor(&x).unwrap();
            let g = f(v.as_tensor(), &y, &m).unwrap().sum_all().unwrap().backward().unwrap();
            let g = g.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
            let h = 1e-6;
            for i in 0..5 {
                let at = |d: f64| {
                    let mut xs = x.to_vec1::<f64>().unwrap();
                    xs[i] += d;
                    let xt = Tensor::new(xs, &Device::Cpu).unwrap();
                    f(&xt, &y, &m).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!((fd - g[i]).abs() < 1e-6, "element {i}: fd {fd} vs {}", g[i]);
            }
        }
    }

    #[test]
    fn large_tensors_take_the_parallel_path_with_the_same_values() {
        let x = Tensor::randn(0.0f32, 30.0, (SERIAL + 123,), &Device::Cpu).unwrap();
        both(&x, |x| x.clamped(-20.0, 20.0), |x| x.clamp(-20.0, 20.0));
        // Two inputs forward, three backward (values, other side, gradient).
        let other = |x: &Tensor| x.affine(-0.5, 3.0);
        both(&x, |x| x.max_with(&other(x)?), |x| x.broadcast_maximum(&other(x)?));
    }
}
