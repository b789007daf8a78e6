//! A recipe file and the front half of the pipeline: text → checked graphs plus diagnostics.

use crate::check::lints::{self, LintConfig, Suppression};
use crate::check::{self, Checked};
use crate::diag::{self, Diagnostic, Span};
use crate::syntax::{self, ast::*, comments};

/// A recipe's name (for messages) and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> SourceFile {
        SourceFile { name: name.into(), text: text.into() }
    }

    /// Reads a recipe file: at most [`syntax::MAX_SOURCE_BYTES`] (a longer file is an error naming
    /// the file and the limit, found without reading past it), then as [`SourceFile::from_bytes`].
    pub fn read(path: &std::path::Path) -> Result<(SourceFile, Option<Diagnostic>), String> {
        use std::io::Read;
        let cannot = |e: std::io::Error| format!("cannot read `{}`: {e}", path.display());
        let file = std::fs::File::open(path).map_err(cannot)?;
        let mut bytes = Vec::new();
        file.take(syntax::MAX_SOURCE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(cannot)?;
        if bytes.len() > syntax::MAX_SOURCE_BYTES {
            return Err(format!(
                "`{}` is larger than {} MiB, the most a recipe may be: is it a recipe?",
                path.display(),
                syntax::MAX_SOURCE_BYTES >> 20
            ));
        }
        Ok(SourceFile::from_bytes(path.display().to_string(), &bytes))
    }

    /// Reads bytes as UTF-8; invalid bytes become a diagnostic (and U+FFFD in the text).
    pub fn from_bytes(name: impl Into<String>, bytes: &[u8]) -> (SourceFile, Option<Diagnostic>) {
        match std::str::from_utf8(bytes) {
            Ok(text) => (SourceFile::new(name, text), None),
            Err(e) => {
                let text = String::from_utf8_lossy(bytes).into_owned();
                let at = e.valid_up_to();
                let d = Diagnostic::error("invalid-utf8", "the recipe is not valid UTF-8")
                    .primary(Span::new(at, (at + 1).min(text.len())), "invalid byte here")
                    .help("save the file as UTF-8");
                (SourceFile::new(name, text), Some(d))
            }
        }
    }
}

/// Everything the front half learns about a recipe.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub recipe: Option<Recipe>,
    pub checked: Option<Checked>,
    /// Sorted by position; lints already configured and suppressed.
    pub diagnostics: Vec<Diagnostic>,
}

impl Analysis {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Parses, lowers and checks a recipe.
pub fn analyze(source: &SourceFile, config: &LintConfig) -> Analysis {
    analyze_with(source, config, &[]).expect("no overrides to reject")
}

/// Like [`analyze`], with `PATH=VALUE` overrides applied to the lowered recipe before checking
/// (so an overridden value is validated like a written one). An override naming nothing is an
/// error message.
pub fn analyze_with(
    source: &SourceFile,
    config: &LintConfig,
    overrides: &[String],
) -> Result<Analysis, String> {
    let recipe = match syntax::parse(&source.text) {
        Ok(r) => r,
        Err(d) => return Ok(Analysis { recipe: None, checked: None, diagnostics: vec![d] }),
    };
    let (mut program, mut diags) = crate::ir::lower(&recipe);
    let mut applied = Vec::new();
    for o in overrides {
        applied.push((crate::ir::overrides::apply(&mut program, o)?, o));
    }
    let (checked, more) = check::check(program);
    diags.extend(more);
    // A diagnostic about an overridden value names the flag: the recipe text under its span is
    // no longer the value.
    for d in &mut diags {
        if let Some((_, flag)) = applied.iter().rev().find(|(span, _)| *span == d.primary_span()) {
            d.message = format!("{} (set by `--set {flag}`)", d.message);
            for l in d.labels.iter_mut().filter(|l| l.primary) {
                l.message = format!("`--set {flag}` replaces the value here: {}", l.message);
            }
        }
    }
    let mut diags = lints::configure(diags, config, &suppressions(&source.text, &recipe));
    dedup(&mut diags);
    diag::sort(&mut diags);
    Ok(Analysis { recipe: Some(recipe), checked: Some(checked), diagnostics: diags })
}

fn dedup(diags: &mut Vec<Diagnostic>) {
    let mut seen = Vec::new();
    diags.retain(|d| {
        let key = (d.code, d.message.clone(), d.primary_span());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
}

/// The statements a suppression comment can cover: declarations, stages and stage statements.
fn statement_spans(recipe: &Recipe) -> Vec<Span> {
    let mut spans = Vec::new();
    if let Some(h) = &recipe.header {
        spans.push(h.span);
    }
    for item in &recipe.items {
        spans.push(item.span());
        if let Item::Stage(s) = item {
            spans.extend(s.stmts.iter().map(|st| st.span));
        }
    }
    spans
}

/// `# rlx: allow(..)` comments, each covering the statement it ends or the next one.
/// Diagnostics found after analysis (e.g. `rlx lint --target verl`), configured and suppressed
/// like the analysis's own lints, and added to it in order.
pub fn add_diagnostics(
    source: &SourceFile,
    analysis: &mut Analysis,
    diags: Vec<Diagnostic>,
    config: &LintConfig,
) {
    let sup = analysis.recipe.as_ref().map(|r| suppressions(&source.text, r)).unwrap_or_default();
    analysis.diagnostics.extend(lints::apply(diags, config, &sup));
    dedup(&mut analysis.diagnostics);
    diag::sort(&mut analysis.diagnostics);
}

fn suppressions(text: &str, recipe: &Recipe) -> Vec<Suppression> {
    let stmts = statement_spans(recipe);
    let mut out = Vec::new();
    for c in comments::comments(text) {
        let Some(names) = comments::allowed_lints(&c) else { continue };
        let line_start = text[..c.span.start].rfind('\n').map_or(0, |i| i + 1);
        let trailing = (!c.own_line)
            .then(|| {
                stmts
                    .iter()
                    .filter(|s| s.start < c.span.start && s.end >= line_start)
                    .min_by_key(|s| s.end - s.start)
                    .copied()
            })
            .flatten();
        let next = || {
            stmts.iter().filter(|s| s.start > c.span.end).min_by_key(|s| (s.start, s.end)).copied()
        };
        let covers = trailing.or_else(next).unwrap_or(c.span);
        out.push(Suppression { names, covers });
    }
    out
}
