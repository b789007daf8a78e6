//! rlx diagnostics as LSP diagnostics: the primary label's range, the code, the message with
//! the primary label and help, and secondary labels as related information.

use lsp_types::{DiagnosticRelatedInformation, DiagnosticSeverity, Location, NumberOrString, Uri};

use super::position::LineIndex;
use crate::diag::{Diagnostic, Severity};

pub fn to_lsp(d: &Diagnostic, index: &LineIndex, uri: &Uri) -> lsp_types::Diagnostic {
    let primary = d.labels.iter().find(|l| l.primary);
    let mut message = d.message.clone();
    if let Some(l) = primary.filter(|l| !l.message.is_empty()) {
        message.push_str(&format!("\n{}", l.message));
    }
    if let Some(h) = &d.help {
        message.push_str(&format!("\nhelp: {h}"));
    }
    let related: Vec<DiagnosticRelatedInformation> = d
        .labels
        .iter()
        .filter(|l| !l.primary)
        .map(|l| DiagnosticRelatedInformation {
            location: Location { uri: uri.clone(), range: index.range(l.span) },
            message: l.message.clone(),
        })
        .collect();
    lsp_types::Diagnostic {
        range: index.range(d.primary_span()),
        severity: Some(match d.severity {
            Severity::Error => DiagnosticSeverity::ERROR,
            Severity::Warning => DiagnosticSeverity::WARNING,
        }),
        code: Some(NumberOrString::String(d.code.to_string())),
        source: Some("rlx".into()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        ..Default::default()
    }
}

/// The replacement a diagnostic's help suggests (`did you mean `x`?`), fitted to its span:
/// `base.member` suggestions replace only the member when the span covers only the member.
pub fn suggestion(d: &Diagnostic, text: &str) -> Option<String> {
    let help = d.help.as_deref()?;
    let rest = help.split("did you mean `").nth(1)?;
    let s = rest.split('`').next()?.to_string();
    let span = d.primary_span();
    let under = text.get(span.start..span.end)?;
    if s.contains('.') && !under.contains('.') {
        return s.rsplit('.').next().map(str::to_string);
    }
    Some(s)
}
