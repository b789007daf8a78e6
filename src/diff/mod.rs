//! Semantic diff of two checked recipes: what an ablation changes, in the recipe's own words.
//!
//! Nodes are compared by structure (block, resolved parameters, inputs), never by binding name or
//! layout, so renaming a `let` or reformatting changes nothing. Unmatched nodes are paired by
//! block and shared inputs into parameter changes and rewirings; the rest become replacements
//! (a different computation in the same place), additions and removals.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::hash::{Hash, Hasher};

use petgraph::Direction;
use petgraph::stable_graph::NodeIndex;

use crate::blocks::spec::Family;
use crate::check::params::Resolved;
use crate::check::{Checked, CheckedStage};
use crate::ir::graph::*;

/// Everything that differs between two recipes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecipeDiff {
    /// Changes to declarations: `(name, description)`.
    pub decls: Vec<(String, String)>,
    pub stages: Vec<StageDiff>,
}

impl RecipeDiff {
    pub fn is_empty(&self) -> bool {
        self.decls.is_empty() && self.stages.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StageDiff {
    Added(String),
    Removed(String),
    Changed { name: String, changes: Vec<Change> },
}

/// One change inside a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `sample`, `optim`, `train`, `data`, `plan`, `changed`, `rewired`, `replaced`, `added`, `removed`.
    pub kind: &'static str,
    pub text: String,
}

/// Compares two checked recipes.
pub fn diff(a: &Checked, b: &Checked) -> RecipeDiff {
    let mut out = RecipeDiff { decls: decl_diff(a, b), stages: Vec::new() };
    let pa = &a.program;
    let pb = &b.program;
    for (i, sa) in pa.stages.iter().enumerate() {
        match pb.stages.iter().position(|s| s.name.name == sa.name.name) {
            None => out.stages.push(StageDiff::Removed(sa.name.name.clone())),
            Some(j) => {
                let changes = stage_diff(
                    Side { stage: sa, checked: &a.stages[i] },
                    Side { stage: &pb.stages[j], checked: &b.stages[j] },
                );
                if !changes.is_empty() {
                    out.stages.push(StageDiff::Changed { name: sa.name.name.clone(), changes });
                }
            }
        }
    }
    for sb in &pb.stages {
        if !pa.stages.iter().any(|s| s.name.name == sb.name.name) {
            out.stages.push(StageDiff::Added(sb.name.name.clone()));
        }
    }
    out
}

fn decl_diff(a: &Checked, b: &Checked) -> Vec<(String, String)> {
    let describe = |c: &Checked| -> Vec<(String, String)> {
        let p = &c.program;
        let params = |name: &str| {
            c.decl_params
                .get(name)
                .map(|ps| {
                    // The parameters the recipe wrote (defaults are the same on both sides).
                    ps.iter()
                        .filter(|r| r.explicit)
                        .map(|r| format!("{} = {}", r.name, r.value.display()))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let mut v: Vec<(String, String)> = Vec::new();
        for d in &p.data {
            v.push((
                d.name.name.clone(),
                format!("data {}({})", d.spec.name, params(&d.name.name)),
            ));
        }
        for m in &p.models {
            let init = match &m.init {
                ModelInit::Builtin { warm_start } => format!(
                    "builtin({}{})",
                    params(&m.name.name),
                    warm_start
                        .as_ref()
                        .map(|w| format!(", warm_start = {}.{}", w.data, w.member))
                        .unwrap_or_default()
                ),
                ModelInit::Copy(of) => format!("copy({})", of.name),
                ModelInit::YesNo(of) => match params(&m.name.name) {
                    p if p.is_empty() => format!("yes_no({})", of.name),
                    p => format!("yes_no({}, {p})", of.name),
                },
                ModelInit::RewardModel => format!("reward_model({})", params(&m.name.name)),
                ModelInit::Pretrained => format!("pretrained({})", params(&m.name.name)),
                ModelInit::PretrainedRewardModel => {
                    format!("reward_model(pretrained({}))", params(&m.name.name))
                }
            };
            v.push((m.name.name.clone(), format!("model {init}")));
        }
        for r in &p.rewards {
            v.push((r.name.name.clone(), format!("reward {}", r.scorer.display())));
        }
        v
    };
    let (da, db) = (describe(a), describe(b));
    let mut out = Vec::new();
    for (name, d) in &da {
        match db.iter().find(|(n, _)| n == name) {
            None => out.push((name.clone(), format!("removed: {d}"))),
            Some((_, d2)) if d2 != d => out.push((name.clone(), format!("{d} → {d2}"))),
            _ => {}
        }
    }
    for (name, d) in &db {
        if !da.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), format!("added: {d}")));
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Side<'a> {
    stage: &'a StageIr,
    checked: &'a CheckedStage,
}

fn settings_diff(kind: &'static str, a: &[Resolved], b: &[Resolved], out: &mut Vec<Change>) {
    let mut parts = Vec::new();
    for r in b {
        match a.iter().find(|x| x.name == r.name) {
            Some(x) if x.value != r.value => {
                parts.push(format!("{} {} → {}", r.name, x.value.display(), r.value.display()))
            }
            None => parts.push(format!("{} = {}", r.name, r.value.display())),
            _ => {}
        }
    }
    if a.is_empty() != b.is_empty() {
        parts = vec![if b.is_empty() { "no longer samples".into() } else { "now samples".into() }];
    }
    if !parts.is_empty() {
        out.push(Change { kind, text: parts.join(", ") });
    }
}

fn stage_diff(a: Side, b: Side) -> Vec<Change> {
    let mut out = Vec::new();
    let train = |s: &StageIr| -> Vec<String> {
        s.train
            .iter()
            .map(|t| {
                if t.value_head {
                    format!("value_head({})", t.model.name)
                } else {
                    t.model.name.clone()
                }
            })
            .collect()
    };
    let (ta, tb) = (train(a.stage), train(b.stage));
    let mut parts: Vec<String> =
        ta.iter().filter(|t| !tb.contains(t)).map(|t| format!("no longer trains {t}")).collect();
    parts.extend(tb.iter().filter(|t| !ta.contains(t)).map(|t| format!("now trains {t}")));
    if !parts.is_empty() {
        out.push(Change { kind: "train", text: parts.join(", ") });
    }
    let source = |s: &StageIr| {
        s.source.as_ref().map(|(k, d)| format!("{} {}.{}", k.keyword(), d.data, d.member))
    };
    if source(a.stage) != source(b.stage) {
        out.push(Change {
            kind: "data",
            text: format!(
                "{} → {}",
                source(a.stage).unwrap_or("none".into()),
                source(b.stage).unwrap_or("none".into())
            ),
        });
    }
    settings_diff("sample", &a.checked.sample, &b.checked.sample, &mut out);
    settings_diff("optim", &a.checked.optim, &b.checked.optim, &mut out);
    graph_diff(a, b, &mut out);
    for (topic, detail) in &a.checked.plan.items {
        if matches!(topic.as_str(), "trains" | "data" | "sampling" | "optimiser") {
            continue;
        }
        match b.checked.plan.get(topic) {
            None => out.push(Change {
                kind: "plan",
                text: format!("{topic}: no longer needed ({detail})"),
            }),
            Some(d) if d != detail => {
                out.push(Change { kind: "plan", text: format!("{topic}: {detail} → {d}") })
            }
            _ => {}
        }
    }
    for (topic, detail) in &b.checked.plan.items {
        if !matches!(topic.as_str(), "trains" | "data" | "sampling" | "optimiser")
            && a.checked.plan.get(topic).is_none()
        {
            out.push(Change { kind: "plan", text: format!("{topic}: now needed ({detail})") });
        }
    }
    out
}

/// Structural hashes: equal hashes mean equal computations, whatever the bindings are called.
fn hashes(side: Side) -> HashMap<NodeIndex, u64> {
    let g = &side.stage.graph;
    let order = petgraph::algo::toposort(g, None).unwrap_or_default();
    let mut h: HashMap<NodeIndex, u64> = HashMap::new();
    for n in order {
        let mut s = std::collections::hash_map::DefaultHasher::new();
        op_key(side, n).hash(&mut s);
        for i in inputs(g, n) {
            h[&i].hash(&mut s);
        }
        h.insert(n, s.finish());
    }
    h
}

fn op_key(side: Side, n: NodeIndex) -> String {
    let g = &side.stage.graph;
    match &g[n].op {
        Op::Block { spec, .. } => {
            let params = side
                .checked
                .params
                .get(&n)
                .map(|p| p.iter().map(|r| r.value.display()).collect::<Vec<_>>().join(","));
            format!("{}({})", spec.name, params.unwrap_or_default())
        }
        Op::Const(v) => format!("const {v}"),
        other => format!("{other:?}"),
    }
}

fn graph_diff(a: Side, b: Side, out: &mut Vec<Change>) {
    let (ha, hb) = (hashes(a), hashes(b));
    let order_a = petgraph::algo::toposort(&a.stage.graph, None).unwrap_or_default();
    let order_b = petgraph::algo::toposort(&b.stage.graph, None).unwrap_or_default();
    // Only what the loss computes matters.
    let live_a = live(a.stage);
    let live_b = live(b.stage);
    let set_b: HashSet<u64> =
        order_b.iter().filter(|n| live_b.contains(n)).map(|n| hb[n]).collect();
    let set_a: HashSet<u64> =
        order_a.iter().filter(|n| live_a.contains(n)).map(|n| ha[n]).collect();
    let ua: Vec<NodeIndex> =
        order_a.iter().copied().filter(|n| live_a.contains(n) && !set_b.contains(&ha[n])).collect();
    let ub: Vec<NodeIndex> =
        order_b.iter().copied().filter(|n| live_b.contains(n) && !set_a.contains(&hb[n])).collect();

    // Pair unmatched nodes bottom-up by what they are and the inputs they share. The first pass
    // needs a shared input; the second pairs what is left of the same (non-maths) block.
    let mut pair_ab: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut pair_ba: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    for needs_shared in [true, false] {
        for &na in &ua {
            if pair_ab.contains_key(&na) {
                continue;
            }
            let ins_a = inputs(&a.stage.graph, na);
            let label = a.stage.graph[na].op.label();
            let pairable_alone = matches!(&a.stage.graph[na].op, Op::Block { spec, .. } if spec.family != Family::Maths);
            let mut best: Option<(usize, NodeIndex)> = None;
            for &nb in &ub {
                if pair_ba.contains_key(&nb) || b.stage.graph[nb].op.label() != label {
                    continue;
                }
                let ins_b = inputs(&b.stage.graph, nb);
                if ins_a.len() != ins_b.len() {
                    continue;
                }
                let shared = ins_a
                    .iter()
                    .zip(&ins_b)
                    .filter(|(x, y)| ha[*x] == hb[*y] || pair_ab.get(*x) == Some(*y))
                    .count();
                if shared == 0 && (needs_shared || !pairable_alone) {
                    continue;
                }
                if best.is_none_or(|(s, _)| shared > s) {
                    best = Some((shared, nb));
                }
            }
            if let Some((_, nb)) = best {
                pair_ab.insert(na, nb);
                pair_ba.insert(nb, na);
            }
        }
    }

    // Unpaired nodes fed into the same input of a paired node are replacements.
    let mut replaced: Vec<(NodeIndex, NodeIndex, String)> = Vec::new();
    let mut rewired = Vec::new();
    let mut replaced_a = HashSet::new();
    let mut replaced_b = HashSet::new();
    for &nb in &ub {
        let Some(&na) = pair_ba.get(&nb) else { continue };
        let (ins_a, ins_b) = (inputs(&a.stage.graph, na), inputs(&b.stage.graph, nb));
        let port_names: Vec<&str> = match &b.stage.graph[nb].op {
            Op::Block { spec, .. } => spec.inputs.iter().map(|i| i.name).collect(),
            _ => vec![],
        };
        for (port, (x, y)) in ins_a.iter().zip(&ins_b).enumerate() {
            if ha[x] == hb[y] || pair_ab.get(x) == Some(y) {
                continue;
            }
            let port = port_names.get(port).copied().unwrap_or("input");
            let at = format!("{} input `{port}`", b.stage.graph[nb].op.label());
            let x_unpaired = !pair_ab.contains_key(x) && ua.contains(x);
            let y_unpaired = !pair_ba.contains_key(y) && ub.contains(y);
            if x_unpaired && y_unpaired && replaced_a.insert(*x) && replaced_b.insert(*y) {
                replaced.push((*x, *y, at));
            } else {
                // By binding name, unless the name is all the two share: then by expression.
                let (mut old, mut new) = (expr(a, *x, false), expr(b, *y, false));
                if old == new {
                    (old, new) = (expr(a, *x, true), expr(b, *y, true));
                }
                rewired.push(format!("{at}: {old} → {new}"));
                // A new or dropped computation at this input is described by the rewiring.
                if y_unpaired {
                    replaced_b.insert(*y);
                }
                if x_unpaired {
                    replaced_a.insert(*x);
                }
            }
        }
    }

    // A loss computed by a different block altogether is one replacement.
    if let (Some(la), Some(lb)) = (a.stage.loss, b.stage.loss) {
        let fresh = ua.contains(&la) && ub.contains(&lb) && !pair_ab.contains_key(&la);
        if fresh && replaced_a.insert(la) && replaced_b.insert(lb) {
            replaced.push((la, lb, "loss".to_string()));
        }
    }

    // Parameter changes of paired blocks.
    for &nb in &ub {
        let Some(&na) = pair_ba.get(&nb) else { continue };
        let (Some(pa), Some(pb)) = (a.checked.params.get(&na), b.checked.params.get(&nb)) else {
            continue;
        };
        let changed: Vec<String> = pa
            .iter()
            .zip(pb)
            .filter(|(x, y)| x.value != y.value)
            .map(|(x, y)| format!("{} {} → {}", x.name, x.value.display(), y.value.display()))
            .collect();
        if !changed.is_empty() {
            let name =
                b.stage.graph[nb].names.first().map(|n| format!("{n} = ")).unwrap_or_default();
            out.push(Change {
                kind: "changed",
                text: format!("{name}{}: {}", b.stage.graph[nb].op.label(), changed.join(", ")),
            });
        }
    }
    out.extend(rewired.into_iter().map(|text| Change { kind: "rewired", text }));
    for (x, y, at) in &replaced {
        let (old, new) = (expr(a, *x, true), expr(b, *y, true));
        let text = if old.len() + new.len() < 40 {
            format!("{at}: {old} → {new}")
        } else {
            format!("{at}:\n{old}\n  → {new}")
        };
        out.push(Change { kind: "replaced", text });
    }

    // What remains was removed or added; report the outermost of each connected part, and any
    // named binding inside it on its own line.
    let absorbed = |side: Side,
                    unpaired: &[NodeIndex],
                    roots: &HashSet<NodeIndex>,
                    other_pairs: &HashMap<NodeIndex, NodeIndex>| {
        let unp: HashSet<NodeIndex> =
            unpaired.iter().copied().filter(|n| !other_pairs.contains_key(n)).collect();
        let mut covered = HashSet::new();
        let mut stack: Vec<NodeIndex> = roots.iter().copied().collect();
        while let Some(n) = stack.pop() {
            for i in inputs(&side.stage.graph, n) {
                if unp.contains(&i) && side.stage.graph[i].names.is_empty() && covered.insert(i) {
                    stack.push(i);
                }
            }
        }
        let mut report = Vec::new();
        for n in unpaired.iter().rev() {
            if !unp.contains(n) || covered.contains(n) || roots.contains(n) {
                continue;
            }
            report.push(*n);
            let mut stack = vec![*n];
            while let Some(m) = stack.pop() {
                for i in inputs(&side.stage.graph, m) {
                    if unp.contains(&i) && side.stage.graph[i].names.is_empty() && covered.insert(i)
                    {
                        stack.push(i);
                    }
                }
            }
        }
        report.reverse();
        report
    };
    for n in absorbed(a, &ua, &replaced_a, &pair_ab) {
        if !is_trivial(a, n) {
            out.push(Change { kind: "removed", text: expr(a, n, true) });
        }
    }
    for n in absorbed(b, &ub, &replaced_b, &pair_ba) {
        if !is_trivial(b, n) {
            out.push(Change { kind: "added", text: expr(b, n, true) });
        }
    }
}

/// Texts and constants on their own say nothing; their consumers carry the change.
fn is_trivial(side: Side, n: NodeIndex) -> bool {
    matches!(side.stage.graph[n].op, Op::Text(_) | Op::Const(_) | Op::Scorer(_))
}

fn live(stage: &StageIr) -> HashSet<NodeIndex> {
    let mut seen = HashSet::new();
    let mut stack: Vec<NodeIndex> = stage.loss.into_iter().collect();
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(stage.graph.neighbors_directed(n, Direction::Incoming));
        }
    }
    seen
}

