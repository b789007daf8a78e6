//! Syntax tree → `Program`: resolves names, builds one dataflow graph per stage, and reports what
//! cannot be resolved (unknown names with "did you mean", wrong arity, cycles between bindings).
//! Identical expressions share one node, so the executor computes each value once.
//!
//! By construct: `decls` (data, models, rewards), `stages` (a stage and its statements),
//! `exprs` (names, bindings, members), `scope` (what lowering a stage keeps), `calls` (blocks and their arguments), `errors` (the
//! diagnostics).

mod calls;
mod decls;
mod errors;
mod exprs;
mod scope;
mod stages;

use std::collections::HashMap;

use super::builtins;
use super::graph::*;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::*;
use scope::StageCx;

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
    pub(super) fn declare(&mut self, name: &Ident, kind: DeclKind) {
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

    pub(super) fn kind_of(&self, name: &str) -> Option<DeclKind> {
        self.declared.get(name).map(|(k, _)| *k)
    }

    pub(super) fn declared_of(&self, kind: DeclKind) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .declared
            .iter()
            .filter(|(_, (k, _))| *k == kind)
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort();
        names
    }
}
