//! Training engines: what a trainer asks of the models it trains, whichever machine holds them.
//!
//! rlx's own trainer keeps its fused path on this machine (one autograd graph from the stage
//! loss into the weights, `crate::train::run`). A run with `--engine tinker` instead drives a
//! Tinker-protocol server (hosted Tinker, SkyRL, verl_tinker) through the [`Engine`] trait: the
//! server samples, runs forwards and backwards and steps the optimiser on its GPUs; rlx keeps
//! the recipe, evaluates the stage graph on the host on the log-probabilities the server
//! returns, and turns the loss's gradient with respect to each of them into the per-token
//! inputs of one server backward (`surrogate`). [`candle::CandleEngine`] implements the same
//! trait on this machine with rlx's own model: the reference a remote run is tested against
//! (the fake server of the tests is an HTTP front of it).

pub mod candle;
pub mod surrogate;
pub mod tinker;

use surrogate::{CriticBackward, DatumBackward, Reduction};

/// A token sequence a model scores or trains on: its context, then the text after it. Only the
/// text's tokens are scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    pub ctx: Vec<u32>,
    pub toks: Vec<u32>,
}

/// One sampled continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub tokens: Vec<u32>,
    /// The sampler's log-probability of each token.
    pub logprobs: Vec<f32>,
}

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleParams {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// A text that ends a continuation (besides the end-of-sequence tokens, which always do).
    pub stop_text: Option<String>,
    /// The ids that end a continuation (included in it).
    pub stop_tokens: Vec<u32>,
}

/// What to sample from: the server's base model, or a saved snapshot of a trained one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sampler {
    Base,
    Weights(String),
}

/// What sampling a snapshot of a model does once the model has trained since it was saved —
/// the Tinker protocol does not say, and servers differ (read in SkyRL's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshots {
    /// It samples the weights it was saved with and leaves the model alone (rlx's own engine).
    Kept,
    /// It samples the model's weights as last synced, whichever snapshot is named (SkyRL's FSDP
    /// and Megatron backends route by model id).
    FollowModel,
    /// It loads the snapshot into the model's own adapter slot and samples that, rewinding the
    /// model's training weights (SkyRL's JAX backend, `load_sampler_weights`).
    LoadIntoModel,
}

/// What an engine's sampling can be trusted with, as its self-test found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampling {
    pub snapshots: Snapshots,
    /// The base model can be sampled, and read by prompt log-probabilities, without an
    /// adapter (SkyRL's FSDP and Megatron backends sample only models created on them).
    pub base: bool,
}

impl Sampling {
    /// Snapshots kept as saved, and the base model readable.
    pub const FULL: Sampling = Sampling { snapshots: Snapshots::Kept, base: true };
}

/// A trained model on an engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelId(pub String);

/// The optimiser step's settings (AdamW).
#[derive(Debug, Clone, PartialEq)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub clip_grad: Option<f64>,
}

/// LoRA settings of a model the engine creates (`None`: every weight trained, where the
/// engine can).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
}

/// What a trainer asks of an engine. Errors are messages that name the engine and the call.
pub trait Engine {
    /// `server URL`, `this process`: for errors and the run's log.
    fn label(&self) -> String;
    /// How the engine reduces a backward's loss over tokens and datums.
    fn reduction(&self) -> Reduction;
    /// A trainable model over the engine's base model.
    fn create_model(&mut self, lora: Option<Lora>, seed: u64) -> Result<ModelId, String>;
    /// A snapshot of `model`'s weights to sample from (`name` is unique in the run).
    fn sampler(&mut self, model: &ModelId, name: &str) -> Result<Sampler, String>;
    /// `n` continuations of every prompt; the engine may work on all prompts at once.
    fn sample(
        &mut self,
        sampler: &Sampler,
        prompts: &[Vec<u32>],
        n: usize,
        params: &SampleParams,
    ) -> Result<Vec<Vec<Sampled>>, String>;
    /// Log-probabilities (temperature 1) of every sequence's text tokens under `model`, or
    /// under `sampler` (a snapshot or the base model) when `model` is `None`.
    fn logp(
        &mut self,
        model: Option<&ModelId>,
        sampler: &Sampler,
        seqs: &[Seq],
    ) -> Result<Vec<Vec<f32>>, String>;
    /// Accumulates the gradient of the backward `data` (one per sequence, over its text
    /// tokens) until the next optimiser step.
    fn backward(
        &mut self,
        model: &ModelId,
        seqs: &[Seq],
        data: &[DatumBackward],
    ) -> Result<(), String>;
    /// Applies the accumulated gradient; returns the engine's metrics (the gradient norm
    /// where it reports one).
    fn optim_step(&mut self, model: &ModelId, adam: &Adam) -> Result<Vec<(String, f64)>, String>;
    /// Saves the weights (and optimiser state) under `name`; returns the path to load.
    fn save(&mut self, model: &ModelId, name: &str) -> Result<String, String>;
    /// Loads weights saved by `save` into `model`, a model just created.
    fn load(&mut self, model: &ModelId, path: &str) -> Result<(), String>;
    /// A sampler snapshot's weights as the engine hands them out (a server's archive of its
    /// adapter), or `None` where it offers none.
    fn download(&mut self, _sampler: &Sampler) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    /// Frees a model (its adapter slot on a server).
    fn unload(&mut self, model: &ModelId) -> Result<(), String>;
    /// Frees every model the engine made and still holds, as a run ends: a server that holds
    /// one adapter is free for the next run at once. Its saves stay loadable.
    fn release(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// What the engine's sampling can be trusted with.
    fn sampling(&self) -> Sampling {
        Sampling::FULL
    }
    /// A critic: a separate value network over the engine's base model (SkyRL's FSDP backend,
    /// `model_role: "critic"`), trained by `critic_backward` and stepped by `optim_step`.
    fn create_critic(&mut self, _lora: Option<Lora>, _seed: u64) -> Result<ModelId, String> {
        Err(format!("{} has no critic", self.label()))
    }
    /// The critic's value at every text token of every sequence.
    fn values(&mut self, _critic: &ModelId, _seqs: &[Seq]) -> Result<Vec<Vec<f32>>, String> {
        Err(format!("{} has no critic", self.label()))
    }
    /// Accumulates the gradient of the critic loss of `data` (one per sequence, over its text
    /// tokens) until the critic's next optimiser step.
    fn critic_backward(
        &mut self,
        _critic: &ModelId,
        _seqs: &[Seq],
        _data: &[CriticBackward],
    ) -> Result<(), String> {
        Err(format!("{} has no critic", self.label()))
    }
}
