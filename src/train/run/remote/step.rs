//! A remote run's step: sampling on the server, the texts and inputs the graph reads (from
//! the server's forwards, sampler snapshots and the host), VinePPO's step rollouts, and the
//! update's backwards and optimiser steps.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::Tensor;
use serde_json::{Map, Value as Json, json};

use super::{critic_key, on_host, padded, seqs_of};
use crate::check::params;
use crate::diag::Diagnostic;
use crate::engine::surrogate::{backward_inputs, critic_inputs, datum_backward};
use crate::engine::{Adam, ModelId, SampleParams, Sampler};
use crate::exec::{Evaluation, mask_name};
use crate::ir::graph::{ModelRef, ScorerRef, Signal, TextName};
use crate::train::metrics::field;
use crate::train::optim::AdamW;
use crate::train::run::rollout::{Rollout, StepPrompts, needed_texts};
use crate::train::run::stage::StagePlan;
use crate::train::run::{Run, run_error};
use crate::train::scoring::HostScorers;
use crate::train::signals::{self, ModelView, Rows, SignalCx, Source, SourceKind, TextRows};
use crate::train::yes_no::YesNoHead;

/// The batch input holding a Yes/No score's per-token log-probabilities of one answer (the
/// backward's importance-sampling form needs them).
fn answer_input(score: &str, yes: bool) -> String {
    format!("{score}#{}", if yes { "yes" } else { "no" })
}

