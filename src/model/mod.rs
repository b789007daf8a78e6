//! The built-in model: a small causal transformer written on candle, trainable end to end, with
//! optional value and reward heads; its configuration, its parameters, and the batch layout that
//! the sampler and the trainer share.

pub mod config;
pub mod layout;
pub mod params;
pub mod transformer;

pub use config::ModelConfig;
pub use layout::Layout;
pub use params::Params;
pub use transformer::{KvCache, Transformer};
