//! The executor: evaluates a checked stage's objective on candle tensors, in topological order,
//! each node once, only what the loss reads. A failing or non-finite node becomes a diagnostic
//! that points at its place in the recipe.

pub mod device;
mod inputs;
pub mod synthetic;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use petgraph::stable_graph::NodeIndex;

use crate::blocks::ctx::{Arg, Ctx, StepsData, TextData, Value};
use crate::blocks::spec::Level;
use crate::check::{Checked, Ty};
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::*;
pub use inputs::{Dim, Kind, Requirement, requirements};

/// A loss term: a top-level summand of the loss.
#[derive(Debug, Clone)]
pub struct Term {
    /// Its binding name, or `term1`, `term2`, ….
    pub name: String,
    /// How the recipe writes it.
    pub expr: String,
    /// +1 or −1: how it enters the loss.
    pub sign: f64,
    pub value: Tensor,
}

/// What an evaluation produces.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub loss: Tensor,
    pub terms: Vec<Term>,
    /// Every named binding the loss reads, by name.
    pub bindings: Vec<(String, Tensor)>,
    /// The gradient of the loss with respect to each differentiable input, by input name.
    pub grads: Vec<(String, Tensor)>,
    /// With `Options::profile`: milliseconds spent on each node (forward only), in order, and on
    /// the backward pass as `backward`.
    pub profile: Vec<(String, f64)>,
}

impl Evaluation {
    /// Everything as named tensors: bindings, `loss`, `loss.TERM`, `grad.INPUT`.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self.bindings.iter().cloned().collect();
        out.insert("loss".into(), self.loss.clone());
        for t in &self.terms {
            out.insert(format!("loss.{}", t.name), t.value.clone());
        }
        for (name, g) in &self.grads {
            out.insert(format!("grad.{name}"), g.clone());
        }
        out
    }
}

/// Evaluation settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Back-propagate and return gradients.
    pub grads: bool,
    /// Time every node (synchronises the device after each one).
    pub profile: bool,
}

/// The index of a stage by name, or the last stage.
pub fn stage_index(checked: &Checked, name: Option<&str>) -> Option<usize> {
    match name {
        Some(n) => checked.program.stages.iter().position(|s| s.name.name == n),
        None => checked.program.stages.len().checked_sub(1),
    }
}

