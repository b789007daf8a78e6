//! The reward, in the place verl computes it: the reward function's score of each response
//! (verifier components), and a KL penalty folded into the token rewards.

use std::collections::HashSet;

use petgraph::stable_graph::NodeIndex;

use super::{KlUse, Planner};
use crate::blocks::spec::Level;
use crate::check::params::Value;
use crate::diag::Diagnostic;
use crate::export::verl::python::{self, Component};
use crate::ir::graph::*;

impl Planner<'_> {
    /// The reward the advantage starts from: the one node below `adv` that is a function of
    /// scores and the reward KL only.
    pub(super) fn reward_root(&mut self, adv: NodeIndex) -> Option<NodeIndex> {
        let mut roots = vec![];
        let mut seen = HashSet::new();
        let mut stack = vec![adv];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            if self.reward_like(n) && !matches!(self.g()[n].op, Op::Const(_)) {
                if !roots.contains(&n) {
                    roots.push(n);
                }
                continue;
            }
            stack.extend(self.ins(n));
        }
        match roots.as_slice() {
            [r] => Some(*r),
            [] => {
                let span = self.g()[adv].span;
                self.err("verl-reward", span, "the advantage reads no reward: verl's estimator starts from the reward function's scores".into(), "no reward", "compute the advantage from a verifier's or reward model's score");
                None
            }
            [a, b, ..] => {
                let (sa, sb) = (self.g()[*a].span, self.g()[*b].span);
                self.diags.push(
                    Diagnostic::error("verl-reward", "verl's estimator receives one token reward tensor; this advantage reads two rewards")
                        .primary(sb, "a second reward")
                        .secondary(sa, "the first")
                        .help("combine the rewards into one `let r = ...` and compute the advantage from it"),
                );
                None
            }
        }
    }

    /// A function of scores, constants and KL(old ‖ ref) only, through maths, `at_end` and
    /// `sum_tokens`.
    pub(super) fn reward_like(&self, n: NodeIndex) -> bool {
        match &self.g()[n].op {
            Op::Const(_) | Op::Score(_) => true,
            Op::Block { .. } if self.kl_of(n, &ModelRef::Old).is_some() => true,
            Op::Block { spec, .. } => {
                use crate::blocks::spec::Family;
                let shaping = matches!(spec.family, Family::Maths | Family::Shaping)
                    && spec.name != "spread"
                    || spec.name == "sum_tokens";
                shaping && self.ins(n).into_iter().all(|i| self.reward_like(i))
            }
            _ => false,
        }
    }

    /// `kl(M.logp, ref.logp)` (optionally clamped as verl clamps k3) as verl's KL type, or the
    /// diagnostics why verl's differs. None: not a KL of `M`.
    pub(super) fn kl_of(&self, n: NodeIndex, model: &ModelRef) -> Option<Result<String, ()>> {
        let (kl, outer_clamp) = match self.block(n) {
            Some("kl") => (n, None),
            Some("clamp") if self.block(self.ins(n)[0]) == Some("kl") => {
                let lo = self.param(n, "lo").and_then(Value::num);
                let hi = self.param(n, "hi").and_then(Value::num);
                (self.ins(n)[0], Some((lo, hi)))
            }
            _ => return None,
        };
        let ins = self.ins(kl);
        if !self.is_signal(ins[0], model, Signal::Logp)
            || !self.is_signal(ins[1], &ModelRef::Ref, Signal::Logp)
        {
            return None;
        }
        let est = self.param(kl, "estimator").map(|v| v.display()).unwrap_or_default();
        let base = match est.as_str() {
            "k1" => "k1",
            "k2" | "mse" => "k2",
            "k3" => "low_var_kl",
            "abs" => "abs",
            _ => return Some(Err(())),
        };
        let clamp = self.param(kl, "clamp").and_then(Value::num);
        // verl clamps only k3, into [-10, 10]; k3 ≥ 0, so a lower bound ≤ 0 changes nothing.
        let effective_hi = match (clamp, outer_clamp) {
            (c, None) => c,
            (None, Some((lo, hi))) if lo.is_none_or(|l| l <= 0.0) => hi,
            _ => Some(f64::NAN),
        };
        let matches_verl = match base {
            "low_var_kl" => effective_hi.is_none() || effective_hi == Some(10.0),
            _ => effective_hi.is_none() && outer_clamp.is_none(),
        };
        if !matches_verl {
            return Some(Err(()));
        }
        let straight = self.param(kl, "gradient").map(|v| v.display()).as_deref() == Some("k2");
        let kind = if straight && base != "k2" {
            format!("{}+", if base == "low_var_kl" { "k3" } else { base })
        } else {
            base.to_string()
        };
        Some(Ok(kind))
    }

    /// The reward as verl forms it: a score placed on the last token, minus β·KL(old ‖ ref).
    pub(super) fn reward(
        &mut self,
        root: NodeIndex,
    ) -> Option<(String, Vec<Component>, Option<KlUse>)> {
        let level = self.level(root).unwrap_or(Level::Seq);
        let mut terms = vec![];
        self.linear(root, 1.0, &mut terms);
        let mut em = python::Emitter::new(self.checked, self.stage, self.cs);
        em.score_mode = true;
        let mut score_parts = vec![];
        let mut kl: Option<KlUse> = None;
        for (c, t) in terms {
            let (kl_node, seq_sum) = match self.block(t) {
                Some("sum_tokens") => (self.ins(t)[0], true),
                _ => (t, false),
            };
            if let Some(kind) = self.kl_of(kl_node, &ModelRef::Old) {
                let span = self.g()[t].span;
                let fits = (level == Level::Seq) == seq_sum;
                if !fits {
                    self.err("verl-reward", span, "verl folds the KL into each token's reward, and a per-sequence reward is their sum: KL summed over tokens (`sum_tokens`) in a sequence reward, per token in a token reward".into(), "KL at a level verl does not fold", "use sum_tokens(kl(old.logp, ref.logp)) in a sequence reward, or kl(...) with at_end(score) in a token reward");
                    return None;
                }
                let Ok(kind) = kind else {
                    self.kl_mismatch(kl_node);
                    return None;
                };
                if kl.is_some() {
                    self.err(
                        "verl-reward",
                        span,
                        "verl folds one KL into the reward; this reward has two".into(),
                        "a second KL",
                        "merge the KL terms",
                    );
                    return None;
                }
                self.warn_k3_clamp(kl_node);
                kl = Some(KlUse { coef: -c, kind });
                continue;
            }
            let s = match (level, self.block(t)) {
                (Level::Token, Some("at_end")) => self.ins(t)[0],
                (Level::Token, _) => {
                    let span = self.g()[t].span;
                    self.err("verl-reward", span, "verl's reward function gives one score per response, placed on its last token; this token reward is not of that form".into(), "a token reward verl cannot express", "place sequence scores with at_end(...); other token rewards stay in rlx");
                    return None;
                }
                _ => t,
            };
            let v = em.emit(s, &mut self.diags);
            score_parts.push(python::scaled(c, &v));
        }
        for signal in em.stray_signals.clone() {
            let span = self.g()[signal].span;
            let label = self.g()[signal].op.label();
            self.err(
                "verl-reward",
                span,
                format!("verl's reward function sees the response text, not `{label}`"),
                "not available to verl's reward function",
                "compute the reward from verifiers of the response",
            );
        }
        for (scorer, span) in em.model_scores.clone() {
            self.err("verl-reward", span, format!("`{scorer}` is a reward model: verl's custom reward function scores text without a model, and its reward-model worker gives the score alone, not inside an expression"), "a reward model's score", "score with a verifier (e.g. arith.correct), or keep this recipe in rlx");
        }
        for (name, span) in em.unverifiable.clone() {
            self.err("verl-reward", span, format!("`{name}` has no verl reward function: only the built-in `arith` verifier and `jsonl` answers (gsm8k, boxed, exact) are ported"), "no Python verifier", "use a data set whose verifier is ported");
        }
        if score_parts.is_empty() {
            score_parts.push("0.0".into());
        }
        Some((score_parts.join(" + "), em.components.clone(), kl))
    }

    pub(super) fn kl_mismatch(&mut self, kl: NodeIndex) {
        let span = self.g()[kl].span;
        self.err("verl-kl", span, "verl's KL penalty clamps only k3 (`low_var_kl`), into [-10, 10], and has no other clamp or estimator".into(), "a KL verl computes differently", "drop the clamp (k1, k2, abs) or clamp k3 at 10");
    }

    pub(super) fn warn_k3_clamp(&mut self, kl: NodeIndex) {
        if self.block(kl) == Some("clamp") {
            // kl_of accepted the outer clamp: its upper bound is verl's 10.
            return;
        }
        let est = self.param(kl, "estimator").map(|v| v.display());
        let clamp = self.param(kl, "clamp").and_then(Value::num);
        if est.as_deref() == Some("k3") && clamp.is_none() {
            let span = self.g()[kl].span;
            self.diags.push(
                Diagnostic::warning("verl-kl-clamp", "verl clamps the k3 estimate into [-10, 10]; this recipe does not clamp it")
                    .primary(span, "unclamped k3")
                    .help("the export equals the recipe wherever k3 ≤ 10 (|log-ratio| below about 2.5 nats); add `clamp = 10` to make them equal everywhere"),
            );
        }
    }
}
