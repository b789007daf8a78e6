//! `rlx export verl`: a recipe's RL stage as a verl plugin package, or the diagnostics that say
//! what verl would compute differently.

use std::process::ExitCode;

use rlx::check::lints::LintConfig;
use rlx::render::{self, Style};
use rlx::source;

use crate::args::{ExportArgs, Target};
use crate::ui;

pub fn main(args: ExportArgs, style: Style) -> Result<ExitCode, String> {
    let ExportArgs { engine: Target::Verl, recipe: path, stage, out, set } = args;
    let (src, analysis) = ui::analyze(&path, &LintConfig::defaults(), &set.set)?;
    if ui::reject(&src, &analysis, style) {
        return Ok(ui::findings());
    }
    let checked = ui::checked(&analysis)?.clone();
    let index = ui::stage_of(&checked, stage.stage.as_deref())?;
    let (files, found) =
        rlx::export::verl::export(&checked, index, &src, &path.display().to_string());
    let mut shown = analysis;
    source::add_diagnostics(&src, &mut shown, found, &LintConfig::defaults());
    ui::print_diagnostics(&src, &shown, style);
    let Some(files) = files.filter(|_| !shown.has_errors()) else {
        eprintln!(
            "{}: not exported: {} (`rlx lint --target verl` reports the same)",
            src.name,
            render::summary(&shown.diagnostics)
        );
        return Ok(ui::findings());
    };
    rlx::export::verl::write(&files, &out)?;
    let name = rlx::export::verl::registry_name(&checked);
    println!(
        "wrote {} ({} files) for verl {}: plugin `{name}`; see {}/README.md",
        out.display(),
        files.len(),
        rlx::export::verl::VERL_VERSION,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
