//! The block reference, generated from the registry (`rlx blocks`).

use std::fmt::Write;

use super::spec::*;
use super::{ALL, lookup};
use crate::diag::did_you_mean;

/// Every block, grouped by family, one line each.
pub fn index() -> String {
    let mut families: Vec<Family> = ALL.iter().map(|b| b.family).collect();
    families.sort();
    families.dedup();
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "{}:", f.title());
        for b in ALL.iter().filter(|b| b.family == f) {
            let _ = writeln!(out, "  {:<24} {}", b.name, b.summary);
        }
        out.push('\n');
    }
    out.push_str("`rlx blocks NAME` shows a block's inputs, parameters, defaults and source.\n");
    out
}

/// One block in full, or an error with a suggestion.
pub fn page(name: &str) -> Result<String, String> {
    let Some(b) = lookup(name) else {
        return Err(match did_you_mean(name, ALL.iter().map(|b| b.name)) {
            Some(s) => format!("unknown block `{name}` (did you mean `{s}`?)"),
            None => format!("unknown block `{name}`; `rlx blocks` lists them"),
        });
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", b.signature());
    let _ = writeln!(out, "\n  {}\n", b.summary);
    let _ = writeln!(out, "  formula: {}", b.formula);
    let _ = writeln!(out, "  source:  {}", b.source);
    let _ = writeln!(out, "  family:  {}", b.family.title());
    if !b.inputs.is_empty() {
        let _ = writeln!(out, "\ninputs:");
        for i in b.inputs {
            let _ = writeln!(out, "  {:<14} {:<18} {}", i.name, input_kind(i.kind), i.doc);
        }
    }
    if !b.params.is_empty() {
        let _ = writeln!(out, "\nparameters:");
        for p in b.params {
            let (ty, range) = (param_type(p), param_range(p));
            let range = if range.is_empty() { range } else { format!(", {range}") };
            let _ = writeln!(
                out,
                "  {:<14} = {:<12} {ty}{range}: {}",
                p.name,
                default_text(p.default),
                p.doc
            );
        }
    }
    let _ = writeln!(out, "\noutput: {}", output_text(b));
    if let Some(d) = demand_text(b) {
        let _ = writeln!(out, "demands: {d}");
    }
    if !b.peers.is_empty() {
        let _ = writeln!(out, "\nwhat a peer's user gets (set these to reproduce it):");
        for p in b.peers {
            let _ = writeln!(out, "  {:<14} {}", p.peer, p.note);
        }
    }
    Ok(out)
}

pub(crate) fn param_type(p: &ParamSpec) -> String {
    match p.ty {
        ParamTy::Choice(cs) => cs.join(" | "),
        ParamTy::Float => "number".into(),
        ParamTy::OptFloat => "number | none".into(),
        ParamTy::Int => "integer".into(),
        ParamTy::Bool => "bool".into(),
        ParamTy::Str => "string".into(),
    }
}

/// The parameter's allowed range; empty when any value of its type is allowed.
pub(crate) fn param_range(p: &ParamSpec) -> String {
    if p.range == Range::Any { String::new() } else { p.range.describe() }
}

fn output_text(b: &BlockSpec) -> String {
    let output = match b.output {
        OutputKind::Tensor(l) => l.to_string(),
        OutputKind::Generic => "the level of its inputs".into(),
        OutputKind::Steps => "steps".into(),
    };
    let grad = match b.grad {
        OutputGrad::Propagate => "carries gradient if an input does",
        OutputGrad::Never => "never carries gradient",
    };
    format!("{output}; {grad}")
}

fn demand_text(b: &BlockSpec) -> Option<String> {
    match b.demand {
        Demand::StepRollouts { count_param } => {
            Some(format!("`{count_param}` extra rollouts from every step start"))
        }
        Demand::Groups => Some("several samples per prompt (`sample { n > 1 }`)".into()),
        Demand::Pairs => Some("preference pairs (`pairs ...`)".into()),
        Demand::None => None,
    }
}

/// A Markdown table of parameters (or settings): name, default, type, range, meaning.
pub(crate) fn params_table(params: &[ParamSpec], what: &str) -> String {
    let mut out = format!("| {what} | default | type | range | |\n|---|---|---|---|---|\n");
    for p in params {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {} | {} |",
            p.name,
            cell(&default_text(p.default)),
            cell(&param_type(p)),
            cell(&param_range(p)),
            cell(p.doc)
        );
    }
    out
}

/// A Markdown table cell: pipes escaped, line breaks folded.
pub(crate) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The whole block reference as one Markdown page (`docs/reference/blocks.md`, regenerated and
/// checked by `tests/docs.rs`): families, then every block's signature, formula, source,
/// inputs with their levels, parameters with types, defaults and ranges, output, demands and
/// what a peer's user gets.
pub fn markdown() -> String {
    let mut families: Vec<Family> = ALL.iter().map(|b| b.family).collect();
    families.sort();
    families.dedup();
    let mut out = String::from(
        "<!-- Generated from the block registry (src/blocks) by `cargo test --test docs`; \
         do not edit. -->\n\n# Blocks\n\n\
         Every block a recipe can call, by family. `rlx blocks NAME` prints the same entry on \
         the terminal. Levels: `token`, `step`, `seq` (one value per response), `scalar`.\n\n",
    );
    for f in &families {
        let names: Vec<String> = ALL
            .iter()
            .filter(|b| b.family == *f)
            .map(|b| format!("[`{0}`](#{0})", b.name))
            .collect();
        let _ = writeln!(out, "- **{}**: {}", f.title(), names.join(", "));
    }
    for f in families {
        let _ = writeln!(out, "\n## {}", f.title());
        for b in ALL.iter().filter(|b| b.family == f) {
            let _ = writeln!(out, "\n### {}\n", b.name);
            let _ = writeln!(out, "```text\n{}\n```\n", b.signature());
            let _ = writeln!(out, "{}.\n", upper_first(b.summary));
            let _ = writeln!(out, "- formula: `{}`", b.formula.replace('`', "'"));
            let _ = writeln!(out, "- source: {}", b.source);
            let _ = writeln!(out, "- output: {}", output_text(b));
            if let Some(d) = demand_text(b) {
                let _ = writeln!(out, "- demands: {d}");
            }
            if !b.inputs.is_empty() {
                out.push_str("\n| input | level | |\n|---|---|---|\n");
                for i in b.inputs {
                    let _ = writeln!(
                        out,
                        "| `{}` | {} | {} |",
                        i.name,
                        cell(&input_kind(i.kind)),
                        cell(i.doc)
                    );
                }
            }
            if !b.params.is_empty() {
                out.push('\n');
                out.push_str(&params_table(b.params, "parameter"));
            }
            if !b.peers.is_empty() {
                out.push_str("\nWhat a peer's user gets (set these to reproduce it):\n\n");
                for p in b.peers {
                    let _ = writeln!(out, "- {}: {}", p.peer, p.note);
                }
            }
        }
    }
    out
}

pub(crate) fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}
