//! After a remote run: each trained model's final adapter brought back where the server hands
//! its weights out (SkyRL, hosted Tinker: the sampler snapshot's archive), written in PEFT's
//! layout to `adapters/NAME` over the recipe's own checkpoint — so `pretrained("RUN/adapters/
//! policy")`, transformers + PEFT and any other tool load it — and checked against the server:
//! rlx's forward of the pulled adapter must give the server's log-probabilities on a probe.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::BASE_TOLERANCE;
use crate::engine::Sampler;
use crate::engine::tinker::archive;
use crate::model::llama::LINEAR_MODULES;
use crate::train::run::Run;

/// What became of one model's weights.
pub(super) enum Pulled {
    /// Written to `dir`; `diff`: mean |Δ log p| per token against the server on the probe
    /// (`None`: a base rlx cannot put an adapter over, so not compared).
    Written { dir: PathBuf, diff: Option<f64> },
    /// The server hands out no weights.
    NotOffered,
}

impl Pulled {
    /// The run log's line.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Pulled::Written { dir, diff: Some(d) } => format!(
                "`{name}`'s adapter pulled to {} (PEFT layout); rlx's forward of it matches the server's to {d:.1e} nats per token on a probe",
                dir.display()
            ),
            Pulled::Written { dir, diff: None } => format!(
                "`{name}`'s adapter pulled to {} (PEFT layout; not compared: rlx reads adapters over Llama-family models)",
                dir.display()
            ),
            Pulled::NotOffered => {
                format!("`{name}`: the server hands out no weights to download; they stay on it")
            }
        }
    }
}

impl Run<'_> {
    /// Pulls `name`'s last sampler snapshot (taken as its last stage ended).
    pub(super) fn remote_pull(&mut self, name: &str) -> Result<Pulled, String> {
        let Some(sampler) = self.remote().samplers.get(name).cloned() else {
            return Ok(Pulled::NotOffered);
        };
        let label = self.remote().engine.label();
        let fail = |e: String| format!("pulling `{name}`'s adapter from {label}: {e}");
        let Some(bytes) = self.remote().engine.download(&sampler).map_err(&fail)? else {
            return Ok(Pulled::NotOffered);
        };
        let files = archive::unpack(&bytes).map_err(&fail)?;
        let dir = self.opts.out.join("adapters").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        for (file, data) in &files {
            let path = dir.join(file);
            std::fs::write(&path, data).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        }
        let base = self.slots[name].source.as_ref().map(|s| s.dir.clone());
        let llama = matches!(self.slots[name].cfg.family, crate::model::Family::Llama(_));
        retarget(&dir, base.as_deref()).map_err(&fail)?;
        let diff = match (&base, llama) {
            (Some(_), true) => Some(self.compare_pulled(&dir, &sampler).map_err(&fail)?),
            _ => None,
        };
        if let Some(d) = diff.filter(|d| d.is_nan() || *d > BASE_TOLERANCE) {
            return Err(fail(format!(
                "the adapter written to {} does not reproduce the server's model: on a probe their log-probabilities differ by {d:.3} per token on average (at most {BASE_TOLERANCE} is accepted); the server's own weights are named in state.json",
                dir.display()
            )));
        }
        Ok(Pulled::Written { dir, diff })
    }

    /// Mean |Δ log p| per token between rlx's forward of the adapter in `dir` and the server's
    /// `sampler` on the probe.
    fn compare_pulled(&mut self, dir: &Path, sampler: &Sampler) -> Result<f64, String> {
        let Some(probe) = self.probe() else { return Ok(0.0) };
        let model = crate::inspect::load(dir, false, &self.opts.device)?.model;
        let local = crate::engine::candle::text_logp(
            &model,
            std::slice::from_ref(&probe),
            &self.opts.device,
        )?;
        let remote = self.remote().engine.logp(None, sampler, std::slice::from_ref(&probe))?;
        Ok(super::mean_abs_diff(&local[0], &remote[0]))
    }
}

/// Points the adapter's `adapter_config.json` at the recipe's checkpoint (the server's base
/// is a path on the server, which the start-up probe found equal to it) and names its target
/// modules where the server wrote `null` (PEFT would fall back to its per-architecture
/// defaults and leave the MLP's adapters out).
fn retarget(dir: &Path, base: Option<&Path>) -> Result<(), String> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cfg: Json =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(base) = base {
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        cfg["base_model_name_or_path"] = Json::String(base.display().to_string());
    }
    if cfg["target_modules"].is_null() {
        let modules = adapted_modules(&dir.join("adapter_model.safetensors"))?;
        cfg["target_modules"] = Json::from(modules);
    }
    let text = serde_json::to_string_pretty(&cfg).expect("JSON");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The linear modules an adapter file has `lora_A` weights for, in rlx's order.
fn adapted_modules(file: &Path) -> Result<Vec<String>, String> {
    let names = safetensors_names(file)?;
    Ok(LINEAR_MODULES
        .iter()
        .filter(|m| names.iter().any(|n| n.contains(&format!(".{m}.lora_A"))))
        .map(|m| m.to_string())
        .collect())
}

/// The tensor names of a safetensors file, read from its header alone.
fn safetensors_names(file: &Path) -> Result<Vec<String>, String> {
    let fail = |e: String| format!("{}: {e}", file.display());
    let mut f = std::fs::File::open(file).map_err(|e| fail(e.to_string()))?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut len).map_err(|e| fail(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(fail(format!("a safetensors header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    std::io::Read::read_exact(&mut f, &mut header).map_err(|e| fail(e.to_string()))?;
    let header: Json = serde_json::from_slice(&header).map_err(|e| fail(e.to_string()))?;
    Ok(header
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SkyRL writes `target_modules: null` and its own path as the base: the pulled copy names
    /// the modules its tensors adapt, in rlx's order, and the recipe's checkpoint.
    #[test]
    fn a_pulled_adapter_config_names_its_modules_and_the_local_base() {
        let dir = tempfile::tempdir().unwrap();
        let t =
            candle_core::Tensor::zeros((2, 4), candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        let mut tensors = std::collections::HashMap::new();
        for m in ["mlp.down_proj", "self_attn.v_proj", "self_attn.q_proj"] {
            for ab in ["lora_A", "lora_B"] {
                tensors
                    .insert(format!("base_model.model.model.layers.0.{m}.{ab}.weight"), t.clone());
            }
        }
        candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors"))
            .unwrap();
        let cfg = r#"{"peft_type": "LORA", "r": 2, "base_model_name_or_path": "/server/base", "target_modules": null}"#;
        std::fs::write(dir.path().join("adapter_config.json"), cfg).unwrap();
        retarget(dir.path(), Some(dir.path())).unwrap();
        let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
        let cfg: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
        let base = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(cfg["base_model_name_or_path"], base.display().to_string());
        assert_eq!(cfg["r"], 2);
    }
}
