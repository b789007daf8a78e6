//! Curves from run directories: every `metrics.jsonl` field against the step, runs of one
//! recipe that differ only by seed (`NAME-sN`) gathered into a mean with a standard-error band,
//! and the held-out evaluations as points.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::train::metrics::field;
use serde_json::Value;

/// One run's metrics: per field, `(step, value)`; evaluations as `(step, name, value)`.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    pub label: String,
    pub steps: BTreeMap<String, Vec<(f64, f64)>>,
    pub evals: Vec<(f64, String, f64)>,
    /// Seconds the whole run took (its last `wall`).
    pub wall: f64,
    /// Each stage's held-out evaluations, in stage order.
    pub stage_evals: Vec<StageEval>,
    /// `(step, seconds)`: the steps' own time summed up to each step (`seconds` per step;
    /// warm starts and evaluations excluded, so a run that trained its warm start and one that
    /// found it cached line up).
    pub walls: Vec<(f64, f64)>,
}

impl RunMetrics {
    /// The last stage evaluated both before and after: what a run's verdict judges.
    pub fn last_judged(&self) -> Option<&StageEval> {
        self.stage_evals.iter().rev().find(|e| !e.before.is_empty() && !e.after.is_empty())
    }

    /// The same run against seconds instead of steps (an evaluation at the wall time of the
    /// step before it; 0 before any step).
    pub fn against_wall(&self) -> RunMetrics {
        let wall_at = |x: f64| {
            let i = self.walls.partition_point(|(s, _)| *s <= x);
            if i == 0 { 0.0 } else { self.walls[i - 1].1 }
        };
        RunMetrics {
            steps: self
                .steps
                .iter()
                .map(|(k, s)| (k.clone(), s.iter().map(|(x, y)| (wall_at(*x), *y)).collect()))
                .collect(),
            evals: self.evals.iter().map(|(x, n, y)| (wall_at(*x), n.clone(), *y)).collect(),
            ..self.clone()
        }
    }
}

/// A stage's held-out evaluation before and after its training, by metric name (`NAME_se`
/// entries are the standard errors over prompts).
#[derive(Debug, Clone, Default)]
pub struct StageEval {
    pub stage: String,
    pub before: BTreeMap<String, f64>,
    pub after: BTreeMap<String, f64>,
}

/// A run directory's `metrics.jsonl`. The step axis counts steps across stages, so a later
/// stage continues where the earlier one ended.
pub fn read_run(dir: &Path) -> Result<RunMetrics, String> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = RunMetrics { label: label_of(dir), ..Default::default() };
    let mut x = 0.0;
    let mut spent = 0.0;
    for (i, line) in text.lines().enumerate() {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        let Some(obj) = v.as_object() else { continue };
        if let Some(when) = obj.get(field::EVAL).and_then(Value::as_str) {
            let stage = obj.get(field::STAGE).and_then(Value::as_str).unwrap_or_default();
            if out.stage_evals.last().is_none_or(|e| e.stage != stage) {
                out.stage_evals.push(StageEval { stage: stage.to_string(), ..Default::default() });
            }
            let into = out.stage_evals.last_mut().expect("pushed above");
            for (k, val) in obj {
                if let (Some(name), Some(y)) = (k.strip_prefix(field::EVAL_PREFIX), val.as_f64()) {
                    out.evals.push((x, name.to_string(), y));
                    let map =
                        if when == field::BEFORE { &mut into.before } else { &mut into.after };
                    map.insert(name.to_string(), y);
                }
            }
            continue;
        }
        x += 1.0;
        for (k, val) in obj {
            if let Some(y) = val.as_f64().filter(|y| y.is_finite()) {
                out.steps.entry(k.clone()).or_default().push((x, y));
            }
        }
        if let Some(w) = obj.get(field::WALL).and_then(Value::as_f64) {
            out.wall = w;
        }
        if let Some(secs) = obj.get(field::SECONDS).and_then(Value::as_f64) {
            spent += secs;
            out.walls.push((x, spent));
        }
    }
    Ok(out)
}

