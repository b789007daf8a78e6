//! Every diagnostic code rlx emits, in one registry: its name, where it comes from (the parser,
//! lowering, the checker, a lint with its default level, evaluation, a run, the verl export, a
//! Tinker server), a one-line summary and an explanation, and — for every code a recipe can
//! trigger — a recipe that does, with what `rlx lint` prints for it (the `tests/ui` case,
//! embedded). `rlx explain` prints an entry; `--allow`/`--deny` and `# rlx: allow(..)` accept
//! exactly the lints here; `tests/ui.rs` requires every code emitted under `src/` to be here and
//! every entry with an example to be a UI case that shows it. The recipe's own codes are in
//! `language.rs`, those of `--target verl` and `--target tinker` in `targets.rs`.

mod language;
mod targets;

use std::sync::OnceLock;

use super::Code;

macro_rules! ui {
    ($case:literal) => {
        crate::diag::Example {
            case: $case,
            recipe: include_str!(concat!("../../../tests/ui/", $case, ".rlx")),
            output: include_str!(concat!("../../../tests/ui/", $case, ".stderr")),
        }
    };
}
use ui;

/// Every code, sorted by name.
pub fn all() -> &'static [&'static Code] {
    static ALL: OnceLock<Vec<&'static Code>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<&Code> = language::CODES.iter().chain(targets::CODES).collect();
        all.sort_by_key(|c| c.name);
        all
    })
}

/// The code named `name`.
pub fn code(name: &str) -> Option<&'static Code> {
    all().iter().copied().find(|c| c.name == name)
}

/// Every lint, sorted by name.
pub fn lints() -> impl Iterator<Item = &'static Code> {
    all().iter().copied().filter(|c| c.lint_default().is_some())
}
