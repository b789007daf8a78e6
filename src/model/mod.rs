//! The models: a small built-in causal transformer and the Llama family of Hugging Face
//! checkpoints, written on candle, trainable end to end, with optional value and reward heads; its configuration, its parameters, and the batch layout that
//! the sampler and the trainer share.

pub mod attention;
pub mod bias;
pub mod config;
pub mod dir;
pub mod fastmath;
pub mod gelu;
pub mod gemv;
pub mod gpt2;
pub mod heads;
pub mod hf;
pub mod hf_config;
pub mod hf_tiny;
pub mod kv_cache;
pub mod layers;
pub mod layout;
pub mod llama;
pub mod norm;
pub mod params;
pub mod rope;
pub mod swiglu;
pub mod token_logp;
pub mod transformer;

pub use config::{Family, LlamaSpec, LoraSpec, ModelConfig};
pub use kv_cache::KvCache;
pub use layout::Layout;
pub use params::Params;
pub use transformer::Transformer;
