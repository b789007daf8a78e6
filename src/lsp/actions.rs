//! Code actions: a quick fix for every diagnostic whose help suggests a replacement.

use std::collections::HashMap;

use lsp_types::{CodeAction, CodeActionKind, TextEdit, Uri, WorkspaceEdit};

use super::diagnostics::{suggestion, to_lsp};
use super::position::LineIndex;
use crate::diag::{Diagnostic, Span};

/// Quick fixes for the diagnostics whose primary span meets `range` (byte offsets).
pub fn quick_fixes(
    diagnostics: &[Diagnostic],
    text: &str,
    uri: &Uri,
    range: Span,
) -> Vec<CodeAction> {
    let index = LineIndex::new(text);
    diagnostics
        .iter()
        .filter(|d| {
            let s = d.primary_span();
            s.start <= range.end && range.start <= s.end
        })
        .filter_map(|d| {
            let new_text = suggestion(d, text)?;
            let edit =
                TextEdit { range: index.range(d.primary_span()), new_text: new_text.clone() };
            Some(CodeAction {
                title: format!("replace with `{new_text}`"),
                kind: Some(CodeActionKind::QUICKFIX),
                diagnostics: Some(vec![to_lsp(d, &index, uri)]),
                edit: Some(WorkspaceEdit {
                    changes: Some(HashMap::from([(uri.clone(), vec![edit])])),
                    ..Default::default()
                }),
                is_preferred: Some(true),
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::lints::LintConfig;
    use crate::source::{SourceFile, analyze};

    #[test]
    fn did_you_mean_becomes_an_edit() {
        let text = std::fs::read_to_string("recipes/grpo.rlx")
            .unwrap()
            .replace("group_zscore(", "group_zscor(")
            .replace("policy.logp, old", "policy.lgp, old");
        let a = analyze(&SourceFile::new("x.rlx", text.clone()), &LintConfig::defaults());
        let uri: Uri = "file:///x.rlx".parse().unwrap();
        let fixes = quick_fixes(&a.diagnostics, &text, &uri, Span::new(0, text.len()));
        let titles: Vec<&str> = fixes.iter().map(|f| f.title.as_str()).collect();
        // The member diagnostic spans `policy.lgp`, so the fix names the whole path.
        assert!(titles.contains(&"replace with `policy.logp`"), "{titles:?} {:?}", a.diagnostics);
        assert!(titles.contains(&"replace with `group_zscore`"), "{titles:?}");
        for f in &fixes {
            let edits = &f.edit.as_ref().unwrap().changes.as_ref().unwrap()[&uri];
            assert_eq!(edits.len(), 1);
        }
    }
}
