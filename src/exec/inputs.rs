//! What a stage's objective reads from a batch, by name, with dtypes and shapes; and the check
//! that a batch provides it. Names follow recipe syntax: `policy.logp`, `old.values`,
//! `policy.logp(chosen)`, `rm(response)`, `mask`, `mask(chosen)`, `group`, `step_ids`, ….

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use candle_core::{DType, Tensor};
use petgraph::stable_graph::NodeIndex;

use crate::blocks::spec::{Demand, InputKind, Level};
use crate::check::{Checked, Ty};
use crate::diag::Diagnostic;
use crate::ir::graph::*;

/// A dimension of an input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// Sequences in the batch.
    Batch,
    /// Tokens of a text.
    Tokens(String),
    /// Reasoning steps of a text.
    Steps(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("B"),
            Dim::Tokens(t) if t == "response" || t == "target" => f.write_str("T"),
            Dim::Tokens(t) => write!(f, "T({t})"),
            Dim::Steps(t) if t == "response" => f.write_str("S"),
            Dim::Steps(t) => write!(f, "S({t})"),
        }
    }
}

/// The element type an input is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Any float type, converted to f32.
    Float,
    /// Any integer type, converted to i64.
    Int,
}

/// One tensor the stage reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<Dim>,
    /// Gradient flows back to it (it is written as `grad.NAME`).
    pub grad: bool,
    pub doc: String,
}

impl Requirement {
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }

    pub fn dtype_text(&self) -> &'static str {
        match self.kind {
            Kind::Float => "f32",
            Kind::Int => "i64",
        }
    }
}

/// The primary text of a stage, whose names carry no `(text)` suffix.
pub(crate) fn is_primary(text: &str) -> bool {
    text == "response" || text == "target"
}

fn suffixed(base: &str, text: &str) -> String {
    if is_primary(text) { base.to_string() } else { format!("{base}({text})") }
}

pub fn mask_name(text: &str) -> String {
    suffixed("mask", text)
}

pub(crate) fn tokens_name(text: &str) -> String {
    suffixed("tokens", text)
}

pub(crate) fn step_ids_name(text: &str) -> String {
    suffixed("step_ids", text)
}

/// The batch name of a source node (`old.logp`, `rm(response)`, …), if it reads one.
pub fn source_name(stage: &StageIr, n: NodeIndex) -> Option<String> {
    let g = &stage.graph;
    let text = || match inputs(g, n).first().map(|t| &g[*t].op) {
        Some(Op::Text(t)) => t.to_string(),
        Some(Op::Rewrite { model }) => rewrite_text(stage, inputs(g, n)[0], model),
        _ => "response".to_string(),
    };
    match &g[n].op {
        Op::Signal { model, signal } => {
            Some(suffixed(&format!("{}.{}", model.display(), signal.name()), &text()))
        }
        Op::Score(s) => Some(format!("{}({})", s.display(), text())),
        Op::Block { spec, .. } if matches!(spec.demand, Demand::StepRollouts { .. }) => {
            Some(spec.name.to_string())
        }
        _ => None,
    }
}

/// The name of a rewrite text, as the checker spells it.
pub(crate) fn rewrite_text(stage: &StageIr, n: NodeIndex, model: &str) -> String {
    rewrite_name(stage, n, model).to_string()
}

/// The text `model` rewrites at node `n`, nested rewrites included.
fn rewrite_name(stage: &StageIr, n: NodeIndex, model: &str) -> TextName {
    let g = &stage.graph;
    let of = match inputs(g, n).first().map(|t| (*t, &g[*t].op)) {
        Some((_, Op::Text(t))) => TextName::Own(t.to_string()),
        Some((inner, Op::Rewrite { model })) => rewrite_name(stage, inner, model),
        _ => TextName::Own("response".into()),
    };
    TextName::rewrite(model, of)
}

/// Nodes the loss depends on.
pub(crate) fn demanded(stage: &StageIr) -> Vec<NodeIndex> {
    demanded_with(stage, &std::collections::HashSet::new())
}

/// Nodes the loss depends on when the nodes in `given` are supplied, not computed: their own
/// inputs are not demanded through them.
pub(crate) fn demanded_with(
    stage: &StageIr,
    given: &std::collections::HashSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let Some(loss) = stage.loss else { return vec![] };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![loss];
    while let Some(n) = stack.pop() {
        if seen.insert(n) && !given.contains(&n) {
            stack.extend(stage.graph.neighbors_directed(n, petgraph::Direction::Incoming));
        }
    }
    let order = petgraph::algo::toposort(&stage.graph, None).unwrap_or_default();
    order.into_iter().filter(|n| seen.contains(n)).collect()
}

