//! From texts to the named tensors a stage reads: masks, token and step ids, groups, and every
//! model signal (`policy.logp`, `old.values`, `grm.keep_prob`, `rm(response)`, …), each
//! computed by one forward per (model, text) however many signals share it.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use petgraph::stable_graph::NodeIndex;

use crate::blocks::spec::Demand;
use crate::check::{Checked, Ty, params};
use crate::ir::graph::*;
use crate::model::{Layout, Transformer};
use crate::tasks::Task;
use crate::tokenizer::Tok;
use crate::train::scoring::HostScorers;
use crate::train::yes_no::{YesNoHead, YesNoTokens};

/// One text of a batch: each row's context (what the text follows) and tokens.
#[derive(Debug, Clone, Default)]
pub struct TextRows {
    pub ctx: Vec<Vec<u32>>,
    pub toks: Vec<Vec<u32>>,
}

/// The texts of a batch.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Each row's prompt as text (verifiers read it).
    pub prompts: Vec<String>,
    pub texts: BTreeMap<String, TextRows>,
    pub group: Vec<i64>,
    /// The sampler's log-probability of each response token (`rollout.logp`).
    pub rollout_logp: Vec<Vec<f32>>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Rows {
        let pick = |v: &Vec<Vec<u32>>| idx.iter().map(|&i| v[i].clone()).collect();
        Rows {
            prompts: idx.iter().map(|&i| self.prompts[i].clone()).collect(),
            texts: self
                .texts
                .iter()
                .map(|(k, t)| (k.clone(), TextRows { ctx: pick(&t.ctx), toks: pick(&t.toks) }))
                .collect(),
            group: idx.iter().map(|&i| self.group.get(i).copied().unwrap_or(i as i64)).collect(),
            rollout_logp: idx.iter().filter_map(|&i| self.rollout_logp.get(i).cloned()).collect(),
        }
    }

    /// The padded width of each text.
    pub fn widths(&self) -> HashMap<String, usize> {
        self.texts
            .iter()
            .map(|(k, t)| (k.clone(), t.toks.iter().map(Vec::len).max().unwrap_or(1).max(1)))
            .collect()
    }
}

