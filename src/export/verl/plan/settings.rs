//! What verl's trainer cannot run at all (earlier stages, step rollouts, rewrites) and the
//! sampling and optimiser settings it cannot express.

use super::Planner;
use crate::check::params::{Resolved, Value};
use crate::ir::graph::*;

impl Planner<'_> {
    /// What verl's trainer does not produce at all: extra rollouts from step starts (VinePPO),
    /// rewrites by a generative reward model (RLMEC). True when found (the rest would be noise).
    pub(super) fn engine_gaps(&mut self) -> bool {
        let g = self.g();
        let mut found = vec![];
        for n in g.node_indices() {
            match &g[n].op {
                Op::Block { spec, .. }
                    if matches!(spec.demand, crate::blocks::spec::Demand::StepRollouts { .. }) =>
                {
                    found.push((g[n].span, format!("`{}` needs extra rollouts from every reasoning-step start (Monte-Carlo values); verl's trainer samples only the responses themselves", spec.name), "extra rollouts verl does not make", "keep this recipe in rlx, or replace the Monte-Carlo values with a critic (gae) or group baselines"));
                }
                Op::Rewrite { model } => {
                    found.push((g[n].span, format!("`{model}.rewrite(...)` asks a generative reward model to rewrite each response; verl has no rewrite pass between rollout and reward"), "a rewrite verl does not make", "keep this recipe in rlx (verl would need a custom reward loop that rewrites and aligns tokens)"));
                }
                Op::Signal { signal: Signal::KeepProb, .. } => {
                    found.push((g[n].span, "`keep_prob` needs the rewriter's token probabilities; verl's workers compute log-probabilities of the policy and the reference only".into(), "a signal verl does not compute", "keep this recipe in rlx"));
                }
                _ => {}
            }
        }
        found.sort_by_key(|f| f.0.start);
        let any = !found.is_empty();
        for (span, msg, label, help) in found {
            self.err("verl-engine", span, msg, label, help);
        }
        any
    }

    /// A stage that reads a model an earlier stage trains cannot run alone in verl.
    pub(super) fn earlier_stages(&mut self, index: usize) {
        let program = &self.checked.program;
        let earlier: Vec<(&str, &str)> = program.stages[..index]
            .iter()
            .flat_map(|s| {
                s.train.iter().map(move |t| (t.model.name.as_str(), s.name.name.as_str()))
            })
            .collect();
        let g = self.g();
        let mut found = vec![];
        for n in g.node_indices() {
            let model = match &g[n].op {
                Op::Score(ScorerRef::Model(m)) => Some(m.clone()),
                Op::Signal { model: ModelRef::Named(m), .. } => Some(m.clone()),
                _ => None,
            };
            if let Some(m) = model
                && let Some((_, s)) = earlier.iter().find(|(t, _)| *t == m)
            {
                found.push((n, m, s.to_string()));
            }
        }
        if let Some((n, m, s)) = found.into_iter().min_by_key(|(n, _, _)| g[*n].span.start) {
            let span = g[n].span;
            self.err(
                "verl-earlier-stage",
                span,
                format!("`{m}` is trained by stage `{s}` first: verl runs one RL stage, not a pipeline"),
                "trained by an earlier stage",
                "train it in rlx, save it as a Hugging Face checkpoint, and declare it with pretrained(...) for the exported stage",
            );
        }
    }

    /// Sampling and optimiser settings verl cannot express.
    pub(super) fn settings(&mut self) {
        let get = |r: &[Resolved], k| crate::check::params::get(r, k).cloned();
        let span_of = |r: &[Resolved], k| r.iter().find(|x| x.name == k).and_then(|x| x.span);
        let sample = self.cs.sample.clone();
        let optim = self.cs.optim.clone();
        let stage_span = self.stage.name.span;
        if let Some(Value::Str(s)) = get(&sample, "from")
            && s != "old"
        {
            let span = span_of(&sample, "from").unwrap_or(stage_span);
            self.err("verl-setting", span, "verl samples from the trained policy; `from = ref` (offline sampling) has no verl setting".into(), "not the policy", "sample from `old`");
        }
        if get(&sample, "stop").is_some_and(|v| v != Value::Off) {
            let span = span_of(&sample, "stop").unwrap_or(stage_span);
            self.err("verl-setting", span, "a stop string has no key in verl's rollout config".into(), "no verl key", "stop at EOS, or pass the stop string through your engine's kwargs and drop it here");
        }
        if get(&sample, "min_tokens").and_then(|v| v.num()).is_some_and(|v| v > 0.0) {
            let span = span_of(&sample, "min_tokens").unwrap_or(stage_span);
            self.err(
                "verl-setting",
                span,
                "`min_tokens` has no key in verl's rollout config".into(),
                "no verl key",
                "drop it",
            );
        }
        if crate::check::params::get_num(&optim, "warmup").is_some_and(|w| w > 0.0) {
            let span = span_of(&optim, "warmup").unwrap_or(stage_span);
            self.err("verl-setting", span, "verl's warm-up is counted in RL steps and starts at a learning rate of 0; rlx's is counted in optimiser steps and starts at lr/w".into(), "a warm-up verl schedules differently", "drop `warmup` here and set verl's actor_rollout_ref.actor.optim.lr_warmup_steps on the command line");
        }
        let n = crate::check::params::num(&sample, "n");
        for key in ["batch", "minibatch"] {
            let v = crate::check::params::num(&optim, key);
            if (v / n).fract() != 0.0 {
                let span = span_of(&optim, key).unwrap_or(stage_span);
                self.err("verl-setting", span, format!("verl counts `{key}` in prompts: {v} sequences is not a whole number of prompts of {n} samples"), "not a multiple of `sample.n`", "make it a multiple of n");
            }
        }
    }
}
