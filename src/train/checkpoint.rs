//! Checkpoints: one safetensors file with every model and the optimiser moments, and a small
//! `state.json` that names it. Both are written to a temporary name and renamed, and the old
//! file is removed only after the new state points away from it, so a crash at any instant
//! leaves the last good checkpoint intact.

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
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn save(dir: &Path, state: &State, tensors: &[(String, Tensor)]) -> Result<(), String> {
    let file = format!("checkpoint-{}-{}.safetensors", state.stage, state.step);
    let path = dir.join(&file);
    let tmp = dir.join(format!("{file}.tmp"));
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, &tmp).map_err(|e| e.to_string())?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    let old = load_state(dir).ok().map(|s| s.file);
    let state = State { file: file.clone(), ..state.clone() };
    let json = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
    write_atomic(&dir.join("state.json"), json.as_bytes()).map_err(|e| e.to_string())?;
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

pub fn load(dir: &Path, device: &Device) -> Result<(State, BTreeMap<String, Tensor>), String> {
    let state = load_state(dir)?;
    let path: PathBuf = dir.join(&state.file);
    let tensors = candle_core::safetensors::load(&path, device)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((state, tensors.into_iter().collect()))
}