/// Everything stage `index` reads from a batch, sorted by name.
pub fn requirements(checked: &Checked, index: usize) -> Vec<Requirement> {
    requirements_with(checked, index, &HashMap::new())
}

/// The requirements when the nodes in `given` (by binding name) are supplied by the batch:
/// they are read at their own level, and what only they needed is not.
pub(crate) fn requirements_with(
    checked: &Checked,
    index: usize,
    given: &HashMap<NodeIndex, String>,
) -> Vec<Requirement> {
    let stage = &checked.program.stages[index];
    let cs = &checked.stages[index];
    let g = &stage.graph;
    let mut out: BTreeMap<String, Requirement> = BTreeMap::new();
    let mut add = |r: Requirement| {
        out.entry(r.name.clone()).or_insert(r);
    };
    let cut = given.keys().copied().collect();
    for n in demanded_with(stage, &cut) {
        let ty = cs.types.get(&n);
        if let Some(name) = given.get(&n) {
            let (shape, grad) = match ty {
                Some(Ty::Tensor { level, text, grad, .. }) => {
                    let t = text.clone().unwrap_or_else(|| "response".into());
                    let shape = match level {
                        Level::Token => vec![Dim::Batch, Dim::Tokens(t.clone())],
                        Level::Step => vec![Dim::Batch, Dim::Steps(t.clone())],
                        Level::Seq => vec![Dim::Batch],
                        Level::Scalar => vec![],
                    };
                    if matches!(level, Level::Token | Level::Step) {
                        add(Requirement {
                            name: mask_name(&t),
                            kind: Kind::Float,
                            shape: vec![Dim::Batch, Dim::Tokens(t.clone())],
                            grad: false,
                            doc: format!("1 on the real tokens of `{t}`, 0 on padding"),
                        });
                    }
                    (shape, *grad)
                }
                _ => continue,
            };
            add(Requirement {
                name: name.clone(),
                kind: Kind::Float,
                shape,
                grad,
                doc: "the binding's value, given instead of computed".into(),
            });
            continue;
        }
        // Every token or step axis needs its text's mask.
        if let Some(Ty::Tensor { level: Level::Token | Level::Step, text: Some(t), .. }) = ty {
            add(Requirement {
                name: mask_name(t),
                kind: Kind::Float,
                shape: vec![Dim::Batch, Dim::Tokens(t.clone())],
                grad: false,
                doc: format!("1 on the real tokens of `{t}`, 0 on padding"),
            });
        }
        match &g[n].op {
            Op::Signal { signal, .. } => {
                let Some(Ty::Tensor { text: Some(t), grad, .. }) = ty else { continue };
                add(Requirement {
                    name: source_name(stage, n).unwrap_or_default(),
                    kind: Kind::Float,
                    shape: vec![Dim::Batch, Dim::Tokens(t.clone())],
                    grad: *grad,
                    doc: match signal {
                        Signal::Logp => format!("log-probability of each token of `{t}`"),
                        Signal::Values => format!("value-head output at each token of `{t}`"),
                        Signal::Entropy => {
                            format!("entropy of the next-token distribution at each token of `{t}`")
                        }
                        Signal::KeepProb => {
                            format!("probability that the rewriter keeps each token of `{t}`")
                        }
                        Signal::SumP2 => {
                            format!(
                                "Σ_v π(v)² of the next-token distribution at each token of `{t}`"
                            )
                        }
                    },
                });
            }
            Op::Score(s) => add(Requirement {
                name: source_name(stage, n).unwrap_or_default(),
                kind: Kind::Float,
                shape: vec![Dim::Batch],
                grad: ty.is_some_and(Ty::has_grad),
                doc: match s {
                    ScorerRef::Model(m) => format!("score of reward model `{m}`"),
                    ScorerRef::Verifier { .. } => "verifier reward (1 correct, 0 wrong)".into(),
                    ScorerRef::External { .. } => format!("external reward `{}`", s.display()),
                },
            }),
            Op::Block { spec, .. } => {
                if spec.demand == Demand::Groups
                    || cs.params.get(&n).is_some_and(|p| {
                        crate::check::params::get(p, "scope").and_then(|v| v.str()) == Some("group")
                    })
                {
                    add(Requirement {
                        name: "group".into(),
                        kind: Kind::Int,
                        shape: vec![Dim::Batch],
                        grad: false,
                        doc: "the prompt (group) of each sequence".into(),
                    });
                }
                for (port, (input, _)) in wires(g, n).into_iter().enumerate() {
                    let Some(InputKind::Text) = spec.inputs.get(port).map(|i| i.kind) else {
                        continue;
                    };
                    let Some(Ty::Text(t)) = cs.types.get(&input) else { continue };
                    let t = t.clone();
                    add(Requirement {
                        name: mask_name(&t),
                        kind: Kind::Float,
                        shape: vec![Dim::Batch, Dim::Tokens(t.clone())],
                        grad: false,
                        doc: format!("1 on the real tokens of `{t}`, 0 on padding"),
                    });
                    if spec.name == "edit_weights" {
                        add(Requirement {
                            name: tokens_name(&t),
                            kind: Kind::Int,
                            shape: vec![Dim::Batch, Dim::Tokens(t.clone())],
                            grad: false,
                            doc: format!("token ids of `{t}`"),
                        });
                    }
                    if spec.name == "split_steps" {
                        add(Requirement {
                            name: step_ids_name(&t),
                            kind: Kind::Int,
                            shape: vec![Dim::Batch, Dim::Tokens(t.clone())],
                            grad: false,
                            doc: format!(
                                "reasoning step of each token of `{t}` (0, 1, …; −1 outside every step)"
                            ),
                        });
                    }
                }
                if let Demand::StepRollouts { .. } = spec.demand {
                    let t = match cs.types.get(&n) {
                        Some(Ty::Tensor { text: Some(t), .. }) => t.clone(),
                        _ => "response".into(),
                    };
                    add(Requirement {
                        name: spec.name.into(),
                        kind: Kind::Float,
                        shape: vec![Dim::Batch, Dim::Steps(t)],
                        grad: false,
                        doc:
                            "Monte-Carlo value of the state before each step (from extra rollouts)"
                                .into(),
                    });
                }
            }
            _ => {}
        }
    }
    out.into_values().collect()
}

