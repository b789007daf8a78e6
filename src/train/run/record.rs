//! What a step leaves behind besides the weights: the rollout's metrics in `metrics.jsonl`
//! and a few samples in `samples.jsonl`.

use candle_core::DType;
use serde_json::{Map, Value as Json, json};

use super::rollout::Rollout;
use super::stage::StagePlan;
use super::{Run, masked_mean, mean_of};
use crate::exec::Evaluation;
use crate::ir::graph::TextName;
use crate::train::metrics::field;
use crate::train::signals::{SourceKind, TextRows};

impl Run<'_> {
    /// The rollout's metrics: the task's, the mean reward, entropy, KL to `ref`, response
    /// length, the mean and spread of every `let` binding, VinePPO's rollout count.
    pub(super) fn record_rollout(
        &self,
        plan: &StagePlan,
        r: &Rollout,
        first: &Evaluation,
        responses: &[String],
        record: &mut Map<String, Json>,
    ) {
        let StagePlan { sources, task, .. } = *plan;
        let full = &r.full;
        let mask = full.get("mask").cloned();
        let prompt_texts: Vec<&str> = r.rows.prompts.iter().map(String::as_str).collect();
        for (k, v) in task.metrics(&prompt_texts, responses) {
            record.insert(k, json!(v));
        }
        if let Some(s) = sources
            .iter()
            .find(|s| matches!(&s.kind, SourceKind::Score { text, .. } if text == "response"))
        {
            record.insert(field::REWARD.into(), json!(mean_of(&full[&s.name])));
        }
        if let Some(m) = &mask {
            if let Some(old) = full.get("old.logp").or_else(|| full.get("policy.logp")) {
                record.insert(field::ENTROPY.into(), json!(-masked_mean(old, m)));
                if let Some(rf) = full.get("ref.logp") {
                    let d = (old - rf).map(|d| masked_mean(&d, m)).unwrap_or(f64::NAN);
                    record.insert(field::KL.into(), json!(d));
                }
            }
            record.insert(
                "response_tokens".into(),
                json!(r.new_tokens as f64 / r.rows.len().max(1) as f64),
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
        if r.vine_rollouts > 0 {
            record.insert(field::VINE_ROLLOUTS.into(), json!(r.vine_rollouts));
        }
        if !self.rewards.is_empty() {
            record.insert(field::REWARD_SECONDS.into(), json!(self.rewards.take_seconds()));
            for (k, v) in self.rewards.take_logs() {
                record.insert(k, json!(v));
            }
        }
    }

    /// A few samples of the step, with every text generated from them (a rewriter's rewrite,
    /// the greedy response), so what a method trains on can be read.
    pub(super) fn write_samples(&self, step: usize, r: &Rollout, responses: &[String]) {
        let generated: Vec<(&String, &TextRows)> = r
            .rows
            .texts
            .iter()
            .filter(|(name, _)| {
                *name == "greedy" || matches!(TextName::parse(name), TextName::Rewrite { .. })
            })
            .collect();
        let lines: Vec<Json> = r
            .rows
            .prompts
            .iter()
            .zip(responses)
            .enumerate()
            .take(4)
            .map(|(i, (p, resp))| {
                let mut line = json!({"step": step + 1, "prompt": p, "response": resp});
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
}
