//! Diagnostics → text, at the edge: miette's graphical report for people, JSON for tools.

use std::fmt;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};
use serde::Serialize;

use crate::diag::{Diagnostic, Severity, Span};
use crate::source::SourceFile;

/// How to draw a human-readable report.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
    pub width: usize,
}

impl Style {
    /// Colourless, 80 columns: what golden tests compare.
    pub fn plain() -> Style {
        Style { color: false, width: 80 }
    }
}

struct Report<'a> {
    diag: &'a Diagnostic,
    source: NamedSource<String>,
    len: usize,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diag.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diag.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let len = self.len;
        Some(Box::new(self.diag.labels.iter().map(move |l| {
            let start = l.span.start.min(len);
            let end = l.span.end.clamp(start, len);
            let span = miette::SourceSpan::new(start.into(), end - start);
            if l.primary {
                LabeledSpan::new_primary_with_span(Some(l.message.clone()), span)
            } else {
                LabeledSpan::new_with_span(Some(l.message.clone()), span)
            }
        })))
    }
}

/// Longest source line shown in a report; longer lines are cut (a minified or binary file must
/// not flood the terminal).
const MAX_SHOWN_LINE: usize = 200;

/// The source as a report shows it: lines cut at `MAX_SHOWN_LINE` bytes (marked `…`) and control
/// characters as `?`, with a map from original byte offsets to shown ones.
fn shown(text: &str) -> (String, Vec<(usize, usize, usize)>) {
    let (mut out, mut lines) = (String::with_capacity(text.len().min(1 << 16)), Vec::new());
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let mut keep = body.len().min(MAX_SHOWN_LINE);
        while !body.is_char_boundary(keep) {
            keep -= 1;
        }
        lines.push((start, out.len(), keep));
        out.extend(
            body[..keep]
                .chars()
                .map(|c| if c.is_control() && c != '\t' && c != '\r' { '?' } else { c }),
        );
        if keep < body.len() {
            out.push('…');
        }
        if line.ends_with('\n') {
            out.push('\n');
        }
        start += line.len();
    }
    (out, lines)
}

/// Where an original byte offset lands in the shown text.
fn remap(lines: &[(usize, usize, usize)], offset: usize) -> usize {
    let i = lines.partition_point(|(start, _, _)| *start <= offset).saturating_sub(1);
    match lines.get(i) {
        Some((start, shown_start, keep)) => shown_start + (offset - start).min(*keep),
        None => 0,
    }
}

/// A graphical report of one diagnostic against its source.
pub fn human(diag: &Diagnostic, source: &SourceFile, style: Style) -> String {
    let theme =
        if style.color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(style.width);
    let (text, lines) = shown(&source.text);
    let mut diag = diag.clone();
    for l in &mut diag.labels {
        l.span = Span::new(remap(&lines, l.span.start), remap(&lines, l.span.end));
    }
    let len = text.len();
    let report = Report { diag: &diag, source: NamedSource::new(source.name.clone(), text), len };
    let mut out = String::new();
    if handler.render_report(&mut out, &report).is_err() {
        out = format!("{}: {}\n", diag.code, diag.message);
    }
    out
}

/// A one-line summary: `2 errors, 1 warning`.
pub fn summary(diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    format!("{}, {}", plural(errors, "error"), plural(warnings, "warning"))
}

#[derive(Serialize)]
struct JsonLabel<'a> {
    message: &'a str,
    primary: bool,
    start: usize,
    end: usize,
    line: usize,
    column: usize,
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: &'a str,
    code: &'a str,
    severity: Severity,
    message: &'a str,
    help: Option<&'a str>,
    line: usize,
    column: usize,
    labels: Vec<JsonLabel<'a>>,
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let offset = (0..=offset).rev().find(|o| text.is_char_boundary(*o)).unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One JSON object per diagnostic, for editors and CI.
pub fn json(diag: &Diagnostic, source: &SourceFile) -> serde_json::Value {
    let at = |s: Span| line_col(&source.text, s.start);
    let (line, column) = at(diag.primary_span());
    let value = JsonDiagnostic {
        file: &source.name,
        code: diag.code,
        severity: diag.severity,
        message: &diag.message,
        help: diag.help.as_deref(),
        line,
        column,
        labels: diag
            .labels
            .iter()
            .map(|l| {
                let (line, column) = at(l.span);
                JsonLabel {
                    message: &l.message,
                    primary: l.primary,
                    start: l.span.start,
                    end: l.span.end,
                    line,
                    column,
                }
            })
            .collect(),
    };
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
