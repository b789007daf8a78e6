//! The `rlx` command line: parses arguments, calls the library, prints, and sets the exit code
//! (0 ok, 1 findings: errors or differences, 2 usage or I/O failure). Each subcommand lives in
//! `cmd/`, its arguments in `args.rs`; what commands share about recipes in `ui.rs`.

mod args;
mod cmd;
mod run_dir;
mod runtime;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// glibc's allocator returns every large tensor buffer to the OS and maps it again on the next
/// step (a third of a training step on 2 cores); mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.computes() {
        runtime::tune();
    }
    let style = ui::style(cli.color);
    let result = match cli.command {
        Command::Lint(args) => cmd::lint::main(args, style),
        Command::Graph(args) => cmd::graph::main(args, style),
        Command::Diff(args) => cmd::diff::main(args, style),
        Command::Fmt(args) => cmd::fmt::main(args, style),
        Command::Blocks(args) => cmd::blocks::main(args),
        Command::Run(args) => cmd::run::main(args, style),
        Command::Bench(args) => cmd::bench::main(args),
        Command::Score(args) => cmd::score::main(args),
        Command::Generate(args) => cmd::generate::main(args),
        Command::TinyCheckpoint(args) => cmd::tiny_checkpoint::main(args),
        Command::Eval(args) => cmd::eval::main(args, style),
        Command::Compare(args) => cmd::compare::main(args, style),
        Command::Plot(args) => cmd::plot::main(args),
        Command::Export(args) => cmd::export::main(args, style),
        Command::Lsp => Ok(ExitCode::from(rlx::lsp::serve_stdio() as u8)),
        Command::Values(args) => cmd::values::main(args, style),
        Command::Explain(args) => cmd::explain::main(args),
        Command::Completions(args) => cmd::completions::main(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
