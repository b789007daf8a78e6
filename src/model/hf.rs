//! Hugging Face checkpoint directories: reading `config.json` and the weights
//! (`model.safetensors`, or shards listed by `model.safetensors.index.json`), and writing a
//! trained policy back in the same layout — with LoRA merged into the weights and the adapter
//! also saved in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use super::config::LoraSpec;
use super::hf_config::HfConfig;
use super::llama::{LINEAR_MODULES, module_path};

/// A checkpoint read from a directory.
pub struct Checkpoint {
    pub cfg: HfConfig,
    /// `config.json` as written, kept so a saved model carries every field.
    pub raw_config: Value,
    /// Every weight by its HF name, in f32 (training keeps f32 master weights).
    pub weights: BTreeMap<String, Tensor>,
}

/// A JSON file, with errors that name it.
pub(crate) fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The safetensors files of a directory: the shards of its index, or `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let doc = read_json(&index)?;
        let map = doc["weight_map"]
            .as_object()
            .ok_or_else(|| format!("{}: no `weight_map` object", index.display()))?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(format!(
        "{}: no model.safetensors or model.safetensors.index.json (rlx reads safetensors checkpoints; convert .bin files first)",
        dir.display()
    ))
}

/// Reads `config.json` and every weight, checking names and shapes against the config.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint, String> {
    if !dir.is_dir() {
        return Err(format!("model directory {} does not exist", dir.display()));
    }
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let cfg = HfConfig::parse(&text).map_err(|e| format!("{}: {e}", dir.display()))?;
    let raw_config: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut weights = BTreeMap::new();
    for file in weight_files(dir)? {
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        for (name, t) in tensors {
            // Some older checkpoints store the rotary table; rlx computes it from the config.
            if name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
            weights.insert(name, t);
        }
    }
    for (name, shape) in expected_shapes(&cfg, &weights) {
        match weights.get(&name) {
            None => {
                return Err(format!("{}: the checkpoint has no weight `{name}`", dir.display()));
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(format!(
                    "{}: `{name}` has shape {:?}, config.json implies {shape:?}",
                    dir.display(),
                    t.dims()
                ));
            }
            _ => {}
        }
    }
    Ok(Checkpoint { cfg, raw_config, weights })
}

/// Every weight a checkpoint must have for its config, with its shape. Biases and q/k norms
/// are required where the family has them (Qwen2; Llama with `attention_bias`; Qwen3) or
/// where the checkpoint has any.
pub fn expected_shapes(
    cfg: &HfConfig,
    present: &BTreeMap<String, Tensor>,
) -> Vec<(String, Vec<usize>)> {
    let (d, v, ff) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (qd, kvd, dh) =
        (cfg.num_attention_heads * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim(), cfg.head_dim());
    let qkv_bias =
        cfg.model_type == "qwen2" || present.contains_key("model.layers.0.self_attn.q_proj.bias");
    let qk_norm = cfg.model_type == "qwen3";
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
    for l in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        out.push((p("input_layernorm.weight"), vec![d]));
        out.push((p("post_attention_layernorm.weight"), vec![d]));
        for (m, shape) in [
            ("q_proj", vec![qd, d]),
            ("k_proj", vec![kvd, d]),
            ("v_proj", vec![kvd, d]),
            ("o_proj", vec![d, qd]),
            ("gate_proj", vec![ff, d]),
            ("up_proj", vec![ff, d]),
            ("down_proj", vec![d, ff]),
        ] {
            let rows = shape[0];
            out.push((format!("{}.weight", module_path(l, m)), shape));
            if qkv_bias && ["q_proj", "k_proj", "v_proj"].contains(&m) {
                out.push((format!("{}.bias", module_path(l, m)), vec![rows]));
            }
        }
        if qk_norm {
            out.push((p("self_attn.q_norm.weight"), vec![dh]));
            out.push((p("self_attn.k_norm.weight"), vec![dh]));
        }
    }
    out.push(("model.norm.weight".into(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, d]));
    }
    out
}

/// The LoRA adapters' names: `(module, A name, B name)` for every targeted module.
pub fn lora_names(cfg: &HfConfig, lora: &LoraSpec) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        for m in LINEAR_MODULES.iter().filter(|m| lora.targets.iter().any(|t| t == *m)) {
            let path = module_path(l, m);
            out.push((
                path.clone(),
                format!("{path}.lora_A.weight"),
                format!("{path}.lora_B.weight"),
            ));
        }
    }
    out
}

/// Files of the source directory that describe the tokenizer and generation, copied as they are.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Writes a trained model as a HF checkpoint in `out`: `config.json`, `model.safetensors` (f32,
/// LoRA merged), the source's tokenizer files, and with LoRA the adapter in PEFT's layout.
/// `weights` holds the trunk and LM head by HF name, plus `*.lora_A/B.weight` adapters.
pub fn save(
    out: &Path,
    source: &Path,
    raw_config: &Value,
    cfg: &HfConfig,
    weights: &BTreeMap<String, Tensor>,
    lora: Option<&LoraSpec>,
) -> Result<(), String> {
    let err = |e: candle_core::Error| e.to_string();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut merged: HashMap<String, Tensor> = HashMap::new();
    let mut adapter: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in weights {
        if name.contains(".lora_") || name.starts_with("value.") || name.starts_with("score.") {
            continue;
        }
        if name == "lm_head.weight" && cfg.tie_word_embeddings {
            continue;
        }
        merged
            .insert(name.clone(), t.to_dtype(DType::F32).map_err(err)?.contiguous().map_err(err)?);
    }
    if let Some(spec) = lora {
        for (module, a_name, b_name) in lora_names(cfg, spec) {
            let (Some(a), Some(b)) = (weights.get(&a_name), weights.get(&b_name)) else {
                return Err(format!("the model has no LoRA adapter for `{module}`"));
            };
            let w_name = format!("{module}.weight");
            let w = merged.get(&w_name).ok_or_else(|| format!("no weight `{w_name}`"))?;
            let delta = (b.matmul(a).map_err(err)? * spec.scale()).map_err(err)?;
            merged.insert(w_name, (w + delta).map_err(err)?);
            for (n, t) in [(&a_name, a), (&b_name, b)] {
                adapter.insert(format!("base_model.model.{n}"), t.contiguous().map_err(err)?);
            }
        }
        candle_core::safetensors::save(&adapter, out.join("adapter_model.safetensors"))
            .map_err(err)?;
        let adapter_config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": spec.rank,
            "lora_alpha": spec.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": spec.targets,
            "base_model_name_or_path": source.display().to_string(),
        });
        write_json(&out.join("adapter_config.json"), &adapter_config)?;
    }
    candle_core::safetensors::save(&merged, out.join("model.safetensors")).map_err(err)?;
    let mut config = raw_config.clone();
    config["torch_dtype"] = "float32".into();
    write_json(&out.join("config.json"), &config)?;
    for f in TOKENIZER_FILES {
        let from = source.join(f);
        if from.exists() {
            std::fs::copy(&from, out.join(f)).map_err(|e| format!("{}: {e}", from.display()))?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}
