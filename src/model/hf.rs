//! Hugging Face checkpoint directories: reading `config.json` and the weights
//! (`model.safetensors`, or shards listed by `model.safetensors.index.json`), and writing a
//! trained policy back in the same layout — with LoRA merged into the weights — and LoRA
//! adapters in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`) in a
//! directory of their own, read back over their base.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

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
    /// The dtype the weights are stored in (the config's, else the first weight's).
    pub dtype: DType,
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
    let mut stored = None;
    for file in weight_files(dir)? {
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        for (name, t) in tensors {
            // Some older checkpoints store the rotary table; rlx computes it from the config.
            if name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            stored.get_or_insert(t.dtype());
            let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
            weights.insert(name, t);
        }
    }
    // Tied models use the embedding; transformers ignores a stored copy of the head.
    if cfg.tie_word_embeddings && cfg.classifier_labels().is_none() {
        weights.remove("lm_head.weight");
    }
    let expected = expected_shapes(&cfg);
    // A weight the config does not account for belongs to an architecture variant rlx does not
    // implement (or a bias transformers would ignore): using or dropping it silently would
    // give logits that differ from transformers'.
    if let Some(extra) = weights.keys().find(|k| !expected.iter().any(|(n, _)| n == *k)) {
        return Err(format!(
            "{}: the checkpoint has a weight `{extra}` that config.json's `{}` architecture does not use{}",
            dir.display(),
            cfg.model_type,
            if extra.ends_with(".bias") {
                " (check `attention_bias` / `mlp_bias` in config.json)"
            } else {
                ""
            }
        ));
    }
    for (name, shape) in expected {
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
    let dtype = declared_dtype(&raw_config).or(stored).unwrap_or(DType::F32);
    Ok(Checkpoint { cfg, raw_config, weights, dtype })
}

/// Which linear layers of a block have biases, as transformers builds each family: Qwen2 always
/// on q/k/v; Llama and Qwen3 on q/k/v/o when `attention_bias`; Llama's MLP when `mlp_bias`;
/// Mistral never.
fn biased(cfg: &HfConfig, module: &str) -> bool {
    let attention = ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&module);
    match cfg.model_type.as_str() {
        "qwen2" => attention && module != "o_proj",
        "llama" => (attention && cfg.attention_bias) || (!attention && cfg.mlp_bias),
        "qwen3" => attention && cfg.attention_bias,
        _ => false,
    }
}