/// What a source node of the graph reads.
#[derive(Debug, Clone)]
pub enum SourceKind {
    Signal {
        model: ModelRef,
        signal: Signal,
        text: String,
    },
    Score {
        scorer: ScorerRef,
        text: String,
        /// A `yes_no(...)` reward model's head: the score is read from its answers.
        head: Option<YesNoHead>,
    },
    /// Monte-Carlo values from extra rollouts (`vine_values`): done by the rollout phase.
    StepRollouts {
        text: String,
        reward: ScorerRef,
        k: usize,
        max_steps: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// Gradient flows into it: computed with the live model, per minibatch.
    pub grad: bool,
}

/// The sources of stage `index`, and the step delimiter if the stage splits steps.
pub fn sources(checked: &Checked, index: usize) -> (Vec<Source>, Option<String>) {
    let stage = &checked.program.stages[index];
    let cs = &checked.stages[index];
    let g = &stage.graph;
    let text_of = |n: NodeIndex| -> String {
        match cs.types.get(&n) {
            Some(Ty::Tensor { text: Some(t), .. }) => t.clone(),
            _ => match inputs(g, n).first().and_then(|i| cs.types.get(i)) {
                Some(Ty::Text(t)) => t.clone(),
                _ => "response".into(),
            },
        }
    };
    let mut out: Vec<Source> = Vec::new();
    let mut delimiter = None;
    for n in crate::exec::demanded_nodes(stage) {
        let grad = cs.types.get(&n).is_some_and(Ty::has_grad);
        let Some(name) = crate::exec::source_name(stage, n) else {
            if let Op::Block { spec, .. } = &g[n].op
                && spec.name == "split_steps"
            {
                delimiter = cs
                    .params
                    .get(&n)
                    .and_then(|p| params::get(p, "on"))
                    .and_then(|v| v.str())
                    .map(String::from);
            }
            continue;
        };
        if out.iter().any(|s| s.name == name) {
            continue;
        }
        let kind = match &g[n].op {
            // `old.values` of a stage whose critic is a model of its own: that model before the
            // update, i.e. read without gradient in the rollout pass.
            Op::Signal { model: ModelRef::Old, signal: Signal::Values }
                if stage.value_owner() != stage.trained() =>
            {
                let owner = stage.value_owner().unwrap_or_default().to_string();
                SourceKind::Signal {
                    model: ModelRef::Named(owner),
                    signal: Signal::Values,
                    text: text_of(n),
                }
            }
            Op::Signal { model, signal } => {
                SourceKind::Signal { model: model.clone(), signal: *signal, text: text_of(n) }
            }
            Op::Score(s) => {
                let text = match inputs(g, n).first().and_then(|i| cs.types.get(i)) {
                    Some(Ty::Text(t)) => t.clone(),
                    _ => "response".into(),
                };
                let head = match s {
                    ScorerRef::Model(m) => YesNoHead::of(checked, m),
                    _ => None,
                };
                SourceKind::Score { scorer: s.clone(), text, head }
            }
            Op::Block { spec, .. } if matches!(spec.demand, Demand::StepRollouts { .. }) => {
                let ins = inputs(g, n);
                let reward = ins
                    .iter()
                    .find_map(|i| match &g[*i].op {
                        Op::Scorer(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or(ScorerRef::Verifier { data: String::new(), member: String::new() });
                let p = cs.params.get(&n).map(Vec::as_slice).unwrap_or(&[]);
                SourceKind::StepRollouts {
                    text: text_of(n),
                    reward,
                    k: params::num(p, "k") as usize,
                    max_steps: params::get_num(p, "max_steps").map(|v| v as usize),
                }
            }
            _ => continue,
        };
        out.push(Source { name, kind, grad });
    }
    (out, delimiter)
}

/// Which models a signal can be read from, as transformers.
#[derive(Clone, Copy)]
pub struct ModelView<'a> {
    /// Live (trainable) models by name.
    pub live: &'a HashMap<String, Transformer>,
    /// Frozen views: every model by name, plus `old` and `ref`.
    pub frozen: &'a HashMap<String, Transformer>,
}

impl ModelView<'_> {
    fn get(&self, model: &str, grad: bool) -> Result<&Transformer, String> {
        let m = if grad {
            self.live.get(model).or_else(|| self.frozen.get(model))
        } else {
            self.frozen.get(model)
        };
        m.ok_or_else(|| format!("no model `{model}` is loaded"))
    }
}

/// Everything a signal computation needs besides the rows.
#[derive(Clone, Copy)]
pub struct SignalCx<'a> {
    pub models: ModelView<'a>,
    /// Logits are divided by this (the stage's sampling temperature).
    pub temperature: f64,
    pub tasks: &'a HashMap<String, Task>,
    /// External rewards (`command(...)`, `http(...)`).
    pub rewards: &'a crate::rewards::Rewards,
    pub tok: &'a Tok,
    pub device: &'a Device,
    /// Padded width of each text (the full rollout batch's, so minibatches line up).
    pub widths: &'a HashMap<String, usize>,
    /// Compute even gradient sources with frozen weights (the rollout-level pass).
    pub frozen_only: bool,
    /// The trained model whose snapshot `old` is. In the rollout-level pass its weights are
    /// `old`'s exactly, so its signals are read from `old`'s forward instead of a second one.
    pub old_is: Option<&'a str>,
}

fn err(e: candle_core::Error) -> String {
    e.to_string()
}

/// Masks, token ids, step ids and groups of the rows.
pub fn base_inputs(
    rows: &Rows,
    cx: &SignalCx,
    delimiter: Option<&str>,
) -> Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    for (name, t) in &rows.texts {
        let w = cx.widths.get(name).copied().unwrap_or(1);
        let b = t.toks.len();
        let mut mask = vec![0f32; b * w];
        let mut ids = vec![0i64; b * w];
        let mut steps = vec![-1i64; b * w];
        for (r, toks) in t.toks.iter().enumerate() {
            let mut step = 0i64;
            for (i, &tok) in toks.iter().enumerate().take(w) {
                mask[r * w + i] = 1.0;
                ids[r * w + i] = tok as i64;
                steps[r * w + i] = step;
                if let Some(d) = delimiter
                    && cx.tok.piece(tok).contains(d)
                    && i + 1 < toks.len()
                {
                    step += 1;
                }
            }
        }
        let suffix = |base: &str| {
            if name == "response" || name == "target" {
                base.to_string()
            } else {
                format!("{base}({name})")
            }
        };
        out.insert(suffix("mask"), Tensor::from_vec(mask, (b, w), cx.device).map_err(err)?);
        out.insert(suffix("tokens"), Tensor::from_vec(ids, (b, w), cx.device).map_err(err)?);
        out.insert(suffix("step_ids"), Tensor::from_vec(steps, (b, w), cx.device).map_err(err)?);
    }
    let group = rows.group.clone();
    out.insert("group".into(), Tensor::from_vec(group, rows.len(), cx.device).map_err(err)?);
    Ok(out)
}

