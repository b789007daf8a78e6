//! CPU tensors and storages read in place by the fused host code (AdamW's update, the fused
//! ops' inputs, attention's bias, the executor's finiteness checks).

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::model::fastmath::{self, Kernel};

/// `f` over the f32 values of a CPU tensor, read in place when contiguous (a copy otherwise).
pub fn read_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
        }
    }
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&values))
}

/// Runs `body(index, chunk)` over `out`'s `n`-sized chunks: in this thread when `serial` (a
/// sampling step's small tensors, where handing work to the pool costs more than it saves),
/// else on the thread pool. Chunk `i` starts at `i · n`, so inputs are sliced the same way.
pub fn each_chunk<T: Send, F>(out: &mut [T], n: usize, serial: bool, body: F)
where
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if serial {
        out.chunks_mut(n).enumerate().for_each(|(i, c)| body(i, c));
    } else {
        out.par_chunks_mut(n).enumerate().for_each(|(i, c)| body(i, c));
    }
}

/// The values of a contiguous CPU storage as `T` (a fused op's input, made contiguous by its
/// caller); `op` names the op in the error otherwise.
pub fn storage_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: expects contiguous inputs")
    };
    Ok(&T::cpu_storage_as_slice(s)?[start..end])
}

/// Whether every value of a CPU float tensor is finite, read in place without allocating;
/// `None` where it cannot be read so (another device or dtype, a strided view).
pub fn all_finite(t: &Tensor) -> Option<bool> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return None;
    };
    match cpu {
        CpuStorage::F32(v) => Some(fastmath::dispatch(AllFinite32(&v[start..end]))),
        CpuStorage::F64(v) => Some(fastmath::dispatch(AllFinite64(&v[start..end]))),
        _ => None,
    }
}

// `x · 0` is ±0 for a finite x and NaN for NaN or ±inf, so a sum of them in independent lanes
// (vectorised like `fastmath::sum`) is 0 exactly when every value is finite.
struct AllFinite32<'a>(&'a [f32]);

impl Kernel for AllFinite32<'_> {
    type Output = bool;

    #[inline(always)]
    fn run(self) -> bool {
        let mut acc = [0f32; 16];
        let chunks = self.0.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|x| x * 0.0).sum();
        for c in chunks {
            for i in 0..16 {
                acc[i] += c[i] * 0.0;
            }
        }
        acc.iter().sum::<f32>() + tail == 0.0
    }
}

struct AllFinite64<'a>(&'a [f64]);

impl Kernel for AllFinite64<'_> {
    type Output = bool;

    #[inline(always)]
    fn run(self) -> bool {
        let mut acc = [0f64; 8];
        let chunks = self.0.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|x| x * 0.0).sum();
        for c in chunks {
            for i in 0..8 {
                acc[i] += c[i] * 0.0;
            }
        }
        acc.iter().sum::<f64>() + tail == 0.0
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn all_finite_finds_nan_and_infinities_in_either_float_type() {
        for dtype in [DType::F32, DType::F64] {
            let of = |v: &[f64]| Tensor::new(v, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            assert_eq!(super::all_finite(&of(&[0.0, -1e30, 3.5, f64::MIN_POSITIVE])), Some(true));
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert_eq!(super::all_finite(&of(&[1.0, bad, 2.0])), Some(false));
            }
        }
        // Long enough for the vector lanes and a tail: a bad value is found at every position.
        for dtype in [DType::F32, DType::F64] {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                for at in 0..37 {
                    let mut v: Vec<f64> = (0..37).map(|i| i as f64 * 1e30 - 1e31).collect();
                    let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype);
                    assert_eq!(super::all_finite(&t.unwrap()), Some(true));
                    v[at] = bad;
                    let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype);
                    assert_eq!(super::all_finite(&t.unwrap()), Some(false), "{bad} at {at}");
                }
            }
        }
        let ints = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
        assert_eq!(super::all_finite(&ints), None);
    }
}
