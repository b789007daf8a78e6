//! Completion from the text around the cursor (half-typed recipes do not parse) and the last
//! recipe that did: block names with snippets, a block's parameters not yet given, `choice`
//! values, model signals after `policy.`, data members after `arith.`, settings in
//! `sample { }` / `optim { }`, bindings and declarations in scope, keywords.

use lsp_types::{
    CompletionItem, CompletionItemKind, Documentation, InsertTextFormat, MarkupContent, MarkupKind,
};

use super::syntax_at::{self, DefKind};
use crate::blocks::spec::{DefaultRule, ParamSpec, ParamTy, default_text};
use crate::check::Checked;
use crate::ir::builtins;
use crate::ir::graph::ModelRef;
use crate::syntax::ast::{Item, Recipe};

/// Where the cursor is, as far as the text tells.
#[derive(Debug, PartialEq)]
enum Context {
    /// After `base.`.
    Member(String),
    /// A key position in `sample { }` or `optim { }`; the keys already there.
    Setting(&'static str, Vec<String>),
    /// After `param =` inside a call of `block`.
    ParamValue(String, String),
    /// An argument of a call of `callee`; the parameter names already given.
    Argument(String, Vec<String>),
    /// The start of a statement inside a stage.
    Statement,
    /// Anywhere else inside a stage: an expression.
    Expression,
    /// Outside every stage.
    TopLevel,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The text with comments and string contents blanked (same length, so offsets stay valid).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut comment, mut string) = (false, false);
    for c in text.chars() {
        let keep = match c {
            '\n' => {
                comment = false;
                string = false;
                true
            }
            '#' if !string => {
                comment = true;
                false
            }
            '"' if !comment => {
                string = !string;
                true
            }
            _ => !comment && !string,
        };
        if keep {
            out.push(c);
        } else {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        }
    }
    out
}

fn word_before(s: &str) -> &str {
    let t = s.trim_end();
    let start = t.rfind(|c: char| !is_word(c)).map_or(0, |i| i + 1);
    &t[start..]
}

fn context(text: &str, start: usize) -> Context {
    let code = code_only(text);
    let before = &code[..start];
    if let Some(base) = before.strip_suffix('.') {
        let b = base.rfind(|c: char| !is_word(c) && c != '.').map_or(0, |i| i + 1);
        return Context::Member(base[b..].to_string());
    }
    // The innermost bracket still open at the cursor.
    let mut depth: Vec<(char, usize)> = Vec::new();
    for (i, c) in before.char_indices() {
        match c {
            '(' | '{' => depth.push((c, i)),
            ')' | '}' => {
                depth.pop();
            }
            _ => {}
        }
    }
    let Some(&(open, at)) = depth.last() else { return Context::TopLevel };
    let last = before.trim_end().chars().last().unwrap_or(' ');
    let after_open = &code[at + 1..];
    let inner_end = matching_close(after_open).unwrap_or(after_open.len());
    let inner = &after_open[..inner_end];
    let keyword = word_before(&code[..at]);
    if open == '{' {
        if keyword == "sample" || keyword == "optim" {
            let section = if keyword == "sample" { "sample" } else { "optim" };
            if matches!(last, '{' | ',' | '\n') || before.trim_end().ends_with(section) {
                let given = inner
                    .split([',', '\n'])
                    .filter_map(|e| e.split_once('=').map(|(k, _)| k.trim().to_string()))
                    .collect();
                return Context::Setting(section, given);
            }
            return Context::Expression;
        }
        let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        return if line.trim().is_empty() { Context::Statement } else { Context::Expression };
    }
    // Inside a call.
    let since_arg = &before[before.rfind([',', '(']).map_or(0, |i| i + 1)..];
    if let Some((name, value)) = since_arg.split_once('=')
        && value.trim().is_empty()
    {
        let name = name.trim();
        if name.chars().all(is_word) && !name.is_empty() {
            return Context::ParamValue(keyword.to_string(), name.to_string());
        }
    }
    if matches!(last, '(' | ',') {
        let given = inner
            .split(',')
            .filter_map(|a| a.split_once('=').map(|(k, _)| k.trim().to_string()))
            .filter(|k| k.chars().all(is_word))
            .collect();
        return Context::Argument(keyword.to_string(), given);
    }
    Context::Expression
}

