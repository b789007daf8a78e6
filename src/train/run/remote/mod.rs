//! A run's stages on a Tinker-protocol server (`--engine tinker`): the same rollout, graph,
//! record and checkpoints as a local run, with the trained models on the server. Sampling is
//! `asample` from a snapshot of the policy; `old` and the trained model's log-probabilities are
//! forwards of the server's model, `ref` the prompt log-probabilities of its snapshot at the
//! stage's start; the update evaluates the stage graph on the host with gradients with respect
//! to those log-probabilities and sends their exact linearisation as one backward per text
//! (`engine::surrogate`), then an optimiser step per minibatch, as locally.
//!
//! This file holds what the run keeps on the server across steps (models, `ref`, frozen
//! models' snapshots, checkpoints, held-out evaluation); `step.rs` a step's rollout and update.

mod pull;
mod step;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::{Metrics, Run, TinkerOptions, run_error};
use crate::check::params;
use crate::diag::Diagnostic;
use crate::engine::tinker::Remote;
use crate::engine::tinker::ledger::Ledger;
use crate::engine::tinker::snapshots::mean_abs_diff;
use crate::engine::{Engine, Lora, ModelId, SampleParams, Sampler, Seq, Snapshots};
use crate::ir::graph::{ModelRef, ScorerRef};
use crate::tasks::Task;
use crate::train::checkpoint::RemoteCheckpoint;
use crate::train::signals::{Source, SourceKind, TextRows};

/// How far the server's base model may be from the recipe's model on a probe before the run
/// is refused (mean |Δ log p| per token; servers compute in bf16).
const BASE_TOLERANCE: f64 = 0.05;

/// The servers of a run: the default one, which holds every trained model, and the frozen
/// models on servers of their own (`--server NAME=URL`), read through their base model.
pub(in crate::train::run) struct Servers {
    pub engine: Box<dyn Engine>,
    pub own: BTreeMap<String, Box<dyn Engine>>,
    /// On a server of its own that samples no base model: a fresh adapter that never trains,
    /// through which its base model is read.
    pub readers: BTreeMap<String, ModelId>,
    /// Trained models on servers of their own, by model name (a server that holds one adapter,
    /// as SkyRL's FSDP backend, for each model a recipe trains).
    pub trained: BTreeMap<String, Box<dyn Engine>>,
}

/// Connects to every server of the run; each passes its self-test or the run stops here.
pub(in crate::train::run) fn connect(
    t: &TinkerOptions,
    checked: &crate::check::Checked,
    run_dir: &std::path::Path,
    quiet: bool,
) -> Result<Servers, String> {
    let retry = crate::engine::tinker::client::Retry::default;
    // The self-test's adapter has the LoRA settings of the first model the server trains.
    let first = checked.program.stages.iter().find_map(|s| s.trained()).unwrap_or("policy");
    let one = |name: Option<&str>, url: &str, base: Option<&str>| {
        // A server that trains a model tests with its settings; any other with the run's first.
        let own_training =
            name.filter(|n| checked.program.stages.iter().any(|s| s.trained() == Some(n)));
        let lora = lora_of(checked, own_training.unwrap_or(first));
        // What each server holds for the run is recorded in the run directory, for the next
        // process on it (a `--resume`) to unload first.
        let ledger = Some(Ledger::new(run_dir, url));
        let engine = Remote::connect(name, url, base, t.reduction, retry(), lora, ledger)?;
        if !quiet {
            let sampling = Engine::sampling(&engine);
            eprintln!(
                "Tinker server {}{url}: base model `{}`, reduction `{}`, sampler snapshots {}, base model {} (self-test passed)",
                name.map_or(String::new(), |n| format!("for `{n}` ")),
                engine.base_model(),
                Engine::reduction(&engine).name(),
                match sampling.snapshots {
                    Snapshots::Kept => "kept as saved",
                    Snapshots::FollowModel => "follow their model",
                    Snapshots::LoadIntoModel => "loaded into their model",
                },
                if sampling.base { "sampled" } else { "not sampled (read through an adapter)" },
            );
        }
        Ok::<_, String>(Box::new(engine) as Box<dyn Engine>)
    };
    let stages = &checked.program.stages;
    let (mut own, mut readers, mut trained) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (name, url) in &t.servers {
        // A model a stage trains is created and trained there, and read there later.
        if stages.iter().any(|s| s.trained() == Some(name)) {
            trained.insert(name.clone(), one(Some(name), url, None)?);
            continue;
        }
        // `ref` is the trained model as its stage starts: a server's base model only while no
        // earlier stage has trained it.
        if name == "ref" {
            for (i, stage) in stages.iter().enumerate() {
                let Some(trained) = stage.trained() else { continue };
                if let Some(earlier) = stages[..i].iter().find(|s| s.trained() == Some(trained)) {
                    return Err(format!(
                        "`--server ref={url}`: stage `{}` trains `{trained}` after stage `{}` did, so its `ref` (`{trained}` as the stage starts) is no server's base model; leave `ref` on the default server",
                        stage.name.name, earlier.name.name
                    ));
                }
            }
        }
        let mut engine = one(Some(name), url, None)?;
        if !engine.sampling().base {
            readers.insert(name.clone(), engine.create_model(lora_of(checked, first), 0)?);
        }
        own.insert(name.clone(), engine);
    }
    let engine = one(None, &t.url, t.base_model.as_deref())?;
    Ok(Servers { engine, own, readers, trained })
}

