//! `rlx fmt`: recipes in canonical layout, rewritten in place or checked with `--check`.

use std::process::ExitCode;

use rlx::render::{self, Style};
use rlx::source::SourceFile;

use crate::args::FmtArgs;
use crate::ui;

pub fn main(args: FmtArgs, style: Style) -> Result<ExitCode, String> {
    let mut unformatted = false;
    for path in &args.files {
        let (src, encoding) = SourceFile::read(path)?;
        if let Some(d) = encoding {
            eprint!("{}", render::human(&d, &src, style));
            return Ok(ui::findings());
        }
        let formatted = match rlx::syntax::format::format(&src.text) {
            Ok(f) => f,
            Err(d) => {
                eprint!("{}", render::human(&d, &src, style));
                return Ok(ui::findings());
            }
        };
        if formatted == src.text {
            continue;
        }
        if args.check {
            eprintln!("{} is not formatted", src.name);
            unformatted = true;
        } else {
            std::fs::write(path, formatted)
                .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            eprintln!("formatted {}", src.name);
        }
    }
    Ok(if unformatted { ui::findings() } else { ExitCode::SUCCESS })
}
