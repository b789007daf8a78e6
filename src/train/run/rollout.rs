//! An RL step's rollout: the step's prompts, the sampled responses, every other text the stage
//! graph reads (demonstrations, greedy responses, rewrites), the rollout-level inputs computed
//! once without gradient, the ahead-of-time forward of a single minibatch, and VinePPO's step
//! rollouts.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::stage::{StagePlan, permutation};
use super::update::{live_logp, of_trained_or_old, old_from_update, unpermute};
use super::{Run, run_error};
use crate::check::params;
use crate::diag::Diagnostic;
use crate::ir::graph::ScorerRef;
use crate::model::Transformer;
use crate::sample::{self, Generation, Sampling};
use crate::tasks::Task;
use crate::tokenizer::Tok;
use crate::train::signals::{self, ModelView, Rows, SignalCx, SourceKind, TextRows};

/// What one step sampled, and every rollout-level input of the stage graph.
pub(super) struct Rollout {
    pub rows: Rows,
    pub generation: Generation,
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
        tok,
        device,
        widths: &r.widths,
        frozen_only,
        old_is: Some(trained),
    }
}

impl Run<'_> {
    /// Samples the step's batch and computes its rollout-level inputs.
    pub(super) fn rollout(&mut self, plan: &StagePlan, step: usize) -> Result<Rollout, Diagnostic> {
        let StagePlan { index, settings, sources, delimiter, task, reference, .. } = *plan;
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
            generation,
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
        let cx = signal_cx(&self.tasks, &self.tok, &device, &r, &trained, true);
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
        let StagePlan { index, compiled, sources, task, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let device = self.opts.device.clone();
        let sampling = self.sampling(index);
        let sampler = &frozen[sampler_name];
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
                let ScorerRef::Verifier { data, member } = reward else {
                    return Err(fail("`vine_values` needs a verifier reward".into()));
                };
                let vtask =
                    self.tasks.get(data).ok_or_else(|| fail(format!("no data set `{data}`")))?;
                let (values, count) = crate::train::vine::values(
                    &r.frozen[sampler_name],
                    &self.tok,
                    &r.generation,
                    prompt_toks,
                    &r.rows.prompts,
                    &r.rows.texts["response"].toks,
                    vtask,
                    member,
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
