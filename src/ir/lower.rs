//! Syntax tree → `Program`: resolves names, builds one dataflow graph per stage, and reports what
//! cannot be resolved (unknown names with "did you mean", wrong arity, cycles between bindings).
//! Identical expressions share one node, so the executor computes each value once.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use super::builtins::{self, MemberKind};
use super::graph::*;
use crate::blocks::{self, spec::BlockSpec};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::syntax::ast::*;

/// Bindings nested deeper than this are reported instead of recursing further.
const MAX_DEPTH: usize = 200;

/// Lowers a parsed recipe. Diagnostics accumulate; the program holds everything that resolved.
pub fn lower(recipe: &Recipe) -> (Program, Vec<Diagnostic>) {
    let mut cx = Cx { prog: Program::default(), diags: Vec::new(), declared: HashMap::new() };
    if let Some(h) = &recipe.header {
        cx.prog.name = Some(h.name.clone());
        cx.prog.title = h.title.clone();
    }
    for item in &recipe.items {
        if let Item::Decl(d) = item {
            cx.declare(&d.name, d.kind);
        }
    }
    for item in &recipe.items {
        if let Item::Decl(d) = item {
            cx.lower_decl(d);
        }
    }
    let mut stage_names: HashMap<&str, Span> = HashMap::new();
    for item in &recipe.items {
        if let Item::Stage(s) = item {
            if let Some(first) = stage_names.insert(&s.name.name, s.name.span) {
                cx.diags.push(
                    Diagnostic::error(
                        "duplicate-definition",
                        format!("stage `{}` is defined twice", s.name.name),
                    )
                    .primary(s.name.span, "defined again here")
                    .secondary(first, "first defined here")
                    .help("give each stage its own name"),
                );
                continue;
            }
            let stage = StageCx::lower(&cx, s);
            cx.diags.extend(stage.1);
            cx.prog.stages.push(stage.0);
        }
    }
    (cx.prog, cx.diags)
}

struct Cx {
    prog: Program,
    diags: Vec<Diagnostic>,
    declared: HashMap<String, (DeclKind, Span)>,
}

impl Cx {
    fn declare(&mut self, name: &Ident, kind: DeclKind) {
        if let Some((_, first)) = self.declared.get(&name.name) {
            self.diags.push(
                Diagnostic::error(
                    "duplicate-definition",
                    format!("`{}` is declared twice", name.name),
                )
                .primary(name.span, "declared again here")
                .secondary(*first, "first declared here")
                .help("rename one of them"),
            );
        } else if matches!(name.name.as_str(), "old" | "ref")
            || builtins::TEXTS.iter().any(|(t, _)| *t == name.name)
        {
            self.diags.push(
                Diagnostic::error(
                    "duplicate-definition",
                    format!("`{}` is a built-in name", name.name),
                )
                .primary(name.span, "cannot be redeclared")
                .help("choose another name"),
            );
        } else {
            self.declared.insert(name.name.clone(), (kind, name.span));
        }
    }

    fn kind_of(&self, name: &str) -> Option<DeclKind> {
        self.declared.get(name).map(|(k, _)| *k)
    }

    fn lower_decl(&mut self, d: &Decl) {
        if self.declared.get(&d.name.name).map(|(_, s)| *s) != Some(d.name.span) {
            return; // a duplicate, already reported
        }
        match d.kind {
            DeclKind::Data => self.lower_data(d),
            DeclKind::Model => self.lower_model(d),
            DeclKind::Reward => self.lower_reward(d),
        }
    }