/// Every weight a checkpoint must have for its config, with its shape — and no other: the
/// config decides the architecture, as in transformers.
pub fn expected_shapes(cfg: &HfConfig) -> Vec<(String, Vec<usize>)> {
    let (d, v, ff) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (qd, kvd, dh) =
        (cfg.num_attention_heads * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim(), cfg.head_dim());
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
            if biased(cfg, m) {
                out.push((format!("{}.bias", module_path(l, m)), vec![rows]));
            }
        }
        if qk_norm {
            out.push((p("self_attn.q_norm.weight"), vec![dh]));
            out.push((p("self_attn.k_norm.weight"), vec![dh]));
        }
    }
    out.push(("model.norm.weight".into(), vec![d]));
    match cfg.classifier_labels() {
        // transformers' `*ForSequenceClassification`: `score = Linear(hidden, labels, bias=False)`
        // over the trunk, and no LM head.
        Some(labels) => out.push(("score.weight".into(), vec![labels, d])),
        None if !cfg.tie_word_embeddings => out.push(("lm_head.weight".into(), vec![v, d])),
        None => {}
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

/// Files of the source directory that describe the tokenizer, its chat templates and
/// generation, copied as they are: every place transformers 4 and 5 read them from.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];
/// transformers 5's folder of named chat templates besides the default.
const CHAT_TEMPLATE_DIR: &str = "additional_chat_templates";

/// The name transformers gives a dtype in `config.json`.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// The dtype a config declares (`dtype` in transformers 5, `torch_dtype` before).
pub fn declared_dtype(raw_config: &Value) -> Option<DType> {
    let name = raw_config["dtype"].as_str().or_else(|| raw_config["torch_dtype"].as_str())?;
    match name {
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        "float32" => Some(DType::F32),
        _ => None,
    }
}

/// Writes a trained model as a HF checkpoint in `out`: `config.json`, `model.safetensors` in
/// `dtype` with any LoRA update merged, and the source's tokenizer files. `weights` holds the
/// trunk and LM head by HF name, plus `*.lora_A/B.weight` adapters. The adapter itself goes to
/// its own directory (`save_adapter`): beside merged weights, PEFT would apply it twice.
pub fn save(
    out: &Path,
    source: &Path,
    raw_config: &Value,
    cfg: &HfConfig,
    weights: &BTreeMap<String, Tensor>,
    lora: Option<&LoraSpec>,
    dtype: DType,
) -> Result<(), String> {
    let err = |e: candle_core::Error| e.to_string();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut merged: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, t) in weights {
        // A classifier's score head is part of its layout; rlx's own heads are not.
        let own_head = name.starts_with("score.") && cfg.classifier_labels().is_none();
        if name.contains(".lora_") || name.starts_with("value.") || own_head {
            continue;
        }
        if name == "lm_head.weight" && cfg.tie_word_embeddings {
            continue;
        }
        merged.insert(name.clone(), t.to_dtype(DType::F32).map_err(err)?);
    }
    if let Some(spec) = lora {
        for (module, a, b) in adapter_pairs(cfg, spec, weights)? {
            let w_name = format!("{module}.weight");
            let w = merged.get(&w_name).ok_or_else(|| format!("no weight `{w_name}`"))?;
            let delta = (b.matmul(a).map_err(err)? * spec.scale()).map_err(err)?;
            merged.insert(w_name, (w + delta).map_err(err)?);
        }
    }
    // Rounded once, after merging in f32.
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in merged {
        tensors.insert(name, t.to_dtype(dtype).map_err(err)?.contiguous().map_err(err)?);
    }
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).map_err(err)?;
    // One dtype, under both names: transformers 5 reads `dtype`, older readers `torch_dtype`.
    let mut config = raw_config.clone();
    config["dtype"] = dtype_name(dtype).into();
    config["torch_dtype"] = dtype_name(dtype).into();
    write_json(&out.join("config.json"), &config)?;
    copy_tokenizer_files(source, out)
}

/// The `(module, A, B)` adapter tensors of every targeted module.
fn adapter_pairs<'w>(
    cfg: &HfConfig,
    spec: &LoraSpec,
    weights: &'w BTreeMap<String, Tensor>,
) -> Result<Vec<(String, &'w Tensor, &'w Tensor)>, String> {
    lora_names(cfg, spec)
        .into_iter()
        .map(|(module, a_name, b_name)| match (weights.get(&a_name), weights.get(&b_name)) {
            (Some(a), Some(b)) => Ok((module, a, b)),
            _ => Err(format!("the model has no LoRA adapter for `{module}`")),
        })
        .collect()
}

/// PEFT's prefix for a causal LM's adapter weights.
const PEFT_PREFIX: &str = "base_model.model.";

/// Writes a LoRA adapter in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`)
/// over the base checkpoint in `base`, which `adapter_config.json` names by absolute path so
/// `AutoPeftModelForCausalLM.from_pretrained(out)` and `pretrained(out)` find it from anywhere.
pub fn save_adapter(
    out: &Path,
    base: &Path,
    cfg: &HfConfig,
    weights: &BTreeMap<String, Tensor>,
    spec: &LoraSpec,
) -> Result<(), String> {
    let err = |e: candle_core::Error| e.to_string();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut adapter: HashMap<String, Tensor> = HashMap::new();
    for (module, a, b) in adapter_pairs(cfg, spec, weights)? {
        for (suffix, t) in [("lora_A", a), ("lora_B", b)] {
            let t = t.to_dtype(DType::F32).map_err(err)?.contiguous().map_err(err)?;
            adapter.insert(format!("{PEFT_PREFIX}{module}.{suffix}.weight"), t);
        }
    }
    candle_core::safetensors::save(&adapter, out.join("adapter_model.safetensors")).map_err(err)?;
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    let adapter_config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "inference_mode": true,
        "target_modules": spec.targets,
        "base_model_name_or_path": base.display().to_string(),
    });
    write_json(&out.join("adapter_config.json"), &adapter_config)
}

/// A PEFT LoRA adapter directory: its base checkpoint, its settings, and its tensors by rlx's
/// names (`MODULE.lora_A.weight`).
pub struct Adapter {
    pub base: PathBuf,
    pub spec: LoraSpec,
    pub tensors: BTreeMap<String, Tensor>,
}

