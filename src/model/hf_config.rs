//! The `config.json` of a Hugging Face Llama-family checkpoint (Llama 2/3, Mistral, Qwen2/2.5,
//! Qwen3, SmolLM): the fields rlx's implementation reads, with the families' defaults.
//!
//! Both layouts transformers writes are read: the older one (`rope_theta` and `rope_scaling` at
//! the top level, `torch_dtype`) and transformers 5's (`rope_parameters: {rope_theta,
//! rope_type, ...}`, `dtype`). Rotary settings are resolved the way transformers 5 resolves
//! them, and anything that would change the computation but is not implemented is refused:
//! a silently ignored field is a silently wrong logit.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Model types whose weights and forward rlx implements.
pub const FAMILIES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

fn default_model_type() -> String {
    "llama".into()
}
fn default_eps() -> f64 {
    1e-6
}
/// transformers' `default_theta`, for every family rlx reads.
pub const DEFAULT_THETA: f64 = 10_000.0;
fn default_positions() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Qwen3 sets it explicitly (not `hidden_size / heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// The older layout's base wavelength; transformers 5 writes it in `rope_parameters`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// The older layout's scaling (`{"rope_type" | "type": ..., "factor": ...}`).
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// transformers 5's rotary settings: `{"rope_theta", "rope_type", "factor", ...}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Biases on q/k/v/o (Llama, Qwen3); Qwen2 always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP's three projections (Llama).
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Mistral/Qwen sliding-window attention; rlx attends to the full context, which is the
    /// same computation for sequences shorter than the window.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// `["LlamaForSequenceClassification"]` for a reward model, `…ForCausalLM` for a
    /// language model.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// A classifier's labels (transformers derives `num_labels` from them; 2 when absent).
    #[serde(default)]
    pub id2label: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    /// The token a sequence classifier skips from the right to find a sequence's last token.
    #[serde(default, deserialize_with = "token_id")]
    pub pad_token_id: Option<u32>,
    /// The rotary embedding, resolved from whichever layout the file uses.
    #[serde(skip)]
    pub rope: Rope,
}

/// The resolved rotary embedding: base wavelength and frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Default for Rope {
    fn default() -> Rope {
        Rope { theta: DEFAULT_THETA, scaling: RopeScaling::None }
    }
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's band-wise scaling.
    Llama3 {
        factor: f64,
        low: f64,
        high: f64,
        original: f64,
    },
}

impl HfConfig {
    /// Parses and validates a `config.json` text.
    pub fn parse(text: &str) -> Result<HfConfig, String> {
        let mut cfg: HfConfig =
            serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
        if !FAMILIES.contains(&cfg.model_type.as_str()) {
            return Err(format!(
                "config.json: model_type `{}` is not supported; rlx implements {}",
                cfg.model_type,
                FAMILIES.join(", ")
            ));
        }
        if cfg.hidden_act != "silu" {
            return Err(format!(
                "config.json: hidden_act `{}` is not supported (Llama-family models use `silu`)",
                cfg.hidden_act
            ));
        }
        if cfg.num_attention_heads == 0 || cfg.kv_heads() == 0 || cfg.num_hidden_layers == 0 {
            return Err("config.json: heads, key/value heads and layers must be positive".into());
        }
        // Far above any released model; beyond, a size is a corrupt file, and shapes computed
        // from it would overflow or exhaust memory before a weight is read.
        for (name, value, max) in [
            ("vocab_size", cfg.vocab_size, 1 << 24),
            ("hidden_size", cfg.hidden_size, 1 << 18),
            ("intermediate_size", cfg.intermediate_size, 1 << 20),
            ("num_hidden_layers", cfg.num_hidden_layers, 1 << 12),
            ("num_attention_heads", cfg.num_attention_heads, 1 << 12),
            ("head_dim", cfg.head_dim(), 1 << 14),
            ("max_position_embeddings", cfg.max_position_embeddings, 1 << 24),
        ] {
            if value == 0 || value > max {
                return Err(format!("config.json: {name} {value} is out of range (1 to {max})"));
            }
        }
        if !cfg.num_attention_heads.is_multiple_of(cfg.kv_heads()) {
            return Err(format!(
                "config.json: {} attention heads are not a multiple of {} key/value heads",
                cfg.num_attention_heads,
                cfg.kv_heads()
            ));
        }
        if !cfg.head_dim().is_multiple_of(2) {
            return Err(format!("config.json: rotary head_dim {} is odd", cfg.head_dim()));
        }
        cfg.rope = cfg.resolve_rope().map_err(|e| format!("config.json: {e}"))?;
        Ok(cfg)
    }