    fn lower_data(&mut self, d: &Decl) {
        let help = "declare data as `data NAME = builtin(\"arith\")`, `builtin(\"reviews\")` or `jsonl(\"file.jsonl\", prompt = \"question\")`";
        let Some((callee, args)) = as_call(&d.value) else {
            return self.diags.push(invalid_decl(&d.value, "a data set", help));
        };
        if callee == "jsonl" {
            let (positional, mut params) = split_args(args, &mut self.diags);
            if let Some(p) = positional.first() {
                params.insert(
                    0,
                    (Ident { name: "path".into(), span: p.span }, const_eval(p), p.span),
                );
            }
            if let Some(extra) = positional.get(1) {
                self.diags.push(too_many(extra.span, callee, 1));
            }
            let spec = &builtins::JSONL;
            self.prog.data.push(DataDecl { name: d.name.clone(), spec, params, span: d.span });
            return;
        }
        if callee != "builtin" {
            return self.diags.push(invalid_decl(&d.value, "a data set", help));
        }
        let (positional, params) = split_args(args, &mut self.diags);
        let Some(Expr { kind: ExprKind::Str(set), span }) = positional.first() else {
            return self.diags.push(invalid_decl(&d.value, "a data set", help));
        };
        let Some(spec) = builtins::data_set(set) else {
            let names = builtins::DATA_SETS.iter().map(|d| d.name);
            let mut diag = Diagnostic::error("unknown-name", format!("unknown data set `{set}`"))
                .primary(*span, "not a built-in data set");
            diag = match did_you_mean(set, names) {
                Some(s) => diag.help(format!("did you mean `{s}`?")),
                None => diag.help("the built-in data sets are `arith` and `reviews`"),
            };
            return self.diags.push(diag);
        };
        self.prog.data.push(DataDecl { name: d.name.clone(), spec, params, span: d.span });
    }

    fn lower_model(&mut self, d: &Decl) {
        let help = "declare a model as `builtin(\"tiny\", warm_start = DATA.texts)`, `pretrained(\"path/to/hf-model\")`, `copy(MODEL)` or `reward_model(\"tiny\")`";
        let Some((callee, args)) = as_call(&d.value) else {
            return self.diags.push(invalid_decl(&d.value, "a model", help));
        };
        let (positional, mut params) = split_args(args, &mut self.diags);
        let init = match callee {
            "builtin" | "reward_model" => {
                if let Some(p) = positional.first() {
                    let value = const_eval(p);
                    params
                        .insert(0, (Ident { name: "preset".into(), span: p.span }, value, p.span));
                }
                if let Some(extra) = positional.get(1) {
                    self.diags.push(too_many(extra.span, callee, 1));
                }
                let mut warm_start = None;
                if let Some(i) = params.iter().position(|(k, _, _)| k.name == "warm_start") {
                    let (_, _, span) = params.remove(i);
                    let arg = args
                        .iter()
                        .find(|a| a.name.as_ref().is_some_and(|n| n.name == "warm_start"));
                    let mut found = Vec::new();
                    warm_start = arg.and_then(|a| self.data_ref(&a.value, &mut found));
                    self.diags.extend(found);
                    if callee == "reward_model" {
                        self.diags.push(
                            Diagnostic::error(
                                "unknown-argument",
                                "`reward_model` takes no `warm_start`",
                            )
                            .primary(span, "not a parameter of `reward_model`")
                            .help("a reward model is trained in a stage with `pairs`"),
                        );
                    }
                }
                if callee == "builtin" {
                    ModelInit::Builtin { warm_start }
                } else {
                    ModelInit::RewardModel
                }
            }
            "pretrained" => {
                if let Some(p) = positional.first() {
                    params.insert(
                        0,
                        (Ident { name: "path".into(), span: p.span }, const_eval(p), p.span),
                    );
                }
                if let Some(extra) = positional.get(1) {
                    self.diags.push(too_many(extra.span, callee, 1));
                }
                ModelInit::Pretrained
            }
            "copy" => {
                let Some(Expr { kind: ExprKind::Name(of), span }) = positional.first() else {
                    return self.diags.push(invalid_decl(&d.value, "a model", help));
                };
                if self.kind_of(of) != Some(DeclKind::Model) {
                    return self.diags.push(unknown_name(
                        of,
                        *span,
                        self.declared_of(DeclKind::Model),
                        "a model",
                    ));
                }
                if of == &d.name.name {
                    return self.diags.push(
                        Diagnostic::error(
                            "binding-cycle",
                            format!("model `{of}` is a copy of itself"),
                        )
                        .primary(*span, "refers to the model being declared")
                        .help("copy another model"),
                    );
                }
                ModelInit::Copy(Ident { name: of.clone(), span: *span })
            }
            _ => return self.diags.push(invalid_decl(&d.value, "a model", help)),
        };
        self.prog.models.push(ModelDecl { name: d.name.clone(), init, params, span: d.span });
    }

