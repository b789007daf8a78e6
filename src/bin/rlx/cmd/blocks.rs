//! `rlx blocks`: the block reference, every block or one in full.

use std::process::ExitCode;

use crate::args::BlocksArgs;

pub fn main(args: BlocksArgs) -> Result<ExitCode, String> {
    match args.name.as_deref() {
        None => print!("{}", rlx::blocks::docs::index()),
        Some(n) => print!("{}", rlx::blocks::docs::page(n)?),
    }
    Ok(ExitCode::SUCCESS)
}
