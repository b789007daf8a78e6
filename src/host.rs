//! CPU tensors read in place by the fused host code (AdamW's update, attention's bias).

use candle_core::{Result, Storage, Tensor};

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
