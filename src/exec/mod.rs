//! The executor: evaluates a checked stage's objective on candle tensors, in topological order,
//! each node once, only what the loss reads. A failing or non-finite node becomes a diagnostic
//! that points at its place in the recipe.

pub mod device;
mod inputs;
pub mod synthetic;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use petgraph::stable_graph::NodeIndex;

use crate::blocks::ctx::{Arg, Ctx, TextData, Value};
use crate::blocks::spec::Level;
use crate::check::{Checked, Ty};
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::*;
pub(crate) use inputs::demanded as demanded_nodes;
pub use inputs::{Dim, Kind, Requirement, mask_name, requirements, source_name};

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

/// Evaluates stage `index` of a checked recipe on `batch`. To evaluate the same stage many
/// times, compile it once with [`Compiled::new`].
pub fn evaluate(
    checked: &Checked,
    index: usize,
    batch: &HashMap<String, Tensor>,
    device: &Device,
    options: Options,
) -> Result<Evaluation, Diagnostic> {
    Compiled::new(checked, index).run(batch, device, options)
}

/// A node's axis: the tokens or the steps of a text.
#[derive(Debug, Clone)]
enum Axis {
    Tokens(String),
    Steps(String),
}

/// A stage prepared for repeated evaluation: what to compute, in which order, reading which
/// batch inputs, on which axes. Nothing here depends on the batch.
#[derive(Debug)]
pub struct Compiled<'a> {
    checked: &'a Checked,
    index: usize,
    order: Vec<NodeIndex>,
    requirements: Vec<Requirement>,
    /// Per node: its batch input name (sources), its level and its axis.
    sources: HashMap<NodeIndex, String>,
    levels: HashMap<NodeIndex, Option<Level>>,
    axes: HashMap<NodeIndex, Axis>,
    /// Per node: its inputs, in position order.
    wires: HashMap<NodeIndex, Vec<NodeIndex>>,
    /// Texts the graph reads (including rewrites), by name.
    texts: Vec<String>,
    /// Bindings the batch supplies instead of the graph computing them, by node.
    given: HashMap<NodeIndex, String>,
    /// The float dtype of the evaluation (f32; f64 for conformance checks).
    dtype: DType,
    /// The loss's top-level summands (none for a single term): node, name, text and sign.
    terms: Vec<(NodeIndex, String, String, f64)>,
}

impl<'a> Compiled<'a> {
    pub fn new(checked: &'a Checked, index: usize) -> Compiled<'a> {
        let stage = &checked.program.stages[index];
        let cs = &checked.stages[index];
        let order = inputs::demanded(stage);
        let mut sources = HashMap::new();
        let mut levels = HashMap::new();
        let mut axes = HashMap::new();
        let mut texts: Vec<String> = Vec::new();
        let wires = order.iter().map(|&n| (n, inputs(&stage.graph, n))).collect();
        for &n in &order {
            if let Some(name) = inputs::source_name(stage, n) {
                sources.insert(n, name);
            }
            let ty = cs.types.get(&n);
            levels.insert(n, level_of(ty));
            match ty {
                Some(Ty::Tensor { level: Level::Token, text: Some(t), .. }) => {
                    axes.insert(n, Axis::Tokens(t.clone()));
                }
                Some(Ty::Tensor { level: Level::Step, text: Some(t), .. }) => {
                    axes.insert(n, Axis::Steps(t.clone()));
                }
                _ => {}
            }
            let text = match (&stage.graph[n].op, ty) {
                (Op::Text(t), _) => Some(t.to_string()),
                (Op::Rewrite { .. }, Some(Ty::Text(t))) => Some(t.clone()),
                _ => None,
            };
            if let Some(t) = text.filter(|t| !texts.contains(t)) {
                texts.push(t);
            }
        }
        Compiled {
            checked,
            index,
            order,
            requirements: requirements(checked, index),
            sources,
            levels,
            axes,
            wires,
            texts,
            given: HashMap::new(),
            dtype: DType::F32,
            terms: stage.loss.map(|loss| loss_terms(stage, cs, loss)).unwrap_or_default(),
        }
    }

    /// The stage with every `let` binding named in `names` read from the batch instead of
    /// computed (a reward, an advantage: what a conformance check feeds in), and what only
    /// those bindings needed no longer read.
    pub fn with_given_bindings(mut self, names: &[&str]) -> Compiled<'a> {
        let stage = &self.checked.program.stages[self.index];
        self.given = stage
            .bindings
            .iter()
            .filter(|b| names.contains(&b.name.name.as_str()))
            .filter_map(|b| b.node.map(|n| (n, b.name.name.clone())))
            .filter(|(n, _)| self.order.contains(n))
            .collect();
        let cut = self.given.keys().copied().collect();
        self.order = inputs::demanded_with(stage, &cut);
        self.requirements = inputs::requirements_with(self.checked, self.index, &self.given);
        self
    }

