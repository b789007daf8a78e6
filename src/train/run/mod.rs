//! A training run: tasks, tokenizer and models are set up, then each stage runs in order —
//! supervised (`data`), preference (`pairs`) or RL (`prompts`) — writing metrics, samples and
//! atomic checkpoints to the run directory. A resumed run continues from the last checkpoint.
//!
//! One file per phase: `setup` (tasks, tokenizer, models, resumption), `stage` (the loop over a
//! stage's steps, checkpoints), `evaluate` (held-out metrics), `supervised` (data and pairs
//! steps), `rollout` (sampling, extra texts, rollout-level inputs, the ahead-of-time forward),
//! `update` (epochs × minibatches, back-propagation, the optimiser) and `record` (metrics and
//! samples of a step).

mod clip;
mod evaluate;
mod record;
mod remote;
mod rollout;
mod setup;
mod stage;
mod supervised;
mod update;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::metrics::MetricsLog;
use super::models::Slot;
use crate::check::Checked;
use crate::diag::{Diagnostic, Span};
use crate::rng::Rng;
use crate::tasks::Task;
use crate::tokenizer::Tok;

pub use evaluate::stage_sampling;

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
    /// Train on a Tinker-protocol server instead of this machine.
    pub tinker: Option<TinkerOptions>,
}

/// Where and how to reach a Tinker-protocol server (its API key: `TINKER_API_KEY`).
#[derive(Debug, Clone)]
pub struct TinkerOptions {
    pub url: String,
    /// Models on servers of their own, by model name.
    pub servers: BTreeMap<String, String>,
    /// The server's base model (default: the only one it serves).
    pub base_model: Option<String>,
    /// How the server reduces a backward (default: what its self-test finds).
    pub reduction: Option<crate::engine::surrogate::Reduction>,
    /// Whether the run's adapters stay loaded on its servers when it ends.
    pub keep_adapters: bool,
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

impl Run<'_> {
    /// A run stopped by an external reward points at the reward's declaration and says how
    /// to go on, instead of blaming the stage.
    fn blame_reward(&self, d: Diagnostic) -> Diagnostic {
        let Some(name) = self.rewards.failed() else { return d };
        let Some(decl) = self.checked.program.rewards.iter().find(|r| r.name.name == name) else {
            return d;
        };
        let span = decl.external.as_ref().map_or(decl.span, |e| e.span);
        let log = self.opts.out.join("rewards").join(format!("{name}.log"));
        Diagnostic::error("reward-failed", d.message).primary(span, "this reward failed").help(format!(
            "fix it, then `rlx run --resume {}` continues from the last checkpoint (intact: the bad batch reached no loss); a command's whole stderr is in {}",
            self.opts.out.display(),
            log.display()
        ))
    }
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
    /// The recipe's external rewards, each process started on first use.
    rewards: crate::rewards::Rewards,
    tok: Tok,
    tokenizer_json: String,
    slots: BTreeMap<String, Slot>,
    metrics: MetricsLog,
    started: Instant,
    /// Seconds of the run before this process (a resumed run's wall time stays cumulative).
    wall_before: f64,
    rng: Rng,
    summary: Summary,
    /// The Tinker server the trained models live on (`None`: this machine).
    remote: Option<remote::RemoteRun>,
}

/// Runs every stage of a checked recipe. `resolved` is the recipe text to store with the run.
pub fn run(checked: &Checked, resolved: &str, opts: &RunOptions) -> Result<Summary, Diagnostic> {
    let whole = checked.program.stages.first().map_or(Span::new(0, 0), |s| s.name.span);
    let (mut run, first_stage, resume_state, engine) = Run::start(checked, resolved, opts)?;
    run.remote = engine.map(remote::RemoteRun::new);
    // Stages a resumed run finished before: their evaluations are in the log.
    for index in 0..first_stage {
        if let Some((before, after)) = run.recorded_evals(index) {
            let name = checked.program.stages[index].name.name.clone();
            run.summary.evals.push((name, before, after));
        }
    }
    let mut resume_state = resume_state;
    let keep = opts.tinker.as_ref().is_some_and(|t| t.keep_adapters);
    for index in first_stage..checked.program.stages.len() {
        if let Err(d) = run.stage(index, resume_state.take()) {
            // The checkpoint's saves are what a `--resume` loads: the adapters are not needed.
            if let Some(r) = run.remote.as_mut().filter(|_| !keep) {
                r.release();
            }
            return Err(run.blame_reward(d));
        }
    }
    if let Some(r) = &mut run.remote {
        // The trained weights are the server's saves: the last checkpoint names them.
        if !opts.quiet {
            for (name, id) in r.models.clone() {
                eprintln!(
                    "`{name}` was trained on {} as `{}`; its weights are the server's saves (state.json names the last), its adapter {}",
                    r.engine_for(&name).label(),
                    id.0,
                    if keep { "still loaded (--keep-adapters)" } else { "unloaded" }
                );
            }
        }
        if !keep {
            r.release();
        }
        run.summary.seconds = run.wall();
        return Ok(run.summary);
    }
    // Every model goes out as a Hugging Face checkpoint, for other tools (and `rlx score`,
    // `rlx generate`) to load; LoRA adapters also alone, in PEFT's layout.
    for (name, slot) in &run.slots {
        let dir = opts.out.join("models").join(name);
        let adapter = opts.out.join("adapters").join(name);
        let saved = slot
            .save(&dir, &adapter, &run.tok, &run.tokenizer_json)
            .map_err(|e| run_error(whole, format!("saving `{name}`: {e}")))?;
        if let Some(head) = crate::train::yes_no::YesNoHead::of(checked, name) {
            head.save(&dir).map_err(|e| run_error(whole, format!("saving `{name}`: {e}")))?;
        }
        crate::train::fault::point();
        if !opts.quiet {
            eprintln!("saved `{name}` in {} layout to {}", saved.layout, dir.display());
            if saved.adapter {
                eprintln!("  its LoRA adapter alone (PEFT layout) to {}", adapter.display());
            }
        }
    }
    run.summary.seconds = run.wall();
    crate::train::fault::report();
    Ok(run.summary)
}

/// Mean of all of a tensor's values.
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
