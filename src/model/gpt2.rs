//! The built-in transformer in GPT-2's Hugging Face layout. The built-in model *is* GPT-2's
//! architecture — learned positions, pre-norm blocks with layer norm (ε 1e-5), fused q/k/v
//! projection, tanh-approximated GELU (`gelu_new`) MLP of 4× width — with an untied LM head, so
//! a trained built-in model is written as a `GPT2LMHeadModel` checkpoint that transformers
//! loads as it is, and GPT-2 checkpoints (rlx's own or others) read back into the built-in
//! trunk. Weights map one to one: GPT-2's `Conv1D` stores `[in, out]` as rlx does; only the LM
//! head is transposed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use super::config::{Family, ModelConfig};

/// rlx name, GPT-2 name and shape (rlx's `[in, out]`, which GPT-2's `Conv1D` shares) of every
/// trunk weight.
fn names(cfg: &ModelConfig) -> Vec<(String, String, Vec<usize>)> {
    let (d, v) = (cfg.width, cfg.vocab);
    let mut out = vec![
        ("tok.weight".to_string(), "transformer.wte.weight".to_string(), vec![v, d]),
        ("pos.weight".into(), "transformer.wpe.weight".into(), vec![cfg.context, d]),
    ];
    for l in 0..cfg.layers {
        for (ours, theirs, inp, outp) in [
            ("ln1", "ln_1", 0, d),
            ("attn.qkv", "attn.c_attn", d, 3 * d),
            ("attn.out", "attn.c_proj", d, d),
            ("ln2", "ln_2", 0, d),
            ("mlp.up", "mlp.c_fc", d, 4 * d),
            ("mlp.down", "mlp.c_proj", 4 * d, d),
        ] {
            let weight = if inp == 0 { vec![outp] } else { vec![inp, outp] };
            for (p, shape) in [("weight", weight), ("bias", vec![outp])] {
                out.push((
                    format!("h.{l}.{ours}.{p}"),
                    format!("transformer.h.{l}.{theirs}.{p}"),
                    shape,
                ));
            }
        }
    }
    for p in ["weight", "bias"] {
        out.push((format!("ln_f.{p}"), format!("transformer.ln_f.{p}"), vec![d]));
    }
    out
}

/// Special token ids the config records.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: u32,
}

/// The `config.json` of a built-in model: a `GPT2LMHeadModel`, or a
/// `GPT2ForSequenceClassification` with one label for a reward model.
pub fn config_json(cfg: &ModelConfig, specials: Specials, reward_model: bool) -> Value {
    json!({
        "model_type": "gpt2",
        "architectures": [if reward_model { "GPT2ForSequenceClassification" } else { "GPT2LMHeadModel" }],
        "vocab_size": cfg.vocab,
        "n_positions": cfg.context,
        "n_embd": cfg.width,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": false,
        "num_labels": 1,
        "bos_token_id": specials.bos,
        "eos_token_id": specials.eos,
        "pad_token_id": specials.pad,
        "dtype": "float32",
        "torch_dtype": "float32",
    })
}

/// Tensors by name, as `safetensors::save` takes them.
pub type Named = HashMap<String, Tensor>;

/// Weights in GPT-2's names: the trunk, the LM head as `[V, D]`, a reward model's score head
/// as `score.weight` `[1, D]`. Returns them with rlx's heads that GPT-2 has no place for (a
/// value head, the score bias), to be kept beside the checkpoint.
pub fn to_hf(cfg: &ModelConfig, w: &BTreeMap<String, Tensor>) -> Result<(Named, Named), String> {
    let err = |e: candle_core::Error| e.to_string();
    let mut out = HashMap::new();
    for (ours, theirs, _) in names(cfg) {
        let t = w.get(&ours).ok_or_else(|| format!("the model has no weight `{ours}`"))?;
        out.insert(theirs, t.to_dtype(DType::F32).map_err(err)?.contiguous().map_err(err)?);
    }
    let mut extra = HashMap::new();
    for (name, t) in w {
        let t = t.to_dtype(DType::F32).map_err(err)?;
        match name.as_str() {
            "lm_head.weight" => {
                out.insert(name.clone(), t.t().map_err(err)?.contiguous().map_err(err)?);
            }
            "score.weight" => {
                out.insert(name.clone(), t.t().map_err(err)?.contiguous().map_err(err)?);
            }
            n if n.starts_with("value.") || n == "score.bias" => {
                extra.insert(name.clone(), t.contiguous().map_err(err)?);
            }
            _ => {}
        }
    }
    Ok((out, extra))
}

/// File of rlx heads that GPT-2's classes do not have, beside `model.safetensors`.
pub const EXTRA_HEADS: &str = "rlx_heads.safetensors";