    /// Evaluates in `dtype` (f64 to compare long sums with a float64 reference at 1e-10).
    pub fn with_dtype(mut self, dtype: DType) -> Compiled<'a> {
        self.dtype = dtype;
        self
    }

    /// The inputs the stage reads.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Evaluates the stage on `batch`.
    pub fn run(
        &self,
        batch: &HashMap<String, Tensor>,
        device: &Device,
        options: Options,
    ) -> Result<Evaluation, Diagnostic> {
        self.run_with(batch, device, options, &HashMap::new()).map(|(e, _)| e)
    }

    /// The nodes a trainer computes once per rollout batch and then slices into minibatches:
    /// per-sequence, per-token or per-step values without gradient (rewards, advantages,
    /// returns, group statistics), except what depends on a `scope = minibatch` statistic.
    /// Scalars are recomputed per minibatch (a `count_nonzero` must count the minibatch it
    /// divides).
    pub fn rollout_nodes(&self) -> Vec<NodeIndex> {
        let stage = &self.checked.program.stages[self.index];
        let cs = &self.checked.stages[self.index];
        let mut per_minibatch: std::collections::HashSet<NodeIndex> = Default::default();
        let mut out = Vec::new();
        for &n in &self.order {
            let scoped = cs.params.get(&n).is_some_and(|p| {
                crate::check::params::get(p, "scope").and_then(|v| v.str()) == Some("minibatch")
            });
            if scoped || self.wires[&n].iter().any(|i| per_minibatch.contains(i)) {
                per_minibatch.insert(n);
                continue;
            }
            let ty = cs.types.get(&n);
            let rowwise = matches!(
                ty,
                Some(Ty::Tensor {
                    level: Level::Seq | Level::Token | Level::Step,
                    grad: false,
                    ..
                })
            );
            if rowwise && matches!(stage.graph[n].op, Op::Block { .. }) {
                out.push(n);
            }
        }
        out
    }

    /// Whether node `n` is a step-level value (its columns are the steps of a text).
    pub fn is_step_level(&self, n: NodeIndex) -> bool {
        matches!(self.axes.get(&n), Some(Axis::Steps(_)))
    }

    /// Evaluates the stage on `batch`, taking the nodes in `given` as computed. Returns the
    /// evaluation and every node's tensor value.
    pub fn run_with(
        &self,
        batch: &HashMap<String, Tensor>,
        device: &Device,
        options: Options,
        given: &HashMap<NodeIndex, Tensor>,
    ) -> Result<(Evaluation, HashMap<NodeIndex, Tensor>), Diagnostic> {
        let (checked, index) = (self.checked, self.index);
        let stage = &checked.program.stages[index];
        let cs = &checked.stages[index];
        let batch = inputs::validate(checked, index, &self.requirements, batch, self.dtype)?;
        let batch: HashMap<String, Tensor> = batch
            .into_iter()
            .map(|(k, t)| t.to_device(device).map(|t| (k, t)))
            .collect::<candle_core::Result<_>>()
            .map_err(|e| internal(stage.name.span, &e.to_string()))?;
        let loss_node =
            stage.loss.ok_or_else(|| internal(stage.name.span, "the stage has no loss"))?;
        // Texts and masks, once per call.
        let texts: HashMap<&str, TextData> =
            self.texts.iter().map(|t| (t.as_str(), text_data(&batch, t))).collect();
        let mut token_masks: HashMap<String, Tensor> = HashMap::new();
        let mut step_masks: HashMap<String, Tensor> = HashMap::new();
        for axis in self.axes.values() {
            match axis {
                Axis::Tokens(t) if !token_masks.contains_key(t) => {
                    if let Some(m) = batch.get(&inputs::mask_name(t)) {
                        token_masks.insert(t.clone(), m.clone());
                    }
                }
                Axis::Steps(t) if !step_masks.contains_key(t) => {
                    if let Some(ids) = batch.get(&inputs::step_ids_name(t)) {
                        let m = crate::blocks::ctx::host::step_mask(ids)
                            .map_err(|e| internal(stage.name.span, &e.to_string()))?;
                        step_masks.insert(t.clone(), m);
                    }
                }
                _ => {}
            }
        }
        let mask_of = |n: &NodeIndex| -> Option<&Tensor> {
            match self.axes.get(n)? {
                Axis::Tokens(t) => token_masks.get(t),
                Axis::Steps(t) => step_masks.get(t),
            }
        };
        let mut values: HashMap<NodeIndex, Value> = HashMap::new();
        let mut vars: Vec<(String, Var)> = Vec::new();
        let groups = batch.get("group");
        let mut profile = Vec::new();
        for &n in &self.order {
            let started = options.profile.then(std::time::Instant::now);
            let node = &stage.graph[n];
            let fail = |e: candle_core::Error| node_error(stage, n, &e.to_string());
            let value = match &node.op {
                _ if given.contains_key(&n) => Value::Tensor(given[&n].clone()),
                _ if self.given.contains_key(&n) => {
                    let name = &self.given[&n];
                    let t = batch.get(name).ok_or_else(|| {
                        internal(node.span, &format!("`{name}` was validated but is absent"))
                    })?;
                    let grad = options.grads && cs.types.get(&n).is_some_and(Ty::has_grad);
                    Value::Tensor(input(t, name, grad, &mut vars).map_err(fail)?)
                }
                Op::Const(v) => Value::Tensor(
                    Tensor::new(*v, device).and_then(|t| t.to_dtype(self.dtype)).map_err(fail)?,
                ),
                Op::Text(t) => {
                    Value::Text(texts.get(*t).cloned().unwrap_or_else(|| text_data(&batch, t)))
                }
                Op::Rewrite { .. } => match cs.types.get(&n) {
                    Some(Ty::Text(t)) => Value::Text(
                        texts.get(t.as_str()).cloned().unwrap_or_else(|| text_data(&batch, t)),
                    ),
                    _ => return Err(internal(node.span, "a rewrite without a text type")),
                },
                Op::Scorer(s) => Value::Scorer(s.display()),
                Op::Signal { .. } | Op::Score(_) | Op::Block { .. }
                    if self.sources.contains_key(&n) =>
                {
                    let name = &self.sources[&n];
                    let t = batch.get(name).ok_or_else(|| {
                        internal(node.span, &format!("`{name}` was validated but is absent"))
                    })?;
                    check_input_finite(node, name, t, mask_of(&n))?;
                    let grad = options.grads && cs.types.get(&n).is_some_and(Ty::has_grad);
                    Value::Tensor(input(t, name, grad, &mut vars).map_err(fail)?)
                }
                Op::Signal { .. } | Op::Score(_) => {
                    return Err(internal(node.span, "a source without a batch name"));
                }
                Op::Block { spec, .. } => {
                    let forward = spec.forward.ok_or_else(|| {
                        internal(node.span, &format!("`{}` has no forward", spec.name))
                    })?;
                    let args: Vec<Arg> = self.wires[&n]
                        .iter()
                        .map(|i| Arg {
                            value: &values[i],
                            level: self.levels.get(i).copied().flatten(),
                            mask: mask_of(i),
                        })
                        .collect();
                    let params = cs.params.get(&n).map(Vec::as_slice).unwrap_or(&[]);
                    let ctx = Ctx {
                        device,
                        args,
                        params,
                        level: self.levels.get(&n).copied().flatten().unwrap_or(Level::Scalar),
                        mask: mask_of(&n),
                        groups,
                    };
                    forward(&ctx).map_err(fail)?
                }
            };
            check_shape(stage, n, self.levels.get(&n).copied().flatten(), &value, mask_of(&n))?;
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
            return Err(first_non_finite(stage, &self.order, &values));
        }
        let mut grads = Vec::new();
        if options.grads && !vars.is_empty() {
            let started = options.profile.then(std::time::Instant::now);
            let store =
                loss.backward().map_err(|e| node_error(stage, loss_node, &e.to_string()))?;
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
                    return Err(Diagnostic::error(
                        "non-finite-gradient",
                        format!("the gradient of the loss with respect to `{name}` contains {what}"),
                    )
                    .primary(stage.loss_span, "back-propagated from this loss")
                    .help("look for log, sqrt or division of values that reach 0 (also at masked positions), or exp of large log-ratios"));
                }
                grads.push((name.clone(), g));
            }
        }
        let terms = self
            .terms
            .iter()
            .filter_map(|(n, name, expr, sign)| {
                let value = values.get(n)?.tensor()?.clone();
                Some(Term { name: name.clone(), expr: expr.clone(), sign: *sign, value })
            })
            .collect();
        // Every name a node has: `let a = b` writes both `a` and `b`.
        let mut bindings = Vec::new();
        for &n in &self.order {
            if let Some(Value::Tensor(t)) = values.get(&n) {
                for name in &stage.graph[n].names {
                    bindings.push((name.clone(), t.clone()));
                }
            }
        }
        let tensors = values
            .into_iter()
            .filter_map(|(n, v)| match v {
                Value::Tensor(t) => Some((n, t)),
                _ => None,
            })
            .collect();
        Ok((Evaluation { loss, terms, bindings, grads, profile }, tensors))
    }
}

