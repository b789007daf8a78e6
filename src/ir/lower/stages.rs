//! A stage: its context while lowering (bindings, memo, cycle detection, shared nodes), its
//! statements (`train`, settings, the loss) and adding nodes to its graph.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use super::Cx;
use super::errors::*;
use super::exprs::const_eval;
use super::scope::{StageCx, Val};
use crate::diag::{Diagnostic, Span};
use crate::ir::builtins;
use crate::ir::graph::*;
use crate::syntax::ast::*;

impl<'a> StageCx<'a> {
    pub(super) fn lower(cx: &'a Cx, s: &'a Stage) -> (StageIr, Vec<Diagnostic>) {
        let mut me = StageCx {
            cx,
            graph: Graph::default(),
            lets: HashMap::new(),
            memo: HashMap::new(),
            stack: Vec::new(),
            cycles: HashSet::new(),
            uses: HashMap::new(),
            cse: HashMap::new(),
            primary: None,
            depth: 0,
            diags: Vec::new(),
        };
        let mut ir = StageIr {
            name: s.name.clone(),
            span: s.span,
            train: Vec::new(),
            source: None,
            source_keyword: None,
            sample: None,
            optim: None,
            graph: Graph::default(),
            loss: None,
            loss_span: s.name.span,
            bindings: Vec::new(),
        };
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut loss_expr = None;
        let mut let_order = Vec::new();
        for stmt in &s.stmts {
            let key = match &stmt.kind {
                StmtKind::Train(_) => Some("train"),
                StmtKind::Source(..) => Some("data source"),
                StmtKind::Sample(_) => Some("sample"),
                StmtKind::Optim(_) => Some("optim"),
                StmtKind::Loss(_) => Some("loss"),
                StmtKind::Let(..) => None,
            };
            if let Some(key) = key
                && let Some(first) = seen.insert(key, stmt.keyword)
            {
                me.diags.push(
                    Diagnostic::error(
                        "duplicate-statement",
                        format!("stage `{}` has two `{key}` statements", s.name.name),
                    )
                    .primary(stmt.keyword, "second one here")
                    .secondary(first, "first one here")
                    .help("a stage has at most one of each; merge them"),
                );
                continue;
            }
            match &stmt.kind {
                StmtKind::Train(targets) => {
                    ir.train = targets.iter().filter_map(|t| me.train_target(t)).collect()
                }
                StmtKind::Source(kind, expr) => {
                    ir.source = cx.data_ref(expr, &mut me.diags).map(|d| (*kind, d));
                    ir.source_keyword = Some(*kind);
                    // The keyword decides the stage's texts even if the data did not resolve.
                    me.primary = match kind {
                        SourceKind::Prompts => Some("response"),
                        SourceKind::Data => Some("target"),
                        SourceKind::Pairs => None,
                    };
                }
                StmtKind::Sample(set) => ir.sample = Some(me.settings(set)),
                StmtKind::Optim(set) => ir.optim = Some(me.settings(set)),
                StmtKind::Loss(e) => {
                    loss_expr = Some(e);
                    ir.loss_span = e.span;
                }
                StmtKind::Let(name, e) => {
                    if let Some((first, _)) = me.lets.get(&name.name) {
                        me.diags.push(
                            Diagnostic::error(
                                "duplicate-definition",
                                format!("`{}` is bound twice", name.name),
                            )
                            .primary(name.span, "bound again here")
                            .secondary(first.span, "first bound here")
                            .help("rename one binding; bindings are not reassigned"),
                        );
                        continue;
                    }
                    if cx.declared.contains_key(&name.name)
                        || matches!(name.name.as_str(), "old" | "ref")
                        || builtins::TEXTS.iter().any(|(t, _)| *t == name.name)
                    {
                        me.diags.push(
                            Diagnostic::error(
                                "duplicate-definition",
                                format!("`{}` already names a declaration", name.name),
                            )
                            .primary(name.span, "this binding would shadow it")
                            .help("choose another name"),
                        );
                        continue;
                    }
                    me.lets.insert(name.name.clone(), (name, e));
                    let_order.push((name, stmt.span));
                }
            }
        }
        if !seen.contains_key("data source") {
            me.primary = Some("response");
        }
        for (name, _) in &let_order {
            me.binding(&name.name, None);
        }
        if let Some(e) = loss_expr {
            let v = me.expr(e);
            ir.loss = me.node_of(v, e.span);
        }
        ir.bindings = let_order
            .iter()
            .map(|(name, stmt)| Binding {
                name: (*name).clone(),
                node: match me.memo.get(&name.name) {
                    Some(Val::Node(n)) => Some(*n),
                    _ => None,
                },
                uses: me.uses.get(&name.name).copied().unwrap_or(0),
                stmt: *stmt,
            })
            .collect();
        ir.graph = me.graph;
        (ir, me.diags)
    }

