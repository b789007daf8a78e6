//! An RL step's rollout: the step's prompts, the sampled responses, every other text the stage
//! graph reads (demonstrations, greedy responses, rewrites), the rollout-level inputs computed
//! once without gradient, the ahead-of-time forward of a single minibatch, and VinePPO's step
//! rollouts; and when that forward may stand in for the trained model's rollout-level one.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::stage::{Loop, StagePlan, permutation};
use super::{Run, run_error};
use crate::check::params;
use crate::diag::Diagnostic;
use crate::exec::Dim;
use crate::ir::graph::TextName;
use crate::ir::graph::{ModelRef, Signal};
use crate::model::Transformer;
use crate::sample::{self, Generation, Sampling};
use crate::tasks::Task;
use crate::tokenizer::Tok;
use crate::train::scoring::HostScorers;
use crate::train::signals::{self, ModelView, Rows, SignalCx, Source, SourceKind, TextRows};

/// What one step sampled, and every rollout-level input of the stage graph.
pub(super) struct Rollout {
    pub rows: Rows,
    /// The local sampler's output, with the KV cache VinePPO's rollouts continue (`None` on a
    /// remote engine).
    pub generation: Option<Generation>,
    /// Frozen views of every model, `old` and `ref`; and the trained models' live ones.
    pub frozen: HashMap<String, Transformer>,
    pub live: HashMap<String, Transformer>,
    /// Padded width of each text over the whole rollout batch.
    pub widths: HashMap<String, usize>,
    /// The stage's sampling temperature (logits of every signal are divided by it).
    pub temperature: f64,
    /// Every input at rollout level, by name.
    pub full: HashMap<String, Tensor>,
    /// When the single minibatch's forward ran ahead: its row order and its live inputs.
    pub ahead: Option<(Vec<usize>, HashMap<String, Tensor>)>,
    pub sample_secs: f64,
    pub ahead_secs: f64,
    pub new_tokens: usize,
    /// VinePPO's extra rollouts from step starts.
    pub vine_rollouts: usize,
}

/// The signal context of a rollout: `frozen_only` for the rollout-level pass (without
/// gradient), not for the update's minibatches.
pub(super) fn signal_cx<'b>(
    tasks: &'b HashMap<String, Task>,
    rewards: &'b crate::rewards::Rewards,
    tok: &'b Tok,
    device: &'b Device,
    r: &'b Rollout,
    trained: &'b str,
    frozen_only: bool,
) -> SignalCx<'b> {
    SignalCx {
        models: ModelView { live: &r.live, frozen: &r.frozen },
        temperature: r.temperature,
        tasks,
        rewards,
        tok,
        device,
        widths: &r.widths,
        frozen_only,
        old_is: Some(trained),
    }
}

/// With one epoch of one minibatch, the update's forward runs on `old`'s weights exactly, so
/// `old.logp` is its detached `policy.logp` and the rollout pass need not run the trained model
/// (TRL and verl skip it likewise with one iteration). Only when every signal of the trained
/// model or `old` is a log-probability and no step rollouts (which draw from the run's random
/// stream before the update) are asked for.
pub(super) fn old_from_update(
    sources: &[Source],
    trained: &str,
    settings: &Loop,
    rows: usize,
) -> bool {
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
pub(super) fn of_trained_or_old(s: &Source, trained: &str) -> bool {
    matches!(&s.kind, SourceKind::Signal { model, .. }
        if *model == ModelRef::Old || matches!(model, ModelRef::Named(m) if m == trained))
}

/// The trained model's log-probabilities of `text` with gradient, if the stage reads them.
pub(super) fn live_logp<'a>(
    sources: &'a [Source],
    trained: &str,
    text: &str,
) -> Option<&'a Source> {
    sources.iter().find(|g| {
        g.grad
            && matches!(&g.kind, SourceKind::Signal { model: ModelRef::Named(m), signal: Signal::Logp, text: t }
                if m == trained && t == text)
    })
}

/// `t`'s rows put back in rollout order, from the order `perm` listed them in.
pub(super) fn unpermute(t: &Tensor, perm: &[usize]) -> candle_core::Result<Tensor> {
    let mut inverse = vec![0u32; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i as u32;
    }
    t.index_select(&Tensor::from_vec(inverse, perm.len(), t.device())?, 0)
}

