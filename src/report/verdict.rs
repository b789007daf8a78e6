//! The one line `rlx run` ends with: did the run do what the method promises? The task's
//! headline metric and its guard (text quality on `reviews`) before → after, each judged against
//! two standard errors of the difference, and the training reward from the first tenth of the
//! steps to the last — beside the demonstrations' score where the recipe binds one (`demo`).

use super::curves::{RunMetrics, StageEval};
use crate::train::metrics::field;

/// Held-out metrics worth a verdict, most important first: what the task is solved by, then
/// what over-optimisation destroys.
pub const HEADLINES: [&str; 2] = ["accuracy", "gold"];
pub const GUARDS: [&str; 1] = ["naturalness"];

/// `rose`, `fell` or `no clear change`: whether `after - before` exceeds two standard errors of
/// the difference (the two evaluations' errors, taken as independent).
pub fn judge(e: &StageEval, metric: &str) -> Option<(f64, f64, &'static str)> {
    let (b, a) = (*e.before.get(metric)?, *e.after.get(metric)?);
    let se = |m: &std::collections::BTreeMap<String, f64>| {
        m.get(&format!("{metric}_se")).copied().unwrap_or(0.0)
    };
    let band = 2.0 * (se(&e.before).powi(2) + se(&e.after).powi(2)).sqrt();
    let word = if a - b > band {
        "rose"
    } else if b - a > band {
        "fell"
    } else {
        "no clear change"
    };
    Some((b, a, word))
}

fn tenth_means(xs: &[(f64, f64)]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = (xs.len() / 10).max(1);
    let mean = |s: &[(f64, f64)]| s.iter().map(|(_, y)| y).sum::<f64>() / s.len() as f64;
    Some((mean(&xs[..n]), mean(&xs[xs.len() - n..])))
}

/// The verdict on a finished run, from its last evaluated stage; `None` when it has none.
pub fn line(run: &RunMetrics) -> Option<String> {
    let e = run.last_judged()?;
    let mut parts = Vec::new();
    for m in HEADLINES.iter().chain(&GUARDS) {
        if let Some((b, a, word)) = judge(e, m) {
            parts.push(format!("{m} {b:.3} → {a:.3} ({word})"));
        }
    }
    if parts.is_empty() {
        let m = e.after.keys().find(|k| !k.ends_with("_se") && !k.starts_with("demo_"))?;
        let (b, a, word) = judge(e, m)?;
        parts.push(format!("{m} {b:.3} → {a:.3} ({word})"));
    }
    if let Some((first, last)) = run.steps.get(field::REWARD).and_then(|s| tenth_means(s)) {
        parts.push(format!("training reward {first:.3} → {last:.3}"));
    }
    if let Some((_, last)) = run.steps.get("demo.mean").and_then(|s| tenth_means(s)) {
        parts.push(format!("demonstrations' reward {last:.3}"));
    }
    if let Some(g) = e.after.get("demo_gold") {
        parts.push(format!("demonstrations' gold {g:.3}"));
    }
    Some(format!("stage `{}`: {}", e.stage, parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_only_beyond_two_standard_errors() {
        let eval = |b: f64, a: f64, se: f64| StageEval {
            stage: "rl".into(),
            before: [("gold".to_string(), b), ("gold_se".to_string(), se)].into_iter().collect(),
            after: [("gold".to_string(), a), ("gold_se".to_string(), se)].into_iter().collect(),
        };
        // 2·√(2·0.02²) ≈ 0.057.
        assert_eq!(judge(&eval(0.1, 0.2, 0.02), "gold").unwrap().2, "rose");
        assert_eq!(judge(&eval(0.1, 0.15, 0.02), "gold").unwrap().2, "no clear change");
        assert_eq!(judge(&eval(0.5, 0.3, 0.02), "gold").unwrap().2, "fell");
        let run = RunMetrics {
            steps: [("reward".to_string(), (0..20).map(|i| (i as f64, i as f64)).collect())]
                .into_iter()
                .collect(),
            stage_evals: vec![eval(0.1, 0.2, 0.02)],
            ..Default::default()
        };
        assert_eq!(
            line(&run).unwrap(),
            "stage `rl`: gold 0.100 → 0.200 (rose); training reward 0.500 → 18.500"
        );
    }
}