/// The offset of the bracket closing the one just before `s` starts, if any.
fn matching_close(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '{' => depth += 1,
            ')' | '}' if depth == 0 => return Some(i),
            ')' | '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Completion items at `offset`. `recipe` and `checked` may be from the last version that
/// parsed.
pub fn complete(
    text: &str,
    offset: usize,
    recipe: Option<&Recipe>,
    checked: Option<&Checked>,
) -> Vec<CompletionItem> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let start = text[..offset].rfind(|c: char| !is_word(c)).map_or(0, |i| i + 1);
    let prefix = &text[start..offset];
    // The word under the cursor is being typed: it does not count as already given.
    let end = offset + text[offset..].find(|c: char| !is_word(c)).unwrap_or(text.len() - offset);
    let typing = &text[start..end];
    let not_typing =
        |given: Vec<String>| -> Vec<String> { given.into_iter().filter(|g| g != typing).collect() };
    let items = match context(text, start) {
        Context::Member(base) => members(&base, checked),
        Context::Setting(section, given) => {
            let given = not_typing(given);
            let table = if section == "sample" { builtins::SAMPLE } else { builtins::OPTIM };
            table
                .iter()
                .filter(|p| !given.iter().any(|g| g == p.name))
                .map(|p| param_item(p, CompletionItemKind::PROPERTY))
                .collect()
        }
        Context::ParamValue(block, param) => choices(&block, &param),
        Context::Argument(callee, given) => {
            let given = not_typing(given);
            let mut items: Vec<CompletionItem> = params_of(&callee)
                .iter()
                .filter(|p| !given.iter().any(|g| g == p.name))
                .map(|p| param_item(p, CompletionItemKind::FIELD))
                .collect();
            items.extend(expression_items(text, offset, recipe));
            items
        }
        Context::Statement => {
            let mut items =
                keywords(&["let", "loss", "train", "prompts", "pairs", "data", "sample", "optim"]);
            items.extend(expression_items(text, offset, recipe));
            items
        }
        Context::Expression => expression_items(text, offset, recipe),
        Context::TopLevel => keywords(&["recipe", "data", "model", "reward", "stage"]),
    };
    items.into_iter().filter(|i| i.label.starts_with(prefix)).collect()
}

fn keywords(words: &[&str]) -> Vec<CompletionItem> {
    words
        .iter()
        .map(|w| CompletionItem {
            label: w.to_string(),
            kind: Some(CompletionItemKind::KEYWORD),
            ..Default::default()
        })
        .collect()
}

fn markdown(value: String) -> Option<Documentation> {
    Some(Documentation::MarkupContent(MarkupContent { kind: MarkupKind::Markdown, value }))
}

fn param_item(p: &ParamSpec, kind: CompletionItemKind) -> CompletionItem {
    CompletionItem {
        label: p.name.to_string(),
        kind: Some(kind),
        detail: Some(format!("{} = {}", p.name, default_text(p.default))),
        documentation: markdown(format!("{} ({})", p.doc, p.ty.describe())),
        insert_text: Some(format!("{} = ", p.name)),
        ..Default::default()
    }
}

fn params_of(callee: &str) -> Vec<&'static ParamSpec> {
    super::hover::constructor_params(callee)
}

fn choices(callee: &str, param: &str) -> Vec<CompletionItem> {
    let Some(p) = params_of(callee).into_iter().find(|p| p.name == param) else { return vec![] };
    let values: Vec<&str> = match p.ty {
        ParamTy::Choice(cs) => cs.to_vec(),
        ParamTy::Bool => vec!["true", "false"],
        ParamTy::OptFloat => vec!["none"],
        _ => vec![],
    };
    values
        .into_iter()
        .map(|v| CompletionItem {
            label: v.to_string(),
            kind: Some(CompletionItemKind::ENUM_MEMBER),
            detail: (p.default == DefaultRule::Str(v)).then(|| "default".to_string()),
            ..Default::default()
        })
        .collect()
}

fn members(base: &str, checked: Option<&Checked>) -> Vec<CompletionItem> {
    let item = |name: &str, doc: &str, kind| CompletionItem {
        label: name.to_string(),
        kind: Some(kind),
        documentation: markdown(doc.to_string()),
        ..Default::default()
    };
    let Some(program) = checked.map(|c| &c.program) else { return vec![] };
    if let Some(d) = program.data_decl(base) {
        return d
            .spec
            .members
            .iter()
            .map(|m| item(m.name, m.doc, CompletionItemKind::FIELD))
            .collect();
    }
    let model = match ModelRef::pseudo(base) {
        Some(p) => p,
        None if program.model(base).is_some() => ModelRef::Named(base.to_string()),
        None => return vec![],
    };
    builtins::MODEL_MEMBERS
        .iter()
        .filter(|(n, _)| model.members().contains(n))
        .map(|(n, d)| item(n, d, CompletionItemKind::METHOD))
        .collect()
}