/// Whether `dir` holds a PEFT adapter rather than a full checkpoint.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").exists() && !dir.join("config.json").exists()
}

/// The base checkpoint directory an adapter's `adapter_config.json` names; a relative path is
/// relative to the adapter, then to the working directory.
pub fn adapter_base(dir: &Path) -> Result<PathBuf, String> {
    let config_path = dir.join("adapter_config.json");
    let cfg = read_json(&config_path)?;
    let base = cfg["base_model_name_or_path"]
        .as_str()
        .ok_or_else(|| format!("{}: no `base_model_name_or_path`", config_path.display()))?;
    [dir.join(base), PathBuf::from(base)]
        .into_iter()
        .find(|p| p.join("config.json").exists())
        .ok_or_else(|| {
            format!(
                "{}: the base model `{base}` is not a local checkpoint directory",
                config_path.display()
            )
        })
}

/// Reads a PEFT LoRA adapter directory. Settings rlx does not implement are refused.
pub fn load_adapter(dir: &Path, device: &Device) -> Result<Adapter, String> {
    let config_path = dir.join("adapter_config.json");
    let cfg = read_json(&config_path)?;
    let fail = |m: String| format!("{}: {m}", config_path.display());
    if cfg["peft_type"].as_str() != Some("LORA") {
        return Err(fail(format!(
            "peft_type {} is not supported (rlx reads LORA)",
            cfg["peft_type"]
        )));
    }
    for (key, off) in [
        ("use_dora", json!(false)),
        ("use_rslora", json!(false)),
        ("fan_in_fan_out", json!(false)),
        ("bias", json!("none")),
    ] {
        if let Some(v) = cfg.get(key).filter(|v| !v.is_null() && **v != off) {
            return Err(fail(format!("`{key}: {v}` is not supported")));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if cfg[key].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(fail(format!("`{key}` (per-module ranks) is not supported")));
        }
    }
    if !cfg["modules_to_save"].is_null() || !cfg["layers_to_transform"].is_null() {
        return Err(fail("`modules_to_save` / `layers_to_transform` are not supported".into()));
    }
    let rank = cfg["r"].as_u64().filter(|r| *r > 0).ok_or_else(|| fail("no rank `r`".into()))?;
    let alpha = cfg["lora_alpha"].as_f64().unwrap_or(8.0);
    let targets: Vec<String> = match &cfg["target_modules"] {
        Value::Array(a) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        Value::String(s) if s == "all-linear" => {
            LINEAR_MODULES.iter().map(|m| m.to_string()).collect()
        }
        other => return Err(fail(format!("target_modules {other} is not supported"))),
    };
    if let Some(t) = targets.iter().find(|t| !LINEAR_MODULES.contains(&t.as_str())) {
        return Err(fail(format!("target module `{t}` is not a linear layer rlx adapts")));
    }
    let base = adapter_base(dir)?;
    let file = dir.join("adapter_model.safetensors");
    let raw = candle_core::safetensors::load(&file, device)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut tensors = BTreeMap::new();
    for (name, t) in raw {
        // PEFT names `base_model.model.MODULE.lora_A.weight`, some versions with `.default`.
        let short = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name).replace(".default.", ".");
        let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
        tensors.insert(short, t);
    }
    Ok(Adapter { base, spec: LoraSpec { rank: rank as usize, alpha, targets }, tensors })
}

/// Copies the source's tokenizer and chat-template files into `out`.
pub fn copy_tokenizer_files(source: &Path, out: &Path) -> Result<(), String> {
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("{}: {e}", from.display()))
    };
    for f in TOKENIZER_FILES {
        let from = source.join(f);
        if from.exists() {
            copy(&from, &out.join(f))?;
        }
    }
    let templates = source.join(CHAT_TEMPLATE_DIR);
    if templates.is_dir() {
        let to = out.join(CHAT_TEMPLATE_DIR);
        std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
        let entries =
            std::fs::read_dir(&templates).map_err(|e| format!("{}: {e}", templates.display()))?;
        for entry in entries.flatten() {
            if entry.path().is_file() {
                copy(&entry.path(), &to.join(entry.file_name()))?;
            }
        }
    }
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}