    fn lower_reward(&mut self, d: &Decl) {
        let scorer = match d.value.as_path().as_deref() {
            Some([m]) if self.kind_of(m) == Some(DeclKind::Model) => {
                Some(ScorerRef::Model(m.to_string()))
            }
            Some([data, member]) if self.kind_of(data) == Some(DeclKind::Data) => self
                .prog
                .data_decl(data)
                .and_then(|d| d.spec.member(member))
                .filter(|m| m.kind == MemberKind::Verifier)
                .map(|_| ScorerRef::Verifier {
                    data: data.to_string(),
                    member: member.to_string(),
                }),
            _ => None,
        };
        match scorer {
            Some(scorer) => self.prog.rewards.push(RewardDecl { name: d.name.clone(), scorer, span: d.span }),
            None => self.diags.push(invalid_decl(
                &d.value,
                "a reward",
                "a reward names a reward model (`reward rm = MODEL`) or a verifier (`reward r = arith.correct`)",
            )),
        }
    }

    fn declared_of(&self, kind: DeclKind) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .declared
            .iter()
            .filter(|(_, (k, _))| *k == kind)
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort();
        names
    }

    /// Resolves `data.member` for `prompts`, `pairs`, `data` and `warm_start`; reads the
    /// declarations only, so stages can call it too.
    fn data_ref(&self, expr: &Expr, diags: &mut Vec<Diagnostic>) -> Option<DataRef> {
        let help = "name a member of a data set, e.g. `arith.problems`";
        match expr.as_path().as_deref() {
            Some([data, member]) => {
                if self.kind_of(data) != Some(DeclKind::Data) {
                    let names = self.declared_of(DeclKind::Data);
                    diags.push(unknown_name(data, expr.span, names, "a data set"));
                    return None;
                }
                let spec = self.prog.data_decl(data)?.spec;
                match spec.member(member) {
                    Some(m) => Some(DataRef {
                        data: data.to_string(),
                        member: member.to_string(),
                        kind: m.kind,
                        span: expr.span,
                    }),
                    None => {
                        diags.push(unknown_member(
                            data,
                            member,
                            expr.span,
                            spec.members.iter().map(|m| m.name),
                        ));
                        None
                    }
                }
            }
            _ => {
                diags.push(
                    Diagnostic::error("type-mismatch", "expected a data set member")
                        .primary(expr.span, "not `DATA.MEMBER`")
                        .help(help),
                );
                None
            }
        }
    }
}

fn as_call(expr: &Expr) -> Option<(&str, &[Arg])> {
    match &expr.kind {
        ExprKind::Call(callee, args) => match &callee.kind {
            ExprKind::Name(n) => Some((n.as_str(), args.as_slice())),
            _ => None,
        },
        _ => None,
    }
}

/// Splits declaration arguments into positional expressions and constant named parameters.
fn split_args<'a>(
    args: &'a [Arg],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<&'a Expr>, Vec<(Ident, Const, Span)>) {
    let mut positional = Vec::new();
    let mut named: Vec<(Ident, Const, Span)> = Vec::new();
    for a in args {
        match &a.name {
            None => positional.push(&a.value),
            Some(n) => {
                if let Some((first, _, _)) = named.iter().find(|(k, _, _)| k.name == n.name) {
                    diags.push(duplicate_arg(&n.name, n.span, first.span));
                    continue;
                }
                named.push((n.clone(), const_eval(&a.value), a.value.span));
            }
        }
    }
    (positional, named)
}

fn invalid_decl(expr: &Expr, what: &str, help: &str) -> Diagnostic {
    Diagnostic::error("invalid-declaration", format!("this does not declare {what}"))
        .primary(expr.span, "unrecognised declaration")
        .help(help.to_string())
}

fn unknown_name<'a>(
    name: &str,
    span: Span,
    candidates: impl IntoIterator<Item = &'a str>,
    what: &str,
) -> Diagnostic {
    let diag = Diagnostic::error("unknown-name", format!("unknown name `{name}`"))
        .primary(span, format!("not {what}"));
    match did_you_mean(name, candidates) {
        Some(s) => diag.help(format!("did you mean `{s}`?")),
        None => diag.help(format!("declare it first, or use {what} that exists")),
    }
}

