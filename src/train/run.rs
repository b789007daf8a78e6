//! A training run: tasks, tokenizer and models are set up, then each stage runs in order —
//! supervised (`data`), preference (`pairs`) or RL (`prompts`) — writing metrics, samples and
//! atomic checkpoints to the run directory. A resumed run continues from the last checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{Map, Value as Json, json};

use super::checkpoint::{self, State};
use super::metrics::MetricsLog;
use super::models::{self, Slot};
use super::optim::{AdamW, AdamWConfig};
use super::progress::Progress;
use super::signals::{self, ModelView, Rows, SignalCx, Source, SourceKind, TextRows};
use crate::check::{Checked, params};
use crate::diag::{Diagnostic, Span};
use crate::exec::{Compiled, Options};
use crate::ir::builtins::MemberKind;
use crate::ir::graph::{ModelRef, ScorerRef, Signal, StageIr};
use crate::model::Transformer;
use crate::rng::Rng;
use crate::sample::{self, Sampling};
use crate::syntax::ast::SourceKind as DataKw;
use crate::tasks::Task;
use crate::tokenizer::Tok;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Caps every stage's `steps`.
    pub steps: Option<usize>,
    pub seed: u64,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    pub device: Device,
    /// No progress output.
    pub quiet: bool,
    /// Held-out prompts for the before/after task metric.
    pub eval_prompts: usize,
    /// Samples per held-out prompt: metrics are means over them, `pass@k` uses them all.
    pub eval_samples: usize,
}

/// Task metrics by name.
pub type Metrics = Vec<(String, f64)>;

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Per RL stage: the task metrics before and after.
    pub evals: Vec<(String, Metrics, Metrics)>,
    pub seconds: f64,
}

/// The model directory whose tokenizer the run uses, with its `chat` setting: the first
/// pretrained model's. Every pretrained model of a recipe must share it.
fn pretrained_tokenizer(
    checked: &Checked,
) -> Result<Option<(std::path::PathBuf, bool, Span)>, Diagnostic> {
    let mut found: Option<(std::path::PathBuf, bool, Span)> = None;
    for m in &checked.program.models {
        if !matches!(m.init, crate::ir::graph::ModelInit::Pretrained) {
            continue;
        }
        let resolved = checked.decl_params.get(&m.name.name).cloned().unwrap_or_default();
        let dir = crate::check::params::get(&resolved, "path").and_then(|v| v.str()).unwrap_or("");
        let dir = std::path::Path::new(dir);
        // What `rlx lint` checks, again: the directory may have changed since.
        crate::model::dir::check(dir).map_err(|e| run_error(m.span, e))?;
        let dir = crate::tokenizer::tokenizer_dir(dir).map_err(|e| run_error(m.span, e))?;
        let chat = matches!(
            crate::check::params::get(&resolved, "chat"),
            Some(crate::check::params::Value::Bool(true))
        );
        match &found {
            None => found = Some((dir, chat, m.span)),
            Some((first, _, _)) => {
                let read = |d: &std::path::Path| std::fs::read(d.join("tokenizer.json")).ok();
                if read(first) != read(&dir) {
                    return Err(run_error(
                        m.span,
                        format!(
                            "{} and {} have different tokenizers; models of one recipe share a tokenizer",
                            first.display(),
                            dir.display()
                        ),
                    ));
                }
            }
        }
    }
    Ok(found)
}

fn run_error(span: Span, message: impl Into<String>) -> Diagnostic {
    Diagnostic::error("run-error", message).primary(span, "while running this").help(
        "the recipe checked clean; this is a failure of the run itself (files, memory, or a model setting)",
    )
}

struct Run<'a> {
    checked: &'a Checked,
    opts: &'a RunOptions,
    tasks: HashMap<String, Task>,
    tok: Tok,
    tokenizer_json: String,
    slots: BTreeMap<String, Slot>,
    metrics: MetricsLog,
    started: Instant,
    /// Seconds of the run before this process (a resumed run's wall time stays cumulative).
    wall_before: f64,
    rng: Rng,
    summary: Summary,
}

