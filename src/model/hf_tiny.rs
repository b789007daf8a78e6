//! Tiny random Hugging Face checkpoints of each supported family, written exactly as HF writes
//! them (config.json, safetensors — sharded with an index when asked — tokenizer.json with a
//! byte-level BPE, a ChatML chat template), in either of transformers' layouts: 4.x
//! (`rope_theta`/`rope_scaling`, `torch_dtype`, the template in tokenizer_config.json) or 5.x
//! (`rope_parameters`, `dtype`, the template in chat_template.jinja). Tests check rlx against
//! independent implementations on them, and `rlx tiny-checkpoint` lets a user try the
//! pretrained-model path without downloading anything.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use super::hf::expected_shapes;
use super::hf_config::HfConfig;
use crate::rng::Rng;

/// The families `write` can produce: the four model types, and SmolLM (Llama with tied
/// embeddings).
pub const TINY_FAMILIES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "smollm"];

/// Special tokens after the 256 byte tokens.
const SPECIALS: [&str; 4] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"];
const BOS_ID: usize = 259;
const EOS_ID: usize = 256;
/// Padded past the tokenizer's 260 tokens, as real checkpoints pad their embedding tables.
const VOCAB: usize = 272;

/// GPT-2's byte → printable character table of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).expect("valid char");
    }
    table
}

/// A byte-level BPE `tokenizer.json` (no merges: one token per byte) with the special tokens;
/// with `bos`, a post-processor that prepends `<|begin_of_text|>` as Llama 3's does.
pub fn tokenizer_json(bos: bool) -> String {
    let mut vocab = serde_json::Map::new();
    for (i, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
        "use_regex": true});
    let post = if bos {
        json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": SPECIALS[3], "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": SPECIALS[3], "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {SPECIALS[3]: {"id": SPECIALS[3], "ids": [BOS_ID],
                "tokens": [SPECIALS[3]]}}})
    } else {
        byte_level.clone()
    };
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": post,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    serde_json::to_string_pretty(&doc).expect("JSON")
}

/// ChatML, as Qwen's templates write one user turn.
pub const CHATML: &str = "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// The `config.json` of a tiny model of `family`.
pub fn config(family: &str) -> Result<Value, String> {
    let common = json!({
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "eos_token_id": EOS_ID, "torch_dtype": "float32",
    });
    let mut c = common;
    let set = |c: &mut Value, extra: Value| {
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
    };
    match family {
        "llama" => set(
            &mut c,
            json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "rope_theta": 500000.0, "tie_word_embeddings": false, "bos_token_id": BOS_ID,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
        ),
        "smollm" => set(
            &mut c,
            json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "rope_theta": 10000.0, "tie_word_embeddings": true, "bos_token_id": BOS_ID}),
        ),
        "mistral" => set(
            &mut c,
            json!({"model_type": "mistral",
            "architectures": ["MistralForCausalLM"], "rope_theta": 1000000.0,
            "sliding_window": 4096, "tie_word_embeddings": false, "bos_token_id": BOS_ID}),
        ),
        "qwen2" => set(
            &mut c,
            json!({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
            "rope_theta": 1000000.0, "tie_word_embeddings": true, "sliding_window": 512,
            "max_window_layers": 2, "use_sliding_window": false}),
        ),
        "qwen3" => set(
            &mut c,
            json!({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "rope_theta": 1000000.0, "tie_word_embeddings": false, "head_dim": 16,
            "attention_bias": false, "sliding_window": null, "max_window_layers": 2,
            "use_sliding_window": false}),
        ),
        other => {
            return Err(format!("unknown family `{other}`; use {}", TINY_FAMILIES.join(", ")));
        }
    }
    Ok(c)
}