    /// The number of labels of a `*ForSequenceClassification` checkpoint (a score head
    /// `score.weight` of that many rows instead of an LM head); `None` for a language model.
    pub fn classifier_labels(&self) -> Option<usize> {
        let classifier = self.architectures.first()?.ends_with("ForSequenceClassification");
        classifier.then(|| self.id2label.as_ref().map(|m| m.len()).or(self.num_labels).unwrap_or(2))
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The rotary settings as transformers 5 resolves them: the dict is `rope_scaling` when
    /// the file has one, else `rope_parameters`; `rope_theta` is the dict's, else the top-level
    /// field, else 10 000; the kind is `rope_type` (or the older `type`), default `default`.
    /// Kinds and options rlx does not implement are errors.
    fn resolve_rope(&self) -> Result<Rope, String> {
        let present = |v: &Option<Value>| v.as_ref().filter(|v| !v.is_null()).cloned();
        let (field, dict) = match (present(&self.rope_scaling), present(&self.rope_parameters)) {
            (Some(v), _) => ("rope_scaling", v),
            (None, Some(v)) => ("rope_parameters", v),
            (None, None) => ("rope_parameters", Value::Object(Default::default())),
        };
        let Some(map) = dict.as_object() else {
            return Err(format!("`{field}` must be an object"));
        };
        // transformers 5 nests one dict per attention kind for hybrid models (Gemma 3).
        if let Some((k, _)) = map.iter().find(|(_, v)| v.is_object()) {
            return Err(format!(
                "`{field}` has per-layer-type settings (`{k}`): rlx implements one rotary embedding for every layer"
            ));
        }
        let num = |k: &str| -> Result<Option<f64>, String> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    v.as_f64().map(Some).ok_or_else(|| format!("`{field}.{k}` must be a number"))
                }
            }
        };
        let theta = num("rope_theta")?.or(self.rope_theta).unwrap_or(DEFAULT_THETA);
        if !(theta.is_finite() && theta > 1.0) {
            return Err(format!("rope_theta {theta} must be a finite number above 1"));
        }
        let partial = num("partial_rotary_factor")?.or(self.partial_rotary_factor).unwrap_or(1.0);
        if partial != 1.0 {
            return Err(format!(
                "partial_rotary_factor {partial} is not supported (Llama-family models rotate every dimension)"
            ));
        }
        let kind = map
            .get("rope_type")
            .or_else(|| map.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let need = |k: &str| -> Result<f64, String> {
            num(k)?.ok_or_else(|| format!("`{field}` of type `{kind}` needs `{k}`"))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low: need("low_freq_factor")?,
                high: need("high_freq_factor")?,
                // transformers 5 defaults it to the config's context length.
                original: num("original_max_position_embeddings")?
                    .unwrap_or(self.max_position_embeddings as f64),
            },
            other => {
                return Err(format!(
                    "`{field}` type `{other}` is not supported (rlx implements default, linear and llama3)"
                ));
            }
        };
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let valid = match scaling {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } => positive(factor),
            RopeScaling::Llama3 { factor, low, high, original } => {
                positive(factor) && positive(low) && positive(original) && high > low
            }
        };
        if !valid {
            return Err(format!("`{field}` of type `{kind}` has out-of-range values: {dict}"));
        }
        Ok(Rope { theta, scaling })
    }

    /// The inverse frequencies of the rotary embedding, `head_dim / 2` of them.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope.theta.powf(2.0 * i as f64 / d as f64);
                let f = match self.rope.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Llama3 { factor, low, high, original } => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let (low_wavelen, high_wavelen) = (original / low, original / high);
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

