//! The [`Engine`] trait on this machine, with rlx's own candle model: a Tinker server's work
//! done in-process. Models are full-weight copies of one base model (like verl_tinker's; a LoRA
//! rank asked for is not applied), backwards are the server losses of `surrogate` reduced as
//! the engine's [`Reduction`] says, the optimiser is rlx's AdamW. It is the reference the
//! remote engine is tested against: the tests' fake Tinker server is an HTTP front of it, and a
//! run through it must end where the local trainer ends.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};

use super::surrogate::{
    CriticBackward, DatumBackward, Reduction, critic_datum_loss, server_datum_loss,
};
use super::{Adam, Engine, Lora, ModelId, SampleParams, Sampled, Sampler, Seq};
use crate::model::Transformer;
use crate::model::layout::Layout;
use crate::rng::Rng;
use crate::sample::{self, Sampling};
use crate::tokenizer::Tok;
use crate::train::models::{Slot, params_from};
use crate::train::optim::{AdamW, AdamWConfig};

struct Trained {
    slot: Slot,
    opt: Option<AdamW>,
    /// Optimiser state loaded with the weights, for the optimiser's first step.
    restore: Option<(BTreeMap<String, Tensor>, usize)>,
    /// Losses of the backwards since the last optimiser step, and how many datums they hold.
    pending: Vec<Tensor>,
    datums: usize,
    /// A critic (a value head over its own copy of the base): its losses are always averaged
    /// over the step's datums, as SkyRL's critic worker does.
    critic: bool,
}

/// Weights and optimiser state saved under a name.
struct SavedWeights {
    values: BTreeMap<String, Tensor>,
    optim: BTreeMap<String, Tensor>,
    steps: usize,
}

pub struct CandleEngine {
    base: Slot,
    base_values: BTreeMap<String, Tensor>,
    tok: Tok,
    reduction: Reduction,
    device: Device,
    models: HashMap<String, Trained>,
    snapshots: HashMap<String, BTreeMap<String, Tensor>>,
    /// The models of the snapshots (and of the base), built once each.
    samplers: HashMap<String, Transformer>,
    saved: HashMap<String, SavedWeights>,
    /// The `value_clip` of critic backwards (SkyRL's default 0.2).
    pub value_clip: Option<f64>,
}

/// SkyRL's `trainer.algorithm.value_clip` default.
pub const VALUE_CLIP: f64 = 0.2;

fn err(e: candle_core::Error) -> String {
    e.to_string()
}

impl CandleEngine {
    pub fn new(
        base: Slot,
        tok: Tok,
        reduction: Reduction,
        device: Device,
    ) -> Result<CandleEngine, String> {
        let base_values = base.params.snapshot().map_err(err)?;
        Ok(CandleEngine {
            base,
            base_values,
            tok,
            reduction,
            device,
            models: HashMap::new(),
            snapshots: HashMap::new(),
            samplers: HashMap::new(),
            saved: HashMap::new(),
            value_clip: Some(VALUE_CLIP),
        })
    }

    /// Whether `model` is a critic.
    pub fn is_critic(&self, model: &ModelId) -> bool {
        self.models.get(&model.0).is_some_and(|t| t.critic)
    }

    fn new_model(&mut self, critic: bool, seed: u64) -> Result<ModelId, String> {
        let mut slot = Slot {
            cfg: self.base.cfg.clone(),
            params: params_from(&self.base_values).map_err(err)?,
            base: self.base.base.clone(),
            source: self.base.source.clone(),
        };
        if critic {
            slot.add_value_head(&mut Rng::new(seed), &self.device).map_err(err)?;
        }
        let id = format!("model_{}", self.models.len() + self.saved.len() + self.snapshots.len());
        let id =
            (0..).map(|i| format!("{id}_{i}")).find(|k| !self.models.contains_key(k)).unwrap_or(id);
        let t = Trained { slot, opt: None, restore: None, pending: vec![], datums: 0, critic };
        self.models.insert(id.clone(), t);
        Ok(ModelId(id))
    }

    /// A backward's summed loss, kept with its datums until the model's optimiser step.
    fn accumulate(
        &mut self,
        model: &ModelId,
        total: Option<Tensor>,
        datums: usize,
    ) -> Result<(), String> {
        let t = self.trained(model)?;
        t.pending.extend(total);
        t.datums += datums;
        Ok(())
    }

