//! The `config.json` of a Hugging Face Llama-family checkpoint (Llama 2/3, Mistral, Qwen2/2.5,
//! Qwen3, SmolLM): the fields rlx's implementation reads, with the families' defaults, and the
//! raw document kept so a saved checkpoint carries every field it was loaded with.

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
fn default_theta() -> f64 {
    10_000.0
}
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
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
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
        let cfg: HfConfig = serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
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
        cfg.rope()?;
        Ok(cfg)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The rope scaling, or an error naming a kind rlx does not implement.
    pub fn rope(&self) -> Result<RopeScaling, String> {
        let Some(v) = &self.rope_scaling else { return Ok(RopeScaling::None) };
        if v.is_null() {
            return Ok(RopeScaling::None);
        }
        let kind = v["rope_type"].as_str().or_else(|| v["type"].as_str()).unwrap_or("default");
        let num =
            |k: &str| v[k].as_f64().ok_or_else(|| format!("config.json: rope_scaling needs `{k}`"));
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low: num("low_freq_factor")?,
                high: num("high_freq_factor")?,
                original: num("original_max_position_embeddings")?,
            }),
            other => Err(format!(
                "config.json: rope_scaling type `{other}` is not supported (rlx implements default, linear and llama3)"
            )),
        }
    }

    /// The inverse frequencies of the rotary embedding, `head_dim / 2` of them.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let scaling = self.rope().unwrap_or(RopeScaling::None);
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                let f = match scaling {
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
        assert_eq!((c.kv_heads(), c.head_dim(), c.rope_theta), (2, 4, 10_000.0));
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
}
