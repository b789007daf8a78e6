//! Model shapes: presets and overrides.

use serde::{Deserialize, Serialize};

/// The shape of a built-in transformer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab: usize,
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    /// Longest sequence (learned position embeddings).
    pub context: usize,
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
        Some(ModelConfig { vocab, layers, width, heads, context: 256 })
    }

    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}
