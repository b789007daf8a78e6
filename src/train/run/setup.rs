//! Setting a run up: the run directory, the tasks, the tokenizer (a pretrained model's own, or
//! the built-in word-level one over the tasks' pieces), the models, and on `--resume` the last
//! checkpoint's weights and random state.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::Tensor;

use super::{Run, RunOptions, Summary, run_error};
use crate::check::Checked;
use crate::diag::{Diagnostic, Span};
use crate::rng::Rng;
use crate::tasks::Task;
use crate::tokenizer::Tok;
use crate::train::checkpoint::{self, State};
use crate::train::metrics::MetricsLog;
use crate::train::models::{self, Slot};

/// A checkpoint to continue a stage from: its state and tensors.
pub(super) type Resumed = (State, BTreeMap<String, Tensor>);

/// The Tinker server a run trains on.
pub(super) type Server = super::remote::Servers;

impl<'a> Run<'a> {
    /// Everything before the first stage. Returns the run, the stage to start at, the
    /// checkpoint to continue that stage from, and the Tinker server it trains on, if any.
    pub(super) fn start(
        checked: &'a Checked,
        resolved: &str,
        opts: &'a RunOptions,
    ) -> Result<(Run<'a>, usize, Option<Resumed>, Option<Server>), Diagnostic> {
        // Wall time counts the warm start too: it is part of what a run costs.
        let started = Instant::now();
        let whole = checked.program.stages.first().map_or(Span::new(0, 0), |s| s.name.span);
        let io = |e: std::io::Error| run_error(whole, format!("{}: {e}", opts.out.display()));
        // What a Tinker server cannot run is refused before anything else is spent.
        let own: Vec<&str> = opts
            .tinker
            .as_ref()
            .map(|t| t.servers.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if opts.tinker.is_some()
            && let Some(e) = crate::engine::tinker::lint::check(checked, None, &own)
                .into_iter()
                .find(|d| d.severity == crate::diag::Severity::Error)
        {
            return Err(e);
        }
        std::fs::create_dir_all(&opts.out).map_err(io)?;
        let resumed = if opts.resume {
            Some(
                checkpoint::load(&opts.out, &opts.device)
                    .map_err(|e| run_error(whole, format!("cannot resume: {e}")))?,
            )
        } else {
            None
        };
        let (tasks, pieces) = build_tasks(checked)?;
        let (tok, tokenizer_json) = tokenizer(checked, opts, &pieces)?;
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
                restore(&mut slots, &tensors, &mut rng, opts, whole)?;
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
        let remote = match &opts.tinker {
            Some(t) => Some(
                super::remote::connect(t, checked, &opts.out, opts.quiet)
                    .map_err(|e| run_error(whole, e))?,
            ),
            None => None,
        };
        let declared = checked
            .program
            .rewards
            .iter()
            .filter_map(|r| r.external.as_ref().map(|spec| (r.name.name.as_str(), spec)));
        let rewards = crate::rewards::Rewards::new(declared, Some(&opts.out.join("rewards")));
        let run = Run {
            checked,
            opts,
            tasks,
            rewards,
            tok,
            tokenizer_json,
            slots,
            metrics,
            started,
            wall_before,
            rng,
            summary: Summary::default(),
            remote: None,
        };
        Ok((run, first_stage, resume_state, remote))
    }
}

/// The recipe's data sets, and every piece of text their tasks need in a built-in vocabulary.
fn build_tasks(checked: &Checked) -> Result<(HashMap<String, Task>, Vec<String>), Diagnostic> {
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
    Ok((tasks, pieces))
}

/// The run's tokenizer and its `tokenizer.json`, written to the run directory and read back
/// like any tokenizer.json.
fn tokenizer(
    checked: &Checked,
    opts: &RunOptions,
    pieces: &[String],
) -> Result<(Tok, String), Diagnostic> {
    let whole = checked.program.stages.first().map_or(Span::new(0, 0), |s| s.name.span);
    let io = |e: std::io::Error| run_error(whole, format!("{}: {e}", opts.out.display()));
    let tok_path = opts.out.join("tokenizer.json");
    Ok(match pretrained_tokenizer(checked)? {
        Some((dir, chat, span)) => {
            let fail = |e: String| run_error(span, e);
            let json = std::fs::read_to_string(dir.join("tokenizer.json"))
                .map_err(|e| fail(format!("{}: {e}", dir.join("tokenizer.json").display())))?;
            std::fs::write(&tok_path, &json).map_err(io)?;
            (crate::tokenizer::from_hf_dir(&dir, chat).map_err(fail)?, json)
        }
        None => {
            let json = Tok::json(pieces);
            std::fs::write(&tok_path, &json).map_err(io)?;
            (Tok::from_file(&tok_path).map_err(|e| run_error(whole, e))?, json)
        }
    })
}

/// Puts a checkpoint's weights (and value heads) back into the models.
fn restore(
    slots: &mut BTreeMap<String, Slot>,
    tensors: &BTreeMap<String, Tensor>,
    rng: &mut Rng,
    opts: &RunOptions,
    whole: Span,
) -> Result<(), Diagnostic> {
    for (name, slot) in slots.iter_mut() {
        let prefix = format!("model.{name}.");
        if tensors.contains_key(&format!("{prefix}value.weight")) {
            slot.add_value_head(rng, &opts.device).map_err(|e| run_error(whole, e.to_string()))?;
        }
        let mine: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect();
        slot.params.assign(&mine).map_err(|e| run_error(whole, format!("cannot resume: {e}")))?;
    }
    Ok(())
}

/// The model directory whose tokenizer the run uses, with its `chat` setting: the first
/// pretrained model's. Every pretrained model of a recipe must share it.
fn pretrained_tokenizer(
    checked: &Checked,
) -> Result<Option<(std::path::PathBuf, bool, Span)>, Diagnostic> {
    let mut found: Option<(std::path::PathBuf, bool, Span)> = None;
    for m in &checked.program.models {
        if !m.init.is_pretrained() {
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