    fn critic(&mut self, model: &ModelId) -> Result<&mut Trained, String> {
        let t = self.trained(model)?;
        if !t.critic {
            return Err(format!("`{}` is not a critic", model.0));
        }
        Ok(t)
    }

    fn trained(&mut self, model: &ModelId) -> Result<&mut Trained, String> {
        self.models.get_mut(&model.0).ok_or_else(|| format!("no model `{}`", model.0))
    }

    /// The weights of a model, for tests.
    pub fn weights(&self, model: &ModelId) -> Option<BTreeMap<String, Tensor>> {
        self.models.get(&model.0).and_then(|t| t.slot.params.snapshot().ok())
    }

    /// Every model's id.
    pub fn model_ids(&self) -> Vec<ModelId> {
        let mut ids: Vec<ModelId> = self.models.keys().cloned().map(ModelId).collect();
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        ids
    }

    /// Writes a sampler snapshot's weights into `model`, its optimiser state untouched: what
    /// SkyRL's JAX backend does when a snapshot is sampled (the tests' fake server models it).
    pub fn load_snapshot(&mut self, model: &ModelId, path: &str) -> Result<(), String> {
        let values = self.snapshots.get(path).ok_or_else(|| format!("no sampler `{path}`"))?;
        let values = values.clone();
        for (k, v) in self.trained(model)?.slot.params.iter() {
            v.set(values.get(k).ok_or_else(|| format!("`{path}` holds no `{k}`"))?).map_err(err)?;
        }
        Ok(())
    }

    fn sampler_model(&mut self, sampler: &Sampler) -> Result<Transformer, String> {
        let key = match sampler {
            Sampler::Base => String::new(),
            Sampler::Weights(p) => p.clone(),
        };
        if let Some(m) = self.samplers.get(&key) {
            return Ok(m.clone());
        }
        let values = match sampler {
            Sampler::Base => &self.base_values,
            Sampler::Weights(p) => {
                self.snapshots.get(p).ok_or_else(|| format!("no sampler `{p}`"))?
            }
        };
        let model = self.base.with_values(values).map_err(err)?;
        self.samplers.insert(key, model.clone());
        Ok(model)
    }
}

/// The layout of `seqs` (a text after each context) and `model`'s hidden states over it, with
/// the graph for a backward when `grad`.
fn hidden(
    model: &Transformer,
    seqs: &[Seq],
    grad: bool,
    device: &Device,
) -> Result<(Layout, Tensor), String> {
    let ctx: Vec<&[u32]> = seqs.iter().map(|s| s.ctx.as_slice()).collect();
    let toks: Vec<&[u32]> = seqs.iter().map(|s| s.toks.as_slice()).collect();
    let layout = Layout::with_text_len(&ctx, &toks, 1, device).map_err(err)?;
    let hidden = model.hidden_of(&layout, grad).map_err(err)?;
    Ok((layout, hidden))
}

/// Log-probabilities `[B, W]` (temperature 1) of the texts of `seqs` under `model`, with the
/// graph for a backward when `grad`.
fn forward(
    model: &Transformer,
    seqs: &[Seq],
    grad: bool,
    device: &Device,
) -> Result<Tensor, String> {
    let (layout, hidden) = hidden(model, seqs, grad, device)?;
    model.token_logp(&hidden, &layout, 1.0).map_err(err)
}

/// Σ_i `loss(i, row_i)` over the sequences, row_i = sequence i's text positions of `per_token`
/// `[B, W]` (`None` for no sequences).
fn sum_rows(
    per_token: &Tensor,
    seqs: &[Seq],
    loss: impl Fn(usize, Tensor) -> candle_core::Result<Tensor>,
) -> Result<Option<Tensor>, String> {
    let mut total: Option<Tensor> = None;
    for (i, s) in seqs.iter().enumerate() {
        let row = per_token.get(i).and_then(|r| r.narrow(0, 0, s.toks.len())).map_err(err)?;
        let l = loss(i, row).map_err(err)?;
        total = Some(match total {
            Some(t) => (t + l).map_err(err)?,
            None => l,
        });
    }
    Ok(total)
}

