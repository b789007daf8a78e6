//! `rlx compare`: every recipe × seed as its own `rlx run` (a child process, so one run's
//! failure or memory does not touch the others), then one report of them side by side.
//!
//! Layout of the output directory: `runs/LABEL-sSEED/` (run directories), `logs/` (each run's
//! output), `report.md`, `report.json`, `plot.svg`. A run directory that finished under the same
//! recipe text and settings is reused; one that stopped part-way is resumed from its checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

pub use super::curves::RecipeRuns;
use super::curves::{RunMetrics, mean_se, read_run};
use crate::train::metrics::field;

/// What to run.
pub struct Plan {
    pub recipes: Vec<PathBuf>,
    /// One per recipe: file stems, made unique.
    pub labels: Vec<String>,
    pub seeds: u64,
    /// Arguments every run gets after its recipe and run directory (`--steps`, `--set`, …).
    pub run_args: Vec<String>,
    pub out: PathBuf,
    /// The commit of the rlx that runs them, recorded with every run it finishes (a reused
    /// run keeps the commit that made it).
    pub commit: String,
}

impl Plan {
    pub fn new(recipes: Vec<PathBuf>, seeds: u64, run_args: Vec<String>, out: PathBuf) -> Plan {
        let labels = labels(&recipes);
        Plan { recipes, labels, seeds, run_args, out, commit: "unknown".into() }
    }

    pub fn run_dir(&self, label: &str, seed: u64) -> PathBuf {
        self.out.join("runs").join(format!("{label}-s{seed}"))
    }
}

/// Recipe file stems; a stem two recipes share gets its parent directory's name in front, then
/// a number if that is not enough.
pub fn labels(recipes: &[PathBuf]) -> Vec<String> {
    let stem =
        |p: &PathBuf| p.file_stem().map_or("recipe".into(), |s| s.to_string_lossy().into_owned());
    let stems: Vec<String> = recipes.iter().map(stem).collect();
    let mut out: Vec<String> = Vec::with_capacity(recipes.len());
    for (i, p) in recipes.iter().enumerate() {
        let mut label = stems[i].clone();
        if stems.iter().filter(|s| **s == label).count() > 1
            && let Some(parent) = p.parent().and_then(Path::file_name)
        {
            label = format!("{}-{label}", parent.to_string_lossy());
        }
        let base = label.clone();
        let mut n = 2;
        while out.contains(&label) {
            label = format!("{base}-{n}");
            n += 1;
        }
        out.push(label);
    }
    out
}

/// How one run went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished earlier with the same recipe and settings.
    Reused,
    /// Ran (or resumed) to the end now, in this many seconds.
    Ran {
        resumed: bool,
        seconds: f64,
    },
    Failed(String),
}

/// Written into a run directory when its run finished, so a later compare can reuse it.
const DONE: &str = "compare.json";

/// Runs every recipe for every seed (seed-major, so an interrupted compare has whole seeds),
/// calling `progress` before each run and with each outcome.
pub fn execute(
    exe: &Path,
    plan: &Plan,
    progress: &mut dyn FnMut(&str),
) -> Vec<(String, u64, Outcome)> {
    let total = plan.recipes.len() as u64 * plan.seeds;
    let mut outcomes = Vec::new();
    let mut k = 0;
    for seed in 0..plan.seeds {
        for (recipe, label) in plan.recipes.iter().zip(&plan.labels) {
            k += 1;
            progress(&format!("[{k}/{total}] {label} seed {seed}"));
            let outcome = run_one(exe, plan, recipe, label, seed);
            progress(&match &outcome {
                Outcome::Reused => "  finished earlier: reused".to_string(),
                Outcome::Ran { resumed, seconds } => format!(
                    "  {} in {seconds:.0}s",
                    if *resumed { "resumed and finished" } else { "finished" }
                ),
                Outcome::Failed(why) => format!("  failed: {why}"),
            });
            outcomes.push((label.clone(), seed, outcome));
        }
    }
    outcomes
}