fn unknown_member<'a>(
    base: &str,
    member: &str,
    span: Span,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Diagnostic {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let diag = Diagnostic::error("unknown-member", format!("`{base}` has no member `{member}`"))
        .primary(span, "unknown member");
    match did_you_mean(member, candidates.iter().copied()) {
        Some(s) => diag.help(format!("did you mean `{base}.{s}`?")),
        None => {
            let list: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
            diag.help(format!("`{base}` has {}", list.join(", ")))
        }
    }
}

fn duplicate_arg(name: &str, span: Span, first: Span) -> Diagnostic {
    Diagnostic::error("duplicate-argument", format!("argument `{name}` is given twice"))
        .primary(span, "given again here")
        .secondary(first, "first given here")
        .help("remove one of them")
}

fn too_many(span: Span, callee: &str, max: usize) -> Diagnostic {
    Diagnostic::error(
        "too-many-arguments",
        format!("`{callee}` takes at most {max} positional arguments"),
    )
    .primary(span, "extra argument")
    .help(format!("see `rlx blocks {callee}` for its signature"))
}

/// Evaluates a constant expression: numbers, arithmetic on numbers, strings and bare words.
pub(crate) fn const_eval(expr: &Expr) -> Const {
    match &expr.kind {
        ExprKind::Number(v, _) => Const::Num(*v),
        ExprKind::Str(s) => Const::Str(s.clone()),
        ExprKind::Name(n) if n == "true" => Const::Bool(true),
        ExprKind::Name(n) if n == "false" => Const::Bool(false),
        ExprKind::Name(n) => Const::Word(n.clone()),
        ExprKind::Paren(x) => const_eval(x),
        ExprKind::Neg(x) => match const_eval(x) {
            Const::Num(v) => Const::Num(-v),
            _ => Const::Dynamic,
        },
        ExprKind::Binary(op, a, b) => match (const_eval(a), const_eval(b)) {
            (Const::Num(a), Const::Num(b)) => {
                let v = match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Pow => a.powf(b),
                };
                if v.is_finite() { Const::Num(v) } else { Const::Dynamic }
            }
            _ => Const::Dynamic,
        },
        _ => Const::Dynamic,
    }
}

/// What an expression denotes while lowering.
#[derive(Debug, Clone)]
enum Val {
    Node(NodeIndex),
    Model(String),
    Pseudo(ModelRef),
    Data(String),
    Scorer(ScorerRef),
    /// `policy.logp` before it is called (or defaulted to the stage's text).
    Method(ModelRef, &'static str),
    Error,
}

/// A call argument: an expression, or the left side of a pipe, already lowered.
enum ArgVal<'e> {
    Expr(&'e Expr),
    Piped(Val),
}

struct StageCx<'a> {
    cx: &'a Cx,
    graph: Graph,
    lets: HashMap<String, (&'a Ident, &'a Expr)>,
    memo: HashMap<String, Val>,
    stack: Vec<(String, Span)>,
    cycles: HashSet<Vec<String>>,
    uses: HashMap<String, usize>,
    cse: HashMap<String, NodeIndex>,
    primary: Option<&'static str>,
    depth: usize,
    diags: Vec<Diagnostic>,
}

const REWARD_MODEL_MEMBERS: &[&str] = &["score"];