/// Random weights for a config: matrices N(0, 0.1²), norms 1 + N(0, 0.1²), biases N(0, 0.1²).
pub fn random_weights(cfg: &HfConfig, seed: u64) -> Result<BTreeMap<String, Tensor>, String> {
    let mut rng = Rng::new(seed);
    let mut out = BTreeMap::new();
    for (name, shape) in expected_shapes(cfg) {
        let n: usize = shape.iter().product();
        let offset = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
        let data: Vec<f32> = (0..n).map(|_| (offset + 0.1 * rng.normal()) as f32).collect();
        let t =
            Tensor::from_vec(data, shape.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Which transformers release's file layout a checkpoint is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStyle {
    /// transformers 4.x: top-level `rope_theta` / `rope_scaling`, `torch_dtype`, the chat
    /// template inside tokenizer_config.json.
    V4,
    /// transformers 5.x: `rope_parameters`, `dtype`, the chat template in chat_template.jinja.
    V5,
}

/// What `write_tiny` writes.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub family: String,
    /// `tiny`, or `0.5b`.
    pub size: String,
    pub shards: usize,
    pub seed: u64,
    pub style: ConfigStyle,
    /// Store the weights in bfloat16 (config `dtype: bfloat16`), as most released models are.
    pub bf16: bool,
    /// A reward model: `*ForSequenceClassification` with one label and a score head instead of
    /// the LM head, padding = EOS (as reward models built on chat models usually are).
    pub reward_model: bool,
}

impl TinySpec {
    pub fn new(family: &str) -> TinySpec {
        TinySpec {
            family: family.into(),
            size: "tiny".into(),
            shards: 1,
            seed: 0,
            style: ConfigStyle::V4,
            bf16: false,
            reward_model: false,
        }
    }
}

/// Writes a tiny random checkpoint of `family` into `dir`, in `shards` safetensors files, in
/// transformers 4's layout.
pub fn write(dir: &Path, family: &str, shards: usize, seed: u64) -> Result<(), String> {
    write_tiny(dir, &TinySpec { shards, seed, ..TinySpec::new(family) })
}

/// A 4.x-layout config rewritten as transformers 5 saves it: the rotary settings moved into
/// `rope_parameters` and `torch_dtype` renamed `dtype`.
pub fn to_v5(config: &Value) -> Value {
    let mut c = config.clone();
    let obj = c.as_object_mut().expect("a config is an object");
    let mut rope = match obj.remove("rope_scaling") {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(kind) = rope.remove("type") {
        rope.entry("rope_type".to_string()).or_insert(kind);
    }
    rope.entry("rope_type".to_string()).or_insert("default".into());
    rope.insert("rope_theta".into(), obj.remove("rope_theta").unwrap_or(json!(10000.0)));
    obj.insert("rope_parameters".into(), Value::Object(rope));
    if let Some(dtype) = obj.remove("torch_dtype") {
        obj.insert("dtype".into(), dtype);
    }
    obj.insert("transformers_version".into(), json!("5.0.0"));
    c
}

/// Sizes besides `tiny`, for benchmarks: `small` is 6 layers of width 384 (6 heads over 2
/// key/value heads, MLP 1536) on the byte tokenizer's vocabulary, so it can be sampled and
/// decoded; `0.5b` has Qwen2.5-0.5B's shape (24 layers, width 896, 14 heads over 2 key/value
/// heads, MLP 4864, vocabulary 151 936, tied embeddings).
pub const SIZES: &[&str] = &["tiny", "small", "0.5b"];

/// Writes a random checkpoint as `spec` says.
pub fn write_tiny(dir: &Path, spec: &TinySpec) -> Result<(), String> {
    let family = spec.family.as_str();
    let mut config = config(family)?;
    match spec.size.as_str() {
        "tiny" => {}
        "small" => {
            for (k, v) in [
                ("hidden_size", json!(384)),
                ("intermediate_size", json!(1536)),
                ("num_hidden_layers", json!(6)),
                ("num_attention_heads", json!(6)),
                ("num_key_value_heads", json!(2)),
            ] {
                config[k] = v;
            }
            if config.get("max_window_layers").is_some() {
                config["max_window_layers"] = json!(6);
            }
            if family == "qwen3" {
                config["head_dim"] = json!(64);
            }
        }
        "0.5b" => {
            for (k, v) in [
                ("hidden_size", json!(896)),
                ("intermediate_size", json!(4864)),
                ("num_hidden_layers", json!(24)),
                ("num_attention_heads", json!(14)),
                ("num_key_value_heads", json!(2)),
                ("vocab_size", json!(151_936)),
                ("max_position_embeddings", json!(32768)),
                ("tie_word_embeddings", json!(true)),
            ] {
                config[k] = v;
            }
            if family == "qwen3" {
                config["head_dim"] = json!(64);
            }
        }
        other => return Err(format!("unknown size `{other}`; use {}", SIZES.join(", "))),
    }
    if spec.bf16 {
        config["torch_dtype"] = json!("bfloat16");
    }
    if spec.reward_model {
        let arch = config["architectures"][0]
            .as_str()
            .unwrap_or("")
            .replace("ForCausalLM", "ForSequenceClassification");
        config["architectures"] = json!([arch]);
        config["id2label"] = json!({"0": "LABEL_0"});
        config["label2id"] = json!({"LABEL_0": 0});
        config["pad_token_id"] = json!(EOS_ID);
    }
    let cfg = HfConfig::parse(&config.to_string())?;
    let mut weights = random_weights(&cfg, spec.seed)?;
    if spec.bf16 {
        for t in weights.values_mut() {
            *t = t.to_dtype(DType::BF16).map_err(|e| e.to_string())?;
        }
    }
    if spec.style == ConfigStyle::V5 {
        config = to_v5(&config);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{}: {e}", dir.display()))
    };
    write("config.json", serde_json::to_string_pretty(&config).expect("JSON"))?;
    let bos = config.get("bos_token_id").is_some();
    write("tokenizer.json", tokenizer_json(bos))?;
    let mut tok_config = json!({
        "eos_token": SPECIALS[0],
        "bos_token": if bos { Value::from(SPECIALS[3]) } else { Value::Null },
    });
    match spec.style {
        ConfigStyle::V4 => tok_config["chat_template"] = json!(CHATML),
        ConfigStyle::V5 => write("chat_template.jinja", CHATML.to_string())?,
    }
    write("tokenizer_config.json", serde_json::to_string_pretty(&tok_config).expect("JSON"))?;
    let names: Vec<&String> = weights.keys().collect();
    let shards = spec.shards.clamp(1, names.len());
    if shards == 1 {
        let map: HashMap<String, Tensor> = weights.clone().into_iter().collect();
        return candle_core::safetensors::save(&map, dir.join("model.safetensors"))
            .map_err(|e| e.to_string());
    }
    let mut weight_map = serde_json::Map::new();
    let per = names.len().div_ceil(shards);
    for (i, chunk) in names.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        let map: HashMap<String, Tensor> =
            chunk.iter().map(|n| ((*n).clone(), weights[*n].clone())).collect();
        candle_core::safetensors::save(&map, dir.join(&file)).map_err(|e| e.to_string())?;
        for n in chunk {
            weight_map.insert((*n).clone(), json!(file));
        }
    }
    write(
        "model.safetensors.index.json",
        serde_json::to_string_pretty(&json!({"metadata": {}, "weight_map": weight_map}))
            .expect("JSON"),
    )
}
