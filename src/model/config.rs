//! Model shapes: presets and overrides.

use serde::{Deserialize, Serialize};

use super::hf_config::HfConfig;

/// The shape of a model: the built-in GPT or a Llama-family checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab: usize,
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    /// Longest sequence (learned position embeddings).
    pub context: usize,
    #[serde(default)]
    pub family: Family,
    /// A GPT-2 sequence classifier's `pad_token_id`, skipped from the right to find a text's
    /// last token as transformers does (Llama-family classifiers carry theirs in `hf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_pad: Option<u32>,
}

/// Which trunk a model has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Family {
    /// The built-in pre-norm GPT with learned positions.
    #[default]
    Gpt,
    /// A Hugging Face Llama-family checkpoint.
    Llama(Box<LlamaSpec>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaSpec {
    pub hf: HfConfig,
    pub lora: Option<LoraSpec>,
    /// Compute in bfloat16 (master weights and adapters stay f32).
    pub bf16: bool,
}

/// LoRA: which linear modules get adapters, their rank, and `alpha` (the update is scaled by
/// `alpha / rank`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

impl ModelConfig {
    /// A preset by name: `tiny` trains in minutes on 2 CPU cores; `base` is GPT-2-small-shaped
    /// in depth/width ratio but narrower.
    pub fn preset(name: &str, vocab: usize) -> Option<ModelConfig> {
        let (layers, width, heads) = match name {
            "tiny" => (2, 128, 4),
            "small" => (4, 256, 4),
            "base" => (6, 384, 6),
            _ => return None,
        };
        Some(ModelConfig {
            vocab,
            layers,
            width,
            heads,
            context: 256,
            family: Family::Gpt,
            classifier_pad: None,
        })
    }

    /// The shape of a Llama-family checkpoint.
    pub fn llama(spec: LlamaSpec) -> ModelConfig {
        let hf = &spec.hf;
        ModelConfig {
            vocab: hf.vocab_size,
            layers: hf.num_hidden_layers,
            width: hf.hidden_size,
            heads: hf.num_attention_heads,
            context: hf.max_position_embeddings,
            family: Family::Llama(Box::new(spec)),
            classifier_pad: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}