impl<'a> StageCx<'a> {
    fn lower(cx: &'a Cx, s: &'a Stage) -> (StageIr, Vec<Diagnostic>) {
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

    fn train_target(&mut self, e: &Expr) -> Option<TrainTarget> {
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

    fn settings(&mut self, set: &Settings) -> SettingsIr {
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

    fn add(&mut self, op: Op, span: Span, inputs: &[(NodeIndex, Span)]) -> NodeIndex {
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
    fn binding(&mut self, name: &str, reference: Option<Span>) -> Val {
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

    fn expr(&mut self, e: &Expr) -> Val {
        if self.depth >= MAX_DEPTH {
            self.diags.push(
                Diagnostic::error("nesting-too-deep", "expression is nested too deeply")
                    .primary(
                        e.span,
                        format!("more than {MAX_DEPTH} levels of expressions and bindings"),
                    )
                    .help("simplify the recipe; objectives are a few dozen nodes"),
            );
            return Val::Error;
        }
        self.depth += 1;
        let v = self.expr_inner(e);
        self.depth -= 1;
        v
    }

    fn expr_inner(&mut self, e: &Expr) -> Val {
        match &e.kind {
            ExprKind::Number(v, _) => Val::Node(self.add(Op::Const(*v), e.span, &[])),
            ExprKind::Str(_) => {
                self.diags.push(
                    Diagnostic::error("type-mismatch", "a string is not a value")
                        .primary(e.span, "strings only set parameters")
                        .help("pass it as a parameter, e.g. `split_steps(response, on = \"\\n\")`"),
                );
                Val::Error
            }
            ExprKind::Name(n) => self.name(n, e.span),
            ExprKind::Paren(x) => self.expr(x),
            ExprKind::Member(base, m) => {
                let b = self.expr(base);
                self.member(b, base, m)
            }
            ExprKind::Call(callee, args) => {
                let args: Vec<(Option<&Ident>, ArgVal, Span)> = args
                    .iter()
                    .map(|a| (a.name.as_ref(), ArgVal::Expr(&a.value), a.span))
                    .collect();
                self.call(callee, args, e.span)
            }
            ExprKind::Pipe(lhs, rhs) => {
                let l = self.expr(lhs);
                let piped = (None, ArgVal::Piped(l), lhs.span);
                match &rhs.kind {
                    ExprKind::Call(callee, args) => {
                        let mut all = vec![piped];
                        all.extend(
                            args.iter().map(|a| (a.name.as_ref(), ArgVal::Expr(&a.value), a.span)),
                        );
                        self.call(callee, all, e.span)
                    }
                    _ => self.call(rhs, vec![piped], e.span),
                }
            }
            ExprKind::Neg(x) => {
                if let ExprKind::Number(v, _) = x.kind {
                    return Val::Node(self.add(Op::Const(-v), e.span, &[]));
                }
                let spec = blocks::lookup("neg").expect("neg is a block");
                self.block(spec, vec![(None, ArgVal::Expr(x), x.span)], e.span, e.span)
            }
            ExprKind::Binary(op, a, b) => {
                let name = match op {
                    BinOp::Add => "add",
                    BinOp::Sub => "sub",
                    BinOp::Mul => "mul",
                    BinOp::Div => "div",
                    BinOp::Pow => "pow",
                };
                let spec = blocks::lookup(name).expect("operators are blocks");
                let args = vec![(None, ArgVal::Expr(a), a.span), (None, ArgVal::Expr(b), b.span)];
                self.block(spec, args, e.span, e.span)
            }
        }
    }

    fn name(&mut self, n: &str, span: Span) -> Val {
        if self.lets.contains_key(n) {
            return self.binding(n, Some(span));
        }
        if let Some((t, _)) = builtins::TEXTS.iter().find(|(t, _)| *t == n) {
            return Val::Node(self.add(Op::Text(t), span, &[]));
        }
        if let Some(p) = ModelRef::pseudo(n) {
            return Val::Pseudo(p);
        }
        match self.cx.kind_of(n) {
            Some(DeclKind::Model) => return Val::Model(n.to_string()),
            Some(DeclKind::Data) => return Val::Data(n.to_string()),
            Some(DeclKind::Reward) => {
                return match self.cx.prog.rewards.iter().find(|r| r.name.name == n) {
                    Some(r) => Val::Scorer(r.scorer.clone()),
                    None => Val::Error,
                };
            }
            None => {}
        }
        if blocks::lookup(n).is_some() {
            self.diags.push(
                Diagnostic::error("type-mismatch", format!("`{n}` is a block, not a value"))
                    .primary(span, "a block must be called")
                    .help(format!("call it: `{n}(...)`, or pipe into it: `x |> {n}`")),
            );
            return Val::Error;
        }
        let mut candidates: Vec<&str> = self.lets.keys().map(|k| k.as_str()).collect();
        candidates.extend(builtins::TEXTS.iter().map(|(t, _)| *t));
        candidates.extend(self.cx.declared.keys().map(|k| k.as_str()));
        candidates.extend(["old", "ref", "rollout"]);
        candidates.sort();
        // The binding it probably meant is not reported as unused as well.
        if let Some(meant) =
            did_you_mean(n, candidates.iter().copied()).filter(|m| self.lets.contains_key(*m))
        {
            *self.uses.entry(meant.to_string()).or_default() += 1;
        }
        self.diags.push(unknown_name(n, span, candidates, "a binding, text or declaration"));
        Val::Error
    }

    fn member(&mut self, base: Val, base_expr: &Expr, m: &Ident) -> Val {
        let span = base_expr.span.to(m.span);
        let base_name =
            base_expr.as_path().map(|p| p.join(".")).unwrap_or_else(|| "this value".into());
        match base {
            Val::Model(name) if self.cx.prog.is_reward_model(&name) => {
                if m.name == "score" {
                    Val::Scorer(ScorerRef::Model(name))
                } else {
                    self.diags.push(unknown_member(
                        &name,
                        &m.name,
                        span,
                        REWARD_MODEL_MEMBERS.iter().copied(),
                    ));
                    Val::Error
                }
            }
            Val::Model(_) | Val::Pseudo(_) => {
                let model = match base {
                    Val::Model(n) => ModelRef::Named(n),
                    Val::Pseudo(p) => p,
                    _ => unreachable!(),
                };
                let allowed = model.members();
                match allowed.iter().find(|a| **a == m.name) {
                    Some(member) => Val::Method(model, member),
                    None => {
                        self.diags.push(unknown_member(
                            model.display(),
                            &m.name,
                            span,
                            allowed.iter().copied(),
                        ));
                        Val::Error
                    }
                }
            }
            Val::Data(data) => {
                let Some(decl) = self.cx.prog.data_decl(&data) else { return Val::Error };
                match decl.spec.member(&m.name) {
                    Some(member) if member.kind == MemberKind::Verifier => {
                        Val::Scorer(ScorerRef::Verifier { data, member: m.name.clone() })
                    }
                    Some(member) => {
                        let keyword = match member.kind {
                            MemberKind::Prompts { .. } => "prompts",
                            MemberKind::Pairs => "pairs",
                            _ => "data",
                        };
                        self.diags.push(
                            Diagnostic::error(
                                "type-mismatch",
                                format!(
                                    "`{data}.{}` is {}, not a value",
                                    m.name,
                                    member.kind.describe()
                                ),
                            )
                            .primary(span, "cannot be computed with")
                            .help(format!("give it to the stage: `{keyword} {data}.{}`", m.name)),
                        );
                        Val::Error
                    }
                    None => {
                        self.diags.push(unknown_member(
                            &data,
                            &m.name,
                            span,
                            decl.spec.members.iter().map(|m| m.name),
                        ));
                        Val::Error
                    }
                }
            }
            Val::Error => Val::Error,
            _ => {
                self.diags.push(
                    Diagnostic::error("unknown-member", format!("`{base_name}` has no members"))
                        .primary(m.span, "not a member")
                        .help("members belong to models (`policy.logp`) and data sets (`arith.correct`)"),
                );
                Val::Error
            }
        }
    }

    fn call(
        &mut self,
        callee: &Expr,
        args: Vec<(Option<&Ident>, ArgVal, Span)>,
        span: Span,
    ) -> Val {
        if let ExprKind::Name(n) = &callee.kind {
            // Bindings are values, never callable, so `let kl = kl(...)` calls the block.
            let shadowed = self.cx.declared.contains_key(n)
                || builtins::TEXTS.iter().any(|(t, _)| t == n)
                || matches!(n.as_str(), "old" | "ref");
            if !shadowed {
                return match blocks::lookup(n) {
                    Some(spec) => self.block(spec, args, span, callee.span),
                    None if self.lets.contains_key(n) => {
                        self.diags.push(
                            Diagnostic::error(
                                "not-callable",
                                format!("`{n}` is a value, not a block"),
                            )
                            .primary(callee.span, "bound by `let`, so it cannot be called")
                            .help(format!(
                                "to pass `{n}` to a block, write `f({n})` or `{n} |> f`"
                            )),
                        );
                        Val::Error
                    }
                    None => {
                        let mut d =
                            Diagnostic::error("unknown-block", format!("unknown block `{n}`"))
                                .primary(callee.span, "no block has this name");
                        d = match did_you_mean(n, blocks::ALL.iter().map(|b| b.name)) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help("`rlx blocks` lists every block"),
                        };
                        self.diags.push(d);
                        // Lower the arguments anyway, so their own errors and uses are seen.
                        for (_, a, _) in args {
                            if let ArgVal::Expr(e) = a {
                                self.expr(e);
                            }
                        }
                        Val::Error
                    }
                };
            }
        }
        let target = self.expr(callee);
        let what = callee.as_path().map(|p| p.join(".")).unwrap_or_else(|| "this".into());
        let text_call = |me: &mut Self, op: Op| -> Val {
            match args.as_slice() {
                [(None, _, _)] => {
                    let (_, arg, aspan) = args.into_iter().next().expect("one argument");
                    let v = me.arg_val(arg);
                    match me.node_of(v, aspan) {
                        Some(text) => Val::Node(me.add(op, span, &[(text, aspan)])),
                        None => Val::Error,
                    }
                }
                _ => {
                    me.diags.push(
                        Diagnostic::error("wrong-arity", format!("`{what}` takes one text"))
                            .primary(span, "expected one positional argument")
                            .help(format!("write `{what}(response)`")),
                    );
                    Val::Error
                }
            }
        };
        match target {
            Val::Method(model, member) => {
                let op = match (member, &model) {
                    ("rewrite", ModelRef::Named(m)) => Op::Rewrite { model: m.clone() },
                    _ => Op::Signal { model, signal: signal_of(member) },
                };
                text_call(self, op)
            }
            Val::Scorer(s) => text_call(self, Op::Score(s)),
            Val::Model(m) if self.cx.prog.is_reward_model(&m) => {
                text_call(self, Op::Score(ScorerRef::Model(m)))
            }
            Val::Error => Val::Error,
            _ => {
                self.diags.push(
                    Diagnostic::error("not-callable", format!("`{what}` cannot be called"))
                        .primary(callee.span, "not a block, reward or model member")
                        .help("call blocks (`whiten(x)`), rewards (`rm(response)`) or members (`policy.logp(chosen)`)"),
                );
                Val::Error
            }
        }
    }

    fn arg_val(&mut self, a: ArgVal) -> Val {
        match a {
            ArgVal::Expr(e) => self.expr(e),
            ArgVal::Piped(v) => v,
        }
    }

    /// Turns a lowered value into a graph node, reporting values that are not data.
    fn node_of(&mut self, v: Val, span: Span) -> Option<NodeIndex> {
        match v {
            Val::Node(n) => Some(n),
            Val::Method(model, member) => {
                if member == "keep_prob" || member == "rewrite" {
                    self.diags.push(
                        Diagnostic::error(
                            "missing-argument",
                            format!("`{}.{member}` needs a text", model.display()),
                        )
                        .primary(span, "no text given")
                        .help(format!("write `{}.{member}(response)`", model.display())),
                    );
                    return None;
                }
                let Some(text) = self.primary else {
                    self.diags.push(
                        Diagnostic::error(
                            "missing-argument",
                            format!(
                                "`{}.{member}` needs a text in a `pairs` stage",
                                model.display()
                            ),
                        )
                        .primary(span, "which response?")
                        .help(format!(
                            "write `{0}.{member}(chosen)` or `{0}.{member}(rejected)`",
                            model.display()
                        )),
                    );
                    return None;
                };
                let t = self.add(Op::Text(text), span, &[]);
                Some(self.add(Op::Signal { model, signal: signal_of(member) }, span, &[(t, span)]))
            }
            Val::Scorer(s) => Some(self.add(Op::Scorer(s), span, &[])),
            Val::Model(m) => {
                self.diags.push(
                    Diagnostic::error("type-mismatch", format!("`{m}` is a model, not a value"))
                        .primary(span, "a model")
                        .help(format!("read one of its signals, e.g. `{m}.logp`")),
                );
                None
            }
            Val::Pseudo(p) => {
                self.diags.push(
                    Diagnostic::error(
                        "type-mismatch",
                        format!("`{}` is a model, not a value", p.display()),
                    )
                    .primary(span, "a model")
                    .help(format!("read one of its signals, e.g. `{}.logp`", p.display())),
                );
                None
            }
            Val::Data(d) => {
                self.diags.push(
                    Diagnostic::error("type-mismatch", format!("`{d}` is a data set, not a value"))
                        .primary(span, "a data set")
                        .help("use a member: a verifier such as `arith.correct(response)`"),
                );
                None
            }
            Val::Error => None,
        }
    }

    fn block(
        &mut self,
        spec: &'static BlockSpec,
        args: Vec<(Option<&Ident>, ArgVal, Span)>,
        span: Span,
        name_span: Span,
    ) -> Val {
        let n_inputs = spec.inputs.len();
        let n_slots = n_inputs + spec.params.len();
        let mut slots: Vec<Option<(ArgVal, Span, Span)>> = (0..n_slots).map(|_| None).collect();
        let mut positional = 0;
        let mut ok = true;
        for (name, arg, aspan) in args {
            let slot = match name {
                None => {
                    let s = positional;
                    positional += 1;
                    if s >= n_slots {
                        self.diags.push(
                            Diagnostic::error(
                                "too-many-arguments",
                                format!("`{}` takes {n_slots} arguments at most", spec.name),
                            )
                            .primary(aspan, "extra argument")
                            .help(format!("the signature is `{}`", spec.signature())),
                        );
                        ok = false;
                        continue;
                    }
                    s
                }
                Some(n) => {
                    match spec.input(&n.name).or_else(|| spec.param(&n.name).map(|p| p + n_inputs))
                    {
                        Some(s) => s,
                        None => {
                            let names = spec
                                .inputs
                                .iter()
                                .map(|i| i.name)
                                .chain(spec.params.iter().map(|p| p.name));
                            let mut d = Diagnostic::error(
                                "unknown-argument",
                                format!("`{}` has no argument `{}`", spec.name, n.name),
                            )
                            .primary(n.span, "unknown argument");
                            d = match did_you_mean(&n.name, names) {
                                Some(s) => d.help(format!("did you mean `{s}`?")),
                                None => d.help(format!("the signature is `{}`", spec.signature())),
                            };
                            self.diags.push(d);
                            ok = false;
                            continue;
                        }
                    }
                }
            };
            let name_span = name.map_or(aspan, |n| n.span);
            if let Some((_, _, first)) = &slots[slot] {
                let argname = if slot < n_inputs {
                    spec.inputs[slot].name
                } else {
                    spec.params[slot - n_inputs].name
                };
                self.diags.push(duplicate_arg(argname, name_span, *first));
                ok = false;
                continue;
            }
            slots[slot] = Some((arg, aspan, name_span));
        }
        let mut inputs = Vec::with_capacity(n_inputs);
        let mut missing = Vec::new();
        for (i, slot) in slots.iter_mut().enumerate().take(n_inputs) {
            match slot.take() {
                Some((arg, aspan, _)) => {
                    let v = self.arg_val(arg);
                    match self.node_of(v, aspan) {
                        Some(n) => inputs.push((n, aspan)),
                        None => ok = false,
                    }
                }
                None => missing.push(spec.inputs[i].name),
            }
        }
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
            self.diags.push(
                Diagnostic::error(
                    "missing-argument",
                    format!("`{}` is missing {}", spec.name, list.join(", ")),
                )
                .primary(name_span, format!("needs {} input(s)", n_inputs))
                .help(format!("the signature is `{}`", spec.signature())),
            );
            ok = false;
        }
        let mut params = Vec::new();
        for (i, slot) in slots.into_iter().enumerate().skip(n_inputs) {
            let Some((arg, aspan, _)) = slot else { continue };
            let value = match arg {
                ArgVal::Expr(e) => match const_eval(e) {
                    Const::Word(w) if self.lets.contains_key(&w) => Const::Dynamic,
                    c => c,
                },
                ArgVal::Piped(..) => Const::Dynamic,
            };
            if value == Const::Dynamic {
                self.diags.push(not_constant(spec.params[i - n_inputs].name, aspan));
                ok = false;
                continue;
            }
            params.push(ParamArg { param: i - n_inputs, value, span: aspan });
        }
        if !ok {
            return Val::Error;
        }
        Val::Node(self.add(Op::Block { spec, params }, span, &inputs))
    }
}

fn signal_of(member: &str) -> Signal {
    match member {
        "values" => Signal::Values,
        "entropy" => Signal::Entropy,
        "keep_prob" => Signal::KeepProb,
        "sum_p2" => Signal::SumP2,
        _ => Signal::Logp,
    }
}

fn not_constant(name: &str, span: Span) -> Diagnostic {
    Diagnostic::error("param-not-constant", format!("parameter `{name}` must be a constant"))
        .primary(span, "computed from data")
        .help("parameters are numbers, strings or words fixed in the recipe; data flows through inputs")
}