/// A critic's values `[B, W]` at the texts of `seqs`, with the graph for a backward when `grad`.
fn text_values(
    model: &Transformer,
    seqs: &[Seq],
    grad: bool,
    device: &Device,
) -> Result<Tensor, String> {
    let (layout, hidden) = hidden(model, seqs, grad, device)?;
    model.token_values(&hidden, &layout).map_err(err)
}

/// Each sequence's text log-probabilities (temperature 1) under `model`, as a server's forward
/// returns them.
pub fn text_logp(
    model: &Transformer,
    seqs: &[Seq],
    device: &Device,
) -> Result<Vec<Vec<f32>>, String> {
    let all = forward(model, seqs, false, device)?
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.to_vec2::<f32>())
        .map_err(err)?;
    Ok(all.into_iter().zip(seqs).map(|(r, s)| r[..s.toks.len()].to_vec()).collect())
}

impl Engine for CandleEngine {
    fn label(&self) -> String {
        "the in-process candle engine".into()
    }

    fn reduction(&self) -> Reduction {
        self.reduction
    }

    fn create_model(&mut self, _lora: Option<Lora>, seed: u64) -> Result<ModelId, String> {
        self.new_model(false, seed)
    }

    fn create_critic(&mut self, _lora: Option<Lora>, seed: u64) -> Result<ModelId, String> {
        self.new_model(true, seed)
    }

    fn values(&mut self, critic: &ModelId, seqs: &[Seq]) -> Result<Vec<Vec<f32>>, String> {
        let model = self.critic(critic)?.slot.frozen().map_err(err)?;
        let all = text_values(&model, seqs, false, &self.device)?
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(err)?;
        Ok(all.into_iter().zip(seqs).map(|(r, s)| r[..s.toks.len()].to_vec()).collect())
    }

    fn critic_backward(
        &mut self,
        critic: &ModelId,
        seqs: &[Seq],
        data: &[CriticBackward],
    ) -> Result<(), String> {
        let clip = self.value_clip;
        let live = self.critic(critic)?.slot.live().map_err(err)?;
        let values = text_values(&live, seqs, true, &self.device)?;
        if data.len() != seqs.len() {
            return Err(format!("{} critic backwards for {} texts", data.len(), seqs.len()));
        }
        for (s, d) in seqs.iter().zip(data) {
            let n = s.toks.len();
            if [d.weights.len(), d.values.len(), d.returns.len()] != [n; 3] {
                return Err(format!(
                    "a critic backward for a text of {n} tokens has inputs of other lengths"
                ));
            }
        }
        let total = sum_rows(&values, seqs, |i, row| critic_datum_loss(&data[i], &row, clip))?;
        self.accumulate(critic, total, seqs.len())
    }

    fn sampler(&mut self, model: &ModelId, name: &str) -> Result<Sampler, String> {
        let values = self.trained(model)?.slot.params.snapshot().map_err(err)?;
        let path = format!("candle://{}/sampler/{name}", model.0);
        self.snapshots.insert(path.clone(), values);
        Ok(Sampler::Weights(path))
    }