/// The engine and what the run holds on it.
pub(super) struct RemoteRun {
    /// The server of the current stage's trained model; `home` names it (`""`: the default
    /// server, else the model's name), `parked` holds the run's other training servers.
    pub engine: Box<dyn Engine>,
    pub home: String,
    pub parked: BTreeMap<String, Box<dyn Engine>>,
    /// The server each model (critic, snapshot) of `models` and `samplers` was created on.
    pub located: BTreeMap<String, String>,
    /// Frozen models on servers of their own, and whether their base models were checked.
    pub own: BTreeMap<String, Box<dyn Engine>>,
    pub own_readers: BTreeMap<String, ModelId>,
    pub own_checked: bool,
    /// The server's model of each trained model, by the recipe's name.
    pub models: BTreeMap<String, ModelId>,
    /// `ref`: the trained model's sampler snapshot at the current stage's start (to sample
    /// from), and a frozen copy of it on the server (to read log-probabilities with the
    /// trainer's forward, batched) with the weights it was loaded from.
    pub reference: Sampler,
    pub reference_model: Option<ModelId>,
    pub reference_weights: Option<String>,
    /// Sampler snapshots of the models earlier stages trained, frozen since.
    pub samplers: BTreeMap<String, Sampler>,
    /// This step's seconds in server forwards, and in backwards with optimiser steps.
    pub forward_secs: f64,
    pub backward_secs: f64,
}

impl RemoteRun {
    pub fn new(servers: Servers) -> RemoteRun {
        RemoteRun {
            engine: servers.engine,
            home: String::new(),
            parked: servers.trained,
            located: BTreeMap::new(),
            own: servers.own,
            own_readers: servers.readers,
            own_checked: false,
            models: BTreeMap::new(),
            reference: Sampler::Base,
            reference_model: None,
            reference_weights: None,
            samplers: BTreeMap::new(),
            forward_secs: 0.0,
            backward_secs: 0.0,
        }
    }
}

impl RemoteRun {
    /// The server that samples `sampler`: `ref`'s own server for `ref` there, else the current
    /// stage's.
    pub fn sampling_engine(&mut self, sampler: &Sampler) -> &mut Box<dyn Engine> {
        match self.own.get_mut("ref") {
            Some(own) if *sampler == self.reference => own,
            _ => &mut self.engine,
        }
    }

