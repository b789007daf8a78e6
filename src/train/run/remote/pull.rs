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
use crate::train::run::Run;

/// What became of one model's weights.
pub(in crate::train::run) enum Pulled {
    /// Written to `dir`; `diff`: mean |Δ log p| per token against the server on the probe
    /// (`None`: a base rlx cannot put an adapter over, so not compared).
    Written { dir: PathBuf, diff: Option<f64> },
    /// The server hands out no weights.
    NotOffered,
}

impl Run<'_> {
    /// Pulls every trained model's last sampler snapshot (taken when its last stage ended).
    pub(in crate::train::run) fn remote_pull(&mut self) -> Result<Vec<(String, Pulled)>, String> {
        let names: Vec<String> = self.remote().models.keys().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            let Some(sampler) = self.remote().samplers.get(&name).cloned() else { continue };
            let label = self.remote().engine.label();
            let fail = |e: String| format!("pulling `{name}`'s adapter from {label}: {e}");
            let Some(bytes) = self.remote().engine.download(&sampler).map_err(&fail)? else {
                out.push((name, Pulled::NotOffered));
                continue;
            };
            let files = archive::unpack(&bytes).map_err(&fail)?;
            let dir = self.opts.out.join("adapters").join(&name);
            std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
            for (file, data) in &files {
                let path = dir.join(file);
                std::fs::write(&path, data)
                    .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            }
            let base = self.slots[&name].source.as_ref().map(|s| s.dir.clone());
            let llama = matches!(self.slots[&name].cfg.family, crate::model::Family::Llama(_));
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
            out.push((name, Pulled::Written { dir, diff }));
        }
        Ok(out)
    }

    /// Mean |Δ log p| per token between rlx's forward of the adapter in `dir` and the server's
    /// `sampler` on the probe.
    fn compare_pulled(&mut self, dir: &Path, sampler: &Sampler) -> Result<f64, String> {
        let Some(probe) = self.probe() else { return Ok(0.0) };
        let slot = crate::train::models::open_full(dir, &self.opts.device)?;
        let model = slot.frozen().map_err(|e| e.to_string())?;
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
        let modules = crate::model::hf::adapted_modules(&dir.join("adapter_model.safetensors"))?;
        cfg["target_modules"] = Json::from(modules);
    }
    let text = serde_json::to_string_pretty(&cfg).expect("JSON");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}