fn run_one(exe: &Path, plan: &Plan, recipe: &Path, label: &str, seed: u64) -> Outcome {
    let dir = plan.run_dir(label, seed);
    let text = match std::fs::read_to_string(recipe) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(format!("{}: {e}", recipe.display())),
    };
    let marker = json!({ "recipe": text, "seed": seed, "args": plan.run_args });
    let done = dir.join(DONE);
    if let Ok(old) = std::fs::read_to_string(&done) {
        let mut old: Value = serde_json::from_str(&old).unwrap_or(Value::Null);
        if let Some(o) = old.as_object_mut() {
            o.remove("commit");
        }
        if old == marker {
            return Outcome::Reused;
        }
        return Outcome::Failed(format!(
            "{} holds a run of a different recipe text or settings; remove it or compare into another --out",
            dir.display()
        ));
    }
    let logs = plan.out.join("logs");
    if let Err(e) = std::fs::create_dir_all(&logs) {
        return Outcome::Failed(format!("{}: {e}", logs.display()));
    }
    let log_path = logs.join(format!("{label}-s{seed}.log"));
    let resumed = dir.join("state.json").exists();
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--quiet").arg("--color").arg("never");
    if resumed {
        // `run --resume` checks that the recipe, seed and settings are the ones it began with.
        cmd.arg("--resume").arg(&dir);
    } else {
        cmd.arg(recipe).arg("--out").arg(&dir).arg("--force").arg("--seed").arg(seed.to_string());
    }
    cmd.args(&plan.run_args);
    let log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("{}: {e}", log_path.display())),
    };
    let err = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let started = Instant::now();
    let status = cmd.stdin(Stdio::null()).stdout(log).stderr(err).status();
    let seconds = started.elapsed().as_secs_f64();
    match status {
        Ok(s) if s.success() => match std::fs::write(&done, with_commit(marker, &plan.commit)) {
            Ok(()) => Outcome::Ran { resumed, seconds },
            Err(e) => Outcome::Failed(format!("{}: {e}", done.display())),
        },
        Ok(s) => Outcome::Failed(format!(
            "exit status {}; {}",
            s.code().map_or("killed".into(), |c| c.to_string()),
            last_lines(&log_path, 8)
        )),
        Err(e) => Outcome::Failed(format!("could not start {}: {e}", exe.display())),
    }
}

fn with_commit(mut marker: Value, commit: &str) -> String {
    marker["commit"] = json!(commit);
    marker.to_string()
}

/// How many of the plan's finished runs each commit made (`unknown` for runs finished before
/// runs recorded theirs).
pub fn run_commits(plan: &Plan) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for label in &plan.labels {
        for seed in 0..plan.seeds {
            let Ok(text) = std::fs::read_to_string(plan.run_dir(label, seed).join(DONE)) else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let commit = v["commit"].as_str().unwrap_or("unknown").to_string();
            *out.entry(commit).or_insert(0) += 1;
        }
    }
    out
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    format!("the end of {}:\n```\n{tail}\n```", path.display())
}

/// Reads back every finished run of the plan.
pub fn collect(plan: &Plan, outcomes: &[(String, u64, Outcome)]) -> Vec<RecipeRuns> {
    plan.recipes
        .iter()
        .zip(&plan.labels)
        .map(|(recipe, label)| {
            let mut r = RecipeRuns {
                label: label.clone(),
                recipe: recipe.clone(),
                runs: Vec::new(),
                seeds: Vec::new(),
                failed: Vec::new(),
            };
            for (l, seed, outcome) in outcomes.iter().filter(|(l, _, _)| l == label) {
                debug_assert_eq!(l, label);
                if let Outcome::Failed(why) = outcome {
                    r.failed.push((*seed, why.clone()));
                    continue;
                }
                match read_run(&plan.run_dir(label, *seed)) {
                    Ok(m) => {
                        r.runs.push(m);
                        r.seeds.push(*seed);
                    }
                    Err(e) => r.failed.push((*seed, e)),
                }
            }
            r
        })
        .collect()
}

