//! `metrics.jsonl`: one JSON object per line, flushed as written, so a killed run keeps every
//! line it finished; the same lines go to a TensorBoard event file beside it.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use super::tensorboard::Scalars;

/// The names of `metrics.jsonl`'s fields: the trainer writes them, `report/` and `rlx run`
/// read them, and this is the one place they are spelled. (A task's own metrics — `accuracy`,
/// `gold`, … with `NAME_se` — are the task's; `loss.TERM` and `BINDING.mean`/`.std` are built
/// by the functions below.)
pub mod field {
    /// Every line: which stage and step it belongs to.
    pub const STAGE: &str = "stage";
    pub const STAGE_INDEX: &str = "stage_index";
    pub const STEP: &str = "step";
    /// An evaluation line: `before` or `after`, its metrics under `eval/NAME`.
    pub const EVAL: &str = "eval";
    pub const BEFORE: &str = "before";
    pub const AFTER: &str = "after";
    pub const EVAL_PREFIX: &str = "eval/";
    /// A training step.
    pub const LOSS: &str = "loss";
    pub const REWARD: &str = "reward";
    pub const KL: &str = "kl";
    pub const ENTROPY: &str = "entropy";
    pub const RESPONSE_TOKENS: &str = "response_tokens";
    pub const VINE_ROLLOUTS: &str = "vine_rollouts";
    pub const PAIR_ACCURACY: &str = "pair_accuracy";
    pub const CLIP_FRACTION: &str = "clip_fraction";
    pub const GRAD_NORM: &str = "grad_norm";
    pub const OPTIM_STEPS: &str = "optim_steps";
    pub const LR: &str = "lr";
    pub const TOKENS: &str = "tokens";
    pub const TOKENS_PER_S: &str = "tokens_per_s";
    pub const SAMPLE_SECONDS: &str = "sample_seconds";
    pub const TRAIN_SECONDS: &str = "train_seconds";
    /// A remote run's seconds in the server's forwards (rollout and minibatches), and in its
    /// backwards and optimiser steps; the rest of `train_seconds` is the host's graph.
    pub const SERVER_FORWARD_SECONDS: &str = "server_forward_seconds";
    pub const SERVER_BACKWARD_SECONDS: &str = "server_backward_seconds";
    /// Seconds the step waited for external rewards (`command(...)`, `http(...)`).
    pub const REWARD_SECONDS: &str = "reward_seconds";
    pub const SAMPLE_TOKENS_PER_S: &str = "sample_tokens_per_s";
    /// The step's own seconds, and the run's wall time so far.
    pub const SECONDS: &str = "seconds";
    pub const WALL: &str = "wall";

    /// One term of the loss: `loss.NAME`.
    pub fn loss_term(name: &str) -> String {
        format!("{LOSS}.{name}")
    }

    /// A held-out metric on an evaluation line: `eval/NAME`.
    pub fn eval(metric: &str) -> String {
        format!("{EVAL_PREFIX}{metric}")
    }
}

pub struct MetricsLog {
    file: std::fs::File,
    events: super::tensorboard::EventFile,
}

impl MetricsLog {
    pub fn create(dir: &Path) -> std::io::Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::File::create(&path)?;
        let events = super::tensorboard::EventFile::create(dir, &[])?;
        Ok(MetricsLog { file, events })
    }

    /// Reopens a log for a resumed run, dropping every line the resumed run writes again: steps
    /// past the checkpoint (`stage`, `step`), the current stage's `after` evaluation, and its
    /// `before` evaluation when the stage restarts from step 0. No line is lost or duplicated,
    /// wherever the run was killed.
    pub fn resume(dir: &Path, stage: usize, step: usize) -> std::io::Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let Ok(v) = serde_json::from_str::<Value>(l) else { return false };
                let s = v.get(field::STAGE_INDEX).and_then(Value::as_u64).unwrap_or(0) as usize;
                let t = v.get(field::STEP).and_then(Value::as_u64).unwrap_or(0) as usize;
                match v.get(field::EVAL).and_then(Value::as_str) {
                    _ if s != stage => s < stage,
                    Some(field::AFTER) => false,
                    Some(_) => step > 0,
                    None => t <= step,
                }
            })
            .collect();
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        std::fs::write(&path, body)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        let lines: Vec<Scalars> = kept
            .iter()
            .filter_map(|l| serde_json::from_str::<Map<String, Value>>(l).ok())
            .map(|l| scalars_of(&l))
            .collect();
        let events = super::tensorboard::EventFile::create(dir, &lines)?;
        Ok(MetricsLog { file, events })
    }

    pub fn write(&mut self, record: &Map<String, Value>) -> std::io::Result<()> {
        let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        writeln!(self.file, "{line}")?;
        self.file.flush()?;
        self.events.write(&scalars_of(record))?;
        super::fault::point();
        Ok(())
    }
}

/// A line's numbers as TensorBoard scalars `STAGE/NAME` at its step.
fn scalars_of(line: &Map<String, Value>) -> Scalars {
    let stage = line.get(field::STAGE).and_then(Value::as_str).unwrap_or("run");
    let values = line
        .iter()
        .filter(|(k, _)| ![field::STAGE_INDEX, field::STEP].contains(&k.as_str()))
        .filter_map(|(k, v)| Some((format!("{stage}/{k}"), v.as_f64()? as f32)))
        .collect();
    Scalars { step: line.get(field::STEP).and_then(Value::as_i64).unwrap_or(0), values }
}

/// The `before` and `after` evaluations a log holds for a stage, as `eval/NAME` values.
pub fn evals(dir: &Path, stage: usize) -> (Map<String, Value>, Map<String, Value>) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let (mut before, mut after) = (Map::new(), Map::new());
    for v in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if v.get(field::STAGE_INDEX).and_then(Value::as_u64) != Some(stage as u64) {
            continue;
        }
        let into = match v.get(field::EVAL).and_then(Value::as_str) {
            Some(field::BEFORE) => &mut before,
            Some(field::AFTER) => &mut after,
            _ => continue,
        };
        if let Some(o) = v.as_object() {
            for (k, x) in o.iter().filter(|(k, _)| k.starts_with(field::EVAL_PREFIX)) {
                into.insert(k.clone(), x.clone());
            }
        }
    }
    (before, after)
}