/// Runs every stage of a checked recipe. `resolved` is the recipe text to store with the run.
pub fn run(checked: &Checked, resolved: &str, opts: &RunOptions) -> Result<Summary, Diagnostic> {
    // Wall time counts the warm start too: it is part of what a run costs.
    let started = Instant::now();
    let whole = checked.program.stages.first().map_or(Span::new(0, 0), |s| s.name.span);
    let io = |e: std::io::Error| run_error(whole, format!("{}: {e}", opts.out.display()));
    std::fs::create_dir_all(&opts.out).map_err(io)?;
    let resumed = if opts.resume {
        Some(
            checkpoint::load(&opts.out, &opts.device)
                .map_err(|e| run_error(whole, format!("cannot resume: {e}")))?,
        )
    } else {
        None
    };
    // Tasks and the tokenizer: a pretrained model's own, or the built-in word-level one over
    // the tasks' pieces, written to the run directory and read back like any tokenizer.json.
    let mut tasks = HashMap::new();
    let mut pieces: Vec<String> = Vec::new();
    for d in &checked.program.data {
        let resolved = checked.decl_params.get(&d.name.name).cloned().unwrap_or_default();
        let task = Task::build(d.spec.name, &resolved).map_err(|e| run_error(d.span, e))?;
        for p in &task.pieces {
            if !pieces.contains(p) {
                pieces.push(p.clone());
            }
        }
        tasks.insert(d.name.name.clone(), task);
    }
    let tok_path = opts.out.join("tokenizer.json");
    let (tok, tokenizer_json) = match pretrained_tokenizer(checked)? {
        Some((dir, chat, span)) => {
            let fail = |e: String| run_error(span, e);
            let json = std::fs::read_to_string(dir.join("tokenizer.json"))
                .map_err(|e| fail(format!("{}: {e}", dir.join("tokenizer.json").display())))?;
            std::fs::write(&tok_path, &json).map_err(io)?;
            (crate::tokenizer::from_hf_dir(&dir, chat).map_err(fail)?, json)
        }
        None => {
            let json = Tok::json(&pieces);
            std::fs::write(&tok_path, &json).map_err(io)?;
            (Tok::from_file(&tok_path).map_err(|e| run_error(whole, e))?, json)
        }
    };
    std::fs::write(opts.out.join("recipe.resolved.rlx"), resolved).map_err(io)?;
    let seed = resumed.as_ref().map_or(opts.seed, |(s, _)| s.seed);
    let setup = models::Setup {
        checked,
        tasks: &tasks,
        tok: &tok,
        tokenizer_json: &tokenizer_json,
        seed,
        device: &opts.device,
        quiet: opts.quiet,
    };
    let quiet = opts.quiet;
    let mut slots = models::build(&setup, &mut |m| {
        if !quiet {
            eprintln!("{m}")
        }
    })
    .map_err(|(span, e)| run_error(span, e))?;
    let metrics = match &resumed {
        Some((s, _)) => MetricsLog::resume(&opts.out, s.stage, s.step),
        None => MetricsLog::create(&opts.out),
    }
    .map_err(io)?;
    let mut rng = Rng::new(seed);
    let (first_stage, resume_state) = match resumed {
        Some((state, tensors)) => {
            for (name, slot) in slots.iter_mut() {
                let prefix = format!("model.{name}.");
                if tensors.contains_key(&format!("{prefix}value.weight")) {
                    slot.add_value_head(&mut rng, &opts.device)
                        .map_err(|e| run_error(whole, e.to_string()))?;
                }
                let mine: BTreeMap<String, Tensor> = tensors
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone()))
                    })
                    .collect();
                slot.params
                    .assign(&mine)
                    .map_err(|e| run_error(whole, format!("cannot resume: {e}")))?;
            }
            rng = Rng::from_state(state.rng);
            if !opts.quiet {
                let name = checked
                    .program
                    .stages
                    .get(state.stage)
                    .map_or("(none)", |s| s.name.name.as_str());
                eprintln!(
                    "resuming stage `{name}` at step {} (checkpoint {}, {:.1}s of training so far)",
                    state.step, state.file, state.wall
                );
            }
            (state.stage, Some((state, tensors)))
        }
        None => (0, None),
    };
    let wall_before = resume_state.as_ref().map_or(0.0, |(s, _)| s.wall);
    let mut run = Run {
        checked,
        opts,
        tasks,
        tok,
        tokenizer_json,
        slots,
        metrics,
        started,
        wall_before,
        rng,
        summary: Summary::default(),
    };
    // Stages a resumed run finished before: their evaluations are in the log.
    for index in 0..first_stage {
        if let Some((before, after)) = run.recorded_evals(index) {
            let name = checked.program.stages[index].name.name.clone();
            run.summary.evals.push((name, before, after));
        }
    }
    let mut resume_state = resume_state;
    for index in first_stage..checked.program.stages.len() {
        run.stage(index, resume_state.take())?;
    }
    // Every model goes out as a Hugging Face checkpoint, for other tools (and `rlx score`,
    // `rlx generate`) to load; LoRA adapters also alone, in PEFT's layout.
    for (name, slot) in &run.slots {
        let dir = opts.out.join("models").join(name);
        let adapter = opts.out.join("adapters").join(name);
        let saved = slot
            .save(&dir, &adapter, &run.tok, &run.tokenizer_json)
            .map_err(|e| run_error(whole, format!("saving `{name}`: {e}")))?;
        super::fault::point();
        if !opts.quiet {
            eprintln!("saved `{name}` in {} layout to {}", saved.layout, dir.display());
            if saved.adapter {
                eprintln!("  its LoRA adapter alone (PEFT layout) to {}", adapter.display());
            }
        }
    }
    run.summary.seconds = run.wall();
    super::fault::report();
    Ok(run.summary)
}

/// What every step of one stage reads: built once per stage.
#[derive(Clone, Copy)]
struct StagePlan<'a> {
    index: usize,
    settings: &'a Loop,
    compiled: &'a Compiled<'a>,
    sources: &'a [Source],
    delimiter: Option<&'a str>,
    task: &'a Task,
    reference: &'a Transformer,
}

/// Optimiser and loop settings of a stage.
struct Loop {
    steps: usize,
    epochs: usize,
    batch: usize,
    minibatch: usize,
    adam: AdamWConfig,
}

fn loop_settings(checked: &Checked, index: usize, cap: Option<usize>) -> Loop {
    let o = &checked.stages[index].optim;
    let num = |n: &str, d: f64| params::get_num(o, n).unwrap_or(d);
    let steps = (num("steps", 100.0) as usize).min(cap.unwrap_or(usize::MAX)).max(1);
    let batch = (num("batch", 32.0) as usize).max(1);
    Loop {
        steps,
        epochs: (num("epochs", 1.0) as usize).max(1),
        batch,
        minibatch: (num("minibatch", batch as f64) as usize).clamp(1, batch),
        adam: AdamWConfig {
            lr: num("lr", 1e-5),
            beta1: num("beta1", 0.9),
            beta2: num("beta2", 0.999),
            eps: 1e-8,
            weight_decay: num("weight_decay", 0.0),
            clip_grad: params::get_num(o, "clip_grad"),
            warmup_steps: (num("warmup", 0.0) * steps as f64).round() as usize,
            decay_steps: None,
        },
    }
}

/// Examples in a supervised stage's data: pairs, corrections or texts.
fn data_len(task: &Task, member: MemberKind) -> usize {
    match member {
        MemberKind::Pairs => task.pairs.len(),
        MemberKind::Corrections => task.corrections.len(),
        _ => task.texts.len(),
    }
}

/// A fixed permutation of `0..n` for epoch `epoch`, so a resumed run sees the same data.
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

/// With one epoch of one minibatch, the update's forward runs on `old`'s weights exactly, so
/// `old.logp` is its detached `policy.logp` and the rollout pass need not run the trained model
/// (TRL and verl skip it likewise with one iteration). Only when every signal of the trained
/// model or `old` is a log-probability and no step rollouts (which draw from the run's random
/// stream before the update) are asked for.
fn old_from_update(sources: &[Source], trained: &str, settings: &Loop, rows: usize) -> bool {
    if settings.epochs != 1 || settings.minibatch < rows {
        return false;
    }
    let mut reads_old = false;
    for s in sources {
        match &s.kind {
            SourceKind::StepRollouts { .. } => return false,
            SourceKind::Signal { model, signal, text } => {
                let of_trained = matches!(model, ModelRef::Named(m) if m == trained);
                if (of_trained || *model == ModelRef::Old) && *signal != Signal::Logp {
                    return false;
                }
                if of_trained && !s.grad {
                    return false;
                }
                if *model == ModelRef::Old {
                    if live_logp(sources, trained, text).is_none() {
                        return false;
                    }
                    reads_old = true;
                }
            }
            SourceKind::Score { .. } => {}
        }
    }
    reads_old
}

/// Whether `s` is a signal of the trained model or of `old`, its snapshot at sampling.
fn of_trained_or_old(s: &Source, trained: &str) -> bool {
    matches!(&s.kind, SourceKind::Signal { model, .. }
        if *model == ModelRef::Old || matches!(model, ModelRef::Named(m) if m == trained))
}

