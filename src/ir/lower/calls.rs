//! Calls: a block's arguments matched to its inputs and parameters, and the positional/named
//! split declarations share.

use super::errors::*;
use super::exprs::{const_eval, signal_of};
use super::scope::{ArgVal, StageCx, Val};
use crate::blocks::{self, spec::BlockSpec};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::ir::builtins;
use crate::ir::graph::*;
use crate::syntax::ast::*;

pub(super) fn as_call(expr: &Expr) -> Option<(&str, &[Arg])> {
    match &expr.kind {
        ExprKind::Call(callee, args) => match &callee.kind {
            ExprKind::Name(n) => Some((n.as_str(), args.as_slice())),
            _ => None,
        },
        _ => None,
    }
}

/// Splits declaration arguments into positional expressions and constant named parameters.
pub(super) fn split_args<'a>(
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

impl<'a> StageCx<'a> {
    pub(super) fn call(
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

    pub(super) fn block(
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
