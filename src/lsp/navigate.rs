//! Go to definition, find references and document symbols, over `let` bindings, model, data
//! and reward declarations, and stages.

use lsp_types::{DocumentSymbol, SymbolKind};

use super::position::LineIndex;
use super::syntax_at::{self, Def, DefKind, Hit};
use crate::diag::Span;
use crate::syntax::ast::Recipe;

/// The definition the name at `offset` refers to (a definition refers to itself).
pub fn definition(recipe: &Recipe, offset: usize) -> Option<Def> {
    let defs = syntax_at::definitions(recipe);
    let (name, stage) = match syntax_at::hit(recipe, offset)? {
        Hit::Name { name, stage, .. } | Hit::Definition { name, stage, .. } => (name, stage),
        Hit::Member { base, .. } => (base.split('.').next()?.to_string(), None),
        _ => return None,
    };
    syntax_at::resolve(&defs, &name, stage)
        .or_else(|| defs.iter().find(|d| d.kind == DefKind::Stage && d.name == name))
        .cloned()
}

/// Every span that names the definition at `offset`, the definition first when wanted.
pub fn references(recipe: &Recipe, offset: usize, include_declaration: bool) -> Vec<Span> {
    let Some(def) = definition(recipe, offset) else { return vec![] };
    let defs = syntax_at::definitions(recipe);
    let mut out = Vec::new();
    if include_declaration {
        out.push(def.span);
    }
    for (name, span, stage) in syntax_at::name_uses(recipe) {
        if name == def.name && syntax_at::resolve(&defs, &name, stage) == Some(&def) {
            out.push(span);
        }
    }
    out
}

/// Declarations and stages, with each stage's bindings as children.
#[allow(deprecated)] // `DocumentSymbol::deprecated` must be written out
pub fn symbols(recipe: &Recipe, index: &LineIndex) -> Vec<DocumentSymbol> {
    let symbol = |d: &Def, kind: SymbolKind, detail: &str| DocumentSymbol {
        name: d.name.clone(),
        detail: Some(detail.to_string()),
        kind,
        tags: None,
        deprecated: None,
        range: index.range(d.full),
        selection_range: index.range(d.span),
        children: None,
    };
    let mut out: Vec<DocumentSymbol> = Vec::new();
    for d in syntax_at::definitions(recipe) {
        match d.kind {
            DefKind::Data => out.push(symbol(&d, SymbolKind::MODULE, "data")),
            DefKind::Model => out.push(symbol(&d, SymbolKind::CLASS, "model")),
            DefKind::Reward => out.push(symbol(&d, SymbolKind::FUNCTION, "reward")),
            DefKind::Stage => out.push(symbol(&d, SymbolKind::NAMESPACE, "stage")),
            DefKind::Let => {
                let child = symbol(&d, SymbolKind::VARIABLE, "let");
                if let Some(stage) = out.iter_mut().rev().find(|s| s.kind == SymbolKind::NAMESPACE)
                {
                    stage.children.get_or_insert_with(Vec::new).push(child);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_and_references_respect_stage_scopes() {
        let text = "data arith = builtin(\"arith\")
model policy = builtin(\"tiny\", warm_start = arith.solutions)
stage a {
    train policy
    prompts arith.problems
    let r = arith.correct(response)
    loss = seq_mean(r * policy.logp)
}
stage b {
    train policy
    prompts arith.problems
    let r = arith.correct(response)
    loss = seq_mean(r)
}
";
        let recipe = crate::syntax::parse(text).unwrap();
        let use_a = text.find("r * policy").unwrap();
        let def = definition(&recipe, use_a).unwrap();
        assert_eq!(def.kind, DefKind::Let);
        assert_eq!(def.span.start, text.find("let r").unwrap() + 4);
        // Stage b's `r` is another binding.
        let refs = references(&recipe, use_a, true);
        assert_eq!(refs.len(), 2, "{refs:?}");
        let arith = references(&recipe, text.find("arith.correct").unwrap(), false);
        assert_eq!(arith.len(), 5, "{arith:?}");
        let index = LineIndex::new(text);
        let syms = symbols(&recipe, &index);
        let names: Vec<&str> = syms.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["arith", "policy", "a", "b"]);
        assert_eq!(syms[2].children.as_ref().unwrap()[0].name, "r");
    }
}
