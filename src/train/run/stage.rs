//! The loop over one stage's steps: its settings, the models it trains, the `before` and
//! `after` evaluations, a checkpoint every tenth of the stage; and the RL step as a sequence of
//! phases (rollout, record, update).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde_json::{Map, Value as Json, json};

use super::clip::ClipTerm;
use super::setup::Resumed;
use super::{Run, run_error};
use crate::check::{Checked, params};
use crate::diag::{Diagnostic, Span};
use crate::exec::{Compiled, Options};
use crate::ir::builtins::MemberKind;
use crate::ir::graph::StageIr;
use crate::model::Transformer;
use crate::rng::Rng;
use crate::syntax::ast::SourceKind as DataKw;
use crate::tasks::Task;
use crate::train::checkpoint::{self, State};
use crate::train::metrics::field;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::progress::Progress;
use crate::train::signals::{self, Source};

/// What every step of one stage reads: built once per stage.
#[derive(Clone, Copy)]
pub(super) struct StagePlan<'a> {
    pub(super) index: usize,
    pub(super) settings: &'a Loop,
    pub(super) compiled: &'a Compiled<'a>,
    pub(super) sources: &'a [Source],
    pub(super) delimiter: Option<&'a str>,
    pub(super) task: &'a Task,
    pub(super) reference: &'a Transformer,
    /// The PPO-clipped terms `clip_fraction` follows.
    pub(super) clip_terms: &'a [ClipTerm],
}

/// Optimiser and loop settings of a stage.
pub(super) struct Loop {
    pub(super) steps: usize,
    pub(super) epochs: usize,
    pub(super) batch: usize,
    pub(super) minibatch: usize,
    pub(super) adam: AdamWConfig,
}

pub(super) fn loop_settings(checked: &Checked, index: usize, cap: Option<usize>) -> Loop {
    let o = &checked.stages[index].optim;
    let num = |n: &str| params::num(o, n);
    let steps = (num("steps") as usize).min(cap.unwrap_or(usize::MAX)).max(1);
    let batch = (num("batch") as usize).max(1);
    Loop {
        steps,
        epochs: (num("epochs") as usize).max(1),
        batch,
        minibatch: (num("minibatch") as usize).clamp(1, batch),
        adam: AdamWConfig {
            lr: num("lr"),
            beta1: num("beta1"),
            beta2: num("beta2"),
            eps: 1e-8,
            weight_decay: num("weight_decay"),
            clip_grad: params::get_num(o, "clip_grad"),
            warmup_steps: (num("warmup") * steps as f64).round() as usize,
            decay_steps: None,
        },
    }
}

/// Examples in a supervised stage's data: pairs, corrections or texts.
pub(super) fn data_len(task: &Task, member: MemberKind) -> usize {
    match member {
        MemberKind::Pairs => task.pairs.len(),
        MemberKind::Corrections => task.corrections.len(),
        _ => task.texts.len(),
    }
}

/// A fixed permutation of `0..n` for epoch `epoch`, so a resumed run sees the same data.
pub(super) fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