/// A number with its standard error: over seeds when there are several, else the run's own
/// (over held-out prompts) where it has one.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    mean: f64,
    se: f64,
}

fn estimate(values: &[(f64, Option<f64>)]) -> Option<Estimate> {
    match values {
        [] => None,
        [(v, se)] => Some(Estimate { mean: *v, se: se.unwrap_or(0.0) }),
        _ => {
            let (mean, se) = mean_se(&values.iter().map(|(v, _)| *v).collect::<Vec<_>>());
            Some(Estimate { mean, se })
        }
    }
}

fn fmt(e: Option<Estimate>) -> String {
    match e {
        Some(e) => format!("{:.3} ± {:.3}", e.mean, e.se),
        None => "–".into(),
    }
}

/// One metric of one recipe: before, after, and the change within each seed (after − before).
#[derive(Debug, Clone)]
struct Cell {
    metric: String,
    before: Option<Estimate>,
    after: Option<Estimate>,
    change: Option<Estimate>,
}

/// Per stage name, per recipe: its cells.
type EvalTable = Vec<(String, Vec<(String, Vec<Cell>)>)>;

fn eval_table(recipes: &[RecipeRuns]) -> EvalTable {
    let mut stages: Vec<String> = Vec::new();
    for r in recipes {
        for e in r.runs.iter().flat_map(|m| &m.stage_evals) {
            if !stages.contains(&e.stage) {
                stages.push(e.stage.clone());
            }
        }
    }
    stages
        .into_iter()
        .map(|stage| {
            let rows = recipes
                .iter()
                .filter_map(|r| {
                    let evals: Vec<_> = r
                        .runs
                        .iter()
                        .filter_map(|m| m.stage_evals.iter().find(|e| e.stage == stage))
                        .collect();
                    let first = evals.first()?;
                    let metrics: Vec<String> =
                        first.after.keys().filter(|k| !k.ends_with("_se")).cloned().collect();
                    let pick = |k: &str, after: bool| {
                        let vals: Vec<(f64, Option<f64>)> = evals
                            .iter()
                            .filter_map(|e| {
                                let m = if after { &e.after } else { &e.before };
                                Some((*m.get(k)?, m.get(&format!("{k}_se")).copied()))
                            })
                            .collect();
                        estimate(&vals)
                    };
                    // Paired within each seed: the seeds' different starting points cancel.
                    // One seed's own error treats before and after as independent (an upper
                    // bound: they share the prompts).
                    let change = |k: &str| {
                        let se = |m: &BTreeMap<String, f64>| m.get(&format!("{k}_se")).copied();
                        let vals: Vec<(f64, Option<f64>)> = evals
                            .iter()
                            .filter_map(|e| {
                                let d = e.after.get(k)? - e.before.get(k)?;
                                let s = se(&e.before).zip(se(&e.after)).map(|(b, a)| b.hypot(a));
                                Some((d, s))
                            })
                            .collect();
                        estimate(&vals)
                    };
                    let cells = metrics
                        .iter()
                        .map(|k| Cell {
                            metric: k.clone(),
                            before: pick(k, false),
                            after: pick(k, true),
                            change: change(k),
                        })
                        .collect();
                    Some((r.label.clone(), cells))
                })
                .collect();
            (stage, rows)
        })
        .collect()
}

/// Training metrics worth a column, averaged over each run's last tenth of steps.
const TRAIN_COLUMNS: [&str; 4] = [field::REWARD, field::KL, field::ENTROPY, field::RESPONSE_TOKENS];

fn tail_mean(m: &RunMetrics, metric: &str) -> Option<f64> {
    let s = m.steps.get(metric)?;
    let n = (s.len() / 10).max(1);
    let tail = &s[s.len().saturating_sub(n)..];
    Some(tail.iter().map(|(_, y)| y).sum::<f64>() / tail.len() as f64)
}

