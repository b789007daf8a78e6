//! The diagnostics lowering reports, built in one place so their wording stays consistent.

use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::syntax::ast::*;

pub(super) fn invalid_decl(expr: &Expr, what: &str, help: &str) -> Diagnostic {
    Diagnostic::error("invalid-declaration", format!("this does not declare {what}"))
        .primary(expr.span, "unrecognised declaration")
        .help(help.to_string())
}

pub(super) fn unknown_name<'a>(
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

pub(super) fn unknown_member<'a>(
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

pub(super) fn duplicate_arg(name: &str, span: Span, first: Span) -> Diagnostic {
    Diagnostic::error("duplicate-argument", format!("argument `{name}` is given twice"))
        .primary(span, "given again here")
        .secondary(first, "first given here")
        .help("remove one of them")
}

pub(super) fn too_many(span: Span, callee: &str, max: usize) -> Diagnostic {
    Diagnostic::error(
        "too-many-arguments",
        format!("`{callee}` takes at most {max} positional arguments"),
    )
    .primary(span, "extra argument")
    .help(format!("see `rlx blocks {callee}` for its signature"))
}

pub(super) fn not_constant(name: &str, span: Span) -> Diagnostic {
    Diagnostic::error("param-not-constant", format!("parameter `{name}` must be a constant"))
        .primary(span, "computed from data")
        .help("parameters are numbers, strings or words fixed in the recipe; data flows through inputs")
}