/// The trained model's log-probabilities of `text` with gradient, if the stage reads them.
fn live_logp<'a>(sources: &'a [Source], trained: &str, text: &str) -> Option<&'a Source> {
    sources.iter().find(|g| {
        g.grad
            && matches!(&g.kind, SourceKind::Signal { model: ModelRef::Named(m), signal: Signal::Logp, text: t }
                if m == trained && t == text)
    })
}

/// `t`'s rows put back in rollout order, from the order `perm` listed them in.
fn unpermute(t: &Tensor, perm: &[usize]) -> candle_core::Result<Tensor> {
    let mut inverse = vec![0u32; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i as u32;
    }
    t.index_select(&Tensor::from_vec(inverse, perm.len(), t.device())?, 0)
}

fn mean_of(t: &Tensor) -> f64 {
    t.to_dtype(DType::F32)
        .and_then(|t| t.mean_all())
        .and_then(|t| t.to_scalar::<f32>())
        .map_or(f64::NAN, |v| v as f64)
}

/// Mean of a token tensor over a mask.
fn masked_mean(t: &Tensor, mask: &Tensor) -> f64 {
    let num = t.mul(mask).and_then(|x| x.sum_all()).and_then(|x| x.to_scalar::<f32>());
    let den = mask.sum_all().and_then(|x| x.to_scalar::<f32>());
    match (num, den) {
        (Ok(n), Ok(d)) if d > 0.0 => (n / d) as f64,
        _ => f64::NAN,
    }
}