/// A text of the batch: its mask, and where given its token ids and step ids.
fn text_data(batch: &HashMap<String, Tensor>, name: &str) -> TextData {
    let mask = batch
        .get(&inputs::mask_name(name))
        .cloned()
        .unwrap_or_else(|| Tensor::zeros(0, DType::F32, &Device::Cpu).expect("an empty tensor"));
    TextData {
        name: name.to_string(),
        mask,
        tokens: batch.get(&inputs::tokens_name(name)).cloned(),
        step_ids: batch.get(&inputs::step_ids_name(name)).cloned(),
    }
}

/// A node's tensor must have the shape its level promises.
fn check_shape(
    stage: &StageIr,
    n: NodeIndex,
    level: Option<Level>,
    value: &Value,
    mask: Option<&Tensor>,
) -> Result<(), Diagnostic> {
    let (Some(level), Value::Tensor(t)) = (level, value) else { return Ok(()) };
    let expected: Option<Vec<usize>> = match level {
        Level::Scalar => Some(vec![]),
        Level::Seq => None,
        Level::Token | Level::Step => mask.map(|m| m.dims().to_vec()),
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
    .help("check the shapes of the batch inputs this value reads (`rlx eval --inputs` lists them)"))
}

fn level_of(ty: Option<&Ty>) -> Option<Level> {
    match ty {
        Some(Ty::Tensor { level, .. }) => Some(*level),
        _ => None,
    }
}