/// A token id field that may be null, a number, or (some generation configs) a list whose first
/// entry is used.
fn token_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::Array(items) => {
            items.first().and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        })
    }

    #[test]
    fn defaults_follow_the_families() {
        let c = HfConfig::parse(&base().to_string()).unwrap();
        assert_eq!((c.kv_heads(), c.head_dim(), c.rope.theta), (2, 4, 10_000.0));
        assert_eq!(c.inv_freq(), vec![1.0, 0.01]);
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024});
        v["rope_theta"] = 500000.0.into();
        let c = HfConfig::parse(&v.to_string()).unwrap();
        let f = c.inv_freq();
        assert_eq!(f[0], 1.0); // wavelength 2π: far below 1024 / 4
        let plain = 1.0 / 500000f64.powf(0.5);
        assert!((f[1] as f64 - plain / 8.0).abs() < 1e-9); // wavelength 2π·707 ≈ 4443 > 1024
    }

    #[test]
    fn unsupported_settings_are_named() {
        let mut v = base();
        v["model_type"] = "gpt2".into();
        assert!(HfConfig::parse(&v.to_string()).unwrap_err().contains("gpt2"));
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        assert!(HfConfig::parse(&v.to_string()).unwrap_err().contains("yarn"));
        let mut v = base();
        v["num_key_value_heads"] = 3.into();
        assert!(HfConfig::parse(&v.to_string()).is_err());
    }

    #[test]
    fn transformers_5_rope_parameters_are_read() {
        let mut v = base();
        v["rope_parameters"] = serde_json::json!({"rope_theta": 1e6, "rope_type": "default"});
        let c = HfConfig::parse(&v.to_string()).unwrap();
        assert_eq!(c.rope, Rope { theta: 1e6, scaling: RopeScaling::None });
        // llama3 in either layout gives the same frequencies.
        let llama3 = serde_json::json!({"factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let mut new = base();
        new["rope_parameters"] = llama3.clone();
        new["rope_parameters"]["rope_type"] = "llama3".into();
        new["rope_parameters"]["rope_theta"] = 500000.0.into();
        let mut old = base();
        old["rope_scaling"] = llama3;
        old["rope_scaling"]["type"] = "llama3".into();
        old["rope_theta"] = 500000.0.into();
        let (a, b) =
            (HfConfig::parse(&new.to_string()).unwrap(), HfConfig::parse(&old.to_string()));
        assert_eq!(a.rope, b.as_ref().unwrap().rope);
        assert_eq!(a.inv_freq(), b.unwrap().inv_freq());
        assert!(matches!(a.rope.scaling, RopeScaling::Llama3 { factor: 8.0, .. }));
    }

    #[test]
    fn the_dict_theta_wins_and_the_top_level_theta_fills_in() {
        let mut v = base();
        v["rope_theta"] = 5e5.into();
        v["rope_parameters"] = serde_json::json!({"rope_type": "default"});
        assert_eq!(HfConfig::parse(&v.to_string()).unwrap().rope.theta, 5e5);
        v["rope_parameters"]["rope_theta"] = 1e6.into();
        assert_eq!(HfConfig::parse(&v.to_string()).unwrap().rope.theta, 1e6);
        // llama3 without the original context takes the config's, as transformers 5 does.
        v["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "factor": 2.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0});
        v["max_position_embeddings"] = 128.into();
        let c = HfConfig::parse(&v.to_string()).unwrap();
        assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { original: 128.0, .. }));
    }

    #[test]
    fn unsupported_rope_is_refused_in_either_layout() {
        for field in ["rope_scaling", "rope_parameters"] {
            for (dict, needle) in [
                (serde_json::json!({"rope_type": "yarn", "factor": 4.0}), "yarn"),
                (serde_json::json!({"type": "dynamic", "factor": 4.0}), "dynamic"),
                (serde_json::json!({"rope_type": "linear"}), "needs `factor`"),
                (
                    serde_json::json!({"rope_type": "default", "partial_rotary_factor": 0.5}),
                    "partial",
                ),
                (serde_json::json!({"full_attention": {"rope_type": "default"}}), "per-layer"),
            ] {
                let mut v = base();
                v[field] = dict;
                let e = HfConfig::parse(&v.to_string()).unwrap_err();
                assert!(e.contains(needle), "{field}: {e}");
            }
        }
        let mut v = base();
        v["partial_rotary_factor"] = 0.5.into();
        assert!(HfConfig::parse(&v.to_string()).is_err());
    }
}