/// Converts the batch to the dtypes the stage needs, and checks every shape. On failure, one
/// diagnostic lists every requirement, marking what is missing or mis-shaped.
pub(crate) fn validate(
    checked: &Checked,
    index: usize,
    reqs: &[Requirement],
    batch: &HashMap<String, Tensor>,
    float: DType,
) -> Result<HashMap<String, Tensor>, Diagnostic> {
    let mut sizes: HashMap<Dim, usize> = HashMap::new();
    let mut problems: HashMap<String, String> = HashMap::new();
    let mut out = HashMap::new();
    // Masks and step ids define the token and step sizes; read them first.
    let mut ordered: Vec<&Requirement> = reqs.iter().collect();
    ordered.sort_by_key(|r| (!r.name.starts_with("mask"), r.name.starts_with("vine_values")));
    for r in ordered {
        let Some(t) = batch.get(&r.name) else {
            problems.insert(r.name.clone(), "missing".into());
            continue;
        };
        let converted = match (r.kind, t.dtype()) {
            (Kind::Float, DType::F32 | DType::F64 | DType::F16 | DType::BF16) => t.to_dtype(float),
            (Kind::Int, DType::I64 | DType::U32 | DType::U8 | DType::I32 | DType::I16) => {
                t.to_dtype(DType::I64)
            }
            (_, dt) => {
                problems.insert(r.name.clone(), format!("has dtype {dt:?}"));
                continue;
            }
        };
        let Ok(t) = converted else {
            problems.insert(r.name.clone(), "cannot be converted".into());
            continue;
        };
        if t.rank() != r.shape.len() {
            problems.insert(r.name.clone(), format!("has shape {:?}", t.dims()));
            continue;
        }
        let mut ok = true;
        for (dim, size) in r.shape.iter().zip(t.dims()) {
            match sizes.get(dim) {
                Some(s) if s != size => {
                    problems.insert(
                        r.name.clone(),
                        format!("has shape {:?}; {dim} is {s} elsewhere", t.dims()),
                    );
                    ok = false;
                }
                _ => {
                    sizes.insert(dim.clone(), *size);
                }
            }
        }
        if ok {
            out.insert(r.name.clone(), t);
        }
    }
    if problems.is_empty() {
        return Ok(out);
    }
    let stage = &checked.program.stages[index];
    let width = reqs.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut table = String::from("stage `");
    table.push_str(&stage.name.name);
    table.push_str("` reads:");
    for r in reqs {
        let status = problems.get(&r.name).map(|p| format!("  ← {p}")).unwrap_or_default();
        table.push_str(&format!(
            "\n  {:<width$}  {} {:<12} {}{status}",
            r.name,
            r.dtype_text(),
            r.shape_text(),
            r.doc
        ));
    }
    let missing = problems.values().filter(|p| *p == "missing").count();
    let message = match (missing, problems.len() - missing) {
        (m, 0) => format!("the batch lacks {m} input(s) the stage reads"),
        (0, b) => format!("{b} input(s) of the batch do not fit"),
        (m, b) => format!("the batch lacks {m} input(s) and {b} do not fit"),
    };
    Err(Diagnostic::error("invalid-batch", message)
        .primary(stage.name.span, "this stage")
        .help(table))
}