/// Blocks, the bindings of the stage at `offset`, declarations, `old`/`ref`/`rollout`, texts.
fn expression_items(text: &str, offset: usize, recipe: Option<&Recipe>) -> Vec<CompletionItem> {
    let mut items: Vec<CompletionItem> = crate::blocks::ALL
        .iter()
        .map(|b| {
            let mut args: Vec<String> = b.inputs.iter().map(|i| i.name.to_string()).collect();
            args.extend(
                b.params
                    .iter()
                    .filter(|p| p.default == DefaultRule::Required)
                    .map(|p| format!("{} = {}", p.name, p.name)),
            );
            let snippet: Vec<String> = args
                .iter()
                .enumerate()
                .map(|(i, a)| match a.split_once(" = ") {
                    Some((k, v)) => format!("{k} = ${{{}:{v}}}", i + 1),
                    None => format!("${{{}:{a}}}", i + 1),
                })
                .collect();
            CompletionItem {
                label: b.name.to_string(),
                kind: Some(CompletionItemKind::FUNCTION),
                detail: Some(b.signature()),
                documentation: markdown(b.summary.to_string()),
                insert_text: Some(format!("{}({})", b.name, snippet.join(", "))),
                insert_text_format: Some(InsertTextFormat::SNIPPET),
                ..Default::default()
            }
        })
        .collect();
    if let Some(r) = recipe {
        let stage = stage_at(r, offset.min(text.len()));
        for d in syntax_at::definitions(r) {
            let (kind, visible) = match d.kind {
                DefKind::Let => (CompletionItemKind::VARIABLE, d.stage == stage && stage.is_some()),
                DefKind::Model | DefKind::Reward => (CompletionItemKind::CLASS, true),
                DefKind::Data => (CompletionItemKind::MODULE, true),
                DefKind::Stage => (CompletionItemKind::MODULE, false),
            };
            if visible && !items.iter().any(|i| i.label == d.name) {
                items.push(CompletionItem {
                    label: d.name.clone(),
                    kind: Some(kind),
                    ..Default::default()
                });
            }
        }
    }
    for (name, doc) in builtins::PSEUDO_MODELS.iter().chain(builtins::TEXTS) {
        items.push(CompletionItem {
            label: name.to_string(),
            kind: Some(CompletionItemKind::CONSTANT),
            documentation: markdown(doc.to_string()),
            ..Default::default()
        });
    }
    items
}

/// The index of the stage whose text contains `offset` (by stage spans of the recipe).
fn stage_at(r: &Recipe, offset: usize) -> Option<usize> {
    r.items
        .iter()
        .filter_map(|i| match i {
            Item::Stage(s) => Some(s.span),
            Item::Decl(_) => None,
        })
        .position(|s| s.start <= offset && offset <= s.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::lints::LintConfig;
    use crate::source::{Analysis, SourceFile, analyze};

    /// Labels offered at `|`, with the declarations of `parsed` (the last version that parsed).
    fn labels(text: &str, parsed: Option<&Analysis>) -> Vec<String> {
        let at = text.find('|').unwrap();
        let t = text.replace('|', "");
        let (recipe, checked) =
            parsed.map_or((None, None), |a| (a.recipe.as_ref(), a.checked.as_ref()));
        complete(&t, at, recipe, checked).into_iter().map(|i| i.label).collect()
    }

    #[test]
    fn contexts_follow_the_text_before_the_cursor() {
        let head = "data arith = builtin(\"arith\")\nmodel policy = builtin(\"tiny\")\n";
        let src = SourceFile::new("x.rlx", format!("{head}stage rl {{ train policy }}\n"));
        let a = analyze(&src, &LintConfig::defaults());
        let rr = Some(&a);
        let l = labels(&format!("{head}stage rl {{\n    loss = policy.|\n}}"), rr);
        assert!(l.contains(&"logp".to_string()) && l.contains(&"values".to_string()), "{l:?}");
        let l = labels(&format!("{head}stage rl {{\n    let a = ref.|"), rr);
        assert!(l.contains(&"logp".to_string()) && !l.contains(&"values".to_string()), "{l:?}");
        let l = labels(&format!("{head}stage rl {{\n    prompts arith.|"), rr);
        assert!(l.contains(&"problems".to_string()) && l.contains(&"correct".to_string()), "{l:?}");
        let l = labels(&format!("{head}stage rl {{\n    sample {{ n = 4, |"), rr);
        assert!(l.contains(&"temperature".to_string()) && !l.contains(&"n".to_string()), "{l:?}");
        let l = labels(&format!("{head}stage rl {{\n    optim {{ l|r = 1 }}"), rr);
        assert_eq!(l, ["lr"]);
        let l = labels("stage rl {\n    let a = ppo_clip(x, y, z, |", None);
        assert!(l.contains(&"eps".to_string()) && l.contains(&"whiten".to_string()), "{l:?}");
        let l = labels("stage rl {\n    let a = ppo_clip(x, y, z, eps = 0.2, e|", None);
        assert!(l.contains(&"eps_high".to_string()) && !l.contains(&"eps".to_string()), "{l:?}");
        let l = labels("stage rl {\n    let k = kl(a, b, estimator = |", None);
        assert!(l.contains(&"k3".to_string()), "{l:?}");
        let l = labels("stage rl {\n    |", None);
        assert!(l.contains(&"let".to_string()) && l.contains(&"gae".to_string()), "{l:?}");
        assert!(labels("mo|", None) == ["model"]);
        // A `#` comment or a string does not open brackets.
        let l = labels("stage rl { # (\n    let a = w|", None);
        assert!(l.contains(&"whiten".to_string()), "{l:?}");
    }

    #[test]
    fn block_snippets_name_their_inputs() {
        let items = complete("stage s {\n  let a = whit", 22, None, None);
        let w = items.iter().find(|i| i.label == "whiten").unwrap();
        assert_eq!(w.insert_text.as_deref(), Some("whiten(${1:x})"));
    }
}
