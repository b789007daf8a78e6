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
            let ty = match p.ty {
                ParamTy::Choice(cs) => cs.join(" | "),
                ParamTy::Float => "number".into(),
                ParamTy::OptFloat => "number | none".into(),
                ParamTy::Int => "integer".into(),
                ParamTy::Bool => "bool".into(),
                ParamTy::Str => "string".into(),
            };
            let range = if p.range == Range::Any {
                String::new()
            } else {
                format!(", {}", p.range.describe())
            };
            let _ = writeln!(
                out,
                "  {:<14} = {:<12} {ty}{range}: {}",
                p.name,
                default_text(p.default),
                p.doc
            );
        }
    }
    let output = match b.output {
        OutputKind::Tensor(l) => l.to_string(),
        OutputKind::Generic => "the level of its inputs".into(),
        OutputKind::Steps => "steps".into(),
    };
    let grad = match b.grad {
        OutputGrad::Propagate => "carries gradient if an input does",
        OutputGrad::Never => "never carries gradient",
    };
    let _ = writeln!(out, "\noutput: {output}; {grad}");
    match b.demand {
        Demand::StepRollouts { count_param } => {
            let _ = writeln!(out, "demands: `{count_param}` extra rollouts from every step start");
        }
        Demand::Groups => {
            let _ = writeln!(out, "demands: several samples per prompt (`sample {{ n > 1 }}`)");
        }
        Demand::Pairs => {
            let _ = writeln!(out, "demands: preference pairs (`pairs ...`)");
        }
        Demand::None => {}
    }
    if !b.peers.is_empty() {
        let _ = writeln!(out, "\nwhat a peer's user gets (set these to reproduce it):");
        for p in b.peers {
            let _ = writeln!(out, "  {:<14} {}", p.peer, p.note);
        }
    }
    Ok(out)
}