    fn sample(
        &mut self,
        sampler: &Sampler,
        prompts: &[Vec<u32>],
        n: usize,
        p: &SampleParams,
    ) -> Result<Vec<Vec<Sampled>>, String> {
        let model = self.sampler_model(sampler)?;
        let settings = Sampling {
            temperature: p.temperature.max(1e-6),
            top_p: p.top_p,
            max_tokens: p.max_tokens,
            min_tokens: 0,
            stop: p.stop_text.clone(),
            greedy: p.temperature == 0.0,
        };
        let mut out = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            let rows = vec![prompt.clone(); n];
            let mut rng = Rng::new(p.seed.wrapping_add(i as u64));
            let g = sample::generate(&model, &self.tok, &rows, &settings, &mut rng, &self.device)
                .map_err(err)?;
            out.push(
                g.tokens
                    .into_iter()
                    .zip(g.logps)
                    .map(|(tokens, logprobs)| Sampled { tokens, logprobs })
                    .collect(),
            );
        }
        Ok(out)
    }

    fn logp(
        &mut self,
        model: Option<&ModelId>,
        sampler: &Sampler,
        seqs: &[Seq],
    ) -> Result<Vec<Vec<f32>>, String> {
        let m = match model {
            Some(id) => self
                .models
                .get(&id.0)
                .ok_or_else(|| format!("no model `{}`", id.0))?
                .slot
                .frozen()
                .map_err(err)?,
            None => self.sampler_model(sampler)?,
        };
        text_logp(&m, seqs, &self.device)
    }

    fn backward(
        &mut self,
        model: &ModelId,
        seqs: &[Seq],
        data: &[DatumBackward],
    ) -> Result<(), String> {
        let reduction = self.reduction;
        let live = self.trained(model)?.slot.live().map_err(err)?;
        let lp = forward(&live, seqs, true, &self.device)?;
        if data.len() != seqs.len() {
            return Err(format!("{} backwards for {} texts", data.len(), seqs.len()));
        }
        for (s, d) in seqs.iter().zip(data) {
            if d.weights.len() != s.toks.len() {
                return Err(format!(
                    "a backward of {} weights for a text of {} tokens",
                    d.weights.len(),
                    s.toks.len()
                ));
            }
        }
        let total = sum_rows(&lp, seqs, |i, row| server_datum_loss(&data[i], &row, reduction))?;
        self.accumulate(model, total, seqs.len())
    }

    fn optim_step(&mut self, model: &ModelId, adam: &Adam) -> Result<Vec<(String, f64)>, String> {
        let reduction = self.reduction;
        let t = self.trained(model)?;
        let reduction = if t.critic { Reduction::PerSequenceMean } else { reduction };
        let cfg = AdamWConfig {
            lr: adam.lr,
            beta1: adam.beta1,
            beta2: adam.beta2,
            eps: adam.eps,
            weight_decay: adam.weight_decay,
            clip_grad: adam.clip_grad,
            warmup_steps: 0,
            decay_steps: None,
        };
        if t.opt.is_none() {
            let vars = t.slot.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let mut opt = AdamW::new(vars, cfg.clone()).map_err(err)?;
            if let Some((state, steps)) = t.restore.take() {
                opt.restore(&state, "", steps).map_err(err)?;
            }
            t.opt = Some(opt);
        }
        let opt = t.opt.as_mut().expect("set above");
        opt.cfg = cfg;
        let pending = std::mem::take(&mut t.pending);
        let datums = std::mem::take(&mut t.datums);
        let mut total = match pending.into_iter().reduce(|a, b| (a + b).expect("scalar losses add"))
        {
            Some(l) => l,
            None => return Ok(vec![("grad_norm".into(), 0.0)]),
        };
        if reduction == Reduction::PerSequenceMean {
            total = (total / datums.max(1) as f64).map_err(err)?;
        }
        let grads = total.backward().map_err(err)?;
        let info = opt.step(&grads).map_err(err)?;
        if let Some(v) = info.non_finite {
            return Err(format!("the step made `{v}` non-finite"));
        }
        Ok(vec![("grad_norm".into(), info.grad_norm), ("learning_rate".into(), info.lr)])
    }

    fn save(&mut self, model: &ModelId, name: &str) -> Result<String, String> {
        let t = self.trained(model)?;
        let values = t.slot.params.snapshot().map_err(err)?;
        let (optim, steps) = match &t.opt {
            Some(o) => (o.state("").into_iter().collect(), o.steps),
            None => (BTreeMap::new(), 0),
        };
        let path = format!("candle://{}/weights/{name}", model.0);
        self.saved.insert(path.clone(), SavedWeights { values, optim, steps });
        Ok(path)
    }

    fn unload(&mut self, model: &ModelId) -> Result<(), String> {
        self.models.remove(&model.0);
        Ok(())
    }

    fn load(&mut self, model: &ModelId, path: &str) -> Result<(), String> {
        let saved = self.saved.get(path).ok_or_else(|| format!("no saved weights `{path}`"))?;
        let (values, optim, steps) = (saved.values.clone(), saved.optim.clone(), saved.steps);
        let t = self.trained(model)?;
        for (k, v) in t.slot.params.iter() {
            let new = values.get(k).ok_or_else(|| format!("`{path}` holds no `{k}`"))?;
            v.set(new).map_err(err)?;
        }
        // The moments go into the optimiser its first step creates.
        t.opt = None;
        t.restore = (steps > 0).then_some((optim, steps));
        Ok(())
    }
}
