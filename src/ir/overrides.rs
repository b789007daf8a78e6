//! `--set PATH=VALUE`: overrides of recipe values from the command line, applied to the lowered
//! recipe so the checker validates them like written values. Paths: `STAGE.optim.KEY`,
//! `STAGE.sample.KEY`, `MODEL.KEY` (e.g. `policy.layers`), `DATA.KEY` (e.g. `arith.seed`).

use super::graph::{Const, Program, SettingIr, SettingsIr};
use crate::syntax::ast::Ident;

/// Parses a command-line value: a number, `true`/`false`, a quoted string, or a word.
pub fn parse_value(text: &str) -> Const {
    let t = text.trim();
    if let Ok(v) = t.parse::<f64>() {
        return Const::Num(v);
    }
    match t {
        "true" => Const::Bool(true),
        "false" => Const::Bool(false),
        _ if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') => {
            Const::Str(t[1..t.len() - 1].replace("\\\\n", "\\n"))
        }
        _ => Const::Word(t.to_string()),
    }
}

/// Applies one override; returns the span its value now carries, so diagnostics about the value
/// can name the flag rather than the recipe text it replaced.
pub fn apply(program: &mut Program, text: &str) -> Result<crate::diag::Span, String> {
    let (path, value) =
        text.split_once('=').ok_or_else(|| format!("`--set {text}`: expected PATH=VALUE"))?;
    let value = parse_value(value);
    let parts: Vec<&str> = path.trim().split('.').collect();
    match parts.as_slice() {
        [stage, block @ ("optim" | "sample"), key] => {
            let names: Vec<String> = program.stages.iter().map(|s| s.name.name.clone()).collect();
            let st =
                program.stages.iter_mut().find(|s| s.name.name == *stage).ok_or_else(|| {
                    format!(
                        "`--set {path}`: no stage `{stage}`; the stages are {}",
                        names.join(", ")
                    )
                })?;
            let span = st.span;
            let settings = if *block == "optim" { &mut st.optim } else { &mut st.sample };
            let settings = settings.get_or_insert_with(|| SettingsIr { entries: vec![], span });
            match settings.entries.iter_mut().find(|e| e.key.name == *key) {
                Some(e) => {
                    e.value = value;
                    Ok(e.span)
                }
                None => {
                    settings.entries.push(SettingIr {
                        key: Ident { name: key.to_string(), span: settings.span },
                        value,
                        span: settings.span,
                    });
                    Ok(settings.span)
                }
            }
        }
        [owner, key] => {
            let params = if let Some(m) = program.models.iter_mut().find(|m| m.name.name == *owner)
            {
                (&mut m.params, m.span)
            } else if let Some(d) = program.data.iter_mut().find(|d| d.name.name == *owner) {
                (&mut d.params, d.span)
            } else {
                return Err(format!(
                    "`--set {path}`: no model or data set `{owner}` (paths are STAGE.optim.KEY, STAGE.sample.KEY, MODEL.KEY, DATA.KEY)"
                ));
            };
            let (list, span) = params;
            match list.iter_mut().find(|(k, _, _)| k.name == *key) {
                Some(entry) => {
                    entry.1 = value;
                    Ok(entry.2)
                }
                None => {
                    list.push((Ident { name: key.to_string(), span }, value, span));
                    Ok(span)
                }
            }
        }
        _ => Err(format!(
            "`--set {path}`: paths are STAGE.optim.KEY, STAGE.sample.KEY, MODEL.KEY or DATA.KEY"
        )),
    }
}
