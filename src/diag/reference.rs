//! The diagnostics reference as one Markdown page (`docs/reference/diagnostics.md`),
//! generated from the code registry (`codes`) and checked by `tests/docs.rs`: the lints with
//! their default levels, then every other code by where it comes from, each with its summary,
//! explanation and, where a recipe can trigger it, that recipe and what `rlx lint` prints.

use std::fmt::Write;

use super::codes;
use super::{Code, Kind, Severity};
use crate::blocks::docs::{cell, upper_first};

pub fn markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from the diagnostic code registry (src/diag/codes) by \
         `cargo test --test docs`; do not edit. -->\n\n# Diagnostics and lints\n\n\
         Every code rlx reports has a stable name. Lints can be switched per run \
         (`rlx lint --allow NAME`, `--deny NAME`, `--deny warnings`) or silenced for one \
         statement (`# rlx: allow(NAME)` on the line before it); the other codes are always \
         errors (or, for a few run-time notes, warnings). `rlx explain NAME` prints an entry \
         on the terminal.\n\n",
    );
    let lints: Vec<&Code> = codes::lints().collect();
    out.push_str("## Lints\n\n| lint | default | |\n|---|---|---|\n");
    for c in &lints {
        let level = match c.kind {
            Kind::Lint(Severity::Error) => "error",
            _ => "warning",
        };
        let _ = writeln!(out, "| [`{0}`](#{0}) | {level} | {1} |", c.name, cell(c.summary));
    }
    let origins = [
        (Kind::Syntax, "the parser"),
        (Kind::Lowering, "name resolution"),
        (Kind::Check, "the checker"),
        (Kind::Evaluation, "evaluation"),
        (Kind::Run, "a training run"),
        (Kind::Export, "`--target verl` and `rlx export verl`"),
        (Kind::Remote, "`--target tinker` and `--engine tinker`"),
    ];
    out.push_str("\n## Other codes\n\n| code | from | |\n|---|---|---|\n");
    for (kind, from) in origins {
        for c in codes::all().iter().filter(|c| c.kind == kind) {
            let _ = writeln!(out, "| [`{0}`](#{0}) | {from} | {1} |", c.name, cell(c.summary));
        }
    }
    out.push_str("\n## Every code\n");
    for c in codes::all() {
        let _ = writeln!(out, "\n### {}\n", c.name);
        let _ = writeln!(out, "{}. From {}.\n", upper_first(c.summary), c.kind.describe());
        let _ =
            writeln!(out, "{}\n", c.explanation.split_whitespace().collect::<Vec<_>>().join(" "));
        if let Some(f) = c.fragment {
            let _ = writeln!(out, "For instance:\n\n```text\n{}\n```\n", f.trim_end());
        }
        if let Some(e) = &c.example {
            let _ = writeln!(
                out,
                "Example (`tests/ui/{}.rlx`):\n\n```rlx\n{}\n```\n\n`rlx lint` reports:\n\n```text\n{}\n```",
                e.case,
                e.recipe.trim_end(),
                e.output.trim_end()
            );
        }
    }
    out
}
