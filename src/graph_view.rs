//! Checked graphs → text and Graphviz DOT, for `rlx graph`.

use std::collections::HashMap;
use std::fmt::Write;

use petgraph::stable_graph::NodeIndex;

use crate::check::params::Resolved;
use crate::check::{Checked, CheckedStage, Ty};
use crate::ir::graph::*;

/// What to show.
#[derive(Debug, Clone, Copy)]
pub struct ViewOptions {
    /// Show every parameter, defaults included, and every setting.
    pub resolved: bool,
}

/// Nodes in topological order with stable display ids.
pub fn numbered(stage: &StageIr) -> (Vec<NodeIndex>, HashMap<NodeIndex, usize>) {
    let order = petgraph::algo::toposort(&stage.graph, None)
        .unwrap_or_else(|_| stage.graph.node_indices().collect());
    let ids = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    (order, ids)
}

/// How a node reads: `ppo_clip(%3, %4, adv, eps = 0.2)`.
pub fn node_expr(
    stage: &StageIr,
    checked: &CheckedStage,
    n: NodeIndex,
    name_of: &dyn Fn(NodeIndex) -> String,
    resolved: bool,
) -> String {
    let g = &stage.graph;
    let args: Vec<String> = inputs(g, n).into_iter().map(name_of).collect();
    match &g[n].op {
        Op::Const(_) | Op::Text(_) | Op::Scorer(_) => g[n].op.label(),
        Op::Block { spec, .. } => {
            let mut parts = args;
            if let Some(params) = checked.params.get(&n) {
                parts.extend(params_text(params, resolved));
            }
            format!("{}({})", spec.name, parts.join(", "))
        }
        other => format!("{}({})", other.label(), args.join(", ")),
    }
}

pub fn params_text(params: &[Resolved], resolved: bool) -> Vec<String> {
    params
        .iter()
        .filter(|p| resolved || p.explicit)
        .map(|p| format!("{} = {}", p.name, p.value.display()))
        .collect()
}

fn ty_text(ty: Option<&Ty>) -> String {
    match ty {
        Some(t @ Ty::Tensor { grad, .. }) => {
            format!("{}{}", t.describe(), if *grad { ", grad" } else { "" })
        }
        Some(t) => t.describe(),
        None => "?".into(),
    }
}

