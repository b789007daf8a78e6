//! `clip_fraction`: the share of response tokens whose probability ratio lies outside a
//! PPO-clipped term's own interval [1 − eps, 1 + eps_high], read from that term's resolved
//! parameters (`ppo_clip`, `clip_cov`) — one metric per distinct interval.
//!
//! It counts the tokens outside the interval whatever the advantage's sign (what a reader
//! compares with the recipe's `eps`); verl's `pg_clipfrac` counts only those where the clip
//! binds (the clipped branch is the larger loss).

use candle_core::{DType, Tensor};

use super::masked_mean;
use crate::check::Checked;
use crate::exec::source_name;
use crate::ir::graph::{Op, inputs};
use crate::train::metrics::field;

/// A clipped term the metric follows: where its log-ratios come from, and its interval.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClipTerm {
    /// The metric's name: `clip_fraction`, or `clip_fraction.N` when terms clip differently.
    pub metric: String,
    /// Batch names of the term's current and old log-probabilities.
    pub logp: String,
    pub old: String,
    pub low: f64,
    pub high: f64,
}

/// Blocks whose clip is PPO's ratio interval.
const RATIO_CLIPPED: &[&str] = &["ppo_clip", "clip_cov"];

/// The clipped terms of stage `index` on response log-probabilities, one per distinct interval.
pub(super) fn clip_terms(checked: &Checked, index: usize) -> Vec<ClipTerm> {
    let stage = &checked.program.stages[index];
    let g = &stage.graph;
    let mut terms: Vec<ClipTerm> = Vec::new();
    for n in g.node_indices() {
        let Op::Block { spec, .. } = &g[n].op else { continue };
        if !RATIO_CLIPPED.contains(&spec.name) {
            continue;
        }
        let resolved = checked.stages[index].params.get(&n).map(Vec::as_slice).unwrap_or(&[]);
        let num = |name| crate::check::params::get_num(resolved, name);
        let ins = inputs(g, n);
        let (Some(logp), Some(old), Some(eps), Some(eps_high)) = (
            ins.first().and_then(|i| source_name(stage, *i)),
            ins.get(1).and_then(|i| source_name(stage, *i)),
            num("eps"),
            num("eps_high"),
        ) else {
            continue;
        };
        // Only response log-probabilities share the batch's `mask`.
        if logp.contains('(') || old.contains('(') {
            continue;
        }
        let term =
            ClipTerm { metric: String::new(), logp, old, low: 1.0 - eps, high: 1.0 + eps_high };
        if !terms.iter().any(|t| (t.low, t.high) == (term.low, term.high)) {
            terms.push(term);
        }
    }
    let several = terms.len() > 1;
    for (i, t) in terms.iter_mut().enumerate() {
        t.metric = if several {
            format!("{}.{}", field::CLIP_FRACTION, i + 1)
        } else {
            field::CLIP_FRACTION.into()
        };
    }
    terms
}

/// The term's share of masked tokens with a ratio outside its interval, on one minibatch.
pub(super) fn fraction(term: &ClipTerm, logp: &Tensor, old: &Tensor, mask: &Tensor) -> f64 {
    let outside = (logp - old).and_then(|d| d.exp()).and_then(|r| {
        let below = r.lt(term.low)?.to_dtype(DType::F32)?;
        let above = r.gt(term.high)?.to_dtype(DType::F32)?;
        below + above
    });
    outside.map(|c| masked_mean(&c, mask)).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::lints::LintConfig;
    use crate::source::{SourceFile, analyze};

    fn terms_of(loss: &str) -> Vec<ClipTerm> {
        let text = std::fs::read_to_string("recipes/grpo.rlx").unwrap().replace(
            "seq_mean_token_mean(ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.2) + 0.04 * kl)",
            loss,
        );
        let a = analyze(&SourceFile::new("t.rlx", text), &LintConfig::defaults());
        clip_terms(a.checked.as_ref().unwrap(), 0)
    }

    #[test]
    fn the_interval_is_the_recipes_own() {
        let dapo =
            "token_mean(ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.3, eps_high = 0.28))";
        let t = terms_of(dapo);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].metric.as_str(), t[0].logp.as_str(), t[0].old.as_str()),
            ("clip_fraction", "policy.logp", "old.logp")
        );
        assert!((t[0].low - 0.7).abs() < 1e-12 && (t[0].high - 1.28).abs() < 1e-12);
        // Ratios 0.75 and 1.25 lie inside [0.7, 1.28]; 0.65 and 1.3 outside: a fixed 0.2 would
        // have counted all four.
        let ratios = [0.75f32, 1.25, 0.65, 1.3];
        let logp = Tensor::new(&[ratios.map(f32::ln)], &candle_core::Device::Cpu).unwrap();
        let old = logp.zeros_like().unwrap();
        let mask = logp.ones_like().unwrap();
        assert!((fraction(&t[0], &logp, &old, &mask) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn no_clipped_term_no_metric_and_distinct_intervals_each_their_own() {
        assert!(terms_of("token_mean(pg(policy.logp, spread(adv)))").is_empty());
        let two = "token_mean(ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.2) + ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.1))";
        let names: Vec<String> = terms_of(two).into_iter().map(|t| t.metric).collect();
        assert_eq!(names, ["clip_fraction.1", "clip_fraction.2"]);
    }
}
