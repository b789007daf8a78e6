//! Hover text: a block's signature and documentation from the registry, a parameter's or a
//! setting's meaning and default, a binding's inferred level and gradient, a declaration.

use std::fmt::Write;

use super::syntax_at::{self, DefKind, Hit};
use crate::blocks::spec::{BlockSpec, ParamSpec, ParamTy, Range, default_text, input_kind};
use crate::check::{Checked, Ty};
use crate::ir::builtins;
use crate::syntax::ast::Recipe;

/// Markdown for what is at `offset`, with the span it describes.
pub fn hover(
    text: &str,
    recipe: &Recipe,
    checked: Option<&Checked>,
    offset: usize,
) -> Option<(String, crate::diag::Span)> {
    let h = syntax_at::hit(recipe, offset)?;
    let defs = syntax_at::definitions(recipe);
    let md = match &h {
        Hit::Block { name, .. } => block(crate::blocks::lookup(name)?),
        Hit::Param { block, name, .. } => {
            let p = constructor_params(block).into_iter().find(|p| p.name == name)?;
            param(p, &format!("parameter of `{block}`"))
        }
        Hit::Setting { section, key, .. } => {
            let table = if *section == "sample" { builtins::SAMPLE } else { builtins::OPTIM };
            param(table.iter().find(|p| p.name == key)?, &format!("`{section} {{ }}` setting"))
        }
        Hit::Member { base, member, .. } => member_doc(checked, base, member)?,
        Hit::Name { name, stage, .. } | Hit::Definition { name, stage, .. } => {
            match syntax_at::resolve(&defs, name, *stage) {
                Some(d) if d.kind == DefKind::Let => binding(checked, name, d.stage?, text, d.full),
                Some(d) => format!("```rlx\n{}\n```", text.get(d.full.start..d.full.end)?.trim()),
                None if matches!(h, Hit::Definition { .. }) => {
                    let d = defs.iter().find(|d| d.kind == DefKind::Stage && d.name == *name)?;
                    let first = text.get(d.full.start..d.full.end)?.lines().next()?.trim();
                    format!("```rlx\n{first} … }}\n```\nstage `{name}`")
                }
                None => builtin_name(name)?,
            }
        }
    };
    let span = match h {
        Hit::Block { span, .. }
        | Hit::Param { span, .. }
        | Hit::Name { span, .. }
        | Hit::Member { span, .. }
        | Hit::Setting { span, .. }
        | Hit::Definition { span, .. } => span,
    };
    Some((md, span))
}

/// The parameters a call of `callee` takes: a block's, or a declaration constructor's (the
/// built-in model's and every built-in data set's for `builtin`).
pub fn constructor_params(callee: &str) -> Vec<&'static ParamSpec> {
    match callee {
        "builtin" | "reward_model" => builtins::MODEL_PARAMS
            .iter()
            .chain(builtins::DATA_SETS.iter().flat_map(|d| d.params))
            .collect(),
        "pretrained" => builtins::PRETRAINED_PARAMS.iter().collect(),
        "yes_no" => builtins::YES_NO_PARAMS.iter().collect(),
        "jsonl" | "file" => builtins::JSONL.params.iter().collect(),
        _ => crate::blocks::lookup(callee).map_or(vec![], |b| b.params.iter().collect()),
    }
}

/// A block's page: signature, summary, formula, source, inputs and parameters.
pub fn block(b: &BlockSpec) -> String {
    let mut s = format!("```rlx\n{}\n```\n{}\n\n", b.signature(), b.summary);
    let _ = writeln!(s, "**formula** `{}`  \n**source** {}\n", b.formula, b.source);
    if !b.inputs.is_empty() {
        s.push_str("**inputs**\n");
        for i in b.inputs {
            let _ = writeln!(s, "- `{}`: {} — {}", i.name, input_kind(i.kind), i.doc);
        }
    }
    if !b.params.is_empty() {
        s.push_str("\n**parameters**\n");
        for p in b.params {
            let _ =
                writeln!(s, "- `{} = {}`{} — {}", p.name, default_text(p.default), range(p), p.doc);
        }
    }
    s
}