/// A node as recipe text; bindings appear by name below the top level.
fn expr(side: Side, n: NodeIndex, top: bool) -> String {
    crate::graph_view::expr_text(side.stage, side.checked, n, top)
}

/// The diff as text. `old` and `new` name the two recipes.
pub fn render(d: &RecipeDiff, old: &str, new: &str) -> String {
    let mut out = String::new();
    if d.is_empty() {
        let _ = writeln!(out, "{old} and {new} are equivalent");
        return out;
    }
    let _ = writeln!(out, "--- {old}\n+++ {new}");
    for (name, text) in &d.decls {
        let _ = writeln!(out, "\n{name}: {text}");
    }
    for s in &d.stages {
        match s {
            StageDiff::Added(n) => {
                let _ = writeln!(out, "\n+ stage {n}");
            }
            StageDiff::Removed(n) => {
                let _ = writeln!(out, "\n- stage {n}");
            }
            StageDiff::Changed { name, changes } => {
                let _ = writeln!(out, "\nstage {name}:");
                for c in changes {
                    let mut lines = c.text.lines();
                    let first = lines.next().unwrap_or("");
                    let _ = writeln!(out, "  {:<9} {first}", format!("{}:", c.kind));
                    for l in lines {
                        let _ = writeln!(out, "  {:<9} {l}", "");
                    }
                }
            }
        }
    }
    out
}