/// Every text the stage reads, in order of first use: each text an input is laid out along (its
/// tokens or steps), and each text a signal or a score reads.
pub(super) fn needed_texts(plan: &StagePlan) -> Vec<String> {
    let needed = plan
        .compiled
        .requirements()
        .iter()
        .flat_map(|r| r.shape.iter())
        .filter_map(|d| match d {
            Dim::Tokens(t) | Dim::Steps(t) => Some(t.clone()),
            Dim::Batch => None,
        })
        .chain(plan.sources.iter().filter_map(|s| match &s.kind {
            SourceKind::Signal { text, .. } | SourceKind::Score { text, .. } => Some(text.clone()),
            _ => None,
        }));
    let mut unique: Vec<String> = Vec::new();
    for t in needed {
        if !unique.contains(&t) {
            unique.push(t);
        }
    }
    unique
}

/// The prompts of one step, each repeated for its `n` samples (next to each other).
pub(super) struct StepPrompts {
    /// Indices into the task's training prompts.
    pub chosen: Vec<usize>,
    pub n: usize,
    pub prompt_toks: Vec<Vec<u32>>,
    /// The rows' prompts and groups (no texts yet).
    pub rows: Rows,
}

impl Run<'_> {
    /// The step's prompts: a fixed permutation per pass over the prompt set.
    pub(super) fn step_prompts(&self, plan: &StagePlan, step: usize) -> StepPrompts {
        let StagePlan { index, settings, task, .. } = *plan;
        let n = params::num(&self.checked.stages[index].sample, "n").max(1.0) as usize;
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
        StepPrompts { chosen, n, prompt_toks, rows }
    }

    /// Samples the step's batch and computes its rollout-level inputs.
    pub(super) fn rollout(&mut self, plan: &StagePlan, step: usize) -> Result<Rollout, Diagnostic> {
        let StagePlan { index, settings, sources, delimiter, reference, .. } = *plan;
        let checked = self.checked;
        let stage = &checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let device = self.opts.device.clone();
        let sampling = self.sampling(index);
        let cs = &checked.stages[index];
        let from_ref = params::get(&cs.sample, "from").and_then(|v| v.str()) == Some("ref");
        let trained = stage.trained().unwrap_or("policy").to_string();
        let StepPrompts { chosen, n, prompt_toks, mut rows } = self.step_prompts(plan, step);
        let frozen = self.frozen_views(&trained, reference).map_err(fail)?;
        let sampler_name = if from_ref { "ref" } else { "old" };
        let t_sample = Instant::now();
        let generation = sample::generate(
            &frozen[sampler_name],
            &self.tok,
            &prompt_toks,
            &sampling,
            &mut self.rng,
            &device,
        )
        .map_err(|e| fail(e.to_string()))?;
        let sample_secs = t_sample.elapsed().as_secs_f64();
        let new_tokens: usize = generation.tokens.iter().map(Vec::len).sum();
        rows.texts.insert(
            "response".into(),
            TextRows { ctx: prompt_toks.clone(), toks: generation.tokens.clone() },
        );
        rows.rollout_logp = generation.logps.clone();
        self.extra_texts(plan, &chosen, n, &prompt_toks, &frozen, sampler_name, &mut rows)?;
        let widths = rows.widths();
        let live = self.live_views(stage).map_err(fail)?;
        let mut r = Rollout {
            rows,
            generation: Some(generation),
            frozen,
            live,
            widths,
            temperature: sampling.temperature,
            full: HashMap::new(),
            ahead: None,
            sample_secs,
            ahead_secs: 0.0,
            new_tokens,
            vine_rollouts: 0,
        };
        // Rollout-level inputs: everything, computed once without gradient — but for the trained
        // model's log-probs when the update's own forward gives them (`old_from_update`).
        let reuse = old_from_update(sources, &trained, settings, r.rows.len());
        let cx = signal_cx(&self.tasks, &self.rewards, &self.tok, &device, &r, &trained, true);
        let mut full = signals::base_inputs(&r.rows, &cx, delimiter).map_err(fail)?;
        full.extend(
            signals::compute(sources, |s| !(reuse && of_trained_or_old(s, &trained)), &r.rows, &cx)
                .map_err(fail)?,
        );
        // The single minibatch's forward with gradient, run now: its detached log-probs are
        // `old`'s (and the trained model's) for the rollout-level pass.
        let t_ahead = Instant::now();
        let mut ahead = None;
        if reuse {
            let perm = permutation(r.rows.len(), self.rng.next_u64(), 0);
            let live_cx = SignalCx { frozen_only: false, ..cx };
            let live = signals::compute(sources, |s| s.grad, &r.rows.select(&perm), &live_cx)
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
            ahead = Some((perm, live));
        }
        r.ahead_secs = t_ahead.elapsed().as_secs_f64();
        r.ahead = ahead;
        r.full = full;
        self.step_rollouts(plan, &prompt_toks, &sampling, sampler_name, &mut r)?;
        Ok(r)
    }

    /// Every text besides the response that the graph reads: demonstrations, greedy
    /// responses, a model's rewrites of another text.
    #[allow(clippy::too_many_arguments)]
    fn extra_texts(
        &mut self,
        plan: &StagePlan,
        chosen: &[usize],
        n: usize,
        prompt_toks: &[Vec<u32>],
        frozen: &HashMap<String, Transformer>,
        sampler_name: &str,
        rows: &mut Rows,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, task, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let device = self.opts.device.clone();
        let sampling = self.sampling(index);
        let sampler = &frozen[sampler_name];
        let needed_unique = needed_texts(plan);
        for text in &needed_unique {
            if rows.texts.contains_key(text) {
                continue;
            }
            let toks: Vec<Vec<u32>> = if text == "demonstration" {
                let mut v = Vec::new();
                for &i in chosen {
                    for _ in 0..n {
                        v.push(self.tok.response(&task.train[i].demonstration));
                    }
                }
                v
            } else if text == "greedy" {
                let greedy = Sampling { greedy: true, ..sampling.clone() };
                sample::generate(sampler, &self.tok, prompt_toks, &greedy, &mut self.rng, &device)
                    .map_err(|e| fail(e.to_string()))?
                    .tokens
            } else if let TextName::Rewrite { model, of } = TextName::parse(text) {
                let of = of.to_string();
                let base = rows
                    .texts
                    .get(&of)
                    .cloned()
                    .ok_or_else(|| fail(format!("cannot rewrite `{of}`")))?;
                let ctx = base.then_sep(self.tok.sep);
                let greedy = Sampling { greedy: true, stop: None, ..sampling.clone() };
                let m = frozen.get(&model).ok_or_else(|| fail(format!("no model `{model}`")))?;
                sample::generate(m, &self.tok, &ctx, &greedy, &mut self.rng, &device)
                    .map_err(|e| fail(e.to_string()))?
                    .tokens
            } else {
                continue;
            };
            rows.texts.insert(text.clone(), TextRows { ctx: prompt_toks.to_vec(), toks });
        }
        Ok(())
    }

    /// VinePPO's values: K rollouts from every reasoning-step start of every response.
    fn step_rollouts(
        &mut self,
        plan: &StagePlan,
        prompt_toks: &[Vec<u32>],
        sampling: &Sampling,
        sampler_name: &str,
        r: &mut Rollout,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, sources, delimiter, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let device = self.opts.device.clone();
        for s in sources {
            if let SourceKind::StepRollouts { reward, k, max_steps, .. } = &s.kind {
                let generation =
                    r.generation.as_ref().ok_or_else(|| fail("no local generation".into()))?;
                let (values, count) = crate::train::vine::values(
                    &r.frozen[sampler_name],
                    &self.tok,
                    generation,
                    prompt_toks,
                    &r.rows.prompts,
                    &r.rows.texts["response"].toks,
                    HostScorers { tasks: &self.tasks, rewards: &self.rewards },
                    reward,
                    *k,
                    *max_steps,
                    delimiter.unwrap_or("\n"),
                    sampling,
                    &mut self.rng,
                    &device,
                )
                .map_err(fail)?;
                r.vine_rollouts += count;
                r.full.insert(s.name.clone(), values);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::AdamWConfig;
    use candle_core::Device;

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