fn range(p: &ParamSpec) -> String {
    match p.ty {
        ParamTy::Choice(cs) => format!(" ({})", cs.join(" \\| ")),
        _ if p.range == Range::Any => String::new(),
        _ => format!(" ({})", p.range.describe()),
    }
}

fn param(p: &ParamSpec, what: &str) -> String {
    format!(
        "```rlx\n{} = {}\n```\n{what}: {}\n\n{}{}",
        p.name,
        default_text(p.default),
        p.doc,
        p.ty.describe(),
        if p.range == Range::Any { String::new() } else { format!(", {}", p.range.describe()) }
    )
}

fn binding(
    checked: Option<&Checked>,
    name: &str,
    stage: usize,
    text: &str,
    full: crate::diag::Span,
) -> String {
    let stmt = text.get(full.start..full.end).unwrap_or("").trim();
    let ty = checked.and_then(|c| {
        let b = c.program.stages.get(stage)?.bindings.iter().find(|b| b.name.name == name)?;
        c.stages.get(stage)?.types.get(&b.node?).cloned()
    });
    let about = match ty {
        Some(t @ Ty::Tensor { grad, .. }) => format!(
            "`{name}`: {} value, {}",
            t.describe(),
            if grad { "carries gradient" } else { "no gradient" }
        ),
        Some(t) => format!("`{name}`: {}", t.describe()),
        None => format!("`{name}` (not checked: the recipe has errors upstream)"),
    };
    format!("```rlx\n{stmt}\n```\n{about}")
}

fn member_doc(checked: Option<&Checked>, base: &str, member: &str) -> Option<String> {
    if let Some(c) = checked
        && let Some(d) = c.program.data_decl(base)
    {
        let m = d.spec.member(member)?;
        return Some(format!(
            "```rlx\n{base}.{member}\n```\n{} of `{}`: {}",
            m.kind.describe(),
            d.spec.name,
            m.doc
        ));
    }
    let (_, doc) = builtins::MODEL_MEMBERS.iter().find(|(n, _)| *n == member)?;
    Some(format!("```rlx\n{base}.{member}\n```\n{doc}"))
}

fn builtin_name(name: &str) -> Option<String> {
    let doc = builtins::PSEUDO_MODELS
        .iter()
        .chain(builtins::TEXTS)
        .find(|(n, _)| *n == name)
        .map(|(_, d)| *d)?;
    Some(format!("```rlx\n{name}\n```\n{doc}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::lints::LintConfig;
    use crate::source::{SourceFile, analyze};

    #[test]
    fn hovers_show_blocks_bindings_settings_and_members() {
        let text = std::fs::read_to_string("recipes/grpo.rlx").unwrap();
        let a = analyze(&SourceFile::new("grpo.rlx", text.clone()), &LintConfig::defaults());
        let r = a.recipe.as_ref().unwrap();
        let at = |needle: &str| text.find(needle).unwrap() + 1;
        let h = |needle| hover(&text, r, a.checked.as_ref(), at(needle)).unwrap().0;
        let b = h("ppo_clip(");
        assert!(b.contains("ppo_clip(") && b.contains("**formula**") && b.contains("eps"), "{b}");
        let lr = h("lr =");
        assert!(lr.contains("AdamW learning rate"), "{lr}");
        let logp = h("logp");
        assert!(logp.contains("log-probability"), "{logp}");
        let adv = h("adv =");
        assert!(adv.contains("`adv`") && adv.contains("no gradient"), "{adv}");
        // Parameters of declaration constructors.
        let decl = "data arith = builtin(\"arith\", problems = 50)\nmodel p = builtin(\"tiny\", warm_steps = 3)\n";
        let r = crate::syntax::parse(decl).unwrap();
        let at = |needle: &str| decl.find(needle).unwrap() + 1;
        let warm = hover(decl, &r, None, at("warm_steps")).unwrap().0;
        assert!(warm.contains("parameter of `builtin`") && warm.contains("800"), "{warm}");
        let problems = hover(decl, &r, None, at("problems")).unwrap().0;
        assert!(problems.contains("number of problems"), "{problems}");
    }
}