/// Evaluates stage `index` of a checked recipe on `batch`.
pub fn evaluate(
    checked: &Checked,
    index: usize,
    batch: &HashMap<String, Tensor>,
    device: &Device,
    options: Options,
) -> Result<Evaluation, Diagnostic> {
    let stage = &checked.program.stages[index];
    let cs = &checked.stages[index];
    let batch = inputs::validate(checked, index, batch)?;
    let batch: HashMap<String, Tensor> = batch
        .into_iter()
        .map(|(k, t)| t.to_device(device).map(|t| (k, t)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| internal(stage.name.span, &e.to_string()))?;
    let loss_node = stage.loss.ok_or_else(|| internal(stage.name.span, "the stage has no loss"))?;
    let order = inputs::demanded(stage);
    let texts = Texts { batch: &batch };
    let mut values: HashMap<NodeIndex, Value> = HashMap::new();
    let mut vars: Vec<(String, Var)> = Vec::new();
    let groups = batch.get("group");
    let mut profile = Vec::new();
    for &n in &order {
        let started = options.profile.then(std::time::Instant::now);
        let node = &stage.graph[n];
        let fail = |e: candle_core::Error| node_error(stage, n, &e.to_string());
        let value = match &node.op {
            Op::Const(v) => Value::Tensor(Tensor::new(*v as f32, device).map_err(fail)?),
            Op::Text(t) => Value::Text(texts.get(t)),
            Op::Rewrite { model } => Value::Text(texts.get(&inputs::rewrite_text(stage, n, model))),
            Op::Scorer(s) => Value::Scorer(s.display()),
            Op::Signal { .. } | Op::Score(_) => {
                let name = inputs::source_name(stage, n).unwrap_or_default();
                let t = batch.get(&name).ok_or_else(|| {
                    internal(node.span, &format!("`{name}` was validated but is absent"))
                })?;
                if cs.types.get(&n).is_some_and(Ty::has_grad) && options.grads {
                    let var = Var::from_tensor(t).map_err(fail)?;
                    let t = var.as_tensor().clone();
                    vars.push((name, var));
                    Value::Tensor(t)
                } else {
                    Value::Tensor(t.clone())
                }
            }
            Op::Block { spec, .. }
                if matches!(spec.demand, crate::blocks::spec::Demand::StepRollouts { .. }) =>
            {
                let t = batch
                    .get(spec.name)
                    .ok_or_else(|| internal(node.span, "rollout values are absent"))?;
                Value::Tensor(t.clone())
            }
            Op::Block { spec, .. } => {
                let forward = spec.forward.ok_or_else(|| {
                    internal(node.span, &format!("`{}` has no forward", spec.name))
                })?;
                let wires = inputs(&stage.graph, n);
                let masks: Vec<Option<Tensor>> =
                    wires.iter().map(|i| axis_mask(cs.types.get(i), &values, &texts, *i)).collect();
                let args: Vec<Arg> = wires
                    .iter()
                    .zip(&masks)
                    .map(|(i, m)| Arg {
                        value: &values[i],
                        level: level_of(cs.types.get(i)),
                        mask: m.as_ref(),
                    })
                    .collect();
                let out_mask = axis_mask(cs.types.get(&n), &values, &texts, n);
                let params = cs.params.get(&n).map(Vec::as_slice).unwrap_or(&[]);
                let ctx = Ctx {
                    device,
                    args,
                    params,
                    level: level_of(cs.types.get(&n)).unwrap_or(Level::Scalar),
                    mask: out_mask.as_ref(),
                    groups,
                };
                forward(&ctx).map_err(fail)?
            }
        };
        check_shape(stage, n, cs.types.get(&n), &value, &values, &texts)?;
        if let Some(started) = started {
            device.synchronize().map_err(|e| internal(node.span, &e.to_string()))?;
            let label = match node.names.first() {
                Some(name) => format!("{name} = {}", node.op.label()),
                None => node.op.label(),
            };
            profile.push((label, started.elapsed().as_secs_f64() * 1e3));
        }
        values.insert(n, value);
    }
    let loss = match values.get(&loss_node) {
        Some(Value::Tensor(t)) => t.clone(),
        _ => return Err(internal(stage.loss_span, "the loss is not a tensor")),
    };
    if non_finite(&loss).is_some() {
        return Err(first_non_finite(stage, &order, &values));
    }
    let mut grads = Vec::new();
    if options.grads && !vars.is_empty() {
        let started = options.profile.then(std::time::Instant::now);
        let store = loss.backward().map_err(|e| node_error(stage, loss_node, &e.to_string()))?;
        if let Some(started) = started {
            device.synchronize().map_err(|e| internal(stage.loss_span, &e.to_string()))?;
            profile.push(("backward".into(), started.elapsed().as_secs_f64() * 1e3));
        }
        for (name, var) in &vars {
            let g = match store.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var
                    .as_tensor()
                    .zeros_like()
                    .map_err(|e| internal(stage.loss_span, &e.to_string()))?,
            };
            if let Some(what) = non_finite(&g) {
                return Err(Diagnostic::error("non-finite-gradient", format!("the gradient of the loss with respect to `{name}` contains {what}"))
                    .primary(stage.loss_span, "back-propagated from this loss")
                    .help("look for log, sqrt or division of values that reach 0 (also at masked positions), or exp of large log-ratios"));
            }
            grads.push((name.clone(), g));
        }
    }
    let terms = loss_terms(stage, cs, loss_node, &values);
    let mut bindings = Vec::new();
    for &n in &order {
        if let (Some(name), Some(Value::Tensor(t))) = (stage.graph[n].names.first(), values.get(&n))
        {
            bindings.push((name.clone(), t.clone()));
        }
    }
    Ok(Evaluation { loss, terms, bindings, grads, profile })
}

