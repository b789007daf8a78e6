//! A compare page's verdict: every recipe against the first on the task's headline metric and
//! its guard, paired within seeds. A seed's warm start is shared by every recipe of that seed,
//! so the difference of two recipes' changes (after − before) within one seed removes the
//! seeds' different starting points; the verdict is that difference's mean ± standard error
//! over seeds, judged at two standard errors.

use std::collections::BTreeMap;

use super::curves::{RecipeRuns, StageEval, mean_se};
use super::verdict::{GUARDS, HEADLINES};

/// One recipe against the first on one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub label: String,
    pub metric: String,
    /// Mean over seeds of (this recipe's change − the first's change).
    pub diff: f64,
    /// Its standard error over seeds; `None` with a single shared seed.
    pub se: Option<f64>,
    pub seeds: usize,
}

impl Pair {
    pub fn word(&self) -> &'static str {
        match self.se {
            Some(se) if self.diff > 2.0 * se => "higher",
            Some(se) if -self.diff > 2.0 * se => "lower",
            Some(_) => "no clear difference",
            None => "one seed: not judged",
        }
    }

    /// The verdict as a phrase about the first recipe, `base`.
    pub fn phrase(&self, base: &str) -> String {
        match self.word() {
            w @ ("higher" | "lower") => format!("{w} than `{base}`"),
            "no clear difference" => format!("no clear difference from `{base}`"),
            w => w.to_string(),
        }
    }
}

fn change(e: &StageEval, metric: &str) -> Option<f64> {
    Some(e.after.get(metric)? - e.before.get(metric)?)
}

/// Per seed, one recipe's change of `metric` in `stage`.
fn changes(r: &RecipeRuns, stage: &str, metric: &str) -> BTreeMap<u64, f64> {
    r.runs
        .iter()
        .zip(&r.seeds)
        .filter_map(|(m, seed)| {
            let e = m.stage_evals.iter().find(|e| e.stage == stage)?;
            Some((*seed, change(e, metric)?))
        })
        .collect()
}

/// The stage judged and, for every later recipe and every headline or guard metric the first
/// recipe has, the paired difference against the first.
pub fn pairs(recipes: &[RecipeRuns]) -> Option<(String, Vec<Pair>)> {
    // The stage the first recipe's first run is judged on (as `rlx run`'s own verdict).
    let stage = recipes.first()?.runs.first()?.last_judged()?.stage.clone();
    let base = &recipes[0];
    let mut out = Vec::new();
    for metric in HEADLINES.iter().chain(&GUARDS) {
        let base_changes = changes(base, &stage, metric);
        if base_changes.is_empty() {
            continue;
        }
        for r in &recipes[1..] {
            let diffs: Vec<f64> = changes(r, &stage, metric)
                .iter()
                .filter_map(|(seed, d)| Some(d - base_changes.get(seed)?))
                .collect();
            if diffs.is_empty() {
                continue;
            }
            let (diff, se) = mean_se(&diffs);
            out.push(Pair {
                label: r.label.clone(),
                metric: metric.to_string(),
                diff,
                se: (diffs.len() > 1).then_some(se),
                seeds: diffs.len(),
            });
        }
    }
    Some((stage, out))
}

/// The `## Verdict` section; empty when there is nothing to compare.
pub fn markdown(recipes: &[RecipeRuns]) -> String {
    let Some((stage, pairs)) = pairs(recipes) else { return String::new() };
    if pairs.is_empty() {
        return String::new();
    }
    let base = &recipes[0].label;
    let mut md = format!(
        "## Verdict\n\nEach recipe against `{base}` on stage `{stage}`'s held-out metrics: the \
         difference of the two changes (after − before) within each seed, mean ± standard error \
         over seeds, judged at two standard errors.\n\n"
    );
    md.push_str(&format!("| recipe | metric | Δ − Δ of `{base}` | seeds | verdict |\n"));
    md.push_str("|---|---|---|---|---|\n");
    for p in &pairs {
        let se = p.se.map_or("–".to_string(), |s| format!("{s:.3}"));
        md.push_str(&format!(
            "| `{}` | {} | {:+.3} ± {se} | {} | {} |\n",
            p.label,
            p.metric,
            p.diff,
            p.seeds,
            p.phrase(base)
        ));
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::curves::RunMetrics;

    fn run(before: f64, after: f64) -> RunMetrics {
        let eval = StageEval {
            stage: "rl".into(),
            before: [("accuracy".to_string(), before)].into(),
            after: [("accuracy".to_string(), after)].into(),
        };
        RunMetrics { stage_evals: vec![eval], ..RunMetrics::default() }
    }

    fn recipe(label: &str, seeds: &[u64], runs: Vec<RunMetrics>) -> RecipeRuns {
        RecipeRuns { label: label.into(), runs, seeds: seeds.to_vec(), ..RecipeRuns::default() }
    }

    #[test]
    fn differences_are_paired_by_seed_and_judged_at_two_standard_errors() {
        // Seeds start at 0.2 and 0.4; `b` gains 0.05 and 0.07 more than `a` in the same seed.
        let a = recipe("a", &[0, 1], vec![run(0.2, 0.25), run(0.4, 0.41)]);
        let b = recipe("b", &[1, 0], vec![run(0.4, 0.48), run(0.2, 0.30)]);
        let (stage, p) = pairs(&[a, b]).unwrap();
        assert_eq!(stage, "rl");
        assert_eq!(p.len(), 1);
        assert!((p[0].diff - 0.06).abs() < 1e-12, "{p:?}");
        assert!((p[0].se.unwrap() - 0.01).abs() < 1e-12, "{p:?}");
        assert_eq!(p[0].word(), "higher");
        // A seed only one recipe finished is left out of the pairing.
        let a = recipe("a", &[0, 1], vec![run(0.2, 0.25), run(0.4, 0.41)]);
        let c = recipe("c", &[0], vec![run(0.2, 0.22)]);
        let (_, p) = pairs(&[a, c]).unwrap();
        assert_eq!((p[0].seeds, p[0].se, p[0].word()), (1, None, "one seed: not judged"));
        // Within noise.
        let a = recipe("a", &[0, 1], vec![run(0.2, 0.25), run(0.4, 0.45)]);
        let d = recipe("d", &[0, 1], vec![run(0.2, 0.20), run(0.4, 0.50)]);
        let (_, p) = pairs(&[a, d]).unwrap();
        assert_eq!(p[0].word(), "no clear difference");
        assert!(markdown(&[recipe("a", &[0], vec![run(0.2, 0.3)])]).is_empty());
    }
}