    pub(super) fn train_target(&mut self, e: &Expr) -> Option<TrainTarget> {
        let (name, span, value_head) = match &e.kind {
            ExprKind::Name(n) => (n.as_str(), e.span, false),
            ExprKind::Call(callee, args) if matches!(&callee.kind, ExprKind::Name(f) if f == "value_head") => {
                match args.as_slice() {
                    [Arg { name: None, value: Expr { kind: ExprKind::Name(n), span }, .. }] => {
                        (n.as_str(), *span, true)
                    }
                    _ => {
                        self.diags.push(
                            Diagnostic::error(
                                "invalid-train-target",
                                "`value_head` takes one model",
                            )
                            .primary(e.span, "expected `value_head(MODEL)`")
                            .help("write `train policy, value_head(policy)`"),
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.diags.push(
                    Diagnostic::error("invalid-train-target", "a stage trains models")
                        .primary(e.span, "not a model")
                        .help("write `train MODEL` or `train MODEL, value_head(MODEL)`"),
                );
                return None;
            }
        };
        if self.cx.kind_of(name) != Some(DeclKind::Model) {
            self.diags.push(unknown_name(
                name,
                span,
                self.cx.declared_of(DeclKind::Model),
                "a declared model",
            ));
            return None;
        }
        Some(TrainTarget {
            model: Ident { name: name.to_string(), span },
            value_head,
            span: e.span,
        })
    }

    pub(super) fn settings(&mut self, set: &Settings) -> SettingsIr {
        let mut entries: Vec<SettingIr> = Vec::new();
        for s in &set.entries {
            if let Some(first) = entries.iter().find(|e| e.key.name == s.key.name) {
                self.diags.push(duplicate_arg(&s.key.name, s.key.span, first.key.span));
                continue;
            }
            let value = const_eval(&s.value);
            if value == Const::Dynamic {
                self.diags.push(not_constant(&s.key.name, s.value.span));
            }
            entries.push(SettingIr { key: s.key.clone(), value, span: s.value.span });
        }
        SettingsIr { entries, span: set.span }
    }

    pub(super) fn add(&mut self, op: Op, span: Span, inputs: &[(NodeIndex, Span)]) -> NodeIndex {
        let key = match &op {
            Op::Block { spec, params } => {
                let p: Vec<(usize, &Const)> = params.iter().map(|p| (p.param, &p.value)).collect();
                let ins: Vec<NodeIndex> = inputs.iter().map(|(n, _)| *n).collect();
                format!("block {} {:?} {:?}", spec.name, p, ins)
            }
            other => {
                let ins: Vec<NodeIndex> = inputs.iter().map(|(n, _)| *n).collect();
                format!("{other:?} {ins:?}")
            }
        };
        if let Some(n) = self.cse.get(&key) {
            return *n;
        }
        let n = self.graph.add_node(Node { op, span, names: Vec::new() });
        for (port, (input, span)) in inputs.iter().enumerate() {
            self.graph.add_edge(*input, n, Wire { port, span: *span });
        }
        self.cse.insert(key, n);
        n
    }

    /// Lowers binding `name`; `reference` is the span of the use, `None` for the definition itself.
    pub(super) fn binding(&mut self, name: &str, reference: Option<Span>) -> Val {
        if reference.is_some() {
            *self.uses.entry(name.to_string()).or_default() += 1;
        }
        if let Some(v) = self.memo.get(name) {
            return v.clone();
        }
        if let Some(pos) = self.stack.iter().position(|(n, _)| n == name) {
            let mut path: Vec<(String, Span)> = self.stack[pos..].to_vec();
            path.push((name.to_string(), reference.unwrap_or_default()));
            let mut key: Vec<String> = path.iter().map(|(n, _)| n.clone()).collect();
            key.sort();
            if self.cycles.insert(key) {
                let names: Vec<String> = path.iter().map(|(n, _)| format!("`{n}`")).collect();
                let mut d = Diagnostic::error(
                    "binding-cycle",
                    format!("bindings depend on themselves: {}", names.join(" → ")),
                );
                for (i, window) in path.windows(2).enumerate() {
                    let msg = format!("`{}` reads `{}`", window[0].0, window[1].0);
                    d = if i == 0 {
                        d.primary(window[1].1, msg)
                    } else {
                        d.secondary(window[1].1, msg)
                    };
                }
                self.diags.push(d.help("a recipe is a dataflow graph; break the cycle by computing one value from the others"));
            }
            return Val::Error;
        }
        let Some((ident, expr)) = self.lets.get(name).map(|(i, e)| (*i, *e)) else {
            return Val::Error;
        };
        self.stack.push((name.to_string(), ident.span));
        let v = self.expr(expr);
        self.stack.pop();
        if let Val::Node(n) = v {
            let names = &mut self.graph[n].names;
            if !names.iter().any(|x| x == name) {
                names.push(name.to_string());
            }
        }
        self.memo.insert(name.to_string(), v.clone());
        v
    }
}