/// The metrics `plot.svg` shows: the training reward, the task's metrics that are also logged
/// per step, and the KL, at most four.
pub fn default_plot_metrics(recipes: &[RecipeRuns]) -> Vec<String> {
    let runs: Vec<&RunMetrics> = recipes.iter().flat_map(|r| &r.runs).collect();
    let logged = |k: &str| runs.iter().any(|m| m.steps.contains_key(k));
    let mut out: Vec<String> = Vec::new();
    let first: Vec<String> = [field::REWARD]
        .iter()
        .chain(&super::verdict::HEADLINES)
        .chain(&super::verdict::GUARDS)
        .map(|s| s.to_string())
        .collect();
    let task_metrics = runs.iter().flat_map(|m| m.stage_evals.iter().flat_map(|e| e.after.keys()));
    for k in first.iter().chain(task_metrics).chain(&[field::KL.to_string()]) {
        if !k.ends_with("_se") && logged(k) && !out.contains(k) && out.len() < 4 {
            out.push(k.clone());
        }
    }
    out
}

/// Writes `report.md` and `report.json`; returns the Markdown. `diffs` holds, for every recipe
/// after the first, the `rlx diff` of the first against it.
pub fn write_report(
    plan: &Plan,
    recipes: &[RecipeRuns],
    diffs: &[(String, String)],
    provenance: &super::provenance::Provenance,
    plot: Option<&str>,
) -> Result<String, String> {
    let command = &provenance.command;
    let seeds_word =
        if plan.seeds == 1 { "1 seed".to_string() } else { format!("{} seeds", plan.seeds) };
    let mut md = String::new();
    // The page's title names the recipes: results pages are these files.
    let others: Vec<String> = plan.labels.iter().skip(1).map(|l| format!("`{l}`")).collect();
    md.push_str(&match plan.labels.first() {
        Some(first) if !others.is_empty() => {
            format!("# rlx compare: `{first}` against {}\n\n", others.join(", "))
        }
        Some(first) => format!("# rlx compare: `{first}`\n\n"),
        None => "# rlx compare\n\n".to_string(),
    });
    md.push_str(&format!("Reproduce: `{command}`\n\n"));
    md.push_str(&provenance.markdown());
    md.push('\n');
    md.push_str(&format!(
        "{seeds_word} per recipe (0..{}); every value is a mean ± standard error {}.\n\n",
        plan.seeds.saturating_sub(1),
        if plan.seeds > 1 { "over seeds" } else { "over held-out prompts (one seed)" }
    ));
    let table = eval_table(recipes);
    let mut json_stages = Vec::new();
    for (stage, rows) in &table {
        let metrics: Vec<String> = {
            let mut m: Vec<String> = Vec::new();
            for (_, cells) in rows {
                for c in cells {
                    if !m.contains(&c.metric) {
                        m.push(c.metric.clone());
                    }
                }
            }
            m
        };
        md.push_str(&format!("## Stage `{stage}`: held-out prompts, before → after\n\n"));
        md.push_str(
            "(Δ …): the change within each seed, after − before, as mean ± standard error: the \
             paired effect, free of the spread between the seeds' starting points.\n\n",
        );
        md.push_str(&format!("| recipe | {} |\n", metrics.join(" | ")));
        md.push_str(&format!("|---|{}\n", "---|".repeat(metrics.len())));
        let mut json_rows = Vec::new();
        for (label, cells) in rows {
            let mut line = format!("| {label} |");
            let mut json_cells = serde_json::Map::new();
            for k in &metrics {
                match cells.iter().find(|c| c.metric == *k) {
                    Some(c) => {
                        let delta = c
                            .change
                            .map(|d| format!(" (Δ {:+.3} ± {:.3})", d.mean, d.se))
                            .unwrap_or_default();
                        line.push_str(&format!(
                            " {} → **{}**{delta} |",
                            fmt(c.before),
                            fmt(c.after)
                        ));
                        let pair =
                            |e: &Option<Estimate>| e.map(|e| json!({ "mean": e.mean, "se": e.se }));
                        json_cells.insert(
                            k.clone(),
                            json!({
                                "before": pair(&c.before),
                                "after": pair(&c.after),
                                "change": pair(&c.change),
                            }),
                        );
                    }
                    None => line.push_str(" – |"),
                }
            }
            md.push_str(&line);
            md.push('\n');
            json_rows.push(json!({ "recipe": label, "metrics": json_cells }));
        }
        md.push('\n');
        json_stages.push(json!({ "stage": stage, "rows": json_rows }));
    }

    md.push_str("## Training (mean of each run's last tenth of steps) and cost\n\n");
    let columns: Vec<&str> = TRAIN_COLUMNS
        .into_iter()
        .filter(|c| recipes.iter().flat_map(|r| &r.runs).any(|m| m.steps.contains_key(*c)))
        .collect();
    md.push_str(&format!(
        "| recipe | runs | {} | steps | training (s) | wall (s) |\n",
        columns.join(" | ")
    ));
    md.push_str(&format!("|---|---|{}---|---|---|\n", "---|".repeat(columns.len())));
    let mut json_train = Vec::new();
    for r in recipes {
        let per = |f: &dyn Fn(&RunMetrics) -> Option<f64>| {
            estimate(&r.runs.iter().filter_map(|m| f(m).map(|v| (v, None))).collect::<Vec<_>>())
        };
        let mut line =
            format!("| {} | {}/{} |", r.label, r.runs.len(), r.runs.len() + r.failed.len());
        let mut json_cells = serde_json::Map::new();
        for c in &columns {
            let e = per(&|m| tail_mean(m, c));
            line.push_str(&format!(" {} |", fmt(e)));
            json_cells
                .insert(c.to_string(), json!(e.map(|e| json!({ "mean": e.mean, "se": e.se }))));
        }
        let steps = per(&|m| m.steps.values().map(Vec::len).max().map(|n| n as f64));
        let wall = per(&|m| Some(m.wall));
        // The steps' own time: comparable whether or not a run trained its warm start.
        let training = per(&|m| m.walls.last().map(|(_, t)| *t));
        let secs = |e: Option<Estimate>| {
            e.map_or("–".into(), |w| format!("{:.0} ± {:.0}", w.mean, w.se))
        };
        line.push_str(&format!(
            " {} | {} | {} |\n",
            steps.map_or("–".into(), |s| format!("{:.0}", s.mean)),
            secs(training),
            secs(wall)
        ));
        md.push_str(&line);
        json_train.push(json!({
            "recipe": r.label,
            "path": r.recipe.display().to_string(),
            "runs": r.runs.len(),
            "failed": r.failed.iter().map(|(s, why)| json!({ "seed": s, "why": why })).collect::<Vec<_>>(),
            "metrics": json_cells,
            "wall": wall.map(|w| json!({ "mean": w.mean, "se": w.se })),
            "training_seconds": training.map(|w| json!({ "mean": w.mean, "se": w.se })),
        }));
    }
    md.push('\n');
    let failures: Vec<String> = recipes
        .iter()
        .flat_map(|r| r.failed.iter().map(move |(s, why)| format!("- {} seed {s}: {why}", r.label)))
        .collect();
    if !failures.is_empty() {
        md.push_str("## Failed runs (left out of the tables above)\n\n");
        md.push_str(&failures.join("\n"));
        md.push_str("\n\n");
    }
    md.push_str(&super::paired::markdown(recipes));
    if let Some(plot) = plot {
        md.push_str(&format!("## Curves\n\n![training curves]({plot})\n\n"));
    }
    if !diffs.is_empty() {
        md.push_str("## What differs (`rlx diff`)\n\n");
        for (label, text) in diffs {
            md.push_str(&format!(
                "### {} → {label}\n\n```\n{}\n```\n\n",
                plan.labels[0],
                text.trim_end()
            ));
        }
    }
    let verdict = super::paired::pairs(recipes).map(|(stage, pairs)| {
        let rows: Vec<Value> = pairs
            .iter()
            .map(|p| {
                json!({ "recipe": p.label, "metric": p.metric, "diff": p.diff, "se": p.se,
                        "seeds": p.seeds, "verdict": p.word() })
            })
            .collect();
        json!({ "stage": stage, "against": recipes[0].label, "pairs": rows })
    });
    let report = json!({
        "command": command,
        "provenance": provenance.json(),
        "verdict": verdict,
        "seeds": plan.seeds,
        "stages": json_stages,
        "training": json_train,
    });
    let write = |name: &str, body: &str| {
        let path = plan.out.join(name);
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("report.md", &md)?;
    write("report.json", &format!("{report:#}\n"))?;
    Ok(md)
}

/// A recipe's label and, per metric, the before and after means.
pub type Headline = (String, BTreeMap<String, (f64, f64)>);

/// Per recipe, the last stage's metrics before and after: one line each on the terminal.
pub fn headline(recipes: &[RecipeRuns]) -> Vec<Headline> {
    let table = eval_table(recipes);
    let Some((_, rows)) = table.last() else { return Vec::new() };
    rows.iter()
        .map(|(label, cells)| {
            let m = cells
                .iter()
                .filter_map(|c| Some((c.metric.clone(), (c.before?.mean, c.after?.mean))))
                .collect();
            (label.clone(), m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_readable() {
        let l = labels(&[
            "recipes/grpo.rlx".into(),
            "recipes/peers/grpo.rlx".into(),
            "recipes/ppo.rlx".into(),
            "recipes/ppo.rlx".into(),
        ]);
        assert_eq!(l, ["recipes-grpo", "peers-grpo", "recipes-ppo", "recipes-ppo-2"]);
    }

    #[test]
    fn one_seed_keeps_the_runs_own_standard_error_and_several_use_the_spread() {
        let one = estimate(&[(0.5, Some(0.02))]).unwrap();
        assert_eq!((one.mean, one.se), (0.5, 0.02));
        let three = estimate(&[(0.4, Some(0.02)), (0.5, None), (0.6, Some(0.01))]).unwrap();
        assert!((three.mean - 0.5).abs() < 1e-12);
        // sd 0.1 over 3 seeds → se 0.1/√3.
        assert!((three.se - 0.1 / 3f64.sqrt()).abs() < 1e-12);
    }

    fn run_with(before: f64, after: f64) -> RunMetrics {
        let eval = super::super::curves::StageEval {
            stage: "rl".into(),
            before: [("accuracy".to_string(), before), ("accuracy_se".to_string(), 0.03)].into(),
            after: [("accuracy".to_string(), after), ("accuracy_se".to_string(), 0.04)].into(),
        };
        RunMetrics { stage_evals: vec![eval], ..RunMetrics::default() }
    }

    #[test]
    fn the_change_is_paired_within_seeds() {
        // Starting points 0.2 and 0.4 differ a lot; each seed gains 0.10 or 0.12.
        let r = RecipeRuns {
            label: "a".into(),
            runs: vec![run_with(0.2, 0.3), run_with(0.4, 0.52)],
            ..RecipeRuns::default()
        };
        let table = eval_table(&[r]);
        let cell = &table[0].1[0].1[0];
        let (b, a, d) = (cell.before.unwrap(), cell.after.unwrap(), cell.change.unwrap());
        assert!((b.se - 0.1).abs() < 1e-9 && (a.se - 0.11).abs() < 1e-9);
        assert!((d.mean - 0.11).abs() < 1e-9 && (d.se - 0.01).abs() < 1e-9, "{d:?}");
        // One seed: its own errors, combined.
        let one = RecipeRuns {
            label: "a".into(),
            runs: vec![run_with(0.2, 0.3)],
            ..RecipeRuns::default()
        };
        let d = eval_table(&[one])[0].1[0].1[0].change.unwrap();
        assert!((d.mean - 0.1).abs() < 1e-9 && (d.se - 0.05).abs() < 1e-9, "{d:?}");
    }
}
