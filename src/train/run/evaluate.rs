//! Held-out evaluation: the task's metrics of a model on held-out prompts before and after a
//! stage, written to the metrics log and read back when a run resumes.

use serde_json::{Map, Value as Json, json};

use super::{Metrics, Run, run_error};
use crate::check::{Checked, params};
use crate::diag::Diagnostic;
use crate::model::Transformer;
use crate::rng::Rng;
use crate::sample::{self, Sampling};
use crate::tasks::Task;
use crate::train::metrics::field;

impl Run<'_> {
    /// A stage's `before` and `after` evaluations from the metrics log, in the task's metric
    /// order; `None` when the stage has none.
    pub(super) fn recorded_evals(&self, index: usize) -> Option<(Metrics, Metrics)> {
        let (before, after) = crate::train::metrics::evals(&self.opts.out, index);
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
            let k = k.trim_start_matches(field::EVAL_PREFIX).to_string();
            if !order.contains(&k) {
                order.push(k);
            }
        }
        let pick = |m: &Map<String, Json>| -> Metrics {
            order
                .iter()
                .filter_map(|k| {
                    m.get(&field::eval(k)).and_then(Json::as_f64).map(|v| (k.clone(), v))
                })
                .collect()
        };
        Some((pick(&before), pick(&after)))
    }

    pub(super) fn record_eval(
        &mut self,
        index: usize,
        step: usize,
        when: &str,
        m: &[(String, f64)],
    ) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let mut r = Map::new();
        r.insert(field::STAGE.into(), json!(stage.name.name));
        r.insert(field::STAGE_INDEX.into(), json!(index));
        r.insert(field::STEP.into(), json!(step));
        r.insert(field::EVAL.into(), json!(when));
        for (k, v) in m {
            r.insert(field::eval(k), json!(v));
        }
        self.metrics.write(&r).map_err(|e| run_error(stage.name.span, e.to_string()))
    }

    pub(super) fn sampling(&self, index: usize) -> Sampling {
        stage_sampling(self.checked, index)
    }

    /// The task metrics of `model` on held-out prompts, sampled with the stage's settings and
    /// a fixed seed (the same prompts and randomness before and after).
    pub(super) fn evaluate(
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
}

/// The resolved `sample { }` settings of stage `index`; a stage that does not sample reads the
/// defaults (its held-out evaluation samples with them).
pub(super) fn sample_settings(checked: &Checked, index: usize) -> Vec<params::Resolved> {
    let s = &checked.stages[index].sample;
    if s.is_empty() { params::defaults(crate::ir::builtins::SAMPLE) } else { s.clone() }
}

/// The sampling settings of stage `index` (`sample { }` with its defaults).
pub fn stage_sampling(checked: &Checked, index: usize) -> Sampling {
    let s = &sample_settings(checked, index);
    Sampling {
        temperature: params::num(s, "temperature"),
        top_p: params::num(s, "top_p"),
        max_tokens: params::num(s, "max_tokens") as usize,
        min_tokens: params::num(s, "min_tokens") as usize,
        stop: params::get(s, "stop").and_then(|v| v.str()).map(|s| s.replace("\\n", "\n")),
        greedy: false,
    }
}
