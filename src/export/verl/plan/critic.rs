//! The value loss, in the place verl computes it: verl's critic, trained only with `gae`.

use petgraph::stable_graph::NodeIndex;

use super::{AggMode, Critic, Estimator, Planner};
use crate::check::params::Value;
use crate::ir::graph::*;

impl Planner<'_> {
    /// The value loss must fit verl's critic: value_loss(policy.values, old.values, A + old.values)
    /// with the same GAE as the advantage.
    pub(super) fn check_critic(&mut self, t: NodeIndex, adv: NodeIndex) {
        let ins = self.ins(t);
        let gae = self.ins(adv)[0];
        let values_ok =
            self.is_signal(ins[0], &ModelRef::Named(self.policy.clone()), Signal::Values)
                && self.is_signal(ins[1], &ModelRef::Old, Signal::Values);
        let r = ins[2];
        let returns_ok = self.block(r) == Some("add") && {
            let a = self.ins(r);
            (a[0] == gae && self.is_signal(a[1], &ModelRef::Old, Signal::Values))
                || (a[1] == gae && self.is_signal(a[0], &ModelRef::Old, Signal::Values))
        };
        if !values_ok || !returns_ok {
            let span = self.g()[t].span;
            self.err(
                "verl-critic",
                span,
                "verl's critic fits returns = GAE + old values with its own value loss".into(),
                "a different value target",
                "write value_loss(policy.values, old.values, adv + old.values) with the GAE `adv`",
            );
        }
    }

    /// The critic verl trains, from the recipe's value loss: only with verl's `gae`.
    pub(super) fn critic(
        &mut self,
        critic_term: Option<(f64, AggMode, NodeIndex)>,
        estimator: &Estimator,
        adv_node: NodeIndex,
    ) -> Option<Critic> {
        let stage = self.stage;
        match (critic_term, estimator) {
            (Some((c, mode, t)), Estimator::Gae { .. }) => {
                self.check_critic(t, adv_node);
                let clip = self.param(t, "clip").and_then(Value::num);
                Some(Critic { coef: c, clip, agg: mode })
            }
            (Some((_, _, t)), _) => {
                let span = self.g()[t].span;
                self.err("verl-critic", span, "verl trains a critic only with its `gae` estimator; this value loss goes with other advantages".into(), "a value loss without GAE", "use gae(..., old.values) whitened over the batch, or drop the value loss");
                None
            }
            (None, Estimator::Gae { .. }) => {
                self.err("verl-critic", stage.loss_span, "verl's `gae` needs a critic: the loss has no value_loss".into(), "no value loss", "add `+ c * token_mean(value_loss(policy.values, old.values, adv + old.values))`");
                None
            }
            (None, _) => None,
        }
    }
}