/// The text view of every stage (or one), with its plan.
pub fn text(checked: &Checked, only: Option<&str>, opts: ViewOptions) -> String {
    let mut out = String::new();
    let p = &checked.program;
    if let Some(name) = &p.name {
        let _ = writeln!(
            out,
            "recipe {}{}",
            name.name,
            p.title.as_ref().map(|t| format!(" — {t}")).unwrap_or_default()
        );
    }
    for (stage, cs) in p.stages.iter().zip(&checked.stages) {
        if only.is_some_and(|o| o != stage.name.name) {
            continue;
        }
        let _ = writeln!(out, "\nstage {}", stage.name.name);
        let _ = writeln!(out, "  plan:");
        for (topic, detail) in &cs.plan.items {
            let _ = writeln!(out, "    {topic}: {detail}");
        }
        if opts.resolved {
            for (label, set) in [("sample", &cs.sample), ("optim", &cs.optim)] {
                if !set.is_empty() {
                    let _ = writeln!(out, "  {label} {{ {} }}", params_text(set, true).join(", "));
                }
            }
        }
        let _ = writeln!(out, "  graph:");
        let (order, ids) = numbered(stage);
        let name_of = |i: NodeIndex| match (stage.graph[i].names.first(), &stage.graph[i].op) {
            (Some(n), _) => n.clone(),
            (None, Op::Const(_) | Op::Text(_) | Op::Scorer(_)) => stage.graph[i].op.label(),
            (None, _) => format!("%{}", ids[&i]),
        };
        // Constants, texts and reward functions are shown inline where they are used.
        let inline = |n: NodeIndex| {
            stage.graph[n].names.is_empty()
                && matches!(stage.graph[n].op, Op::Const(_) | Op::Text(_) | Op::Scorer(_))
        };
        let rows: Vec<(String, String)> = order
            .iter()
            .filter(|&&n| !inline(n) || Some(n) == stage.loss)
            .map(|&n| {
                let lhs = match stage.graph[n].names.as_slice() {
                    [] => format!("%{}", ids[&n]),
                    names => format!("%{} {}", ids[&n], names.join(" = ")),
                };
                let rhs = node_expr(stage, cs, n, &name_of, opts.resolved);
                let marker = if Some(n) == stage.loss { "  ← loss" } else { "" };
                (format!("{lhs} = {rhs}"), format!("{}{marker}", ty_text(cs.types.get(&n))))
            })
            .collect();
        let width = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0).min(72);
        for (l, r) in rows {
            let pad = width.saturating_sub(l.chars().count());
            let _ = writeln!(out, "    {l}{}  : {r}", " ".repeat(pad));
        }
    }
    out
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Graphviz DOT: one cluster per stage, nodes labelled with block, parameters and level.
pub fn dot(checked: &Checked, only: Option<&str>, opts: ViewOptions) -> String {
    let mut out =
        String::from("digraph rlx {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
    for (si, (stage, cs)) in checked.program.stages.iter().zip(&checked.stages).enumerate() {
        if only.is_some_and(|o| o != stage.name.name) {
            continue;
        }
        let _ = writeln!(
            out,
            "  subgraph cluster_{si} {{\n    label=\"stage {}\";",
            dot_escape(&stage.name.name)
        );
        let (order, ids) = numbered(stage);
        for &n in &order {
            let node = &stage.graph[n];
            let mut label = node.op.label();
            if !node.names.is_empty() {
                label = format!("{} = {label}", node.names.join(" = "));
            }
            if let Some(params) = cs.params.get(&n) {
                for p in params_text(params, opts.resolved) {
                    label.push('\n');
                    label.push_str(&p);
                }
            }
            label.push('\n');
            label.push_str(&ty_text(cs.types.get(&n)));
            let style = match (&node.op, Some(n) == stage.loss) {
                (_, true) => ", style=bold, color=red",
                (Op::Block { .. }, _) => "",
                _ => ", shape=ellipse",
            };
            let _ =
                writeln!(out, "    s{si}n{} [label=\"{}\"{style}];", ids[&n], dot_escape(&label));
        }
        for &n in &order {
            let port_names: Vec<&str> = match &stage.graph[n].op {
                Op::Block { spec, .. } => spec.inputs.iter().map(|i| i.name).collect(),
                _ => vec![],
            };
            for (port, src) in inputs(&stage.graph, n).into_iter().enumerate() {
                let label =
                    port_names.get(port).map(|p| format!(" [label=\"{p}\"]")).unwrap_or_default();
                let _ = writeln!(out, "    s{si}n{} -> s{si}n{}{label};", ids[&src], ids[&n]);
            }
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// Binding strength of a node printed as an operator; a child printed by name binds fully.
fn precedence(stage: &StageIr, n: NodeIndex, as_child: bool) -> u8 {
    match &stage.graph[n].op {
        Op::Block { spec, .. } if !as_child || stage.graph[n].names.is_empty() => match spec.name {
            "add" | "sub" => 1,
            "mul" | "div" => 2,
            "neg" => 3,
            "pow" => 4,
            _ => 9,
        },
        _ => 9,
    }
}

/// A node as recipe text (`kl(old.logp, ref.logp, estimator = k1)`); named bindings below the
/// top level appear by name, and only the parameters the recipe wrote are shown.
pub fn expr_text(stage: &StageIr, checked: &CheckedStage, n: NodeIndex, top: bool) -> String {
    expr_at(stage, checked, n, 0, top)
}

fn expr_at(
    stage: &StageIr,
    checked: &CheckedStage,
    n: NodeIndex,
    depth: usize,
    top: bool,
) -> String {
    let g = &stage.graph;
    let node = &g[n];
    if !top && let Some(name) = node.names.first() {
        return name.clone();
    }
    if depth > 8 {
        return "…".into();
    }
    let ins = inputs(g, n);
    let sub = |i: NodeIndex| expr_at(stage, checked, i, depth + 1, false);
    let body = match &node.op {
        Op::Const(v) => crate::blocks::spec::format_number(*v),
        Op::Text(t) => t.to_string(),
        Op::Scorer(s) => s.display(),
        Op::Signal { model, signal } => {
            let text = ins.first().map(|t| sub(*t)).unwrap_or_default();
            if text == "response" || text == "target" {
                format!("{}.{}", model.display(), signal.name())
            } else {
                format!("{}.{}({text})", model.display(), signal.name())
            }
        }
        Op::Rewrite { model } => {
            format!("{model}.rewrite({})", ins.first().map(|t| sub(*t)).unwrap_or_default())
        }
        Op::Score(s) => {
            format!("{}({})", s.display(), ins.first().map(|t| sub(*t)).unwrap_or_default())
        }
        Op::Block { spec, .. } => {
            let infix = match spec.name {
                "add" => Some("+"),
                "sub" => Some("-"),
                "mul" => Some("*"),
                "div" => Some("/"),
                "pow" => Some("^"),
                _ => None,
            };
            let own = precedence(stage, n, false);
            let wrap = |i: NodeIndex, right: bool| {
                let s = sub(i);
                let p = precedence(stage, i, true);
                if p < own || (right && p == own && own < 9) { format!("({s})") } else { s }
            };
            match (infix, ins.as_slice()) {
                (Some(op), [x, y]) => format!("{} {op} {}", wrap(*x, false), wrap(*y, true)),
                _ if spec.name == "neg" && ins.len() == 1 => format!("-{}", wrap(ins[0], false)),
                _ => {
                    let mut parts: Vec<String> = ins.iter().map(|i| sub(*i)).collect();
                    if let Some(ps) = checked.params.get(&n) {
                        parts.extend(
                            ps.iter()
                                .filter(|p| p.explicit)
                                .map(|p| format!("{} = {}", p.name, p.value.display())),
                        );
                    }
                    format!("{}({})", spec.name, parts.join(", "))
                }
            }
        }
    };
    match (top, node.names.first()) {
        (true, Some(name)) => format!("{name} = {body}"),
        _ => body,
    }
}