impl Run<'_> {
    /// Samples the step's batch on the server and computes its rollout-level inputs there and
    /// on the host.
    pub(in crate::train::run) fn remote_rollout(
        &mut self,
        plan: &StagePlan,
        step: usize,
    ) -> Result<Rollout, Diagnostic> {
        let StagePlan { index, sources, delimiter, .. } = *plan;
        let checked = self.checked;
        let stage = &checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let device = self.opts.device.clone();
        let sampling = self.sampling(index);
        let from_ref =
            params::get(&checked.stages[index].sample, "from").and_then(|v| v.str()) == Some("ref");
        let trained = stage.trained().unwrap_or("policy").to_string();
        let StepPrompts { chosen, n, prompt_toks, mut rows } = self.step_prompts(plan, step);
        let policy = self.remote().models[&trained].clone();
        let t_sample = Instant::now();
        let sampler = match from_ref {
            true => self.remote().reference.clone(),
            false => {
                self.remote().engine.sampler(&policy, &format!("s{index}-{step}")).map_err(fail)?
            }
        };
        let params = SampleParams {
            max_tokens: sampling.max_tokens,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            seed: self.rng.next_u64(),
            stop_text: sampling.stop.clone(),
            stop_tokens: self.tok.stops.clone(),
        };
        let unique: Vec<Vec<u32>> = prompt_toks.iter().step_by(n).cloned().collect();
        let sampled = self.remote().sampling_engine(&sampler).sample(&sampler, &unique, n, &params);
        let sampled = sampled.map_err(fail)?;
        let (toks, logps): (Vec<Vec<u32>>, Vec<Vec<f32>>) =
            sampled.into_iter().flatten().map(|s| (s.tokens, s.logprobs)).unzip();
        let sample_secs = t_sample.elapsed().as_secs_f64();
        let new_tokens = toks.iter().map(Vec::len).sum();
        rows.texts.insert("response".into(), TextRows { ctx: prompt_toks.clone(), toks });
        rows.rollout_logp = logps;
        self.remote_extra_texts(plan, &chosen, n, &prompt_toks, &sampler, &params, &mut rows)?;
        let widths = rows.widths();
        let empty = HashMap::new();
        let cx = SignalCx {
            models: ModelView { live: &empty, frozen: &empty },
            temperature: sampling.temperature,
            tasks: &self.tasks,
            rewards: &self.rewards,
            tok: &self.tok,
            device: &device,
            widths: &widths,
            frozen_only: true,
            old_is: None,
        };
        let mut full = signals::base_inputs(&rows, &cx, delimiter).map_err(fail)?;
        full.extend(signals::compute(sources, on_host, &rows, &cx).map_err(fail)?);
        let t_forward = Instant::now();
        full.extend(self.remote_inputs(plan, &rows, &widths, |_| true)?);
        let ahead_secs = t_forward.elapsed().as_secs_f64();
        let timing = self.remote();
        timing.forward_secs = ahead_secs;
        timing.backward_secs = 0.0;
        let mut r = Rollout {
            rows,
            generation: None,
            frozen: HashMap::new(),
            live: HashMap::new(),
            widths,
            temperature: sampling.temperature,
            full,
            ahead: None,
            sample_secs,
            ahead_secs,
            new_tokens,
            vine_rollouts: 0,
        };
        self.remote_step_rollouts(plan, &sampler, &params, &mut r)?;
        Ok(r)
    }

    /// The demonstrations and greedy responses the graph reads besides the response.
    #[allow(clippy::too_many_arguments)]
    fn remote_extra_texts(
        &mut self,
        plan: &StagePlan,
        chosen: &[usize],
        n: usize,
        prompt_toks: &[Vec<u32>],
        sampler: &Sampler,
        params: &SampleParams,
        rows: &mut Rows,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, task, .. } = *plan;
        let fail = |e: String| run_error(self.checked.program.stages[index].name.span, e);
        for text in needed_texts(plan) {
            if rows.texts.contains_key(&text) {
                continue;
            }
            let toks: Vec<Vec<u32>> = match TextName::parse(&text) {
                _ if text == "demonstration" => chosen
                    .iter()
                    .flat_map(|&i| {
                        std::iter::repeat_n(self.tok.response(&task.train[i].demonstration), n)
                    })
                    .collect(),
                _ if text == "greedy" => {
                    let greedy = SampleParams { temperature: 0.0, ..params.clone() };
                    let out = self
                        .remote()
                        .sampling_engine(sampler)
                        .sample(sampler, prompt_toks, 1, &greedy)
                        .map_err(fail)?;
                    out.into_iter().map(|mut v| v.remove(0).tokens).collect()
                }
                // A frozen model's greedy rewrite of another text, after `context text <sep>`.
                TextName::Rewrite { model, of } => {
                    let base = rows
                        .texts
                        .get(&of.to_string())
                        .cloned()
                        .ok_or_else(|| fail(format!("cannot rewrite `{of}`")))?;
                    let rewriter =
                        self.remote().samplers.get(&model).cloned().ok_or_else(|| {
                            fail(format!(
                                "`{model}` is not on the server: no earlier stage trained it"
                            ))
                        })?;
                    let ctx = base.then_sep(self.tok.sep);
                    let greedy =
                        SampleParams { temperature: 0.0, stop_text: None, ..params.clone() };
                    let engine = self.remote().engine_for(&model);
                    let out = engine.sample(&rewriter, &ctx, 1, &greedy).map_err(fail)?;
                    out.into_iter().map(|mut v| v.remove(0).tokens).collect()
                }
                _ => continue,
            };
            rows.texts.insert(text.clone(), TextRows { ctx: prompt_toks.to_vec(), toks });
        }
        Ok(())
    }

    /// VinePPO's values on the server: `k` samples from every distinct step start.
    fn remote_step_rollouts(
        &mut self,
        plan: &StagePlan,
        sampler: &Sampler,
        params: &SampleParams,
        r: &mut Rollout,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, sources, delimiter, .. } = *plan;
        let fail = |e: String| run_error(self.checked.program.stages[index].name.span, e);
        for s in sources {
            let SourceKind::StepRollouts { reward, k, max_steps, .. } = &s.kind else { continue };
            let response = &r.rows.texts["response"];
            let jobs = crate::train::vine::prefixes(
                &response.ctx,
                &response.toks,
                &self.tok,
                *max_steps,
                delimiter.unwrap_or("\n"),
            );
            let prompts: Vec<Vec<u32>> = jobs
                .prefixes
                .iter()
                .map(|(row, cut)| {
                    [response.ctx[*row].as_slice(), &response.toks[*row][..*cut]].concat()
                })
                .collect();
            let mut outs = Vec::with_capacity(prompts.len());
            // One request per prefix with its remaining budget; every request before any result.
            let mut by_budget: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (j, (_, cut)) in jobs.prefixes.iter().enumerate() {
                by_budget.entry(params.max_tokens.saturating_sub(*cut).max(1)).or_default().push(j);
            }
            outs.resize(prompts.len(), vec![]);
            for (budget, js) in by_budget {
                let p = SampleParams {
                    max_tokens: budget,
                    seed: self.rng.next_u64(),
                    ..params.clone()
                };
                let batch: Vec<Vec<u32>> = js.iter().map(|&j| prompts[j].clone()).collect();
                let got = self.remote().sampling_engine(sampler).sample(sampler, &batch, *k, &p);
                let got = got.map_err(fail)?;
                for (j, g) in js.into_iter().zip(got) {
                    outs[j] = g.into_iter().map(|s| s.tokens).collect();
                }
            }
            let scorers = HostScorers { tasks: &self.tasks, rewards: &self.rewards };
            let values = jobs
                .values(
                    &outs,
                    &response.toks,
                    &r.rows.prompts,
                    &self.tok,
                    scorers,
                    reward,
                    &self.opts.device,
                )
                .map_err(fail)?;
            r.vine_rollouts += prompts.len() * k;
            r.full.insert(s.name.clone(), values);
        }
        Ok(())
    }

    /// The model signals among `sources` that `want` selects, from the server: log-probabilities
    /// of the trained model (and `old`, the same weights before an update) from its forward;
    /// of `ref` and of models earlier stages trained from their sampler snapshots' prompt
    /// log-probabilities; a rewriter's keep-probabilities likewise after `context text <sep>`.
    pub(in crate::train::run) fn remote_inputs(
        &mut self,
        plan: &StagePlan,
        rows: &Rows,
        widths: &HashMap<String, usize>,
        want: impl Fn(&Source) -> bool,
    ) -> Result<HashMap<String, Tensor>, Diagnostic> {
        let StagePlan { index, sources, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let trained = stage.trained().unwrap_or("policy").to_string();
        let policy = self.remote().models[&trained].clone();
        let mut done: HashMap<(String, bool, String), Tensor> = HashMap::new();
        let mut answered: HashMap<(String, String), [Tensor; 2]> = HashMap::new();
        let mut out = HashMap::new();
        for s in sources.iter().filter(|s| want(s) && !on_host(s)) {
            // A value head's values: its critic's forward (`old.values` before the update).
            if let SourceKind::Signal { model, signal: Signal::Values, text } = &s.kind {
                let critic = self.critic_of(model, &trained).map_err(fail)?;
                let key = (format!("critic {}", critic.0), false, text.clone());
                if !done.contains_key(&key) {
                    let t =
                        rows.texts.get(text).ok_or_else(|| fail(format!("no text `{text}`")))?;
                    let v = self.remote().engine.values(&critic, &seqs_of(t)).map_err(fail)?;
                    let v = padded(&v, widths[text], &self.opts.device)
                        .map_err(|e| fail(e.to_string()))?;
                    done.insert(key.clone(), v);
                }
                out.insert(s.name.clone(), done[&key].clone());
                continue;
            }
            let named;
            let (model, keep, text) = match &s.kind {
                SourceKind::StepRollouts { .. } => continue,
                SourceKind::Signal { model, signal: Signal::Logp, text } => (model, false, text),
                SourceKind::Signal { model, signal: Signal::KeepProb, text } => (model, true, text),
                SourceKind::Score { scorer: ScorerRef::Model(m), text, head: Some(_) } => {
                    named = ModelRef::Named(m.clone());
                    (&named, false, text)
                }
                _ => {
                    return Err(fail(format!(
                        "`{}` cannot be computed on a Tinker server",
                        s.name
                    )));
                }
            };
            // Whose forward: a model on the server (the trained one, `ref`'s frozen copy, one an
            // earlier stage trained), else a sampler snapshot's prompt log-probabilities.
            let r = self.remote();
            // A model on a server of its own: that server's base model (read through its
            // reader adapter where it samples no base model).
            let own = match model {
                ModelRef::Named(m) if r.own.contains_key(m) => Some(m.clone()),
                ModelRef::Ref if r.own.contains_key("ref") => Some("ref".to_string()),
                _ => None,
            };
            let whose: Result<ModelId, Sampler> = match &own {
                Some(o) => r.own_readers.get(o).cloned().ok_or(Sampler::Base),
                None => match model {
                    ModelRef::Old => Ok(policy.clone()),
                    ModelRef::Named(m) if *m == trained => Ok(policy.clone()),
                    ModelRef::Ref => r.reference_model.clone().ok_or(r.reference.clone()),
                    ModelRef::Named(m) => match (r.models.get(m), r.samplers.get(m)) {
                        (Some(id), _) => Ok(id.clone()),
                        (None, Some(s)) => Err(s.clone()),
                        (None, None) => {
                            return Err(fail(format!(
                                "`{m}` is not on the server: no earlier stage trained it"
                            )));
                        }
                    },
                    ModelRef::Rollout => continue,
                },
            };
            // The server of a model an earlier stage trained (its own, or the default one).
            let home = match model {
                ModelRef::Named(m) if *m != trained => m.clone(),
                _ => trained.clone(),
            };
            // Model ids are per server: the key names the server too.
            let who = format!("{own:?} {} {whose:?}", r.server_of(&home));
            // A Yes/No reward model's score: its two answers' log-probabilities after each row.
            if let SourceKind::Score { scorer: ScorerRef::Model(m), head: Some(head), .. } = &s.kind
            {
                let key = (who, text.clone());
                if !answered.contains_key(&key) {
                    let tokens = head.tokens(&self.tok, m).map_err(fail)?;
                    let t =
                        rows.texts.get(text).ok_or_else(|| fail(format!("no text `{text}`")))?;
                    let device = self.opts.device.clone();
                    let r = self.remote();
                    let engine = match &own {
                        Some(m) => r.own.get_mut(m).expect("a model of its own server"),
                        None => r.engine_for(&home),
                    };
                    let mut both = Vec::with_capacity(2);
                    for answer in t.answered(&tokens) {
                        let seqs = seqs_of(&answer);
                        let lp = match &whose {
                            Ok(id) => engine.logp(Some(id), &Sampler::Base, &seqs),
                            Err(sampler) => engine.logp(None, sampler, &seqs),
                        }
                        .map_err(fail)?;
                        let width = answer.toks.first().map_or(1, Vec::len);
                        both.push(padded(&lp, width, &device).map_err(|e| fail(e.to_string()))?);
                    }
                    let [yes, no]: [Tensor; 2] = both.try_into().expect("two answers");
                    answered.insert(key.clone(), [yes, no]);
                }
                let [yes, no] = &answered[&key];
                let score =
                    yes.sum(1).and_then(|y| y - no.sum(1)?).map_err(|e| fail(e.to_string()))?;
                out.insert(answer_input(&s.name, true), yes.clone());
                out.insert(answer_input(&s.name, false), no.clone());
                out.insert(s.name.clone(), score);
                continue;
            }
            let key = (who, keep, text.clone());
            if !done.contains_key(&key) {
                let t = rows.texts.get(text).ok_or_else(|| fail(format!("no text `{text}`")))?;
                let mut seqs = seqs_of(t);
                if keep {
                    for (q, ctx) in seqs.iter_mut().zip(t.then_sep(self.tok.sep)) {
                        q.ctx = ctx;
                    }
                }
                let r = self.remote();
                let engine = match &own {
                    Some(m) => r.own.get_mut(m).expect("a model of its own server"),
                    None => r.engine_for(&home),
                };
                let mut lp = match &whose {
                    Ok(id) => engine.logp(Some(id), &Sampler::Base, &seqs),
                    Err(sampler) => engine.logp(None, sampler, &seqs),
                }
                .map_err(fail)?;
                if keep {
                    lp.iter_mut().flatten().for_each(|v| *v = v.exp());
                }
                let t = padded(&lp, widths[text], &self.opts.device)
                    .map_err(|e| fail(e.to_string()))?;
                done.insert(key.clone(), t);
            }
            out.insert(s.name.clone(), done[&key].clone());
        }
        Ok(out)
    }

    /// The critic on the server that stands for `model`'s value head (`old`: the trained one's).
    fn critic_of(&mut self, model: &ModelRef, trained: &str) -> Result<ModelId, String> {
        let owner = match model {
            ModelRef::Named(m) => m.as_str(),
            _ => trained,
        };
        self.remote()
            .models
            .get(&critic_key(owner))
            .cloned()
            .ok_or_else(|| format!("`{owner}` has no critic on the server"))
    }

    /// The trained model's log-probabilities of a minibatch's texts, from the server.
    pub(in crate::train::run) fn remote_live(
        &mut self,
        plan: &StagePlan,
        sub: &Rows,
        widths: &HashMap<String, usize>,
    ) -> Result<HashMap<String, Tensor>, Diagnostic> {
        let started = Instant::now();
        let out = self.remote_inputs(plan, sub, widths, |s| s.grad)?;
        self.remote().forward_secs += started.elapsed().as_secs_f64();
        Ok(out)
    }

    /// One optimiser step on the server from a minibatch's evaluation with input gradients:
    /// one backward per text the trained model's log-probabilities were read on.
    pub(in crate::train::run) fn remote_update(
        &mut self,
        plan: &StagePlan,
        sub: &Rows,
        batch: &HashMap<String, Tensor>,
        eval: &Evaluation,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, sources, settings, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.loss_span, e);
        let policy = self.remote().models[stage.trained().unwrap_or("policy")].clone();
        let reduction = self.remote().engine.reduction();
        let live: Vec<(&Source, &str)> = sources
            .iter()
            .filter(|s| s.grad)
            .filter_map(|s| match &s.kind {
                SourceKind::Signal { signal: Signal::Values, .. } => None,
                SourceKind::Signal { text, .. } => Some((s, text.as_str())),
                _ => None,
            })
            .collect();
        // Value heads' values: their critics' backwards.
        let values: Vec<(&Source, &ModelRef, &str)> = sources
            .iter()
            .filter(|s| s.grad)
            .filter_map(|s| match &s.kind {
                SourceKind::Signal { model, signal: Signal::Values, text } => {
                    Some((s, model, text.as_str()))
                }
                _ => None,
            })
            .collect();
        // Yes/No reward models' scores: each row's two answers are two more datums.
        let answers: Vec<(&Source, &str, &str, &YesNoHead)> = sources
            .iter()
            .filter(|s| s.grad)
            .filter_map(|s| match &s.kind {
                SourceKind::Score { scorer: ScorerRef::Model(m), text, head: Some(h) } => {
                    Some((s, m.as_str(), text.as_str(), h))
                }
                _ => None,
            })
            .collect();
        let datums: usize = live.iter().map(|(_, t)| sub.texts[*t].toks.len()).sum::<usize>()
            + answers.iter().map(|(_, _, t, _)| 2 * sub.texts[*t].toks.len()).sum::<usize>();
        let started = Instant::now();
        for (s, text) in &live {
            let Some((_, grad)) = eval.grads.iter().find(|(n, _)| *n == s.name) else { continue };
            let data =
                backward_inputs(grad, &batch[&s.name], &batch[&mask_name(text)], reduction, datums)
                    .map_err(|e| fail(e.to_string()))?;
            let seqs = seqs_of(&sub.texts[*text]);
            self.remote().engine.backward(&policy, &seqs, &data).map_err(fail)?;
        }
        // ∂score/∂ℓ is +1 on each token of the yes answer and −1 on the no answer's.
        for (s, m, text, head) in &answers {
            let Some((_, grad)) = eval.grads.iter().find(|(n, _)| *n == s.name) else { continue };
            let rows = |t: &Tensor| t.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>();
            let g = grad
                .to_dtype(candle_core::DType::F64)
                .and_then(|g| g.to_vec1::<f64>())
                .map_err(|e| fail(e.to_string()))?;
            let tokens = head.tokens(&self.tok, m).map_err(fail)?;
            let [yes, no] = sub.texts[*text].answered(&tokens);
            for (answer, sign, is_yes) in [(yes, 1.0, true), (no, -1.0, false)] {
                let lp = rows(&batch[&answer_input(&s.name, is_yes)])
                    .map_err(|e| fail(e.to_string()))?;
                let data: Vec<_> = g
                    .iter()
                    .zip(&lp)
                    .map(|(g, l)| datum_backward(reduction, &vec![sign * g; l.len()], l, datums))
                    .collect();
                self.remote().engine.backward(&policy, &seqs_of(&answer), &data).map_err(fail)?;
            }
        }
        let trained = stage.trained().unwrap_or("policy").to_string();
        let critic_datums: usize = values.iter().map(|(_, _, t)| sub.texts[*t].toks.len()).sum();
        let mut critics = Vec::new();
        for (s, model, text) in &values {
            let Some((_, grad)) = eval.grads.iter().find(|(n, _)| *n == s.name) else { continue };
            let critic = self.critic_of(model, &trained).map_err(fail)?;
            let data =
                critic_inputs(grad, &batch[&s.name], &batch[&mask_name(text)], critic_datums)
                    .map_err(|e| fail(e.to_string()))?;
            let seqs = seqs_of(&sub.texts[*text]);
            self.remote().engine.critic_backward(&critic, &seqs, &data).map_err(fail)?;
            if !critics.contains(&critic) {
                critics.push(critic);
            }
        }
        let adam = Adam {
            lr: opt.current_lr(),
            beta1: settings.adam.beta1,
            beta2: settings.adam.beta2,
            eps: settings.adam.eps,
            weight_decay: settings.adam.weight_decay,
            clip_grad: settings.adam.clip_grad,
        };
        let metrics = self.remote().engine.optim_step(&policy, &adam).map_err(fail)?;
        let norm_of =
            |m: &[(String, f64)]| m.iter().find(|(k, _)| k.ends_with("grad_norm")).map(|(_, v)| *v);
        let mut norm = norm_of(&metrics);
        // The critic steps with the stage's optimiser settings, as the local value head does;
        // the norm recorded is over both models' gradients, as the local optimiser's.
        for critic in &critics {
            let m = self.remote().engine.optim_step(critic, &adam).map_err(fail)?;
            norm = match (norm, norm_of(&m)) {
                (Some(p), Some(c)) => Some(p.hypot(c)),
                _ => None,
            };
        }
        self.remote().backward_secs += started.elapsed().as_secs_f64();
        opt.steps += 1;
        if norm.is_some_and(|g| !g.is_finite()) {
            return Err(Diagnostic::error("non-finite-gradient", "the server reports a non-finite gradient norm")
                .primary(stage.loss_span, "back-propagated from this loss")
                .help(self.resume_hint("lower the learning rate, clamp log-ratios, or look for log/sqrt/division of values that reach 0")));
        }
        let n = record.get(field::OPTIM_STEPS).and_then(Json::as_f64).unwrap_or(0.0);
        if let Some(g) = norm {
            let mean = record.get(field::GRAD_NORM).and_then(Json::as_f64).unwrap_or(0.0);
            record.insert(field::GRAD_NORM.into(), json!((mean * n + g) / (n + 1.0)));
        }
        record.insert(field::OPTIM_STEPS.into(), json!(n + 1.0));
        record.insert(field::LR.into(), json!(adam.lr));
        Ok(())
    }
}