/// The built-in trunk's shape of a GPT-2 `config.json`. Settings that change the computation
/// away from the built-in trunk are refused.
pub fn parse_config(raw: &Value) -> Result<ModelConfig, String> {
    let int = |k: &str| -> Result<usize, String> {
        raw[k]
            .as_u64()
            .filter(|v| *v > 0)
            .map(|v| v as usize)
            .ok_or_else(|| format!("config.json: `{k}` must be a positive integer"))
    };
    let cfg = ModelConfig {
        vocab: int("vocab_size")?,
        layers: int("n_layer")?,
        width: int("n_embd")?,
        heads: int("n_head")?,
        context: int("n_positions")?,
        family: Family::Gpt,
        classifier_pad: None,
    };
    for (name, value, max) in [
        ("vocab_size", cfg.vocab, 1 << 24),
        ("n_embd", cfg.width, 1 << 18),
        ("n_layer", cfg.layers, 1 << 12),
        ("n_head", cfg.heads, 1 << 12),
        ("n_positions", cfg.context, 1 << 24),
    ] {
        if value > max {
            return Err(format!("config.json: {name} {value} is out of range (1 to {max})"));
        }
    }
    if !cfg.width.is_multiple_of(cfg.heads) {
        return Err(format!(
            "config.json: n_embd {} is not a multiple of n_head {}",
            cfg.width, cfg.heads
        ));
    }
    let act = raw["activation_function"].as_str().unwrap_or("gelu_new");
    let checks = [
        (
            ["gelu_new", "gelu_pytorch_tanh"].contains(&act),
            "activation_function other than gelu_new",
        ),
        (
            raw["n_inner"].is_null() || raw["n_inner"].as_u64() == Some(4 * cfg.width as u64),
            "n_inner other than 4 × n_embd",
        ),
        (
            raw["layer_norm_epsilon"].as_f64().is_none_or(|e| e == 1e-5),
            "layer_norm_epsilon other than 1e-5",
        ),
        (raw["scale_attn_weights"].as_bool() != Some(false), "scale_attn_weights = false"),
        (
            raw["scale_attn_by_inverse_layer_idx"].as_bool() != Some(true),
            "scale_attn_by_inverse_layer_idx",
        ),
    ];
    if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(format!("config.json: {what} is not supported"));
    }
    let pad = raw["pad_token_id"].as_u64().and_then(|p| u32::try_from(p).ok());
    Ok(ModelConfig { classifier_pad: if is_classifier(raw) { pad } else { None }, ..cfg })
}

/// Whether a GPT-2 `config.json` is a `GPT2ForSequenceClassification`.
pub fn is_classifier(raw: &Value) -> bool {
    raw["architectures"][0].as_str() == Some("GPT2ForSequenceClassification")
}

/// A classifier's number of labels, as transformers derives it (`id2label`, else
/// `num_labels`, else 2).
pub fn classifier_labels(raw: &Value) -> Option<usize> {
    is_classifier(raw).then(|| {
        raw["id2label"]
            .as_object()
            .map(|m| m.len())
            .or(raw["num_labels"].as_u64().map(|n| n as usize))
            .unwrap_or(2)
    })
}

/// Reads a GPT-2-layout directory into the built-in trunk's config and weight names, with
/// the dtype the weights are stored in.
pub fn load(
    dir: &Path,
    raw: &Value,
    device: &Device,
) -> Result<(ModelConfig, BTreeMap<String, Tensor>, DType), String> {
    let cfg = parse_config(raw).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut stored = BTreeMap::new();
    let mut dtype = None;
    for file in super::hf::weight_files(dir)? {
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        for (name, t) in tensors {
            dtype.get_or_insert(t.dtype());
            // Hub checkpoints store the trunk without `transformer.`; causal-mask buffers
            // are not weights.
            let name = if name.starts_with("transformer.")
                || name.starts_with("lm_head")
                || name.starts_with("score")
            {
                name
            } else {
                format!("transformer.{name}")
            };
            if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
                continue;
            }
            stored.insert(name, t.to_dtype(DType::F32).map_err(|e| e.to_string())?);
        }
    }
    let err = |e: candle_core::Error| e.to_string();
    let mut w = BTreeMap::new();
    for (ours, theirs, shape) in names(&cfg) {
        let t = stored
            .remove(&theirs)
            .ok_or_else(|| format!("{}: the checkpoint has no weight `{theirs}`", dir.display()))?;
        if t.dims() != shape.as_slice() {
            return Err(format!(
                "{}: `{theirs}` has shape {:?}, config.json implies {shape:?}",
                dir.display(),
                t.dims()
            ));
        }
        w.insert(ours, t);
    }
    // A classifier has a score head and no language-model head (a tied one would be made up).
    let tied = raw["tie_word_embeddings"].as_bool().unwrap_or(true) && !is_classifier(raw);
    match stored.remove("lm_head.weight") {
        Some(h) if !tied => {
            if h.dims() != [cfg.vocab, cfg.width] {
                return Err(format!(
                    "{}: `lm_head.weight` has shape {:?}, config.json implies [{}, {}]",
                    dir.display(),
                    h.dims(),
                    cfg.vocab,
                    cfg.width
                ));
            }
            w.insert("lm_head.weight".into(), h.t().map_err(err)?.contiguous().map_err(err)?);
        }
        _ if tied => {
            let wte = &w["tok.weight"];
            w.insert("lm_head.weight".into(), wte.t().map_err(err)?.contiguous().map_err(err)?);
        }
        _ => {}
    }
    if let Some(s) = stored.remove("score.weight") {
        w.insert("score.weight".into(), s.t().map_err(err)?.contiguous().map_err(err)?);
        let zero = Tensor::zeros(1, DType::F32, device).map_err(err)?;
        w.insert("score.bias".into(), zero);
    }
    if let Some(extra) = stored.keys().next() {
        return Err(format!(
            "{}: the checkpoint has a weight `{extra}` that GPT-2's architecture does not use",
            dir.display()
        ));
    }
    let heads = dir.join(EXTRA_HEADS);
    if heads.exists() {
        let t = candle_core::safetensors::load(&heads, device)
            .map_err(|e| format!("{}: {e}", heads.display()))?;
        w.extend(t);
    }
    let dtype = super::hf::declared_dtype(raw).or(dtype).unwrap_or(DType::F32);
    Ok((cfg, w, dtype))
}