/// Which of NaN and inf a tensor holds, if any. On the CPU one scan in place; elsewhere one
/// reduction on the device. The elements are read only when that finds something.
fn non_finite(t: &Tensor) -> Option<&'static str> {
    if crate::host::all_finite(t) == Some(true) {
        return None;
    }
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

/// A batch tensor as the graph reads it: with `grad`, a variable whose gradient is returned as
/// `grad.NAME`.
fn input(
    t: &Tensor,
    name: &str,
    grad: bool,
    vars: &mut Vec<(String, Var)>,
) -> candle_core::Result<Tensor> {
    if !grad {
        return Ok(t.clone());
    }
    let var = Var::from_tensor(t)?;
    let out = var.as_tensor().clone();
    vars.push((name.to_string(), var));
    Ok(out)
}

/// A batch input must be finite on the tokens (or steps) it has; padding may hold anything,
/// since every reduction reads it as 0. One reduction when the input is finite.
fn check_input_finite(
    node: &crate::ir::graph::Node,
    name: &str,
    t: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(), Diagnostic> {
    let span = node.span;
    if non_finite(t).is_none() {
        return Ok(());
    }
    let real = match mask {
        Some(m) => m
            .ne(0.0)
            .and_then(|keep| keep.where_cond(t, &t.zeros_like()?))
            .map_err(|e| internal(span, &e.to_string()))?,
        None => t.clone(),
    };
    match non_finite(&real) {
        None => Ok(()),
        Some(what) => Err(Diagnostic::error(
            "non-finite-value",
            format!("`{}` holds {what} on a real token (batch input `{name}`)", node.op.label()),
        )
        .primary(span, "this batch input is not finite")
        .help("the batch itself holds a non-finite value here (padding may hold anything: it is read as 0)")),
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

/// The loss's top-level summands, each with its name, its text and its sign; none when the
/// loss is a single term.
fn loss_terms(
    stage: &StageIr,
    cs: &crate::check::CheckedStage,
    loss: NodeIndex,
) -> Vec<(NodeIndex, String, String, f64)> {
    let mut acc = Vec::new();
    collect_terms(stage, loss, 1.0, &mut acc);
    if acc.len() < 2 {
        return vec![];
    }
    acc.into_iter()
        .enumerate()
        .map(|(i, (n, sign))| {
            let name =
                stage.graph[n].names.first().cloned().unwrap_or_else(|| format!("term{}", i + 1));
            (n, name, crate::graph_view::expr_text(stage, cs, n, true), sign)
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
