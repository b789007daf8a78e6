//! `rlx completions SHELL`: a completion script for bash, zsh, fish, elvish or PowerShell,
//! generated from the same clap definitions the command line parses with.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs};

pub fn main(args: CompletionsArgs) -> Result<ExitCode, String> {
    clap_complete::generate(args.shell, &mut Cli::command(), "rlx", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
