//! A model directory, whatever it holds: a Llama-family Hugging Face checkpoint, a GPT-2-layout
//! one (what `rlx run` writes for its built-in models), or a PEFT LoRA adapter over either kind
//! of base. `check` reads only the small JSON files, for `rlx lint`; `open` reads the weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{LlamaSpec, ModelConfig};
use super::hf::{self, Adapter};
use super::hf_config::HfConfig;

/// A model read from a directory.
pub struct ModelDir {
    /// The directory with `config.json` and the tokenizer (an adapter's base).
    pub dir: PathBuf,
    /// The shape; a Llama family model starts with no LoRA and f32 compute.
    pub cfg: ModelConfig,
    /// `config.json` as written, so a saved model carries every field.
    pub raw_config: Value,
    /// Every weight in f32, by the names the trunk reads (HF names for the Llama family).
    pub weights: BTreeMap<String, Tensor>,
    /// The dtype the weights were stored in.
    pub dtype: DType,
    /// The adapter, when the directory given was one.
    pub adapter: Option<Adapter>,
}

/// What kind of model a `config.json` describes.
enum Kind {
    Llama,
    Gpt2,
}

fn kind_of(dir: &Path, raw: &Value, text: &str) -> Result<Kind, String> {
    let at = |e: String| format!("{}: {e}", dir.display());
    if raw["model_type"].as_str() == Some("gpt2") {
        return super::gpt2::parse_config(raw).map(|_| Kind::Gpt2).map_err(at);
    }
    HfConfig::parse(text).map(|_| Kind::Llama).map_err(at)
}

/// `config.json` of a checkpoint directory: its text, its document and its kind.
fn read_config(dir: &Path) -> Result<(Value, Kind), String> {
    if !dir.is_dir() {
        return Err(format!("model directory {} does not exist", dir.display()));
    }
    let path = dir.join("config.json");
    if !path.exists() {
        return Err(format!(
            "{} has no config.json (nor adapter_config.json): not a Hugging Face model directory",
            dir.display()
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let kind = kind_of(dir, &raw, &text)?;
    Ok((raw, kind))
}

/// Checks what can be checked without reading weights: the directory exists, its config (or
/// its adapter's config and base) parses and is supported, weights and a tokenizer are there.
pub fn check(dir: &Path) -> Result<(), String> {
    let base = if hf::is_adapter_dir(dir) { hf::adapter_base(dir)? } else { dir.to_path_buf() };
    read_config(&base)?;
    hf::weight_files(&base)?;
    if !base.join("tokenizer.json").exists() {
        return Err(format!("{} has no tokenizer.json", base.display()));
    }
    Ok(())
}

/// Reads a model directory, weights included.
pub fn open(dir: &Path, device: &Device) -> Result<ModelDir, String> {
    let (base, adapter) = if hf::is_adapter_dir(dir) {
        let a = hf::load_adapter(dir, device)?;
        (a.base.clone(), Some(a))
    } else {
        (dir.to_path_buf(), None)
    };
    let (raw, kind) = read_config(&base)?;
    let (cfg, weights, dtype) = match kind {
        Kind::Gpt2 => super::gpt2::load(&base, &raw, device)?,
        Kind::Llama => {
            let ck = hf::load(&base, device)?;
            let spec = LlamaSpec { hf: ck.cfg, lora: None, bf16: false };
            (ModelConfig::llama(spec), ck.weights, ck.dtype)
        }
    };
    if let Some(a) = &adapter {
        let crate::model::Family::Llama(spec) = &cfg.family else {
            return Err(format!(
                "{}: LoRA adapters are read over Llama-family models only",
                dir.display()
            ));
        };
        let expected = hf::lora_names(&spec.hf, &a.spec);
        let rank = a.spec.rank;
        for (module, a_name, b_name) in &expected {
            let (out, inp) =
                weights[&format!("{module}.weight")].dims2().map_err(|e| e.to_string())?;
            for (n, shape) in [(a_name, [rank, inp]), (b_name, [out, rank])] {
                match a.tensors.get(n) {
                    None => return Err(format!("{}: the adapter has no `{n}`", dir.display())),
                    Some(t) if t.dims() != shape => {
                        return Err(format!(
                            "{}: adapter `{n}` has shape {:?}, the base and r = {rank} imply {shape:?}",
                            dir.display(),
                            t.dims()
                        ));
                    }
                    _ => {}
                }
            }
        }
        if a.tensors.len() != 2 * expected.len() {
            return Err(format!(
                "{}: the adapter has tensors for modules its adapter_config.json does not target",
                dir.display()
            ));
        }
    }
    Ok(ModelDir { dir: base, cfg, raw_config: raw, weights, dtype, adapter })
}
