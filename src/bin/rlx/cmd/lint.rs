//! `rlx lint`: every diagnostic of every file, as text or JSON; exit 1 if any is an error.

use std::process::ExitCode;

use rlx::check::lints::LintConfig;
use rlx::render::{self, Style};
use rlx::source;

use crate::args::{LintArgs, LintTarget};
use crate::ui;

pub fn main(args: LintArgs, style: Style) -> Result<ExitCode, String> {
    let deny_warnings = args.deny.iter().any(|d| d == "warnings");
    let config = LintConfig { allow: args.allow, deny: args.deny, deny_warnings };
    if let Some(problem) = config.unknown_names().first() {
        return Err(problem.clone());
    }
    let mut failed = false;
    let mut json = Vec::new();
    for path in &args.files {
        let (src, mut analysis) = ui::analyze(path, &config, &[])?;
        if let Some(target) = args.target.filter(|_| !analysis.has_errors()) {
            let checked = ui::checked(&analysis)?;
            let found = match target {
                LintTarget::Verl => {
                    rlx::export::verl::check(checked, ui::stage_of(checked, args.stage.as_deref())?)
                }
                LintTarget::Tinker => {
                    let only = match args.stage.as_deref() {
                        Some(s) => Some(ui::stage_of(checked, Some(s))?),
                        None => None,
                    };
                    rlx::engine::tinker::lint::check(checked, only, &[])
                }
            };
            source::add_diagnostics(&src, &mut analysis, found, &config);
        }
        failed |= analysis.has_errors();
        match args.format.json() {
            false => {
                ui::print_diagnostics(&src, &analysis, style);
                if !analysis.diagnostics.is_empty() {
                    eprintln!("{}: {}", src.name, render::summary(&analysis.diagnostics));
                }
            }
            true => json.extend(analysis.diagnostics.iter().map(|d| render::json(d, &src))),
        }
    }
    if args.format.json() {
        println!("{}", serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
    }
    Ok(if failed { ui::findings() } else { ExitCode::SUCCESS })
}
