//! The language's built-in names as one Markdown page (`docs/reference/builtins.md`),
//! generated from `builtins` and checked by `tests/docs.rs`: data sets and their members, the
//! model constructors' settings, model signals, the frozen models and texts a stage reads, and
//! every `sample { }` and `optim { }` setting with its default and range.

use std::fmt::Write;

use super::builtins::*;
use crate::blocks::docs::{cell, params_table, upper_first};

pub fn markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from the language's registry of built-in names (src/ir/builtins.rs) \
         by `cargo test --test docs`; do not edit. -->\n\n# Built-in names and settings\n\n\
         What a recipe can name besides blocks. The grammar and the rules are in \
         [The language](../language.md); blocks are in [Blocks](blocks.md).\n",
    );
    out.push_str("\n## Data sets\n");
    for d in DATA_SETS.iter().chain(std::iter::once(&JSONL)) {
        let call = if d.name == "jsonl" {
            "jsonl(\"FILE\", ...)` or `file(\"FILE\", ...)".to_string()
        } else {
            format!("builtin(\"{}\", ...)", d.name)
        };
        let _ = writeln!(out, "\n### `{call}`\n\n{}.\n", upper_first(d.summary));
        out.push_str(&params_table(d.params, "argument"));
        out.push_str("\n| member | kind | |\n|---|---|---|\n");
        for m in d.members {
            let _ = writeln!(out, "| `{}` | {} | {} |", m.name, m.kind.describe(), cell(m.doc));
        }
    }
    out.push_str("\n## Models\n\n### `builtin(\"tiny\" | \"small\" | \"base\", ...)`\n\n");
    out.push_str(
        "rlx's own transformer, trained from scratch; `warm_start = DATA.texts` fits it to a \
         text set first (cached by content hash).\n\n",
    );
    out.push_str(&params_table(MODEL_PARAMS, "argument"));
    out.push_str("\n### `pretrained(\"DIR\", ...)`\n\nA Hugging Face checkpoint directory.\n\n");
    out.push_str(&params_table(PRETRAINED_PARAMS, "argument"));
    out.push_str(
        "\n### `yes_no(MODEL, ...)`\n\nA reward model read as a language model's answer: a copy of \
         `MODEL`'s initial weights whose score of a text is `log p(yes) − log p(no)` after the \
         text and `question` (each answer's log-probability summed over its tokens). Trained \
         in a `pairs` stage like `reward_model(...)`; the form a Tinker server holds a reward \
         model in.\n\n",
    );
    out.push_str(&params_table(YES_NO_PARAMS, "argument"));
    out.push_str(
        "\n## Model signals\n\n`MODEL.NAME`, or `MODEL.NAME(text)` for a text other than \
         the stage's primary one.\n\n| signal | |\n|---|---|\n",
    );
    for (name, doc) in MODEL_MEMBERS {
        let _ = writeln!(out, "| `{name}` | {} |", cell(doc));
    }
    out.push_str("\n## Models every stage can read\n\n| name | |\n|---|---|\n");
    for (name, doc) in PSEUDO_MODELS {
        let _ = writeln!(out, "| `{name}` | {} |", cell(doc));
    }
    out.push_str("\n## Texts\n\n| text | |\n|---|---|\n");
    for (name, doc) in TEXTS {
        let _ = writeln!(out, "| `{name}` | {} |", cell(doc));
    }
    out.push_str("\n## `sample { }` settings\n\n");
    out.push_str(&params_table(SAMPLE, "setting"));
    out.push_str("\n## `optim { }` settings\n\n");
    out.push_str(&params_table(OPTIM, "setting"));
    out
}
