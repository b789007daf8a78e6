//! The loss, in the place verl computes it: the terms of Σ c·aggregate(token term) sorted into
//! the policy loss (one function of log-probs, old log-probs and one advantage tensor), the KL
//! loss and the critic's value loss; then the whole plan assembled.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use super::{AggMode, Estimator, KlUse, Plan, Planner};
use crate::blocks::spec::Level;
use crate::diag::Diagnostic;
use crate::export::verl::python::{self, Line};
use crate::ir::graph::*;

/// The loss's terms by where verl computes them: (coefficient, aggregation, token term, its
/// aggregate node).
struct Terms {
    kl_loss: Option<(KlUse, AggMode, NodeIndex)>,
    critic_term: Option<(f64, AggMode, NodeIndex)>,
    policy_terms: Vec<(f64, AggMode, NodeIndex, NodeIndex)>,
}

impl Planner<'_> {
    pub(super) fn run(&mut self, index: usize) -> Option<Plan> {
        let stage = self.stage;
        if stage.source_kind() != Some(crate::syntax::ast::SourceKind::Prompts) {
            self.err(
                "verl-stage",
                stage.name.span,
                format!("stage `{}` does not sample prompts: verl's PPO trainer runs RL stages", stage.name.name),
                "not an RL stage",
                "export an RL stage with `--stage NAME` (preference and supervised stages stay in rlx; verl's SFT trainer is separate)",
            );
            return None;
        }
        self.earlier_stages(index);
        self.settings();
        if self.engine_gaps() {
            return None;
        }
        let loss = stage.loss?;
        let Terms { kl_loss, critic_term, policy_terms } = self.terms(loss);
        let Some(&(_, agg, _, _)) = policy_terms.first() else {
            if self.diags.iter().any(Diagnostic::is_error) {
                return None;
            }
            self.err(
                "verl-loss-shape",
                stage.loss_span,
                "the loss has no policy term: verl's actor loss is a policy loss plus optional KL"
                    .into(),
                "no term reads the policy's log-probabilities",
                "add a policy-gradient term, e.g. token_mean(ppo_clip(policy.logp, old.logp, adv))",
            );
            return None;
        };
        for &(_, mode, _, n) in &policy_terms[1..] {
            if mode != agg {
                let span = self.g()[n].span;
                self.err(
                    "verl-aggregation",
                    span,
                    format!("verl aggregates the whole policy loss with one `loss_agg_mode`; this term uses `{}`, the first `{}`", mode.verl(), agg.verl()),
                    "aggregated differently",
                    "aggregate every policy term the same way",
                );
            }
        }
        if let Some((_, mode, t)) = &kl_loss
            && *mode != agg
        {
            let span = self.g()[*t].span;
            self.err(
                "verl-aggregation",
                span,
                format!("verl aggregates the KL loss with the actor's `loss_agg_mode` (`{}`); this KL term is aggregated `{}`", agg.verl(), mode.verl()),
                "aggregated differently from the policy term",
                "aggregate the KL term like the policy term (verl has no separate KL aggregation)",
            );
        }
        let (adv_node, loss_lines, loss_result) = self.policy_loss(&policy_terms)?;

        // The advantages: verl's built-ins where only they get their inputs, else generated.
        let mut adv_em = python::Emitter::new(self.checked, self.stage, self.cs);
        let (estimator, root) = self.estimator(adv_node)?;
        let reward_level = self.level(root).unwrap_or(Level::Seq);
        adv_em.leaf(root, "reward");
        let adv_result = if estimator == Estimator::Generated {
            adv_em.emit(adv_node, &mut self.diags)
        } else {
            String::new()
        };
        for signal in adv_em.stray_signals.clone() {
            let span = self.g()[signal].span;
            let label = self.g()[signal].op.label();
            self.err("verl-signal", span, format!("verl's advantage estimator receives the token rewards, the response mask and the prompt ids; not `{label}`"), "not passed to verl's advantage estimator", "compute advantages from the reward, the groups and the mask");
        }
        let (score, components, kl_in_reward) = self.reward(root)?;
        if estimator == Estimator::Remax && kl_in_reward.is_some() {
            let span = self.g()[root].span;
            self.err("verl-reward", span, "verl's `remax` subtracts the baseline from token returns, so a KL in the reward would vary along the response; rlx's `remax` is per sequence".into(), "KL in ReMax's reward", "put the KL in the loss");
        }
        let greedy = self.greedy_name(adv_node, &estimator);
        let critic = self.critic(critic_term, &estimator, adv_node);
        let uses_groups = adv_em.uses_groups;
        Some(Plan {
            stage: stage.name.name.clone(),
            estimator,
            adv_lines: adv_em.lines,
            adv_result,
            reward_level,
            uses_groups,
            loss_lines,
            loss_result,
            agg,
            score,
            score_span: self.g()[root].span,
            components,
            greedy,
            kl_in_reward,
            kl_loss: kl_loss.map(|k| k.0),
            critic,
        })
    }

    /// The loss's terms, Σ c·aggregate(Σ c'·token term), sorted into the KL loss, the value loss
    /// and the policy terms.
    fn terms(&mut self, loss: NodeIndex) -> Terms {
        // The loss: Σ c·aggregate(Σ c'·token term).
        let mut outer = vec![];
        self.linear(loss, 1.0, &mut outer);
        let mut terms: Vec<(f64, AggMode, NodeIndex, NodeIndex)> = vec![];
        for (c, n) in outer {
            if c == 0.0 {
                continue;
            }
            let Some(mode) = self.block(n).and_then(|b| AggMode::of_block(b, self.params(n)))
            else {
                let span = self.g()[n].span;
                self.err(
                    "verl-loss-shape",
                    span,
                    format!("verl's loss is a weighted sum of token terms aggregated by `agg_loss`; this term is `{}`", self.g()[n].op.label()),
                    "not an aggregated token term",
                    "write each term as token_mean, token_sum, seq_mean_token_mean, seq_mean_token_sum or seq_mean_token_sum_norm of a token expression",
                );
                continue;
            };
            let x = self.ins(n)[0];
            let mut inner = vec![];
            self.linear(x, c, &mut inner);
            terms
                .extend(inner.into_iter().filter(|(c, _)| *c != 0.0).map(|(c, t)| (c, mode, t, n)));
        }
        // Sort the terms into KL loss, value loss and policy terms.
        let mut kl_loss = None;
        let mut critic_term = None;
        let mut policy_terms = vec![];
        for (c, mode, t, agg) in terms {
            if let Some(kind) = self.kl_of(t, &ModelRef::Named(self.policy.clone())) {
                if kl_loss.is_some() {
                    let span = self.g()[t].span;
                    self.err(
                        "verl-kl",
                        span,
                        "verl adds one KL loss; this loss has two".into(),
                        "a second KL term",
                        "merge the KL terms into one",
                    );
                }
                let Ok(kind) = kind else {
                    self.kl_mismatch(t);
                    continue;
                };
                self.warn_k3_clamp(t);
                kl_loss = Some((KlUse { coef: c, kind }, mode, t));
            } else if self.block(t) == Some("value_loss") {
                critic_term = Some((c, mode, t));
            } else {
                policy_terms.push((c, mode, t, agg));
            }
        }
        Terms { kl_loss, critic_term, policy_terms }
    }

    /// The policy loss: one function of log_prob, old_log_prob and one advantage tensor.
    /// Returns the advantage node, the loss's emitted lines and its result.
    fn policy_loss(
        &mut self,
        policy_terms: &[(f64, AggMode, NodeIndex, NodeIndex)],
    ) -> Option<(NodeIndex, Vec<Line>, String)> {
        let stage = self.stage;
        let mut loss_em = python::Emitter::new(self.checked, self.stage, self.cs);
        loss_em.leaf_policy_logp = Some(self.policy.clone());
        let mut frontier: Vec<NodeIndex> = vec![];
        let region = self.loss_region(&policy_terms.iter().map(|t| t.2).collect::<Vec<_>>());
        let mut signals = vec![];
        for &(_, _, t, _) in policy_terms {
            self.frontier(t, &region, &mut frontier, &mut signals, &mut HashSet::new());
        }
        if !signals.is_empty() {
            for signal in signals {
                let span = self.g()[signal].span;
                let label = self.g()[signal].op.label();
                self.err("verl-signal", span, format!("verl's policy loss receives the policy's and the old log-probabilities and the advantages; not `{label}`"), "not passed to verl's policy loss", "use verl's KL loss for `ref.logp` (kl(policy.logp, ref.logp) as its own term), or fold it into the advantage");
            }
            return None;
        }
        let adv_node = match frontier.as_slice() {
            [a] => *a,
            [] => {
                self.err("verl-advantage", stage.loss_span, "the policy loss reads no advantage: verl's policy loss is driven by `advantages`".into(), "no advantage", "use the advantages in the loss, e.g. ppo_clip(policy.logp, old.logp, spread(adv))");
                return None;
            }
            [a, b, ..] => {
                let (sa, sb) = (self.g()[*a].span, self.g()[*b].span);
                self.diags.push(
                    Diagnostic::error("verl-advantage", "verl passes the policy loss one advantage tensor; this loss reads two values computed without the policy")
                        .primary(sb, "a second advantage-like input")
                        .secondary(sa, "the first")
                        .help("combine them into one advantage before the loss"),
                );
                return None;
            }
        };
        if self.level(adv_node) != Some(Level::Token) {
            let span = self.g()[adv_node].span;
            self.err(
                "verl-advantage",
                span,
                "verl's advantages are per token; the loss reads this value per sequence".into(),
                "one value per sequence",
                "spread it over the tokens with `spread(...)` where the loss reads it",
            );
            return None;
        }
        loss_em.leaf(adv_node, "advantages");
        let mut loss_parts = vec![];
        for &(c, _, t, _) in policy_terms {
            let v = loss_em.emit(t, &mut self.diags);
            loss_parts.push(python::scaled(c, &v));
        }
        let loss_result = loss_em.bind(
            stage.loss_span,
            if loss_parts.is_empty() { "0.0".into() } else { loss_parts.join(" + ") },
        );
        for signal in loss_em.stray_signals.clone() {
            let span = self.g()[signal].span;
            let label = self.g()[signal].op.label();
            self.err("verl-signal", span, format!("verl's policy loss receives the policy's and the old log-probabilities and the advantages; not `{label}`"), "not passed to verl's policy loss", "move it into the advantage (computed without gradient), or use verl's KL loss for `ref.logp`");
        }
        Some((adv_node, loss_em.lines, loss_result))
    }

    /// Nodes that depend on the policy's or the old log-probabilities, among the terms' inputs.
    pub(super) fn loss_region(&self, roots: &[NodeIndex]) -> HashSet<NodeIndex> {
        let mut memo: HashMap<NodeIndex, bool> = HashMap::new();
        let mut region = HashSet::new();
        let mut stack: Vec<NodeIndex> = roots.to_vec();
        let mut seen = HashSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            if self.reads_logp(n, &mut memo) {
                region.insert(n);
                stack.extend(self.ins(n));
            }
        }
        region
    }

    pub(super) fn reads_logp(&self, n: NodeIndex, memo: &mut HashMap<NodeIndex, bool>) -> bool {
        if let Some(v) = memo.get(&n) {
            return *v;
        }
        // Only the trained model's signals carry the gradient; `old.logp` is a leaf verl passes.
        let own = matches!(&self.g()[n].op, Op::Signal { model: ModelRef::Named(m), .. } if *m == self.policy);
        let v = own || self.ins(n).into_iter().any(|i| self.reads_logp(i, memo));
        memo.insert(n, v);
        v
    }

    /// Inputs of the loss region computed without the policy: the advantage(s).
    pub(super) fn frontier(
        &self,
        n: NodeIndex,
        region: &HashSet<NodeIndex>,
        out: &mut Vec<NodeIndex>,
        signals: &mut Vec<NodeIndex>,
        seen: &mut HashSet<NodeIndex>,
    ) {
        if !seen.insert(n) {
            return;
        }
        if !region.contains(&n) {
            if matches!(self.g()[n].op, Op::Signal { .. })
                && !self.is_signal(n, &ModelRef::Old, Signal::Logp)
            {
                // A raw signal is not an advantage: the policy loss does not receive it.
                signals.push(n);
                return;
            }
            let trivial = matches!(self.g()[n].op, Op::Const(_) | Op::Text(_))
                || self.constant(n).is_some()
                || self.is_signal(n, &ModelRef::Old, Signal::Logp);
            if !trivial && !out.contains(&n) {
                out.push(n);
            }
            return;
        }
        if matches!(self.g()[n].op, Op::Signal { .. }) {
            return;
        }
        for i in self.ins(n) {
            self.frontier(i, region, out, signals, seen);
        }
    }
}
