//! Expressions: constants, names and `let` bindings, members (`policy.logp`), and turning any
//! lowered value into a graph node.

use petgraph::stable_graph::NodeIndex;

use super::MAX_DEPTH;
use super::errors::*;
use super::scope::{ArgVal, REWARD_MODEL_MEMBERS, StageCx, Val};
use crate::blocks::{self};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::ir::builtins::{self, MemberKind};
use crate::ir::graph::*;
use crate::syntax::ast::*;

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

impl<'a> StageCx<'a> {
    pub(super) fn expr(&mut self, e: &Expr) -> Val {
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

    pub(super) fn expr_inner(&mut self, e: &Expr) -> Val {
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

    pub(super) fn name(&mut self, n: &str, span: Span) -> Val {
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

    pub(super) fn member(&mut self, base: Val, base_expr: &Expr, m: &Ident) -> Val {
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
            Val::Scorer(ScorerRef::External { reward, part: None }) => {
                // A reward that replies with named scores: `r.format(response)`. Which names
                // it has is known only when it replies; a wrong one is a run-time error.
                Val::Scorer(ScorerRef::External { reward, part: Some(m.name.clone()) })
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

    pub(super) fn arg_val(&mut self, a: ArgVal) -> Val {
        match a {
            ArgVal::Expr(e) => self.expr(e),
            ArgVal::Piped(v) => v,
        }
    }

    /// Turns a lowered value into a graph node, reporting values that are not data.
    pub(super) fn node_of(&mut self, v: Val, span: Span) -> Option<NodeIndex> {
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
}

pub(super) fn signal_of(member: &str) -> Signal {
    match member {
        "values" => Signal::Values,
        "entropy" => Signal::Entropy,
        "keep_prob" => Signal::KeepProb,
        "sum_p2" => Signal::SumP2,
        _ => Signal::Logp,
    }
}
