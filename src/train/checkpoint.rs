//! Checkpoints: one safetensors file with every model and the optimiser moments, and a small
//! `state.json` that names it with its CRC-32. Both are written to a temporary name and renamed,
//! and the old file is removed only after the new state points away from it, so a crash at any
//! instant leaves the last good checkpoint intact. A checkpoint holding a non-finite value is
//! never written, and one whose bytes changed on disk is refused on resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Where a run is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Stages finished so far.
    pub stage: usize,
    /// Optimiser steps (or RL iterations) done in the current stage.
    pub step: usize,
    /// Optimiser steps taken in the current stage (for the moments' bias correction).
    pub optim_steps: usize,
    pub rng: u64,
    /// The weights file (every model, the optimiser moments and `ref`), relative to the run
    /// directory.
    pub file: String,
    /// The run's seed.
    pub seed: u64,
    /// CRC-32 of the weights file, `crc32:XXXXXXXX` (absent in checkpoints of older versions).
    #[serde(default)]
    pub checksum: Option<String>,
    /// Seconds the run had been going at this checkpoint, so `wall` stays cumulative.
    #[serde(default)]
    pub wall: f64,
    /// A run on a Tinker server: where the server saved its models at this checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteCheckpoint>,
}

/// The server side of a checkpoint: the weights (and optimiser state) each trained model was
/// saved as, and `ref`'s sampler snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteCheckpoint {
    /// The server, as the run named it (no API key).
    pub server: String,
    /// Model name → the path the server's `load_weights` takes.
    pub models: BTreeMap<String, String>,
    pub reference: Option<String>,
    /// The weights of `ref`'s frozen copy (`None`: a fresh model over the base).
    #[serde(default)]
    pub reference_weights: Option<String>,
    /// Sampler snapshots of the models earlier stages trained.
    #[serde(default)]
    pub samplers: BTreeMap<String, String>,
}

/// `crc32:XXXXXXXX` of a file's bytes.
fn checksum(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("crc32:{:08x}", hasher.finalize()))
}

/// The first tensor holding NaN or inf (or values too large to sum), by name.
fn first_non_finite<'t>(
    tensors: impl IntoIterator<Item = (&'t String, &'t Tensor)>,
) -> Result<Option<String>, String> {
    for (name, t) in tensors {
        let sum = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.sum_all())
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(|e| e.to_string())?;
        if !sum.is_finite() {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    super::fault::point();
    std::fs::rename(&tmp, path)
}

pub fn save(dir: &Path, state: &State, tensors: &[(String, Tensor)]) -> Result<(), String> {
    if let Some(bad) = first_non_finite(tensors.iter().map(|(k, v)| (k, v)))? {
        return Err(format!(
            "`{bad}` is not finite: refusing to overwrite the last good checkpoint with it"
        ));
    }
    let file = format!("checkpoint-{}-{}.safetensors", state.stage, state.step);
    let path = dir.join(&file);
    let tmp = dir.join(format!("{file}.tmp"));
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, &tmp).map_err(|e| e.to_string())?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    // Of the bytes on disk, read back.
    let sum = checksum(&tmp)?;
    super::fault::point();
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    super::fault::point();
    let old = load_state(dir).ok().map(|s| s.file);
    let state = State { file: file.clone(), checksum: Some(sum), ..state.clone() };
    let json = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
    write_atomic(&dir.join("state.json"), json.as_bytes()).map_err(|e| e.to_string())?;
    super::fault::point();
    if let Some(old) = old.filter(|o| *o != file) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(())
}

pub fn load_state(dir: &Path) -> Result<State, String> {
    let text = std::fs::read_to_string(dir.join("state.json"))
        .map_err(|e| format!("{}: {e}", dir.join("state.json").display()))?;
    serde_json::from_str(&text).map_err(|e| format!("state.json: {e}"))
}

/// Reads the last checkpoint, verifying its checksum and that every value is finite.
pub fn load(dir: &Path, device: &Device) -> Result<(State, BTreeMap<String, Tensor>), String> {
    let state = load_state(dir)?;
    let path: PathBuf = dir.join(&state.file);
    if let Some(expected) = &state.checksum {
        let actual = checksum(&path)?;
        if &actual != expected {
            return Err(format!(
                "{} is corrupt: its checksum is {actual}, state.json recorded {expected}",
                path.display()
            ));
        }
    }
    let tensors: BTreeMap<String, Tensor> = candle_core::safetensors::load(&path, device)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_iter()
        .collect();
    if let Some(bad) = first_non_finite(&tensors)? {
        return Err(format!("{}: `{bad}` is not finite", path.display()));
    }
    Ok((state, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn state() -> State {
        State {
            stage: 0,
            step: 1,
            optim_steps: 1,
            rng: 7,
            file: String::new(),
            seed: 0,
            checksum: None,
            wall: 0.0,
            remote: None,
        }
    }

    #[test]
    fn a_checkpoint_with_a_non_finite_value_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let good = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        save(dir.path(), &state(), &[("w".into(), good)]).unwrap();
        let before = std::fs::read(dir.path().join("state.json")).unwrap();
        let bad = Tensor::new(&[1f32, f32::NAN], &Device::Cpu).unwrap();
        let next = State { step: 2, ..state() };
        let err = save(dir.path(), &next, &[("w".into(), bad)]).unwrap_err();
        assert!(err.contains("`w` is not finite"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("state.json")).unwrap(), before);
        assert!(!dir.path().join("checkpoint-0-2.safetensors").exists());
        assert_eq!(load(dir.path(), &Device::Cpu).unwrap().0.step, 1);
    }

    #[test]
    fn a_changed_byte_is_caught_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        save(dir.path(), &state(), &[("w".into(), t)]).unwrap();
        let (s, _) = load(dir.path(), &Device::Cpu).unwrap();
        assert!(s.checksum.as_deref().is_some_and(|c| c.starts_with("crc32:")));
        let path = dir.path().join(&s.file);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let err = load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(err.contains("is corrupt"), "{err}");
    }
}