/// A run's label: its directory name without a `-sN` seed suffix.
pub fn label_of(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    match name.rsplit_once("-s") {
        Some((base, seed)) if !seed.is_empty() && seed.chars().all(|c| c.is_ascii_digit()) => {
            base.to_string()
        }
        _ => name,
    }
}

/// Runs of one label, in the order labels first appear.
pub fn group(runs: Vec<RunMetrics>) -> Vec<(String, Vec<RunMetrics>)> {
    let mut out: Vec<(String, Vec<RunMetrics>)> = Vec::new();
    for r in runs {
        match out.iter_mut().find(|(l, _)| *l == r.label) {
            Some((_, v)) => v.push(r),
            None => out.push((r.label.clone(), vec![r])),
        }
    }
    out
}

/// Points `(x, mean, standard error)`.
pub type Curve = Vec<(f64, f64, f64)>;

/// A curve over the runs of a group, at the steps all of them have, after a trailing moving
/// average of `smooth` steps.
pub fn mean_curve(runs: &[RunMetrics], metric: &str, smooth: usize) -> Curve {
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .filter_map(|r| r.steps.get(metric))
        .map(|s| moving_average(s, smooth.max(1)))
        .collect();
    let Some(shortest) = series.iter().map(Vec::len).min() else { return Vec::new() };
    (0..shortest)
        .map(|i| {
            let ys: Vec<f64> = series.iter().map(|s| s[i].1).collect();
            let (mean, se) = mean_se(&ys);
            // Seeds share steps; on a wall-time axis their x differ, so take the mean.
            let x = series.iter().map(|s| s[i].0).sum::<f64>() / series.len() as f64;
            (x, mean, se)
        })
        .collect()
}

/// Mean and standard error of the mean.
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn moving_average(s: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(s.len());
    let mut sum = 0.0;
    for i in 0..s.len() {
        sum += s[i].1;
        if i >= w {
            sum -= s[i - w].1;
        }
        out.push((s[i].0, sum / (i + 1).min(w) as f64));
    }
    out
}

/// Run directories named on the command line, or found one level below (a compare directory's
/// `runs/`).
pub fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.join("metrics.jsonl").exists() {
            out.push(p.clone());
        } else if let Ok(entries) = std::fs::read_dir(p) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|d| d.join("metrics.jsonl").exists())
                .collect();
            found.sort();
            out.extend(found);
        }
    }
    out
}

/// One recipe's finished runs.
#[derive(Default)]
pub struct RecipeRuns {
    pub label: String,
    pub recipe: std::path::PathBuf,
    pub runs: Vec<RunMetrics>,
    /// The seed of each of `runs`.
    pub seeds: Vec<u64>,
    pub failed: Vec<(u64, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_group_into_a_mean_with_a_standard_error() {
        assert_eq!(label_of(Path::new("x/grpo-s2")), "grpo");
        assert_eq!(label_of(Path::new("x/dpo-sigmoid")), "dpo-sigmoid");
        let run = |label: &str, ys: &[f64]| RunMetrics {
            label: label.into(),
            steps: [(
                "loss".to_string(),
                ys.iter().enumerate().map(|(i, y)| (i as f64 + 1.0, *y)).collect(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let groups =
            group(vec![run("a", &[1.0, 3.0]), run("b", &[0.0]), run("a", &[3.0, 5.0, 7.0])]);
        assert_eq!(groups.len(), 2);
        let curve = mean_curve(&groups[0].1, "loss", 1);
        assert_eq!(curve.len(), 2);
        assert_eq!((curve[0].1, curve[0].2), (2.0, 1.0));
        // A 2-step moving average: [1, 2] and [3, 4] → means 1.5 and 3... at step 2.
        let smoothed = mean_curve(&groups[0].1, "loss", 2);
        assert_eq!(smoothed[1].1, 3.0);
    }
}
