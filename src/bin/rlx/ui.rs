//! What every command that reads a recipe does the same way: read it (bounded), analyse it,
//! print its diagnostics, and refuse to go on when it has errors; and the output style.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use rlx::check::Checked;
use rlx::check::lints::LintConfig;
use rlx::render::{self, Style};
use rlx::source::{self, Analysis, SourceFile};

use crate::args::Color;

/// How diagnostics are rendered: colour when asked, or when stderr is a terminal and
/// `NO_COLOR` is unset.
pub fn style(color: Color) -> Style {
    let color = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    Style { color, width: 100 }
}

/// Reads and analyses a file (with `--set` overrides); an encoding error is reported like any
/// other diagnostic.
pub fn analyze(
    path: &Path,
    config: &LintConfig,
    set: &[String],
) -> Result<(SourceFile, Analysis), String> {
    let (src, encoding) = SourceFile::read(path)?;
    let mut analysis = source::analyze_with(&src, config, set)?;
    if let Some(d) = encoding {
        analysis.diagnostics.insert(0, d);
    }
    Ok((src, analysis))
}

pub fn print_diagnostics(src: &SourceFile, analysis: &Analysis, style: Style) {
    for d in &analysis.diagnostics {
        eprint!("{}", render::human(d, src, style));
    }
}

/// Prints the diagnostics of an analysis with errors and their summary line; `true` when it
/// had errors (and the command must stop), `false` (printing nothing) otherwise.
pub fn reject(src: &SourceFile, analysis: &Analysis, style: Style) -> bool {
    if !analysis.has_errors() {
        return false;
    }
    print_diagnostics(src, analysis, style);
    eprintln!("{}: {}", src.name, render::summary(&analysis.diagnostics));
    true
}

/// Analyses a file that a command needs error-free; prints its diagnostics when it is not.
pub fn analyze_clean(path: &Path, style: Style) -> Result<Option<(SourceFile, Analysis)>, String> {
    let (src, analysis) = analyze(path, &LintConfig::defaults(), &[])?;
    if reject(&src, &analysis, style) {
        return Ok(None);
    }
    Ok(Some((src, analysis)))
}

/// The checked recipe of an analysis without errors.
pub fn checked(analysis: &Analysis) -> Result<&Checked, String> {
    analysis.checked.as_ref().ok_or_else(|| "internal: no checked graph".to_string())
}

/// Stage `name`, or the last.
pub fn stage_of(checked: &Checked, name: Option<&str>) -> Result<usize, String> {
    rlx::exec::stage_index(checked, name).ok_or_else(|| {
        let names: Vec<&str> =
            checked.program.stages.iter().map(|s| s.name.name.as_str()).collect();
        format!("no stage `{}`; the stages are {}", name.unwrap_or(""), names.join(", "))
    })
}

/// Exit code 1: findings (errors, differences).
pub fn findings() -> ExitCode {
    ExitCode::from(1)
}