/// Start (token offset) of each step of each row, by the same rule as `base_inputs`.
pub fn step_starts(toks: &[u32], tok: &Tok, delimiter: &str) -> Vec<usize> {
    let mut starts = vec![0];
    for (i, &t) in toks.iter().enumerate() {
        if tok.piece(t).contains(delimiter) && i + 1 < toks.len() {
            starts.push(i + 1);
        }
    }
    starts
}

/// Computes the sources selected by `want`, reading models through `cx`.
pub fn compute(
    sources: &[Source],
    want: impl Fn(&Source) -> bool,
    rows: &Rows,
    cx: &SignalCx,
) -> Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    // (model, grad, text, keep) → layout and hidden states, shared between signals.
    let mut forwards: HashMap<(String, bool, String, bool), (Layout, Tensor)> = HashMap::new();
    for s in sources.iter().filter(|s| want(s)) {
        let grad = s.grad && !cx.frozen_only;
        let model_name = |m: &ModelRef| -> String {
            match m {
                ModelRef::Named(n) => n.clone(),
                ModelRef::Old => "old".into(),
                ModelRef::Ref => "ref".into(),
                ModelRef::Rollout => "rollout".into(),
            }
        };
        let value = match &s.kind {
            SourceKind::Signal { model: ModelRef::Rollout, .. } => {
                // Recorded by the sampler, padded to the response's width.
                let width = cx.widths.get("response").copied().unwrap_or(1);
                let mut flat = vec![0f32; rows.len() * width];
                for (r, lps) in rows.rollout_logp.iter().enumerate() {
                    for (t, lp) in lps.iter().take(width).enumerate() {
                        flat[r * width + t] = *lp;
                    }
                }
                Tensor::from_vec(flat, (rows.len(), width), cx.device).map_err(err)?
            }
            SourceKind::Signal { model, signal, text } => {
                let mut name = model_name(model);
                let live = grad;
                if !live && cx.frozen_only && cx.old_is == Some(name.as_str()) {
                    // Same weights, same layout, same arithmetic: bit-identical, one forward.
                    name = "old".into();
                }
                let keep = *signal == Signal::KeepProb;
                let key = (name.clone(), live, text.clone(), keep);
                if !forwards.contains_key(&key) {
                    let m = cx.models.get(&name, live)?;
                    let layout = layout_for(rows, text, keep, cx)?;
                    let hidden = m.hidden_of(&layout, live).map_err(err)?;
                    forwards.insert(key.clone(), (layout, hidden));
                }
                let (layout, hidden) = &forwards[&key];
                let m = cx.models.get(&name, live)?;
                let value = match signal {
                    Signal::Logp => m.token_logp(hidden, layout, cx.temperature),
                    Signal::Entropy => m.token_entropy(hidden, layout, cx.temperature),
                    Signal::SumP2 => m.token_sum_p2(hidden, layout, cx.temperature),
                    Signal::Values => m.token_values(hidden, layout),
                    Signal::KeepProb => m
                        .token_logp(hidden, layout, 1.0)
                        .and_then(|l| l.exp())
                        .and_then(|p| p.mul(&layout.text_mask)),
                }
                .map_err(err)?;
                let what = match signal {
                    Signal::Logp => "log-probabilities",
                    Signal::Entropy => "entropies",
                    Signal::SumP2 => "squared-probability sums",
                    Signal::Values => "values",
                    Signal::KeepProb => "keep-probabilities",
                };
                model_output_finite(&value, &layout.text_mask, &name, what, text)?;
                value
            }
            SourceKind::Score { scorer: ScorerRef::Model(m), text, head: Some(head) } => {
                let t = rows.texts.get(text).ok_or_else(|| format!("no text `{text}`"))?;
                let value = answer_score(cx.models.get(m, grad)?, head, m, t, grad, cx)?;
                model_output_finite(&value, &value.ones_like().map_err(err)?, m, "score", text)?;
                value
            }
            SourceKind::Score { scorer: ScorerRef::Model(m), text, head: None } => {
                let key = (m.clone(), grad, text.clone(), false);
                if !forwards.contains_key(&key) {
                    let model = cx.models.get(m, grad)?;
                    let layout = layout_for(rows, text, false, cx)?;
                    let hidden = model.hidden_of(&layout, grad).map_err(err)?;
                    forwards.insert(key.clone(), (layout, hidden));
                }
                let (layout, hidden) = &forwards[&key];
                let value = cx.models.get(m, grad)?.score(hidden, layout).map_err(err)?;
                model_output_finite(&value, &value.ones_like().map_err(err)?, m, "score", text)?;
                value
            }
            SourceKind::Score {
                scorer: scorer @ (ScorerRef::Verifier { .. } | ScorerRef::External { .. }),
                text,
                ..
            } => {
                let t = rows.texts.get(text).ok_or_else(|| format!("no text `{text}`"))?;
                let responses: Vec<String> =
                    t.toks.iter().map(|toks| cx.tok.decode(toks)).collect();
                let prompts: Vec<&str> = rows.prompts.iter().map(String::as_str).collect();
                let responses: Vec<&str> = responses.iter().map(String::as_str).collect();
                let scorers = HostScorers { tasks: cx.tasks, rewards: cx.rewards };
                let v = scorers.score(scorer, &prompts, &responses)?;
                Tensor::from_vec(v, rows.len(), cx.device).map_err(err)?
            }
            SourceKind::StepRollouts { .. } => continue,
        };
        out.insert(s.name.clone(), if grad { value } else { value.detach() });
    }
    Ok(out)
}