/// Texts of the batch, by name.
struct Texts<'a> {
    batch: &'a HashMap<String, Tensor>,
}

impl Texts<'_> {
    fn get(&self, name: &str) -> TextData {
        let mask = self.batch.get(&inputs::mask_name(name)).cloned().unwrap_or_else(|| {
            Tensor::zeros(0, DType::F32, &Device::Cpu).expect("an empty tensor")
        });
        TextData {
            name: name.to_string(),
            mask,
            tokens: self.batch.get(&inputs::tokens_name(name)).cloned(),
            step_ids: self.batch.get(&inputs::step_ids_name(name)).cloned(),
        }
    }
}

fn level_of(ty: Option<&Ty>) -> Option<Level> {
    match ty {
        Some(Ty::Tensor { level, .. }) => Some(*level),
        _ => None,
    }
}

/// The mask of a node's axis: tokens of its text, or the steps of its text's segmentation.
fn axis_mask(
    ty: Option<&Ty>,
    values: &HashMap<NodeIndex, Value>,
    texts: &Texts,
    n: NodeIndex,
) -> Option<Tensor> {
    match ty {
        Some(Ty::Tensor { level: Level::Token, text: Some(t), .. }) => Some(texts.get(t).mask),
        Some(Ty::Tensor { level: Level::Step, text: Some(t), .. }) => {
            let _ = n;
            step_mask(values, t)
                .or_else(|| texts.get(t).step_ids.and_then(|ids| steps_mask_from_ids(&ids).ok()))
        }
        _ => None,
    }
}

fn step_mask(values: &HashMap<NodeIndex, Value>, text: &str) -> Option<Tensor> {
    values.values().find_map(|v| match v {
        Value::Steps(StepsData { text: t, mask, .. }) if t == text => Some(mask.clone()),
        _ => None,
    })
}

