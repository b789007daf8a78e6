//! A supervised step: a batch of texts (SFT), pairs (DPO, a reward model) or corrections
//! (RLMEC's rewriter) from the data set, one forward and one update.

use std::collections::HashMap;

use candle_core::DType;
use serde_json::{Map, Value as Json, json};

use super::mean_of;
use super::stage::{StagePlan, data_len, permutation};
use super::{Run, run_error};
use crate::diag::Diagnostic;
use crate::exec::Options;
use crate::ir::builtins::MemberKind;
use crate::ir::graph::ScorerRef;
use crate::train::metrics::field;
use crate::train::optim::AdamW;
use crate::train::signals::{self, ModelView, Rows, SignalCx, SourceKind, TextRows};

impl Run<'_> {
    pub(super) fn supervised_step(
        &mut self,
        plan: &StagePlan,
        step: usize,
        member: MemberKind,
        opt: &mut AdamW,
        record: &mut Map<String, Json>,
    ) -> Result<(), Diagnostic> {
        let StagePlan { index, settings, compiled, sources, task, reference, .. } = *plan;
        let stage = &self.checked.program.stages[index];
        let fail = |e: String| run_error(stage.name.span, e);
        let n = data_len(task, member);
        let per_epoch = n.div_ceil(settings.batch).max(1);
        let epoch = step / per_epoch;
        let perm = permutation(n, self.opts.seed, epoch as u64);
        let from = (step % per_epoch) * settings.batch;
        let idx: Vec<usize> = perm[from..(from + settings.batch).min(n)].to_vec();
        let tok = &self.tok;
        let mut rows = Rows::default();
        let mut put = |name: &str, ctx: Vec<u32>, toks: Vec<u32>| {
            let e = rows.texts.entry(name.to_string()).or_insert_with(TextRows::default);
            e.ctx.push(ctx);
            e.toks.push(toks);
        };
        let mut prompts = Vec::new();
        for &i in &idx {
            match member {
                MemberKind::Pairs => {
                    let p = &task.pairs[i];
                    let ctx = tok.prompt(&p.prompt);
                    put("chosen", ctx.clone(), tok.response(&p.chosen));
                    put("rejected", ctx, tok.response(&p.rejected));
                    prompts.push(p.prompt.clone());
                }
                MemberKind::Corrections => {
                    let c = &task.corrections[i];
                    let ctx = tok.prompt(&c.prompt);
                    let wrong = tok.response(&c.wrong);
                    put(
                        "target",
                        [ctx.clone(), wrong.clone(), vec![tok.sep]].concat(),
                        tok.response(&c.fixed),
                    );
                    put("response", ctx, wrong);
                    prompts.push(c.prompt.clone());
                }
                _ => {
                    let (ctx, text) = tok.context_and_text(&task.texts[i]);
                    put("target", ctx, text);
                    prompts.push(String::new());
                }
            }
        }
        // KTO's reference point: each prompt followed by the next pair's chosen response (the
        // batch rotated by one, as TRL shifts completions within the batch).
        if let Some(chosen) = rows.texts.get("chosen") {
            let n = chosen.toks.len();
            let toks = (0..n).map(|k| chosen.toks[(k + 1) % n].clone()).collect();
            let mismatched = TextRows { ctx: chosen.ctx.clone(), toks };
            rows.texts.insert("mismatched".into(), mismatched);
        }
        rows.prompts = prompts;
        rows.group = (0..idx.len() as i64).collect();
        let widths = rows.widths();
        let trained = stage.trained().unwrap_or("policy").to_string();
        let live = self.live_views(stage).map_err(fail)?;
        let frozen = self.frozen_views(&trained, reference).map_err(fail)?;
        let cx = SignalCx {
            models: ModelView { live: &live, frozen: &frozen },
            temperature: 1.0,
            tasks: &self.tasks,
            rewards: &self.rewards,
            tok: &self.tok,
            device: &self.opts.device,
            widths: &widths,
            frozen_only: false,
            old_is: None,
        };
        let mut batch = signals::base_inputs(&rows, &cx, None).map_err(fail)?;
        let remote = self.remote.is_some();
        match remote {
            // On a server: its forwards, and the gradient stops at the inputs.
            true => batch.extend(self.remote_inputs(plan, &rows, &widths, |_| true)?),
            false => batch.extend(signals::compute(sources, |_| true, &rows, &cx).map_err(fail)?),
        }
        let (eval, _) = compiled.run_with(
            &batch,
            &self.opts.device,
            Options { grads: remote, profile: false },
            &HashMap::new(),
        )?;
        match remote {
            true => self.remote_update(plan, &rows, &batch, &eval, opt, record)?,
            false => self.update(index, &eval.loss, opt, record)?,
        }
        record.insert(field::LOSS.into(), json!(mean_of(&eval.loss)));
        for t in &eval.terms {
            record.insert(field::loss_term(&t.name), json!(mean_of(&t.value)));
        }
        // Reward-model accuracy on the batch's pairs.
        let score_of = |of: &str| {
            sources
                .iter()
                .find(|s| {
                    matches!(&s.kind, SourceKind::Score { scorer: ScorerRef::Model(_), text, .. }
                        if text == of)
                })
                .and_then(|s| batch.get(&s.name))
        };
        if let (Some(c), Some(r)) = (score_of("chosen"), score_of("rejected")) {
            let acc = c
                .gt(r)
                .and_then(|m| m.to_dtype(DType::F32))
                .map(|m| mean_of(&m))
                .unwrap_or(f64::NAN);
            record.insert(field::PAIR_ACCURACY.into(), json!(acc));
        }
        let tokens: usize =
            rows.texts.values().map(|t| t.toks.iter().map(Vec::len).sum::<usize>()).sum();
        record.insert(field::TOKENS.into(), json!(tokens));
        Ok(())
    }
}