/// A `yes_no(...)` model's score of each row of `text`: `Σ log p(yes) − Σ log p(no)` after
/// `context text question`, at temperature 1.
pub(crate) fn answer_score(
    model: &Transformer,
    head: &YesNoHead,
    name: &str,
    text: &TextRows,
    grad: bool,
    cx: &SignalCx,
) -> Result<Tensor, String> {
    let tokens = head.tokens(cx.tok, name)?;
    let [yes, no] = text.answered(&tokens);
    let logp = |a: &TextRows| -> Result<Tensor, String> {
        let ctx: Vec<&[u32]> = a.ctx.iter().map(Vec::as_slice).collect();
        let toks: Vec<&[u32]> = a.toks.iter().map(Vec::as_slice).collect();
        let width = toks.first().map_or(1, |t| t.len());
        let layout = Layout::with_text_len(&ctx, &toks, width, cx.device).map_err(err)?;
        let hidden = model.hidden_of(&layout, grad).map_err(err)?;
        model.token_logp(&hidden, &layout, 1.0).and_then(|l| l.sum(1)).map_err(err)
    };
    (logp(&yes)? - logp(&no)?).map_err(err)
}

/// A model's output must be finite on real tokens: when it is not, the model (not the batch)
/// is what went wrong, and the message says so.
fn model_output_finite(
    value: &Tensor,
    mask: &Tensor,
    model: &str,
    what: &str,
    text: &str,
) -> Result<(), String> {
    let real = mask
        .ne(0.0)
        .and_then(|keep| keep.where_cond(value, &value.zeros_like()?))
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.sum_all())
        .and_then(|t| t.to_scalar::<f32>())
        .map_err(err)?;
    if real.is_finite() {
        return Ok(());
    }
    Err(format!(
        "the model `{model}` produced non-finite {what} on `{text}`: its forward pass overflowed (weights grown too large by the updates? lower the learning rate)"
    ))
}

impl TextRows {
    /// The two texts a Yes/No reward model scores each row by: `context text question`
    /// followed by each answer.
    pub fn answered(&self, head: &YesNoTokens) -> [TextRows; 2] {
        let asked = head.asked(&self.ctx, &self.toks);
        let rows = |answer: &Vec<u32>| TextRows {
            ctx: asked.clone(),
            toks: vec![answer.clone(); asked.len()],
        };
        [rows(&head.yes), rows(&head.no)]
    }

    /// Each row's `context text <sep>`: what a rewriter reads before its rewrite (and before
    /// the text again, for keep-probabilities).
    pub fn then_sep(&self, sep: u32) -> Vec<Vec<u32>> {
        self.ctx
            .iter()
            .zip(&self.toks)
            .map(|(c, x)| [c.as_slice(), x.as_slice(), &[sep]].concat())
            .collect()
    }
}

/// The layout of a text after its context; for keep-probabilities, after `context text <sep>`.
fn layout_for(rows: &Rows, text: &str, keep: bool, cx: &SignalCx) -> Result<Layout, String> {
    let t = rows.texts.get(text).ok_or_else(|| format!("the batch has no text `{text}`"))?;
    let ctx: Vec<Vec<u32>> = if keep { t.then_sep(cx.tok.sep) } else { t.ctx.clone() };
    let ctx_refs: Vec<&[u32]> = ctx.iter().map(Vec::as_slice).collect();
    let toks: Vec<&[u32]> = t.toks.iter().map(Vec::as_slice).collect();
    let w = cx.widths.get(text).copied().unwrap_or(1);
    Layout::with_text_len(&ctx_refs, &toks, w, cx.device).map_err(err)
}