fn steps_mask_from_ids(ids: &Tensor) -> candle_core::Result<Tensor> {
    let rows = ids.to_vec2::<i64>()?;
    let counts: Vec<i64> = rows.iter().map(|r| r.iter().copied().max().unwrap_or(-1) + 1).collect();
    let width = counts.iter().copied().max().unwrap_or(0).max(1) as usize;
    let flat: Vec<f32> = counts
        .iter()
        .flat_map(|c| (0..width).map(move |j| if (j as i64) < *c { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(flat, (rows.len(), width), ids.device())
}

/// A node's tensor must have the shape its level promises.
fn check_shape(
    stage: &StageIr,
    n: NodeIndex,
    ty: Option<&Ty>,
    value: &Value,
    values: &HashMap<NodeIndex, Value>,
    texts: &Texts,
) -> Result<(), Diagnostic> {
    let (Some(Ty::Tensor { level, .. }), Value::Tensor(t)) = (ty, value) else { return Ok(()) };
    let expected: Option<Vec<usize>> = match level {
        Level::Scalar => Some(vec![]),
        Level::Seq => None, // [B]: rank checked below
        Level::Token | Level::Step => axis_mask(ty, values, texts, n).map(|m| m.dims().to_vec()),
    };
    let ok = match (level, &expected) {
        (Level::Seq, _) => t.rank() == 1,
        (_, Some(dims)) => t.dims() == dims.as_slice(),
        (_, None) => true,
    };
    if ok {
        return Ok(());
    }
    let want = match (level, expected) {
        (Level::Seq, _) => "[B]".to_string(),
        (_, Some(d)) => format!("{d:?}"),
        _ => "?".into(),
    };
    Err(Diagnostic::error(
        "shape-error",
        format!(
            "`{}` produced shape {:?}, expected {want} for a {level} value",
            stage.graph[n].op.label(),
            t.dims()
        ),
    )
    .primary(stage.graph[n].span, "computed here")
    .help("check the shapes of the batch inputs this value reads (`rlx eval` lists them)"))
}

/// Which of NaN and inf a tensor holds, if any. One reduction on the device; the elements are
/// read only when the sum is not finite (NaN and inf both poison a sum).
fn non_finite(t: &Tensor) -> Option<&'static str> {
    let sum =
        t.to_dtype(DType::F32).and_then(|t| t.sum_all()).and_then(|s| s.to_scalar::<f32>()).ok()?;
    if sum.is_finite() {
        return None;
    }
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .ok()?;
    if v.iter().any(|x| x.is_nan()) {
        Some("NaN")
    } else if v.iter().any(|x| x.is_infinite()) {
        Some("inf")
    } else {
        Some("values too large to sum")
    }
}

/// The first node (in evaluation order) whose value is not finite, as a diagnostic.
fn first_non_finite(
    stage: &StageIr,
    order: &[NodeIndex],
    values: &HashMap<NodeIndex, Value>,
) -> Diagnostic {
    for &n in order {
        let Some(Value::Tensor(t)) = values.get(&n) else { continue };
        let Some(what) = non_finite(t) else { continue };
        let node = &stage.graph[n];
        let name = node.names.first().map(|b| format!(" (`{b}`)")).unwrap_or_default();
        let is_input = matches!(node.op, Op::Signal { .. } | Op::Score(_));
        let mut d = Diagnostic::error(
            "non-finite-value",
            format!("`{}`{name} produced {what}", node.op.label()),
        )
        .primary(
            node.span,
            if is_input { "this batch input is not finite" } else { "first non-finite value" },
        );
        for (i, span) in wires(&stage.graph, n) {
            if values.get(&i).and_then(|v| v.tensor()).is_some_and(|t| non_finite(t).is_none()) {
                d = d.secondary(span, "finite");
            }
        }
        return d.help(if is_input {
            "the batch itself holds a non-finite value here"
        } else {
            "its inputs are finite: look for log or sqrt of values ≤ 0, division by 0, or exp of large log-ratios"
        });
    }
    Diagnostic::error("non-finite-value", "the loss is not finite").primary(stage.loss_span, "here")
}

fn loss_terms(
    stage: &StageIr,
    cs: &crate::check::CheckedStage,
    loss: NodeIndex,
    values: &HashMap<NodeIndex, Value>,
) -> Vec<Term> {
    let mut acc = Vec::new();
    collect_terms(stage, loss, 1.0, &mut acc);
    if acc.len() < 2 {
        return vec![];
    }
    acc.into_iter()
        .enumerate()
        .filter_map(|(i, (n, sign))| {
            let value = values.get(&n)?.tensor()?.clone();
            let name =
                stage.graph[n].names.first().cloned().unwrap_or_else(|| format!("term{}", i + 1));
            Some(Term { name, expr: crate::graph_view::expr_text(stage, cs, n, true), sign, value })
        })
        .collect()
}

fn collect_terms(stage: &StageIr, n: NodeIndex, sign: f64, acc: &mut Vec<(NodeIndex, f64)>) {
    let ins = inputs(&stage.graph, n);
    match &stage.graph[n].op {
        Op::Block { spec, .. } if spec.name == "add" && stage.graph[n].names.is_empty() => {
            collect_terms(stage, ins[0], sign, acc);
            collect_terms(stage, ins[1], sign, acc);
        }
        Op::Block { spec, .. } if spec.name == "sub" && stage.graph[n].names.is_empty() => {
            collect_terms(stage, ins[0], sign, acc);
            collect_terms(stage, ins[1], -sign, acc);
        }
        _ => acc.push((n, sign)),
    }
}

fn node_error(stage: &StageIr, n: NodeIndex, message: &str) -> Diagnostic {
    let node = &stage.graph[n];
    Diagnostic::error("block-error", format!("`{}` failed: {message}", node.op.label()))
        .primary(node.span, "while computing this")
        .help("check the batch inputs it reads; `rlx eval` lists their names and shapes")
}

fn internal(span: Span, message: &str) -> Diagnostic {
    Diagnostic::error("internal-error", format!("internal error: {message}"))
        .primary(span, "here")
        .help("this is a bug in rlx, not in the recipe; please report it")
}