impl Run<'_> {
    pub(super) fn stage(
        &mut self,
        index: usize,
        resume: Option<Resumed>,
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
        // Each trained model clips its own gradient (a critic of its own apart from the policy).
        let mut models: Vec<&str> = Vec::new();
        let groups = vars
            .iter()
            .map(|(k, _)| {
                let model = k.split('.').next().unwrap_or_default();
                models.iter().position(|m| *m == model).unwrap_or_else(|| {
                    models.push(model);
                    models.len() - 1
                })
            })
            .collect();
        let mut opt = AdamW::new(vars, settings.adam.clone())
            .map_err(|e| fail(e.to_string()))?
            .clipped_by_group(groups);
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
        // train a language model (not a reward model, even one read as answers, `yes_no`) on
        // a task with prompts.
        let evaluated = match kw {
            DataKw::Prompts => true,
            DataKw::Pairs => {
                !self.checked.program.is_reward_model(&trained)
                    && self.slots[&trained].params.get("score.weight").is_none()
                    && !task.eval.is_empty()
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
        if self.remote.is_some() {
            let resumed = resume.as_ref().and_then(|(s, _)| s.remote.as_ref());
            self.remote_stage_start(index, resumed, start)?;
        }
        if evaluated && start == 0 {
            let before = match self.remote.as_ref().map(|r| r.reference.clone()) {
                Some(reference) => self.remote_evaluate(index, &task, &reference),
                None => self.evaluate(index, &task, &ref_model),
            }
            .map_err(fail)?;
            self.record_eval(index, 0, field::BEFORE, &before)?;
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
            clip_terms: &super::clip::clip_terms(checked, index),
        };
        let mut progress =
            Progress::new(&format!("stage {}", stage.name.name), steps as u64, self.opts.quiet);
        progress.set_position(start as u64);
        let save_every = (steps / 10).max(1);
        for step in start..steps {
            let t0 = Instant::now();
            let mut record = Map::new();
            record.insert(field::STAGE.into(), json!(stage.name.name));
            record.insert(field::STAGE_INDEX.into(), json!(index));
            record.insert(field::STEP.into(), json!(step + 1));
            match kw {
                DataKw::Prompts => self.rl_step(&plan, step, &mut opt, &mut record)?,
                _ => self.supervised_step(&plan, step, data.kind, &mut opt, &mut record)?,
            }
            let secs = t0.elapsed().as_secs_f64();
            record.insert(field::SECONDS.into(), json!(secs));
            record.insert(field::WALL.into(), json!(self.wall()));
            if let Some(t) = record.get(field::TOKENS).and_then(Json::as_f64) {
                record.insert(field::TOKENS_PER_S.into(), json!(t / secs.max(1e-9)));
            }
            self.metrics.write(&record).map_err(|e| fail(e.to_string()))?;
            let headline = [field::LOSS, field::REWARD, task.headline()]
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
            let after = match self.remote.as_mut() {
                Some(r) => {
                    let id = r.models[&trained].clone();
                    let sampler = r.engine.sampler(&id, &format!("after-{index}")).map_err(fail)?;
                    self.remote_evaluate(index, &task, &sampler)
                }
                None => {
                    let policy = self.slots[&trained].frozen().map_err(|e| fail(e.to_string()))?;
                    self.evaluate(index, &task, &policy)
                }
            }
            .map_err(fail)?;
            self.record_eval(index, steps, field::AFTER, &after)?;
            if let Some(e) = self.summary.evals.last_mut() {
                e.2 = after;
            }
        }
        if self.remote.is_some() {
            self.remote_stage_end(index)?;
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

    pub(super) fn save(
        &mut self,
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
            remote: None,
        };
        let span = self
            .checked
            .program
            .stages
            .get(stage.min(self.checked.program.stages.len() - 1))
            .map_or(Span::new(0, 0), |s| s.name.span);
        let remote = match self.remote.is_some() {
            true => Some(
                self.remote_save(stage, step)
                    .map_err(|e| run_error(span, format!("cannot save on the server: {e}")))?,
            ),
            false => None,
        };
        let state = State { remote, ..state };
        checkpoint::save(&self.opts.out, &state, &tensors)
            .map_err(|e| run_error(span, format!("cannot write a checkpoint: {e}")))
    }

    /// Batches that the data or the memory cannot hold: a batch larger than the data set is
    /// capped at it (with a warning); a minibatch whose estimated activations exceed the free
    /// memory is refused, saying how many sequences fit.
    pub(super) fn fit_batches(
        &self,
        index: usize,
        kw: DataKw,
        member: MemberKind,
        task: &Task,
        settings: &mut Loop,
    ) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let n = params::num(&super::evaluate::sample_settings(self.checked, index), "n") as usize;
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
        let Some(free) = crate::train::memory::available() else { return Ok(()) };
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
        let need = crate::train::memory::step_bytes(&slot.cfg, rows, longest, true);
        if need > budget {
            let fit = crate::train::memory::rows_that_fit(&slot.cfg, longest, true, budget);
            return Err(Diagnostic::error(
                "out-of-memory",
                format!(
                    "a minibatch of {rows} sequences of up to {longest} tokens needs about {} to train `{trained}`; {} is free",
                    crate::train::memory::gib(need),
                    crate::train::memory::gib(free)
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
    pub(super) fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    /// `advice`, and where the run has a checkpoint, that it is intact and how to resume.
    pub(super) fn resume_hint(&self, advice: &str) -> String {
        match checkpoint::load_state(&self.opts.out) {
            Ok(s) => format!(
                "{advice}; the last checkpoint (stage {}, step {}) is intact and holds no non-finite value",
                s.stage, s.step
            ),
            Err(_) => format!("{advice}; no checkpoint was written yet"),
        }
    }

    pub(super) fn frozen_views(
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

    pub(super) fn live_views(
        &self,
        stage: &StageIr,
    ) -> Result<HashMap<String, Transformer>, String> {
        let mut live = HashMap::new();
        for t in &stage.train {
            let slot = &self.slots[&t.model.name];
            live.insert(t.model.name.clone(), slot.live().map_err(|e| e.to_string())?);
        }
        Ok(live)
    }

    /// One RL step: sample and compute the rollout, record it, update on it.
    pub(super) fn rl_step(
        &mut self,
        plan: &StagePlan,
        step: usize,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<(), Diagnostic> {
        let mut rollout = match self.remote.is_some() {
            true => self.remote_rollout(plan, step)?,
            false => self.rollout(plan, step)?,
        };
        let options = Options { grads: false, profile: false };
        let (first, values) =
            plan.compiled.run_with(&rollout.full, &self.opts.device, options, &HashMap::new())?;
        let responses: Vec<String> =
            rollout.rows.texts["response"].toks.iter().map(|t| self.tok.decode(t)).collect();
        self.record_rollout(plan, &rollout, &first, &responses, record);
        if step.is_multiple_of(10) {
            self.write_samples(step, &rollout, &responses);
        }
        let train_secs =
            self.update_epochs(plan, &mut rollout, &values, opt, record)? + rollout.ahead_secs;
        let (new_tokens, sample_secs) = (rollout.new_tokens, rollout.sample_secs);
        record.insert(field::TOKENS.into(), json!(new_tokens));
        record.insert(field::SAMPLE_SECONDS.into(), json!(sample_secs));
        record.insert(field::TRAIN_SECONDS.into(), json!(train_secs));
        if let Some(r) = &self.remote {
            record.insert(field::SERVER_FORWARD_SECONDS.into(), json!(r.forward_secs));
            record.insert(field::SERVER_BACKWARD_SECONDS.into(), json!(r.backward_secs));
        }
        record.insert(
            field::SAMPLE_TOKENS_PER_S.into(),
            json!(new_tokens as f64 / sample_secs.max(1e-9)),
        );
        Ok(())
    }
}
