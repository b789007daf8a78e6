//! The update of a step: epochs × minibatches over the rollout (rollout-level nodes sliced,
//! the rest recomputed with gradient), back-propagation into the trained models, and the
//! optimiser step; and when the rollout pass may skip the trained model's forward.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use petgraph::stable_graph::NodeIndex;
use serde_json::{Map, Value as Json, json};

use super::clip::{self, ClipTerm};
use super::mean_of;
use super::rollout::{Rollout, signal_cx};
use super::stage::{StagePlan, permutation};
use super::{Run, run_error};
use crate::diag::Diagnostic;
use crate::exec::Options;
use crate::train::metrics::field;
use crate::train::optim::AdamW;
use crate::train::signals::{self};

impl Run<'_> {
    /// Back-propagates `loss` into the trained models and takes an optimiser step; a non-finite
    /// gradient stops the run before any weight changes.
    pub(super) fn update(
        &self,
        index: usize,
        loss: &Tensor,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<(), Diagnostic> {
        let stage = &self.checked.program.stages[index];
        let grads = loss.backward().map_err(|e| run_error(stage.loss_span, e.to_string()))?;
        let norm = opt.grad_norm(&grads).map_err(|e| run_error(stage.loss_span, e.to_string()))?;
        if !norm.is_finite() {
            let bad = opt
                .vars()
                .iter()
                .find(|(_, v)| {
                    grads.get(v.as_tensor()).is_some_and(|g| {
                        !mean_of(&g.abs().unwrap_or_else(|_| g.clone())).is_finite()
                    })
                })
                .map_or("a parameter".to_string(), |(n, _)| format!("`{n}`"));
            return Err(Diagnostic::error("non-finite-gradient", format!("the gradient of the loss with respect to {bad} is not finite"))
                .primary(stage.loss_span, "back-propagated from this loss")
                .help(self.resume_hint("lower the learning rate, clamp log-ratios, or look for log/sqrt/division of values that reach 0")));
        }
        let info = opt.step(&grads).map_err(|e| run_error(stage.loss_span, e.to_string()))?;
        if let Some(var) = &info.non_finite {
            // The weights in memory are spoiled; nothing is saved from them.
            return Err(Diagnostic::error(
                "non-finite-weights",
                format!(
                    "the optimiser step made the weights of `{var}` non-finite (lr {}, gradient norm {:.3e})",
                    crate::blocks::spec::format_number(info.lr),
                    info.grad_norm
                ),
            )
            .primary(stage.loss_span, "the update of this loss")
            .help(self.resume_hint("lower `optim.lr` (or set `clip_grad`)")));
        }
        let n = record.get(field::OPTIM_STEPS).and_then(Json::as_f64).unwrap_or(0.0);
        let g = record.get(field::GRAD_NORM).and_then(Json::as_f64).unwrap_or(0.0);
        record.insert(field::GRAD_NORM.into(), json!((g * n + info.grad_norm) / (n + 1.0)));
        record.insert(field::OPTIM_STEPS.into(), json!(n + 1.0));
        record.insert(field::LR.into(), json!(info.lr));
        Ok(())
    }

    /// Epochs × minibatches over the rollout: each minibatch's inputs are the rollout-level ones
    /// sliced to its rows, plus the live (gradient) signals computed on them — or, for the
    /// first minibatch, the ones the rollout already ran ahead. Returns the seconds spent.
    pub(super) fn update_epochs(
        &mut self,
        plan: &StagePlan,
        rollout: &mut Rollout,
        values: &HashMap<NodeIndex, Tensor>,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<f64, Diagnostic> {
        let StagePlan { index, settings, compiled, sources, clip_terms, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let device = self.opts.device.clone();
        let trained = stage.trained().unwrap_or("policy").to_string();
        let given_nodes = compiled.rollout_nodes();
        let (mut first_perm, mut ahead) = match rollout.ahead.take() {
            Some((perm, live)) => (Some(perm), Some(live)),
            None => (None, None),
        };
        let rollout = &*rollout;
        let full = &rollout.full;
        let b = rollout.rows.len();
        let mut losses = Vec::new();
        let mut clipped: Vec<(&ClipTerm, Vec<f64>)> =
            clip_terms.iter().map(|t| (t, vec![])).collect();
        let t_train = Instant::now();
        for epoch in 0..settings.epochs {
            let perm = match first_perm.take() {
                Some(p) => p,
                None => permutation(b, self.rng.next_u64(), epoch as u64),
            };
            for chunk in perm.chunks(settings.minibatch) {
                let idx = Tensor::from_vec(
                    chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    chunk.len(),
                    &device,
                )
                .map_err(|e| fail(e.to_string()))?;
                let sub = rollout.rows.select(chunk);
                let mut batch: HashMap<String, Tensor> = HashMap::new();
                for (k, t) in full {
                    let mut s = signals::slice_rows(t, &idx).map_err(|e| fail(e.to_string()))?;
                    if k.starts_with("vine_values") {
                        let ids = signals::slice_rows(&full["step_ids"], &idx)
                            .map_err(|e| fail(e.to_string()))?;
                        s = signals::narrow_steps(&s, &ids).map_err(|e| fail(e.to_string()))?;
                    }
                    batch.insert(k.clone(), s);
                }
                let live_cx = signal_cx(
                    &self.tasks,
                    &self.rewards,
                    &self.tok,
                    &device,
                    rollout,
                    &trained,
                    false,
                );
                let remote = self.remote.is_some();
                match ahead.take() {
                    Some(live) => batch.extend(live),
                    None if remote => {
                        batch.extend(self.remote_live(plan, &sub, &rollout.widths)?)
                    }
                    None => batch.extend(
                        signals::compute(sources, |s| s.grad, &sub, &live_cx).map_err(fail)?,
                    ),
                }
                let mut given = HashMap::new();
                for n in &given_nodes {
                    if let Some(t) = values.get(n) {
                        let mut s =
                            signals::slice_rows(t, &idx).map_err(|e| fail(e.to_string()))?;
                        if compiled.is_step_level(*n) {
                            s = signals::narrow_steps(&s, &batch["step_ids"])
                                .map_err(|e| fail(e.to_string()))?;
                        }
                        given.insert(*n, s);
                    }
                }
                // Remotely, the gradient stops at the inputs: the server takes it from there.
                let (eval, _) = compiled.run_with(
                    &batch,
                    &device,
                    Options { grads: remote, profile: false },
                    &given,
                )?;
                match remote {
                    true => self.remote_update(plan, &sub, &batch, &eval, opt, record)?,
                    false => self.update(index, &eval.loss, opt, record)?,
                }
                losses.push(mean_of(&eval.loss));
                for (term, fracs) in &mut clipped {
                    if let (Some(p), Some(o), Some(m)) =
                        (batch.get(&term.logp), batch.get(&term.old), batch.get("mask"))
                    {
                        fracs.push(clip::fraction(term, p, o, m));
                    }
                }
                for t in &eval.terms {
                    record.insert(field::loss_term(&t.name), json!(mean_of(&t.value)));
                }
            }
        }
        record.insert(
            field::LOSS.into(),
            json!(losses.iter().sum::<f64>() / losses.len().max(1) as f64),
        );
        for (term, fracs) in clipped.iter().filter(|(_, f)| !f.is_empty()) {
            record
                .insert(term.metric.clone(), json!(fracs.iter().sum::<f64>() / fracs.len() as f64));
        }
        Ok(t_train.elapsed().as_secs_f64())
    }
}