    /// The server that holds `name` (a model, a critic's key, a model's snapshot): where it was
    /// created, else the model's own training server, else the default one (`""`).
    fn server_of(&self, name: &str) -> String {
        if let Some(s) = self.located.get(name) {
            return s.clone();
        }
        let model = model_of_key(name);
        match self.parked.contains_key(model) || self.home == model {
            true => model.to_string(),
            false => String::new(),
        }
    }

    /// Makes `model`'s server the current one: a stage's calls go to its trained model's server.
    pub fn enter(&mut self, model: &str) {
        let target = self.server_of(model);
        if target == self.home {
            return;
        }
        let next = self.parked.remove(&target).expect("a connected server");
        let previous = std::mem::replace(&mut self.engine, next);
        self.parked.insert(std::mem::replace(&mut self.home, target), previous);
    }

    /// The server that holds `name` (see `server_of`).
    pub fn engine_for(&mut self, name: &str) -> &mut Box<dyn Engine> {
        let server = self.server_of(name);
        match server == self.home {
            true => &mut self.engine,
            false => self.parked.get_mut(&server).expect("a connected server"),
        }
    }

    /// Frees the run's adapters on every server as the run ends (`Engine::release`). A server
    /// that will not is reported, not fatal: the run directory's `adapters.json` still names
    /// them for its next process, and the server's session cleanup frees them.
    pub fn release(&mut self) {
        let engines = std::iter::once(&mut self.engine)
            .chain(self.parked.values_mut())
            .chain(self.own.values_mut());
        for engine in engines {
            if let Err(e) = engine.release() {
                eprintln!("{e} (the run's adapters there are left to the server)");
            }
        }
    }

    /// Records that `name` was just created on the current server.
    fn created(&mut self, name: &str) {
        self.located.insert(name.to_string(), self.home.clone());
    }
}

/// The LoRA settings a model's declaration asks for.
fn lora_of(checked: &crate::check::Checked, name: &str) -> Option<Lora> {
    let resolved = checked.decl_params.get(name).cloned().unwrap_or_default();
    params::get_num(&resolved, "lora_rank")
        .map(|r| Lora { rank: r as usize, alpha: params::num(&resolved, "lora_alpha") })
}

/// The name under which the run holds `model`'s critic (not a name a recipe can declare).
pub(super) fn critic_key(model: &str) -> String {
    format!("{model}.values")
}

/// The model a key of the run's models names: itself, or the model whose critic it is.
fn model_of_key(key: &str) -> &str {
    key.strip_suffix(".values").unwrap_or(key)
}

/// `[B, width]` rows padded with zeros.
pub(super) fn padded(
    rows: &[Vec<f32>],
    width: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut flat = vec![0f32; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        for (t, v) in row.iter().take(width).enumerate() {
            flat[r * width + t] = *v;
        }
    }
    Tensor::from_vec(flat, (rows.len(), width), device)
}

pub(super) fn seqs_of(text: &TextRows) -> Vec<Seq> {
    text.ctx.iter().zip(&text.toks).map(|(c, t)| Seq { ctx: c.clone(), toks: t.clone() }).collect()
}

/// Sources computed on the host without a model: verifier and external rewards, the sampler's
/// recorded log-probabilities.
pub(super) fn on_host(s: &Source) -> bool {
    matches!(
        &s.kind,
        SourceKind::Score { scorer: ScorerRef::Verifier { .. } | ScorerRef::External { .. }, .. }
            | SourceKind::Signal { model: ModelRef::Rollout, .. }
    )
}

