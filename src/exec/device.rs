//! The one place that creates a candle `Device`.

use candle_core::Device;

/// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when compiled in and present, else CPU).
pub fn device(pref: &str) -> Result<Device, String> {
    match pref {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(cuda(0).unwrap_or(Device::Cpu)),
        p if p == "cuda" || p.starts_with("cuda:") => {
            let ordinal = p
                .strip_prefix("cuda:")
                .map_or(Ok(0), |n| n.parse::<usize>().map_err(|_| format!("bad device `{p}`")))?;
            cuda(ordinal)
        }
        other => Err(format!("unknown device `{other}`: use cpu, cuda, cuda:N or auto")),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> Result<Device, String> {
    Err("this rlx was built without CUDA: rebuild with `cargo build --release --features cuda`"
        .into())
}
