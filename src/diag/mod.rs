//! Diagnostics as plain data: a stable code, a severity, labelled spans and a help line.
//!
//! Every phase returns these values; only `render` turns them into text.

pub mod codes;
pub mod reference;

use serde::Serialize;

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span that covers both.
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

/// How serious a diagnostic is. Errors stop `rlx run`; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// A span with a message; the primary label marks the offending code.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

/// One finding about a recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Stable kebab-case name, e.g. `level-mismatch`.
    pub code: &'static str,
    pub severity: Severity,
    /// Lowercase, no final period.
    pub message: String,
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: vec![],
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, message) }
    }

    /// Adds the primary label.
    pub fn primary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label { span, message: message.into(), primary: true });
        self
    }

    /// Adds a secondary label for context.
    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label { span, message: message.into(), primary: false });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// The span of the primary label, used for ordering and suppression.
    pub fn primary_span(&self) -> Span {
        self.labels
            .iter()
            .find(|l| l.primary)
            .or(self.labels.first())
            .map(|l| l.span)
            .unwrap_or_default()
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Sorts diagnostics by position, then code, so output is deterministic.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (a.primary_span(), a.code, &a.message).cmp(&(b.primary_span(), b.code, &b.message))
    });
}

/// The closest candidate to `name` by edit distance, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// The registry's entries (`codes::all()`).

/// Where a code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The parser: the text is not a recipe.
    Syntax,
    /// Name resolution and graph construction.
    Lowering,
    /// Levels, texts, gradients, parameters, stage structure.
    Check,
    /// A finding that is usually a mistake but may be intended: `--allow`/`--deny` switch it,
    /// `# rlx: allow(NAME)` silences one statement. Carries its default level.
    Lint(Severity),
    /// Evaluating a stage (`rlx eval`, and every step of `rlx run`).
    Evaluation,
    /// A training run, outside the objective itself.
    Run,
    /// What verl would compute differently (`rlx export verl`, `rlx lint --target verl`).
    Export,
    /// What a Tinker-protocol server cannot run (`rlx run --engine tinker`,
    /// `rlx lint --target tinker`).
    Remote,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Syntax => "the parser",
            Kind::Lowering => "name resolution",
            Kind::Check => "the checker",
            Kind::Lint(Severity::Error) => "a lint, an error by default",
            Kind::Lint(Severity::Warning) => "a lint, a warning by default",
            Kind::Evaluation => "evaluating a stage (`rlx eval`, every step of `rlx run`)",
            Kind::Run => "a training run",
            Kind::Export => "`rlx export verl` and `rlx lint --target verl`",
            Kind::Remote => "`rlx run --engine tinker` and `rlx lint --target tinker`",
        }
    }
}

/// A recipe that triggers a code, and what `rlx lint` prints for it.
#[derive(Debug)]
pub struct Example {
    /// The `tests/ui` case it is.
    pub case: &'static str,
    pub recipe: &'static str,
    pub output: &'static str,
}

/// One code.
#[derive(Debug)]
pub struct Code {
    /// Stable kebab-case name, e.g. `level-mismatch`.
    pub name: &'static str,
    pub kind: Kind,
    pub summary: &'static str,
    pub explanation: &'static str,
    /// For lints: the shape of recipe text that triggers it.
    pub fragment: Option<&'static str>,
    pub example: Option<Example>,
}

impl Code {
    /// A lint's default level; `None` for codes that are always errors.
    pub fn lint_default(&self) -> Option<Severity> {
        match self.kind {
            Kind::Lint(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("ppo_clp", ["ppo_clip", "gae"]), Some("ppo_clip"));
        assert_eq!(did_you_mean("xyz", ["ppo_clip", "gae"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