impl Run<'_> {
    fn remote(&mut self) -> &mut RemoteRun {
        self.remote.as_mut().expect("a remote run")
    }

    /// Before a stage's first step: the trained model on the server (created, checked against
    /// the recipe's own, or loaded from the checkpoint) and `ref`'s snapshot.
    pub(super) fn remote_stage_start(
        &mut self,
        index: usize,
        resumed: Option<&RemoteCheckpoint>,
        step: usize,
    ) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let trained = stage.trained().unwrap_or("policy").to_string();
        self.remote().enter(&trained);
        if let Some(r) = resumed {
            for (name, path) in &r.samplers {
                self.remote().samplers.insert(name.clone(), Sampler::Weights(path.clone()));
            }
            self.remote_refrozen(index, r).map_err(fail)?;
        }
        if !self.remote().own_checked {
            let names: Vec<String> = self.remote().own.keys().cloned().collect();
            // `ref`'s server is checked against the model it stands for, stage by stage.
            for name in names.into_iter().filter(|n| n != "ref") {
                self.compare_base(&name, Some(&name), None).map_err(fail)?;
            }
            self.remote().own_checked = true;
        }
        // Whether the trained model is on the server exactly as its base (a fresh adapter).
        let mut fresh = false;
        let lora = self.lora_of(&trained);
        if !self.remote().models.contains_key(&trained) {
            let seed = self.opts.seed;
            let r = self.remote();
            // Whether the server already holds a model of the run (for a refusal's help).
            let held = r.located.values().any(|s| *s == r.home);
            let id = r.engine.create_model(lora, seed).map_err(|e| {
                // A server that holds one adapter (SkyRL's FSDP backend) and already holds one.
                fail(match held {
                    true => format!("{e} (a server that holds one adapter: give `{trained}` a server of its own, `--server {trained}=URL`)"),
                    false => e,
                })
            })?;
            match resumed.and_then(|r| r.models.get(&trained)) {
                Some(path) => self.remote().engine.load(&id, path).map_err(fail)?,
                None => {
                    self.compare_base(&trained, None, Some(id.clone())).map_err(fail)?;
                    fresh = true;
                }
            }
            self.remote().models.insert(trained.clone(), id);
            self.remote().created(&trained);
        }
        // A fresh adapter is the server's base model: base checks read its forward.
        let base_reader = fresh.then(|| self.remote().models[&trained].clone());
        for t in stage.train.iter().filter(|t| t.value_head) {
            let own = (t.model.name != trained).then(|| base_reader.clone());
            self.remote_critic(&t.model.name, t.span, resumed, own)?;
        }
        let policy = self.remote().models[&trained].clone();
        if self.remote().own.contains_key("ref") {
            return self.own_reference(index, &trained).map_err(fail);
        }
        // `ref`'s frozen copy: over the base while nothing has trained the model, else loaded
        // from its weights as the stage starts (saved now, or named by the checkpoint).
        let weights = match resumed.filter(|_| step > 0) {
            Some(r) => r.reference_weights.clone(),
            None if fresh => None,
            None => {
                Some(self.remote().engine.save(&policy, &format!("ref-{index}")).map_err(fail)?)
            }
        };
        let seed = self.opts.seed;
        let sampling = self.remote().engine.sampling();
        let label = self.remote().engine.label();
        // A server that holds one trained adapter (SkyRL's FSDP backend) refuses the copy:
        // `ref` is then read from its sampler snapshot's prompt log-probabilities (the sampler's
        // arithmetic, so the KL starts near 0 rather than at exactly 0) — where a snapshot keeps
        // its weights. Where it follows the policy (SkyRL's FSDP backend) that read would be the
        // current policy: a stage that reads `ref` stops here instead.
        let copy = match self.remote().engine.create_model(lora, seed) {
            Ok(copy) => Some(copy),
            Err(e) if sampling.snapshots == Snapshots::Kept => {
                eprintln!(
                    "{label} refused a second adapter for `ref` ({e}): `ref` is read from the prompt log-probabilities of its sampler snapshot instead"
                );
                None
            }
            Err(e) if self.reads_ref(index) => {
                return Err(fail(format!(
                    "{label} refused a second adapter for `ref`'s frozen copy ({e}), and its sampler snapshots are not frozen copies (its self-test found they {}), so `ref` cannot be read from the policy's snapshot either; put `ref` on a server of its own, `--server ref=URL`, whose base model is `{trained}` as this stage starts",
                    match sampling.snapshots {
                        Snapshots::LoadIntoModel => "load into their model, rewinding it",
                        _ => "follow the policy's current weights",
                    }
                )));
            }
            Err(_) => None,
        };
        if let (Some(copy), Some(path)) = (&copy, &weights) {
            self.remote().engine.load(copy, path).map_err(fail)?;
        }
        // Sampling from `ref` (`from = ref`, the held-out `before`): the copy's snapshot, a model
        // that never trains — on servers whose snapshots follow or rewind their model, the
        // policy's stage-start snapshot would sample (or make) the current policy. Without a
        // copy, that snapshot (saved now, or named by the checkpoint), read past this stage's
        // first step only where snapshots are kept (refused above otherwise).
        let resumed_reference = resumed.and_then(|r| r.reference.clone()).filter(|_| step > 0);
        let reference = match (&copy, resumed_reference) {
            (Some(copy), _) => self.remote().engine.sampler(copy, &format!("ref-copy-{index}")),
            (None, Some(path)) => Ok(Sampler::Weights(path)),
            (None, None) => self.remote().engine.sampler(&policy, &format!("ref-{index}")),
        };
        let r = self.remote();
        r.reference = reference.map_err(fail)?;
        r.reference_model = copy;
        r.reference_weights = weights;
        Ok(())
    }

    /// On resuming stage `index`: the models earlier stages trained, frozen since, made again
    /// on their servers from the checkpoint's weights. The interrupted process's adapters are
    /// gone (unloaded at connect, or by a restarted server) and, on servers whose snapshots
    /// follow or load into their model, so are their snapshots; made again, they are read as
    /// the uninterrupted run reads them (forward passes) and sampled through a fresh snapshot.
    fn remote_refrozen(&mut self, index: usize, resumed: &RemoteCheckpoint) -> Result<(), String> {
        let stage = &self.checked.program.stages[index];
        let frozen = resumed.models.iter().filter(|(name, _)| {
            model_of_key(name) == name.as_str()
                && !stage.train.iter().any(|t| &t.model.name == *name)
        });
        for (name, path) in frozen {
            let (lora, seed) = (self.lora_of(name), self.opts.seed);
            let engine = self.remote().engine_for(name);
            let id = engine.create_model(lora, seed)?;
            engine.load(&id, path)?;
            let sampler = engine.sampler(&id, &format!("frozen-{name}-resumed-{index}"))?;
            let r = self.remote();
            r.models.insert(name.clone(), id);
            r.samplers.insert(name.clone(), sampler);
        }
        Ok(())
    }

    /// Whether stage `index` reads `ref`: its log-probabilities, or samples from it.
    fn reads_ref(&self, index: usize) -> bool {
        let (sources, _) = crate::train::signals::sources(self.checked, index);
        let from = params::get(&self.checked.stages[index].sample, "from").and_then(|v| v.str());
        from == Some("ref")
            || sources
                .iter()
                .any(|s| matches!(&s.kind, SourceKind::Signal { model: ModelRef::Ref, .. }))
    }

    /// `ref` on a server of its own (`--server ref=URL`): that server's base model, which must be
    /// `trained` as the stage starts (`connect` refused a recipe where an earlier stage trains it).
    fn own_reference(&mut self, index: usize, trained: &str) -> Result<(), String> {
        self.compare_base(trained, Some("ref"), None)?;
        let r = self.remote();
        let reader = r.own_readers.get("ref").cloned();
        let engine = r.own.get_mut("ref").expect("`ref`'s server");
        r.reference = match reader {
            // The reader never trains: its snapshot is the base model on any server.
            Some(id) => engine.sampler(&id, &format!("ref-{index}"))?,
            None => Sampler::Base,
        };
        r.reference_model = None;
        r.reference_weights = None;
        Ok(())
    }

    /// The critic that stands for `name`'s value head on the server (created once, or loaded
    /// from the checkpoint); a server without one refuses the run here, before any step. `own`:
    /// `name` is a critic declared as a model of its own, which must be the server's base model
    /// (read through a fresh adapter where there is one).
    fn remote_critic(
        &mut self,
        name: &str,
        span: crate::diag::Span,
        resumed: Option<&RemoteCheckpoint>,
        own: Option<Option<ModelId>>,
    ) -> Result<(), Diagnostic> {
        let key = critic_key(name);
        if self.remote().models.contains_key(&key) {
            return Ok(());
        }
        let (lora, seed) = (self.lora_of(name), self.opts.seed);
        let id = self.remote().engine.create_critic(lora, seed).map_err(|e| {
            Diagnostic::error("tinker-critic", e)
                .primary(span, "needs a critic on the server")
                .help("use a server with a critic (SkyRL's FSDP backend), a critic-free advantage (group baselines, `vine_values`), or run the recipe locally")
        })?;
        match (resumed.and_then(|r| r.models.get(&key)), own) {
            (Some(path), _) => {
                self.remote().engine.load(&id, path).map_err(|e| run_error(span, e))?
            }
            // A critic declared as a model of its own starts from the server's base model.
            (None, Some(via)) => {
                self.compare_base(name, None, via).map_err(|e| run_error(span, e))?
            }
            (None, None) => {}
        }
        self.remote().created(&key);
        self.remote().models.insert(key, id);
        Ok(())
    }

    fn lora_of(&self, name: &str) -> Option<Lora> {
        lora_of(self.checked, name)
    }

    /// A training prompt's tokens as a sequence to score (its first token the context).
    fn probe(&self) -> Option<Seq> {
        let prompt = self.tasks.values().find_map(|t| t.train.first())?;
        let toks = self.tok.prompt(&prompt.text);
        (toks.len() >= 3).then(|| Seq { ctx: toks[..1].to_vec(), toks: toks[1..].to_vec() })
    }

    /// The recipe's model `local` as it starts against the base model of a server (`own`: the
    /// server of its own by that name, else the default one), on a probe (a training prompt's
    /// tokens) by log-probabilities at temperature 1. The server's base model is read through
    /// `via`, a fresh adapter's forward, else its reader adapter or base sampling; a server that
    /// samples no base model and holds no fresh adapter is not checked (said on stderr).
    fn compare_base(
        &mut self,
        local: &str,
        own: Option<&str>,
        via: Option<ModelId>,
    ) -> Result<(), String> {
        let Some(probe) = self.probe() else { return Ok(()) };
        let model = self.slots[local].frozen().map_err(|e| e.to_string())?;
        let local_lp = crate::engine::candle::text_logp(
            &model,
            std::slice::from_ref(&probe),
            &self.opts.device,
        )?;
        let r = self.remote();
        let via = via.or_else(|| own.and_then(|o| r.own_readers.get(o).cloned()));
        let engine = match own {
            Some(o) => r.own.get_mut(o).expect("a server of its own"),
            None => &mut r.engine,
        };
        let probes = std::slice::from_ref(&probe);
        let remote = match &via {
            Some(id) => engine.logp(Some(id), &Sampler::Base, probes)?,
            None if engine.sampling().base => engine.logp(None, &Sampler::Base, probes)?,
            None => {
                eprintln!(
                    "{} samples no base model and holds no fresh adapter here: its base model is not checked against `{local}`",
                    engine.label()
                );
                return Ok(());
            }
        };
        let n = probe.toks.len();
        let diff = mean_abs_diff(&local_lp[0], &remote[0]);
        if diff.is_nan() || diff > BASE_TOLERANCE {
            return Err(format!(
                "{}'s base model is not the recipe's `{local}`: on a probe of {n} tokens their log-probabilities differ by {diff:.3} per token on average (at most {BASE_TOLERANCE} is accepted); start the server with `{local}`'s weights as its base model (a built-in model: save it with a local `rlx run --steps 1` and serve `models/{local}`)",
                engine.label()
            ));
        }
        if !self.opts.quiet {
            eprintln!(
                "the server's base model is the recipe's `{local}`: rlx's and its log-probabilities agree to {diff:.1e} nats per token on a probe of {n} tokens"
            );
        }
        Ok(())
    }

    /// The task metrics of a sampler on held-out prompts (as `evaluate`, sampled on the server).
    pub(super) fn remote_evaluate(
        &mut self,
        index: usize,
        task: &Task,
        sampler: &Sampler,
    ) -> Result<Metrics, String> {
        let n = self.opts.eval_prompts.min(task.eval.len());
        let k = self.opts.eval_samples.max(1);
        let sampling = self.sampling(index);
        let prompts: Vec<Vec<u32>> =
            task.eval[..n].iter().map(|p| self.tok.prompt(&p.text)).collect();
        let params = SampleParams {
            max_tokens: sampling.max_tokens,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            seed: 0xE7A1,
            stop_text: sampling.stop.clone(),
            stop_tokens: self.tok.stops.clone(),
        };
        let out = self.remote().sampling_engine(sampler).sample(sampler, &prompts, k, &params)?;
        let responses: Vec<String> =
            out.iter().flatten().map(|s| self.tok.decode(&s.tokens)).collect();
        let texts: Vec<&str> = task.eval[..n].iter().map(|p| p.text.as_str()).collect();
        let mut metrics = task.held_out_metrics(&texts, &responses, k);
        metrics.extend(task.demonstration_metrics(n));
        Ok(metrics)
    }

    /// After a stage: a sampler snapshot of every model it trained, for later stages to read;
    /// the adapters of the models no later stage trains come back (`pull`).
    pub(super) fn remote_stage_end(&mut self, index: usize) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        if let Some(copy) = self.remote().reference_model.take() {
            // A server's adapter slots are few: `ref`'s copy goes with its stage.
            self.remote().engine.unload(&copy).map_err(fail)?;
        }
        for t in &stage.train {
            let name = &t.model.name;
            let Some(id) = self.remote().models.get(name).cloned() else { continue };
            let sampler = self
                .remote()
                .engine
                .sampler(&id, &format!("frozen-{name}-{index}"))
                .map_err(fail)?;
            self.remote().samplers.insert(name.clone(), sampler);
            self.remote().created(name);
        }
        let stages = &self.checked.program.stages;
        let last: Vec<String> = stage
            .train
            .iter()
            .filter(|t| !stage.is_critic_only(&t.model.name))
            .map(|t| t.model.name.clone())
            .filter(|n| {
                !stages[index + 1..].iter().any(|s| s.train.iter().any(|t| &t.model.name == n))
            })
            .collect();
        for name in last {
            let pulled = self.remote_pull(&name).map_err(fail)?;
            if !self.opts.quiet {
                eprintln!("{}", pulled.describe(&name));
            }
        }
        Ok(())
    }

    /// Saves every server model for a checkpoint; returns what `state.json` records.
    pub(super) fn remote_save(
        &mut self,
        stage: usize,
        step: usize,
    ) -> Result<RemoteCheckpoint, String> {
        let r = self.remote();
        let mut models = BTreeMap::new();
        for (name, id) in r.models.clone() {
            let path = r.engine_for(&name).save(&id, &format!("ckpt-{stage}-{step}"))?;
            models.insert(name, path);
        }
        let reference = match &r.reference {
            Sampler::Weights(p) => Some(p.clone()),
            Sampler::Base => None,
        };
        let samplers = r
            .samplers
            .iter()
            .filter_map(|(k, s)| match s {
                Sampler::Weights(p) => Some((k.clone(), p.clone())),
                Sampler::Base => None,
            })
            .collect();
        Ok(RemoteCheckpoint {
            server: r.engine.label(),
            models,
            reference,
            reference_weights: r.reference_weights.clone(),
            samplers,
        })
    }
}