impl Run<'_> {
    fn stage(
        &mut self,
        index: usize,
        resume: Option<(State, BTreeMap<String, Tensor>)>,
    ) -> Result<(), Diagnostic> {
        let checked = self.checked;
        let stage = &checked.program.stages[index];
        let span = stage.name.span;
        let fail = |e: String| run_error(span, e);
        let mut settings = loop_settings(checked, index, self.opts.steps);
        // Value heads the stage trains.
        for t in &stage.train {
            if t.value_head {
                let slot = self
                    .slots
                    .get_mut(&t.model.name)
                    .ok_or_else(|| fail(format!("no model `{}`", t.model.name)))?;
                slot.add_value_head(&mut self.rng, &self.opts.device)
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        let trained = stage.trained().unwrap_or("policy").to_string();
        // `ref`: the trained model as the stage starts (from the checkpoint when resuming
        // mid-stage; a checkpoint at a stage's start holds no `ref`, the models are it).
        let reference: BTreeMap<String, Tensor> = match &resume {
            Some((state, tensors)) if state.step > 0 => tensors
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("ref.").map(|k| (k.to_string(), v.clone())))
                .collect(),
            _ => self.slots[&trained].params.snapshot().map_err(|e| fail(e.to_string()))?,
        };
        let vars: Vec<(String, Var)> = stage
            .train
            .iter()
            .flat_map(|t| {
                self.slots[&t.model.name]
                    .params
                    .iter()
                    .map(|(k, v)| (format!("{}.{k}", t.model.name), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut opt = AdamW::new(vars, settings.adam.clone()).map_err(|e| fail(e.to_string()))?;
        let mut start = 0;
        if let Some((state, tensors)) = &resume {
            opt.restore(tensors, "optim.", state.optim_steps).map_err(|e| fail(e.to_string()))?;
            start = state.step;
        }
        let compiled = Compiled::new(checked, index);
        let (sources, delimiter) = signals::sources(checked, index);
        let kind = stage.source.as_ref().map(|(k, d)| (*k, d.clone()));
        let Some((kw, data)) = kind else { return Err(fail("the stage reads no data".into())) };
        let task = self
            .tasks
            .get(&data.data)
            .cloned()
            .ok_or_else(|| fail(format!("no data set `{}`", data.data)))?;
        self.fit_batches(index, kw, data.kind, &task, &mut settings)?;
        let steps = match kw {
            DataKw::Prompts => settings.steps,
            _ => {
                let n = data_len(&task, data.kind);
                settings.steps.min(settings.epochs * n.div_ceil(settings.batch)).max(1)
            }
        };
        if !self.opts.quiet {
            eprintln!("stage `{}`: {steps} steps", stage.name.name);
        }
        let ref_model =
            self.slots[&trained].with_values(&reference).map_err(|e| fail(e.to_string()))?;
        // Held-out generations before and after: RL stages, and preference stages (DPO) that
        // train a language model (not a reward model) on a task with prompts.
        let evaluated = match kw {
            DataKw::Prompts => true,
            DataKw::Pairs => {
                self.slots[&trained].params.get("score.weight").is_none() && !task.eval.is_empty()
            }
            _ => false,
        };
        if evaluated && self.opts.eval_prompts > task.eval.len() && !self.opts.quiet {
            eprintln!(
                "note: stage `{}`: the task holds {} held-out prompts; evaluating on those, not {}",
                stage.name.name,
                task.eval.len(),
                self.opts.eval_prompts
            );
        }
        if evaluated && start == 0 {
            let before = self.evaluate(index, &task, &ref_model).map_err(fail)?;
            self.record_eval(index, 0, "before", &before)?;
            self.summary.evals.push((stage.name.name.clone(), before, vec![]));
        } else if evaluated {
            // Resumed mid-stage: the `before` evaluation is in the log.
            let before = self.recorded_evals(index).map(|(b, _)| b).unwrap_or_default();
            self.summary.evals.push((stage.name.name.clone(), before, vec![]));
        }
        let plan = StagePlan {
            index,
            settings: &settings,
            compiled: &compiled,
            sources: &sources,
            delimiter: delimiter.as_deref(),
            task: &task,
            reference: &ref_model,
        };
        let mut progress =
            Progress::new(&format!("stage {}", stage.name.name), steps as u64, self.opts.quiet);
        progress.set_position(start as u64);
        let save_every = (steps / 10).max(1);
        for step in start..steps {
            let t0 = Instant::now();
            let mut record = Map::new();
            record.insert("stage".into(), json!(stage.name.name));
            record.insert("stage_index".into(), json!(index));
            record.insert("step".into(), json!(step + 1));
            match kw {
                DataKw::Prompts => self.rl_step(&plan, step, &mut opt, &mut record)?,
                _ => self.supervised_step(&plan, step, data.kind, &mut opt, &mut record)?,
            }
            let secs = t0.elapsed().as_secs_f64();
            record.insert("seconds".into(), json!(secs));
            record.insert("wall".into(), json!(self.wall()));
            if let Some(t) = record.get("tokens").and_then(Json::as_f64) {
                record.insert("tokens_per_s".into(), json!(t / secs.max(1e-9)));
            }
            self.metrics.write(&record).map_err(|e| fail(e.to_string()))?;
            let headline = ["loss", "reward", task.headline()]
                .iter()
                .filter_map(|k| {
                    record.get(*k).and_then(Json::as_f64).map(|v| format!("{k} {v:.3}"))
                })
                .collect::<Vec<_>>()
                .join("  ");
            progress.tick(&headline);
            if (step + 1) % save_every == 0 || step + 1 == steps {
                self.save(index, step + 1, &opt, &reference)?;
            }
        }
        progress.finish();
        if evaluated {
            let policy = self.slots[&trained].frozen().map_err(|e| fail(e.to_string()))?;
            let after = self.evaluate(index, &task, &policy).map_err(fail)?;
            self.record_eval(index, steps, "after", &after)?;
            if let Some(e) = self.summary.evals.last_mut() {
                e.2 = after;
            }
        }
        // The stage is done: the next one starts from here.
        self.save(
            index + 1,
            0,
            &AdamW::new(vec![], settings.adam).map_err(|e| fail(e.to_string()))?,
            &BTreeMap::new(),
        )?;
        Ok(())
    }

    fn save(
        &self,
        stage: usize,
        step: usize,
        opt: &AdamW,
        reference: &BTreeMap<String, Tensor>,
    ) -> Result<(), Diagnostic> {
        let mut tensors = Vec::new();
        for (name, slot) in &self.slots {
            tensors.extend(slot.params.tensors(&format!("model.{name}.")));
        }
        tensors.extend(opt.state("optim."));
        tensors.extend(reference.iter().map(|(k, v)| (format!("ref.{k}"), v.clone())));
        // Optimiser moments are stored under the trained models' names.
        let state = State {
            stage,
            step,
            optim_steps: opt.steps,
            rng: self.rng.state(),
            file: String::new(),
            seed: self.opts.seed,
            checksum: None,
            wall: self.wall(),
        };
        let span = self
            .checked
            .program
            .stages
            .get(stage.min(self.checked.program.stages.len() - 1))
            .map_or(Span::new(0, 0), |s| s.name.span);
        checkpoint::save(&self.opts.out, &state, &tensors)
            .map_err(|e| run_error(span, format!("cannot write a checkpoint: {e}")))
    }

    /// Batches that the data or the memory cannot hold: a batch larger than the data set is
    /// capped at it (with a warning); a minibatch whose estimated activations exceed the free
    /// memory is refused, saying how many sequences fit.
    fn fit_batches(
        &self,
        index: usize,
        kw: DataKw,
        member: MemberKind,
        task: &Task,
        settings: &mut Loop,
    ) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let n = params::get_num(&self.checked.stages[index].sample, "n").unwrap_or(1.0) as usize;
        let (available, what) = match kw {
            DataKw::Prompts => (task.train.len() * n.max(1), "prompts × samples"),
            _ => (data_len(task, member), "examples"),
        };
        if available > 0 && settings.batch > available {
            if !self.opts.quiet {
                eprintln!(
                    "warning: stage `{}`: optim.batch {} exceeds the data set's {available} {what}; using {available}",
                    stage.name.name, settings.batch
                );
            }
            settings.batch = available;
            settings.minibatch = settings.minibatch.min(available);
        }
        if !self.opts.device.is_cpu() {
            return Ok(());
        }
        let Some(free) = super::memory::available() else { return Ok(()) };
        let trained = stage.trained().unwrap_or("policy");
        let Some(slot) = self.slots.get(trained) else { return Ok(()) };
        // The longest sequence of the first examples: prompt and response, or the whole text.
        let longest = match kw {
            DataKw::Prompts => {
                let prompt = task.train.iter().take(256).map(|p| self.tok.prompt(&p.text).len());
                let new = self.sampling(index).max_tokens;
                prompt.max().unwrap_or(1) + new
            }
            _ => {
                task.texts.iter().take(256).map(|t| self.tok.encode(t).len() + 2).max().unwrap_or(1)
            }
        };
        let budget = free / 10 * 9;
        // RL stages update on minibatches; supervised ones on whole batches.
        let rows = if kw == DataKw::Prompts { settings.minibatch } else { settings.batch };
        let need = super::memory::step_bytes(&slot.cfg, rows, longest, true);
        if need > budget {
            let fit = super::memory::rows_that_fit(&slot.cfg, longest, true, budget);
            return Err(Diagnostic::error(
                "out-of-memory",
                format!(
                    "a minibatch of {rows} sequences of up to {longest} tokens needs about {} to train `{trained}`; {} is free",
                    super::memory::gib(need),
                    super::memory::gib(free)
                ),
            )
            .primary(stage.name.span, "in this stage")
            .help(if fit == 0 {
                "not even one sequence fits: use a smaller model, shorter `max_tokens`, or a machine with more memory".to_string()
            } else {
                format!("about {fit} sequences fit: set `optim.minibatch` (or `optim.batch`) to at most {fit}")
            }));
        }
        Ok(())
    }

    /// Seconds the run has been going, across resumptions.
    fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    /// A stage's `before` and `after` evaluations from the metrics log, in the task's metric
    /// order; `None` when the stage has none.
    fn recorded_evals(&self, index: usize) -> Option<(Metrics, Metrics)> {
        let (before, after) = super::metrics::evals(&self.opts.out, index);
        if before.is_empty() && after.is_empty() {
            return None;
        }
        let task = self.checked.program.stages[index]
            .source
            .as_ref()
            .and_then(|(_, d)| self.tasks.get(&d.data));
        let mut order: Vec<String> = task
            .map(|t| t.metrics(&[], &[]).into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default();
        for k in before.keys().chain(after.keys()) {
            let k = k.trim_start_matches("eval/").to_string();
            if !order.contains(&k) {
                order.push(k);
            }
        }
        let pick = |m: &Map<String, Json>| -> Metrics {
            order
                .iter()
                .filter_map(|k| {
                    m.get(&format!("eval/{k}")).and_then(Json::as_f64).map(|v| (k.clone(), v))
                })
                .collect()
        };
        Some((pick(&before), pick(&after)))
    }

    /// `advice`, and where the run has a checkpoint, that it is intact and how to resume.
    fn resume_hint(&self, advice: &str) -> String {
        match checkpoint::load_state(&self.opts.out) {
            Ok(s) => format!(
                "{advice}; the last checkpoint (stage {}, step {}) is intact and holds no non-finite value",
                s.stage, s.step
            ),
            Err(_) => format!("{advice}; no checkpoint was written yet"),
        }
    }

    fn record_eval(
        &mut self,
        index: usize,
        step: usize,
        when: &str,
        m: &[(String, f64)],
    ) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let mut r = Map::new();
        r.insert("stage".into(), json!(stage.name.name));
        r.insert("stage_index".into(), json!(index));
        r.insert("step".into(), json!(step));
        r.insert("eval".into(), json!(when));
        for (k, v) in m {
            r.insert(format!("eval/{k}"), json!(v));
        }
        self.metrics.write(&r).map_err(|e| run_error(stage.name.span, e.to_string()))
    }

    fn sampling(&self, index: usize) -> Sampling {
        stage_sampling(self.checked, index)
    }

    /// The task metrics of `model` on held-out prompts, sampled with the stage's settings and
    /// a fixed seed (the same prompts and randomness before and after).
    fn evaluate(
        &self,
        index: usize,
        task: &Task,
        model: &Transformer,
    ) -> Result<Vec<(String, f64)>, String> {
        let n = self.opts.eval_prompts.min(task.eval.len());
        let k = self.opts.eval_samples.max(1);
        // Each prompt k times, its samples next to each other.
        let prompts: Vec<Vec<u32>> = task.eval[..n]
            .iter()
            .flat_map(|p| std::iter::repeat_n(self.tok.prompt(&p.text), k))
            .collect();
        let mut rng = Rng::new(0xE7A1);
        let mut responses = Vec::new();
        for chunk in prompts.chunks(64) {
            let g = sample::generate(
                model,
                &self.tok,
                chunk,
                &self.sampling(index),
                &mut rng,
                &self.opts.device,
            )
            .map_err(|e| e.to_string())?;
            responses.extend(g.tokens.iter().map(|t| self.tok.decode(t)));
        }
        let texts: Vec<&str> = task.eval[..n].iter().map(|p| p.text.as_str()).collect();
        let mut metrics = task.held_out_metrics(&texts, &responses, k);
        metrics.extend(task.demonstration_metrics(n));
        Ok(metrics)
    }

    fn frozen_views(
        &self,
        trained: &str,
        reference: &Transformer,
    ) -> Result<HashMap<String, Transformer>, String> {
        let mut frozen = HashMap::new();
        for (name, slot) in &self.slots {
            frozen.insert(name.clone(), slot.frozen().map_err(|e| e.to_string())?);
        }
        frozen.insert("old".into(), self.slots[trained].frozen().map_err(|e| e.to_string())?);
        frozen.insert("ref".into(), reference.clone());
        Ok(frozen)
    }

    fn supervised_step(
        &mut self,
        plan: &StagePlan,
        step: usize,
        member: MemberKind,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, settings, compiled, sources, task, reference, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let n = data_len(task, member);
        let per_epoch = n.div_ceil(settings.batch).max(1);
        let epoch = step / per_epoch;
        let perm = permutation(n, self.opts.seed, epoch as u64);
        let from = (step % per_epoch) * settings.batch;
        let idx: Vec<usize> = perm[from..(from + settings.batch).min(n)].to_vec();
        let tok = &self.tok;
        let mut rows = Rows::default();
        let mut put = |name: &str, ctx: Vec<u32>, toks: Vec<u32>| {
            let e = rows.texts.entry(name.to_string()).or_insert_with(TextRows::default);
            e.ctx.push(ctx);
            e.toks.push(toks);
        };
        let mut prompts = Vec::new();
        for &i in &idx {
            match member {
                MemberKind::Pairs => {
                    let p = &task.pairs[i];
                    let ctx = tok.prompt(&p.prompt);
                    put("chosen", ctx.clone(), tok.response(&p.chosen));
                    put("rejected", ctx, tok.response(&p.rejected));
                    prompts.push(p.prompt.clone());
                }
                MemberKind::Corrections => {
                    let c = &task.corrections[i];
                    let ctx = tok.prompt(&c.prompt);
                    let wrong = tok.response(&c.wrong);
                    put(
                        "target",
                        [ctx.clone(), wrong.clone(), vec![tok.sep]].concat(),
                        tok.response(&c.fixed),
                    );
                    put("response", ctx, wrong);
                    prompts.push(c.prompt.clone());
                }
                _ => {
                    let (ctx, text) = tok.context_and_text(&task.texts[i]);
                    put("target", ctx, text);
                    prompts.push(String::new());
                }
            }
        }
        // KTO's reference point: each prompt followed by the next pair's chosen response (the
        // batch rotated by one, as TRL shifts completions within the batch).
        if let Some(chosen) = rows.texts.get("chosen") {
            let n = chosen.toks.len();
            let toks = (0..n).map(|k| chosen.toks[(k + 1) % n].clone()).collect();
            let mismatched = TextRows { ctx: chosen.ctx.clone(), toks };
            rows.texts.insert("mismatched".into(), mismatched);
        }
        rows.prompts = prompts;
        rows.group = (0..idx.len() as i64).collect();
        let widths = rows.widths();
        let trained = stage.trained().unwrap_or("policy").to_string();
        let live = self.live_views(stage).map_err(fail)?;
        let frozen = self.frozen_views(&trained, reference).map_err(fail)?;
        let cx = SignalCx {
            models: ModelView { live: &live, frozen: &frozen },
            temperature: 1.0,
            tasks: &self.tasks,
            tok: &self.tok,
            device: &self.opts.device,
            widths: &widths,
            frozen_only: false,
            old_is: None,
        };
        let mut batch = signals::base_inputs(&rows, &cx, None).map_err(fail)?;
        batch.extend(signals::compute(sources, |_| true, &rows, &cx).map_err(fail)?);
        let (eval, _) = compiled.run_with(
            &batch,
            &self.opts.device,
            Options { grads: false, profile: false },
            &HashMap::new(),
        )?;
        self.update(index, &eval.loss, opt, record)?;
        record.insert("loss".into(), json!(mean_of(&eval.loss)));
        for t in &eval.terms {
            record.insert(format!("loss.{}", t.name), json!(mean_of(&t.value)));
        }
        // Reward-model accuracy on the batch's pairs.
        let scores: Vec<&Source> = sources
            .iter()
            .filter(|s| matches!(s.kind, SourceKind::Score { scorer: ScorerRef::Model(_), .. }))
            .collect();
        if let (Some(c), Some(r)) = (
            scores.iter().find(|s| s.name.ends_with("(chosen)")).and_then(|s| batch.get(&s.name)),
            scores.iter().find(|s| s.name.ends_with("(rejected)")).and_then(|s| batch.get(&s.name)),
        ) {
            let acc = c
                .gt(r)
                .and_then(|m| m.to_dtype(DType::F32))
                .map(|m| mean_of(&m))
                .unwrap_or(f64::NAN);
            record.insert("pair_accuracy".into(), json!(acc));
        }
        let tokens: usize =
            rows.texts.values().map(|t| t.toks.iter().map(Vec::len).sum::<usize>()).sum();
        record.insert("tokens".into(), json!(tokens));
        Ok(())
    }

    fn live_views(&self, stage: &StageIr) -> Result<HashMap<String, Transformer>, String> {
        let mut live = HashMap::new();
        for t in &stage.train {
            let slot = &self.slots[&t.model.name];
            live.insert(t.model.name.clone(), slot.live().map_err(|e| e.to_string())?);
        }
        Ok(live)
    }

    /// Back-propagates `loss` into the trained models and takes an optimiser step; a non-finite
    /// gradient stops the run before any weight changes.
    fn update(
        &self,
        index: usize,
        loss: &Tensor,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let grads = loss.backward().map_err(|e| run_error(stage.loss_span, e.to_string()))?;
        let norm = opt.grad_norm(&grads).map_err(|e| run_error(stage.loss_span, e.to_string()))?;
        if !norm.is_finite() {
            let bad = opt
                .vars()
                .iter()
                .find(|(_, v)| {
                    grads.get(v.as_tensor()).is_some_and(|g| {
                        !mean_of(&g.abs().unwrap_or_else(|_| g.clone())).is_finite()
                    })
                })
                .map_or("a parameter".to_string(), |(n, _)| format!("`{n}`"));
            return Err(Diagnostic::error("non-finite-gradient", format!("the gradient of the loss with respect to {bad} is not finite"))
                .primary(stage.loss_span, "back-propagated from this loss")
                .help(self.resume_hint("lower the learning rate, clamp log-ratios, or look for log/sqrt/division of values that reach 0")));
        }
        let info = opt.step(&grads).map_err(|e| run_error(stage.loss_span, e.to_string()))?;
        if let Some(var) = &info.non_finite {
            // The weights in memory are spoiled; nothing is saved from them.
            return Err(Diagnostic::error(
                "non-finite-weights",
                format!(
                    "the optimiser step made the weights of `{var}` non-finite (lr {}, gradient norm {:.3e})",
                    crate::blocks::spec::format_number(info.lr),
                    info.grad_norm
                ),
            )
            .primary(stage.loss_span, "the update of this loss")
            .help(self.resume_hint("lower `optim.lr` (or set `clip_grad`)")));
        }
        let n = record.get("optim_steps").and_then(Json::as_f64).unwrap_or(0.0);
        let g = record.get("grad_norm").and_then(Json::as_f64).unwrap_or(0.0);
        record.insert("grad_norm".into(), json!((g * n + info.grad_norm) / (n + 1.0)));
        record.insert("optim_steps".into(), json!(n + 1.0));
        record.insert("lr".into(), json!(info.lr));
        Ok(())
    }

    fn rl_step(
        &mut self,
        plan: &StagePlan,
        step: usize,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, settings, compiled, sources, delimiter, task, reference } = *plan;
        let checked = self.checked;
        let stage = &checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let device = self.opts.device.clone();
        let sampling = self.sampling(index);
        let cs = &checked.stages[index];
        let n = params::get_num(&cs.sample, "n").unwrap_or(1.0).max(1.0) as usize;
        let from_ref = params::get(&cs.sample, "from").and_then(|v| v.str()) == Some("ref");
        let trained = stage.trained().unwrap_or("policy").to_string();
        // Prompts of this step: a fixed permutation per pass over the prompt set.
        let per_step = (settings.batch / n).max(1);
        let total = task.train.len();
        let per_epoch = (total / per_step).max(1);
        let perm = permutation(total, self.opts.seed ^ 0xA11, (step / per_epoch) as u64);
        let from = (step % per_epoch) * per_step;
        let chosen: Vec<usize> = (0..per_step).map(|i| perm[(from + i) % total]).collect();
        let mut prompt_toks = Vec::new();
        let mut rows = Rows::default();
        for (g, &i) in chosen.iter().enumerate() {
            for _ in 0..n {
                prompt_toks.push(self.tok.prompt(&task.train[i].text));
                rows.prompts.push(task.train[i].text.clone());
                rows.group.push(g as i64);
            }
        }
        let frozen = self.frozen_views(&trained, reference).map_err(fail)?;
        let sampler = if from_ref { &frozen["ref"] } else { &frozen["old"] };
        let t_sample = Instant::now();
        let generation =
            sample::generate(sampler, &self.tok, &prompt_toks, &sampling, &mut self.rng, &device)
                .map_err(|e| fail(e.to_string()))?;
        let sample_secs = t_sample.elapsed().as_secs_f64();
        let new_tokens: usize = generation.tokens.iter().map(Vec::len).sum();
        rows.texts.insert(
            "response".into(),
            TextRows { ctx: prompt_toks.clone(), toks: generation.tokens.clone() },
        );
        rows.rollout_logp = generation.logps.clone();
        // Other texts the graph reads.
        let needed: Vec<String> = compiled
            .requirements()
            .iter()
            .filter_map(|r| {
                r.name.strip_prefix("mask(").and_then(|s| s.strip_suffix(')')).map(String::from)
            })
            .chain(sources.iter().filter_map(|s| match &s.kind {
                SourceKind::Signal { text, .. } | SourceKind::Score { text, .. } => {
                    Some(text.clone())
                }
                _ => None,
            }))
            .collect();
        let mut needed_unique: Vec<String> = Vec::new();
        for t in needed {
            if !needed_unique.contains(&t) {
                needed_unique.push(t);
            }
        }
        for text in &needed_unique {
            if rows.texts.contains_key(text) {
                continue;
            }
            let toks: Vec<Vec<u32>> = if text == "demonstration" {
                let mut v = Vec::new();
                for &i in &chosen {
                    for _ in 0..n {
                        v.push(self.tok.response(&task.train[i].demonstration));
                    }
                }
                v
            } else if text == "greedy" {
                let greedy = Sampling { greedy: true, ..sampling.clone() };
                sample::generate(sampler, &self.tok, &prompt_toks, &greedy, &mut self.rng, &device)
                    .map_err(|e| fail(e.to_string()))?
                    .tokens
            } else if let Some((model, of)) = text
                .split_once(".rewrite(")
                .map(|(m, r)| (m.to_string(), r.trim_end_matches(')').to_string()))
            {
                let base = rows
                    .texts
                    .get(&of)
                    .cloned()
                    .ok_or_else(|| fail(format!("cannot rewrite `{of}`")))?;
                let ctx: Vec<Vec<u32>> = base
                    .ctx
                    .iter()
                    .zip(&base.toks)
                    .map(|(c, t)| [c.as_slice(), t.as_slice(), &[self.tok.sep]].concat())
                    .collect();
                let greedy = Sampling { greedy: true, stop: None, ..sampling.clone() };
                let m = frozen.get(&model).ok_or_else(|| fail(format!("no model `{model}`")))?;
                sample::generate(m, &self.tok, &ctx, &greedy, &mut self.rng, &device)
                    .map_err(|e| fail(e.to_string()))?
                    .tokens
            } else {
                continue;
            };
            rows.texts.insert(text.clone(), TextRows { ctx: prompt_toks.clone(), toks });
        }
        let widths = rows.widths();
        let live = self.live_views(stage).map_err(fail)?;
        let cx = SignalCx {
            models: ModelView { live: &live, frozen: &frozen },
            temperature: sampling.temperature,
            tasks: &self.tasks,
            tok: &self.tok,
            device: &device,
            widths: &widths,
            frozen_only: true,
            old_is: Some(&trained),
        };
        // Rollout-level inputs: everything, computed once without gradient — but for the trained
        // model's log-probs when the update's own forward gives them (`old_from_update`).
        let reuse = old_from_update(sources, &trained, settings, rows.len());
        let mut full = signals::base_inputs(&rows, &cx, delimiter).map_err(fail)?;
        full.extend(
            signals::compute(sources, |s| !(reuse && of_trained_or_old(s, &trained)), &rows, &cx)
                .map_err(fail)?,
        );
        // The single minibatch's forward with gradient, run now: its detached log-probs are
        // `old`'s (and the trained model's) for the rollout-level pass.
        let mut first_perm = None;
        let mut ahead = None;
        let t_ahead = Instant::now();
        if reuse {
            let perm = permutation(rows.len(), self.rng.next_u64(), 0);
            let live_cx = SignalCx { frozen_only: false, ..cx };
            let live = signals::compute(sources, |s| s.grad, &rows.select(&perm), &live_cx)
                .map_err(fail)?;
            for s in sources.iter().filter(|s| of_trained_or_old(s, &trained)) {
                let SourceKind::Signal { text, .. } = &s.kind else { continue };
                let from = live_logp(sources, &trained, text);
                let Some(t) = from.and_then(|g| live.get(&g.name)) else {
                    return Err(fail(format!(
                        "no live log-probabilities of `{text}` for `{}`",
                        s.name
                    )));
                };
                let t = unpermute(&t.detach(), &perm).map_err(|e| fail(e.to_string()))?;
                full.insert(s.name.clone(), t);
            }
            first_perm = Some(perm);
            ahead = Some(live);
        }
        let ahead_secs = t_ahead.elapsed().as_secs_f64();
        let mut rollouts = 0;
        for s in sources {
            if let SourceKind::StepRollouts { reward, k, max_steps, .. } = &s.kind {
                let ScorerRef::Verifier { data, member } = reward else {
                    return Err(fail("`vine_values` needs a verifier reward".into()));
                };
                let vtask =
                    self.tasks.get(data).ok_or_else(|| fail(format!("no data set `{data}`")))?;
                let (values, count) = super::vine::values(
                    sampler,
                    &self.tok,
                    &generation,
                    &prompt_toks,
                    &rows.prompts,
                    &rows.texts["response"].toks,
                    vtask,
                    member,
                    *k,
                    *max_steps,
                    delimiter.unwrap_or("\n"),
                    &sampling,
                    &mut self.rng,
                    &device,
                )
                .map_err(fail)?;
                rollouts += count;
                full.insert(s.name.clone(), values);
            }
        }
        let (first, values) = compiled.run_with(
            &full,
            &device,
            Options { grads: false, profile: false },
            &HashMap::new(),
        )?;
        let given_nodes = compiled.rollout_nodes();
        // Metrics of the rollout.
        let mask = full.get("mask").cloned();
        let responses: Vec<String> = generation.tokens.iter().map(|t| self.tok.decode(t)).collect();
        let prompt_texts: Vec<&str> = rows.prompts.iter().map(String::as_str).collect();
        for (k, v) in task.metrics(&prompt_texts, &responses) {
            record.insert(k, json!(v));
        }
        if let Some(s) = sources
            .iter()
            .find(|s| matches!(&s.kind, SourceKind::Score { text, .. } if text == "response"))
        {
            record.insert("reward".into(), json!(mean_of(&full[&s.name])));
        }
        if let Some(m) = &mask {
            if let Some(old) = full.get("old.logp").or_else(|| full.get("policy.logp")) {
                record.insert("entropy".into(), json!(-masked_mean(old, m)));
                if let Some(r) = full.get("ref.logp") {
                    let d = (old - r).map(|d| masked_mean(&d, m)).unwrap_or(f64::NAN);
                    record.insert("kl".into(), json!(d));
                }
            }
            record.insert(
                "response_tokens".into(),
                json!(new_tokens as f64 / rows.len().max(1) as f64),
            );
        }
        for (name, t) in &first.bindings {
            if t.rank() >= 1 {
                let v = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .unwrap_or_default();
                if !v.is_empty() {
                    let mean = v.iter().sum::<f32>() / v.len() as f32;
                    let std =
                        (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
                    record.insert(format!("{name}.mean"), json!(mean));
                    record.insert(format!("{name}.std"), json!(std));
                }
            }
        }
        if rollouts > 0 {
            record.insert("vine_rollouts".into(), json!(rollouts));
        }
        // Samples: a few per step, with every text generated from them (a rewriter's rewrite,
        // the greedy response), so what a method trains on can be read.
        if step.is_multiple_of(10) {
            let generated: Vec<(&String, &TextRows)> = rows
                .texts
                .iter()
                .filter(|(name, _)| *name == "greedy" || name.contains(".rewrite("))
                .collect();
            let lines: Vec<Json> = rows
                .prompts
                .iter()
                .zip(&responses)
                .enumerate()
                .take(4)
                .map(|(i, (p, r))| {
                    let mut line = json!({"step": step + 1, "prompt": p, "response": r});
                    for (name, text) in &generated {
                        if let Some(t) = text.toks.get(i) {
                            line[name.as_str()] = json!(self.tok.decode(t));
                        }
                    }
                    line
                })
                .collect();
            let path = self.opts.out.join("samples.jsonl");
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = f.write_all(text.as_bytes());
            }
        }
        // Updates: epochs × minibatches; rollout-level nodes are sliced, the rest recomputed.
        let b = rows.len();
        let mut losses = Vec::new();
        let mut clipfrac = Vec::new();
        let t_train = Instant::now();
        for epoch in 0..settings.epochs {
            let perm = match first_perm.take() {
                Some(p) => p,
                None => permutation(b, self.rng.next_u64(), epoch as u64),
            };
            for chunk in perm.chunks(settings.minibatch) {
                let idx = Tensor::from_vec(
                    chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    chunk.len(),
                    &device,
                )
                .map_err(|e| fail(e.to_string()))?;
                let sub = rows.select(chunk);
                let mut batch: HashMap<String, Tensor> = HashMap::new();
                for (k, t) in &full {
                    let mut s = signals::slice_rows(t, &idx).map_err(|e| fail(e.to_string()))?;
                    if k.starts_with("vine_values") {
                        let ids = signals::slice_rows(&full["step_ids"], &idx)
                            .map_err(|e| fail(e.to_string()))?;
                        s = signals::narrow_steps(&s, &ids).map_err(|e| fail(e.to_string()))?;
                    }
                    batch.insert(k.clone(), s);
                }
                let live_cx = SignalCx { frozen_only: false, ..cx };
                match ahead.take() {
                    Some(live) => batch.extend(live),
                    None => batch.extend(
                        signals::compute(sources, |s| s.grad, &sub, &live_cx).map_err(fail)?,
                    ),
                }
                let mut given = HashMap::new();
                for n in &given_nodes {
                    if let Some(t) = values.get(n) {
                        let mut s =
                            signals::slice_rows(t, &idx).map_err(|e| fail(e.to_string()))?;
                        if compiled.is_step_level(*n) {
                            s = signals::narrow_steps(&s, &batch["step_ids"])
                                .map_err(|e| fail(e.to_string()))?;
                        }
                        given.insert(*n, s);
                    }
                }
                let (eval, _) = compiled.run_with(
                    &batch,
                    &device,
                    Options { grads: false, profile: false },
                    &given,
                )?;
                self.update(index, &eval.loss, opt, record)?;
                losses.push(mean_of(&eval.loss));
                if let (Some(p), Some(o), Some(m)) =
                    (batch.get("policy.logp"), batch.get("old.logp"), batch.get("mask"))
                {
                    let eps = 0.2;
                    let frac = (p - o)
                        .and_then(|d| d.exp())
                        .and_then(|r| (r - 1.0)?.abs())
                        .and_then(|a| a.gt(eps))
                        .and_then(|c| c.to_dtype(DType::F32))
                        .map(|c| masked_mean(&c, m))
                        .unwrap_or(f64::NAN);
                    clipfrac.push(frac);
                }
                for t in &eval.terms {
                    record.insert(format!("loss.{}", t.name), json!(mean_of(&t.value)));
                }
            }
        }
        let train_secs = t_train.elapsed().as_secs_f64() + ahead_secs;
        record
            .insert("loss".into(), json!(losses.iter().sum::<f64>() / losses.len().max(1) as f64));
        if !clipfrac.is_empty() {
            record.insert(
                "clip_fraction".into(),
                json!(clipfrac.iter().sum::<f64>() / clipfrac.len() as f64),
            );
        }
        record.insert("tokens".into(), json!(new_tokens));
        record.insert("sample_seconds".into(), json!(sample_secs));
        record.insert("train_seconds".into(), json!(train_secs));
        record
            .insert("sample_tokens_per_s".into(), json!(new_tokens as f64 / sample_secs.max(1e-9)));
        Ok(())
    }
}

/// The sampling settings of stage `index` (`sample { }` with its defaults).
pub fn stage_sampling(checked: &Checked, index: usize) -> Sampling {
    let s = &checked.stages[index].sample;
    Sampling {
        temperature: params::get_num(s, "temperature").unwrap_or(1.0),
        top_p: params::get_num(s, "top_p").unwrap_or(1.0),
        max_tokens: params::get_num(s, "max_tokens").unwrap_or(64.0) as usize,
        min_tokens: params::get_num(s, "min_tokens").unwrap_or(0.0) as usize,
        stop: params::get(s, "stop").and_then(|v| v.str()).map(|s| s.replace("\\n", "\n")),
        greedy: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logp(model: ModelRef, text: &str, grad: bool) -> Source {
        let kind = SourceKind::Signal { model, signal: Signal::Logp, text: text.into() };
        Source { name: format!("{text}.{grad}"), kind, grad }
    }

    fn settings(epochs: usize, minibatch: usize) -> Loop {
        let adam = AdamWConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_grad: None,
            warmup_steps: 0,
            decay_steps: None,
        };
        Loop { steps: 1, epochs, batch: 8, minibatch, adam }
    }

    #[test]
    fn old_log_probs_come_from_the_update_only_for_one_minibatch_of_one_epoch() {
        let policy = || ModelRef::Named("policy".into());
        let grpo = [logp(policy(), "response", true), logp(ModelRef::Old, "response", false)];
        assert!(old_from_update(&grpo, "policy", &settings(1, 8), 8));
        assert!(!old_from_update(&grpo, "policy", &settings(2, 8), 8), "a second epoch");
        assert!(!old_from_update(&grpo, "policy", &settings(1, 4), 8), "two minibatches");
        // Nothing to save without `old`, nor when its text has no live log-probs.
        assert!(!old_from_update(&grpo[..1], "policy", &settings(1, 8), 8));
        let other = [logp(policy(), "response", true), logp(ModelRef::Old, "demo", false)];
        assert!(!old_from_update(&other, "policy", &settings(1, 8), 8));
        // Another signal of the trained model (a value head) still needs its own forward.
        let values = Source {
            name: "policy.values".into(),
            kind: SourceKind::Signal {
                model: policy(),
                signal: Signal::Values,
                text: "response".into(),
            },
            grad: true,
        };
        let ppo = [grpo[0].clone(), grpo[1].clone(), values];
        assert!(!old_from_update(&ppo, "policy", &settings(1, 8), 8));
        // A reference model's log-probs are not the trained model's.
        let kl = [grpo[0].clone(), grpo[1].clone(), logp(ModelRef::Ref, "response", false)];
        assert!(old_from_update(&kl, "policy", &settings(1, 8), 8));
    }

    #[test]
    fn unpermute_puts_rows_back() {
        let perm = [2, 0, 3, 1];
        let rows: Vec<f32> = perm.iter().map(|&p| p as f32).collect();
        let t = Tensor::from_vec(rows, (4, 1), &Device::Cpu).unwrap();
        let back = unpermute(&t, &perm).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(back, [0.0, 1.0, 2.0, 3.0]);
    }
}
