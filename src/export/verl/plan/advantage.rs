//! The advantages, in the place verl computes them: verl's own `gae` or `remax` where only they
//! receive their inputs, else a generated estimator over the token rewards.

use petgraph::stable_graph::NodeIndex;

use super::{Estimator, Planner};
use crate::check::params::Value;
use crate::ir::graph::*;

impl Planner<'_> {
    /// Which estimator computes `adv` and which node is the reward it starts from.
    pub(super) fn estimator(&mut self, adv: NodeIndex) -> Option<(Estimator, NodeIndex)> {
        let ins = self.ins(adv);
        // verl's gae: whiten(gae(r, old.values), scope = batch) with verl's whitening.
        let whitened_gae = self.block(adv) == Some("whiten") && self.block(ins[0]) == Some("gae");
        let gae_anywhere = self.find_block(adv, "gae");
        if let Some(gae) = gae_anywhere {
            if !whitened_gae {
                let span = self.g()[gae].span;
                self.err("verl-critic", span, "verl's `gae` estimator always whitens the advantages over the batch; here GAE is used otherwise".into(), "GAE not whitened over the batch as verl does", "write the loss's advantage as whiten(gae(r, old.values, ...), scope = batch)");
                return None;
            }
            self.check_verl_whiten(adv);
            let gae = ins[0];
            let gae_ins = self.ins(gae);
            if !self.is_signal(gae_ins[1], &ModelRef::Old, Signal::Values) {
                let span = self.g()[gae_ins[1]].span;
                self.err(
                    "verl-critic",
                    span,
                    "verl's GAE reads the critic's values at sampling time, `old.values`".into(),
                    "not old.values",
                    "use old.values",
                );
            }
            if self.param(gae, "holes").and_then(|v| v.str()) != Some("skip") {
                let span = self.g()[gae].span;
                self.err(
                    "verl-critic",
                    span,
                    "verl's GAE carries through masked holes (`holes = skip`)".into(),
                    "holes = zero",
                    "use holes = skip",
                );
            }
            let gamma = self.param(gae, "gamma").and_then(Value::num).unwrap_or(1.0);
            let lambda = self.param(gae, "lambda").and_then(Value::num).unwrap_or(1.0);
            return Some((Estimator::Gae { gamma, lambda }, gae_ins[0]));
        }
        // verl's remax: spread(remax(score(response), score(greedy))).
        if let Some(remax) = self.find_block(adv, "remax") {
            let r = self.ins(remax);
            let strict = self.block(adv) == Some("spread") && ins[0] == remax;
            let same_scorer = match (&self.g()[r[0]].op, &self.g()[r[1]].op) {
                (Op::Score(a), Op::Score(b)) => {
                    a == b
                        && self.text_of(r[0]).as_deref() == Some("response")
                        && self.text_of(r[1]).as_deref() == Some("greedy")
                }
                _ => false,
            };
            if !strict || !same_scorer {
                let span = self.g()[remax].span;
                self.err("verl-reward", span, "verl's `remax` estimator is the only one that gets a greedy rollout, and it is spread(score(response) − score(greedy)) with one reward function".into(), "ReMax in another form", "write the advantage as spread(remax(S(response), S(greedy))) with the same scorer S");
                return None;
            }
            return Some((Estimator::Remax, r[0]));
        }
        let root = self.reward_root(adv)?;
        Some((Estimator::Generated, root))
    }

    /// verl whitens GAE with `masked_whiten`: unbiased variance over the batch's response tokens,
    /// (v + 1e-8)^-½, mean shifted.
    pub(super) fn check_verl_whiten(&mut self, w: NodeIndex) {
        let ok = |p: &Planner, name: &str, want: &str| {
            p.param(w, name).map(|v| v.display()).as_deref() == Some(want)
        };
        let scope_ok = ok(self, "scope", "batch")
            || (ok(self, "scope", "minibatch") && self.minibatch_is_batch());
        let same = scope_ok
            && ok(self, "var", "unbiased")
            && ok(self, "shift_mean", "true")
            && ok(self, "mask", "response")
            && ok(self, "floor", "add")
            && self.param(w, "eps").and_then(Value::num) == Some(1e-8);
        if !same {
            let span = self.g()[w].span;
            self.err("verl-critic", span, "verl's `gae` whitens with `masked_whiten`: over the whole batch's response tokens, unbiased variance, eps 1e-8 added".into(), "whitened differently", "use whiten(..., scope = batch) with its defaults");
        }
    }

    pub(super) fn minibatch_is_batch(&self) -> bool {
        let get = |k| crate::check::params::get_num(&self.cs.optim, k);
        get("minibatch") == get("batch")
    }

    /// The greedy score's batch name for verl's `remax`.
    pub(super) fn greedy_name(&self, adv: NodeIndex, estimator: &Estimator) -> Option<String> {
        if *estimator != Estimator::Remax {
            return None;
        }
        let remax = self.ins(adv)[0];
        let b = self.ins(remax)[1];
        crate::exec::source_name(self.stage, b)
    }
}
