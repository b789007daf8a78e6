//! `rlx diff`: what two recipes compute differently; exit 0 when equivalent, 1 when not.

use std::process::ExitCode;

use rlx::render::Style;

use crate::args::DiffArgs;
use crate::ui;

pub fn main(args: DiffArgs, style: Style) -> Result<ExitCode, String> {
    let DiffArgs { old, new } = args;
    // A recipe with errors is a usage failure here (2), not a difference (1).
    let Some((_, a)) = ui::analyze_clean(&old, style)? else { return Ok(ExitCode::from(2)) };
    let Some((_, b)) = ui::analyze_clean(&new, style)? else { return Ok(ExitCode::from(2)) };
    let d = rlx::diff::diff(ui::checked(&a)?, ui::checked(&b)?);
    print!("{}", rlx::diff::render(&d, &old.display().to_string(), &new.display().to_string()));
    Ok(if d.is_empty() { ExitCode::SUCCESS } else { ui::findings() })
}