/// Slices row-wise tensors (`[B]`, `[B, T]`) to the rows `idx`.
pub fn slice_rows(t: &Tensor, idx: &Tensor) -> candle_core::Result<Tensor> {
    t.index_select(idx, 0)
}

/// A `[B, S]` step-level tensor narrowed to the steps of the minibatch's rows.
pub fn narrow_steps(t: &Tensor, step_ids: &Tensor) -> candle_core::Result<Tensor> {
    let s = step_ids.max_all()?.to_dtype(DType::I64)?.to_scalar::<i64>()?.max(0) as usize + 1;
    t.narrow(1, 0, s.min(t.dim(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The score as the local engine computes it, against the candle engine's log-probabilities
    /// of each answer and against its hand-computable gradient: with one-token answers,
    /// ∂score/∂(final norm's bias) = W_yes − W_no, the two unembedding columns.
    #[test]
    fn the_local_score_is_the_answers_log_probability_difference_with_its_exact_gradient() {
        use std::collections::HashMap;

        use candle_core::Device;

        use crate::engine::Seq;
        use crate::model::transformer::{Heads, init_params};
        use crate::model::{ModelConfig, Transformer};
        use crate::rng::Rng;
        use crate::train::yes_no::tests::{head, tok};

        let tok = tok();
        let cfg = ModelConfig {
            vocab: tok.vocab_size(),
            layers: 2,
            width: 16,
            heads: 2,
            context: 32,
            family: Default::default(),
            classifier_pad: None,
        };
        let heads = Heads { lm: true, ..Default::default() };
        let params = init_params(&cfg, heads, &mut Rng::new(7), &Device::Cpu).unwrap();
        for (_, v) in params.iter() {
            v.set(&(v.as_tensor() * 20.0).unwrap()).unwrap();
        }
        let model = Transformer::from_params(&cfg, &params).unwrap();
        let head = head(" the food was", " great", " bad");
        let t = head.tokens(&tok, "rm").unwrap();
        // Two rows of different lengths (the shorter is padded).
        let text = TextRows {
            ctx: vec![tok.prompt(" the food"), tok.prompt(" the")],
            toks: vec![tok.response(" was great . the"), tok.response(" food")],
        };
        let empty = HashMap::new();
        let (tasks, rewards, widths) = (HashMap::new(), Default::default(), HashMap::new());
        let cx = SignalCx {
            models: ModelView { live: &empty, frozen: &empty },
            temperature: 0.7,
            tasks: &tasks,
            rewards: &rewards,
            tok: &tok,
            device: &Device::Cpu,
            widths: &widths,
            frozen_only: false,
            old_is: None,
        };
        let score = answer_score(&model, &head, "rm", &text, true, &cx).unwrap();
        let got = score.to_vec1::<f32>().unwrap();
        let frozen = Transformer::frozen(&cfg, &params).unwrap();
        let [yes, no] = text.answered(&t);
        let logp = |a: &TextRows| -> Vec<f32> {
            let seqs: Vec<Seq> = a
                .ctx
                .iter()
                .zip(&a.toks)
                .map(|(c, x)| Seq { ctx: c.clone(), toks: x.clone() })
                .collect();
            let lp = crate::engine::candle::text_logp(&frozen, &seqs, &Device::Cpu).unwrap();
            lp.iter().map(|r| r.iter().sum()).collect()
        };
        let (y, n) = (logp(&yes), logp(&no));
        for i in 0..2 {
            // At temperature 1 whatever the stage samples at.
            let tol = 1e-5 * y[i].abs().max(n[i].abs()).max(1.0);
            assert!((got[i] - (y[i] - n[i])).abs() < tol, "{got:?} vs {y:?} − {n:?}");
        }
        assert!(got.iter().all(|s| s.abs() > 1e-3), "a score of 0 checks nothing: {got:?}");
        let grads = score.sum_all().unwrap().backward().unwrap();
        let bias = grads.get(params.get("ln_f.bias").unwrap().as_tensor()).unwrap();
        let w = params.get("lm_head.weight").unwrap().as_tensor();
        let column = |id: u32| w.narrow(1, id as usize, 1).unwrap().squeeze(1).unwrap();
        let expected = ((column(t.yes[0]) - column(t.no[0])).unwrap() * 2.0).unwrap();
        let diff = (bias - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "∂score/∂ln_f.bias ≠ 2 (W_yes − W_no)");
    }
}
