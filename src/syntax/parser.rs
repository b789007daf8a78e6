//! Text → syntax tree, with pest. A syntax error becomes one diagnostic whose expectations are
//! written in recipe words ("expected `)` or `,`"), never pest rule names.

use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};

use super::ast::*;
use crate::diag::{Diagnostic, Span};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/rlx.pest"]
struct Grammar;

/// Nesting deeper than this is rejected before parsing, so no input can exhaust the stack.
pub const MAX_NESTING: usize = 64;
/// Recipes are short; anything larger is almost certainly not a recipe.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

/// Parses a recipe. pest stops at the first error, so failure is exactly one diagnostic.
pub fn parse(text: &str) -> Result<Recipe, Diagnostic> {
    precheck(text)?;
    let mut pairs = Grammar::parse(Rule::file, text).map_err(|e| syntax_error(text, e))?;
    let file = pairs.next().expect("the file rule always yields one pair");
    let mut header = None;
    let mut items = Vec::new();
    for pair in file.into_inner() {
        match pair.as_rule() {
            Rule::header => header = Some(build_header(pair)),
            Rule::decl => items.push(Item::Decl(build_decl(pair)?)),
            Rule::stage => items.push(Item::Stage(build_stage(pair)?)),
            _ => {}
        }
    }
    Ok(Recipe { header, items })
}

/// Rejects inputs that are too large or nested too deeply for a recursive-descent parser.
fn precheck(text: &str) -> Result<(), Diagnostic> {
    if text.len() > MAX_SOURCE_BYTES {
        return Err(Diagnostic::error("file-too-large", "recipe is larger than 1 MiB")
            .primary(Span::new(0, 0), "this file")
            .help("recipes are short; check that this is the file you meant"));
    }
    if let Some((i, c)) =
        text.char_indices().find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        let name = if c == '\0' { " (NUL)".to_string() } else { String::new() };
        return Err(Diagnostic::error(
            "invalid-character",
            format!("the recipe contains the control character U+{:04X}{name}", c as u32),
        )
        .primary(Span::new(i, i + c.len_utf8()), "here (shown as `?`)")
        .help("recipes are plain text: remove it (was the file saved by a binary tool?)"));
    }
    let (mut depth, mut minus_run) = (0usize, 0usize);
    let (mut in_string, mut in_comment, mut escaped) = (false, false, false);
    for (i, c) in text.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"' | '\n') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '#' => in_comment = true,
            '"' => in_string = true,
            '(' | '{' => depth += 1,
            ')' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        match c {
            '-' => minus_run += 1,
            ' ' | '\t' | '\r' | '\n' => {}
            _ => minus_run = 0,
        }
        if depth > MAX_NESTING || minus_run > MAX_NESTING {
            return Err(Diagnostic::error("nesting-too-deep", "expression is nested too deeply")
                .primary(
                    Span::new(i, i + c.len_utf8()),
                    format!("more than {MAX_NESTING} levels deep here"),
                )
                .help("split the expression into `let` bindings"));
        }
    }
    Ok(())
}

fn syntax_error(text: &str, err: pest::error::Error<Rule>) -> Diagnostic {
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<&str> = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().map(|r| describe(*r)).collect()
        }
        ErrorVariant::CustomError { .. } => vec![],
    };
    expected.sort();
    expected.dedup();
    let found = found_at(text, pos);
    let end = pos + found.as_ref().map_or(0, |f| f.len());
    let found_text = found.map_or("end of file".to_string(), |f| format!("`{f}`"));
    let message = match expected.as_slice() {
        [] => format!("unexpected {found_text}"),
        [one] => format!("expected {one}, found {found_text}"),
        [init @ .., last] => format!("expected {} or {last}, found {found_text}", init.join(", ")),
    };
    let help = match expected.as_slice() {
        e if e.contains(&"`}`") && e.contains(&"a statement") => {
            "a stage holds `train`, `prompts`/`pairs`/`data`, `sample { .. }`, `let`, `loss = ..` and `optim { .. }`"
        }
        e if e.contains(&"a declaration or stage") => {
            "a recipe holds `data`, `model` and `reward` declarations and `stage NAME { .. }` blocks"
        }
        e if e.contains(&"an expression") => {
            "expressions are numbers, strings, names, calls `f(x, k = v)`, `+ - * / ^` and `|>`"
        }
        e if e.contains(&"a name")
            && found_text.starts_with("`")
            && is_keyword(&found_text[1..found_text.len() - 1]) =>
        {
            "this word is a keyword and cannot name a value; choose another name"
        }
        _ => "check the syntax near this point against the examples in `recipes/`",
    };
    Diagnostic::error("syntax-error", message)
        .primary(Span::new(pos, end.max(pos)), "unexpected here")
        .help(help)
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "recipe"
            | "data"
            | "model"
            | "reward"
            | "stage"
            | "train"
            | "prompts"
            | "pairs"
            | "sample"
            | "optim"
            | "let"
            | "loss"
    )
}

/// The token at `pos`: a word, a number, a two-character operator or one character.
fn found_at(text: &str, pos: usize) -> Option<&str> {
    let rest = text.get(pos..)?;
    let first = rest.chars().next()?;
    let len = if first.is_alphanumeric() || first == '_' {
        rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len())
    } else if rest.starts_with("|>") {
        2
    } else {
        first.len_utf8()
    };
    Some(&rest[..len])
}

/// What a rule means to a person reading a syntax error.
fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::header | Rule::kw_recipe => "`recipe`",
        Rule::decl | Rule::stage | Rule::decl_kind | Rule::kw_stage => "a declaration or stage",
        Rule::kw_data | Rule::kw_model | Rule::kw_reward => "a declaration or stage",
        Rule::train_stmt | Rule::source_stmt | Rule::sample_stmt | Rule::optim_stmt => {
            "a statement"
        }
        Rule::let_stmt | Rule::loss_stmt | Rule::source_kind => "a statement",
        Rule::kw_train | Rule::kw_prompts | Rule::kw_pairs | Rule::kw_sample => "a statement",
        Rule::kw_optim | Rule::kw_let | Rule::kw_loss => "a statement",
        Rule::settings => "`{`",
        Rule::setting => "a setting `name = value`",
        Rule::expr | Rule::postfix | Rule::paren | Rule::neg | Rule::number | Rule::string => {
            "an expression"
        }
        Rule::ident | Rule::word | Rule::keyword => "a name",
        Rule::member => "`.`",
        Rule::call => "`(`",
        Rule::arg | Rule::named_arg => "an argument",
        Rule::pipe | Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::pow => "an operator",
        Rule::assign => "`=`",
        Rule::comma => "`,`",
        Rule::dot => "`.`",
        Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        Rule::lbrace => "`{`",
        Rule::rbrace => "`}`",
        Rule::string_inner => "`\"`",
        Rule::file | Rule::WHITESPACE | Rule::COMMENT | Rule::item => "a declaration or stage",
        Rule::statement => "a statement",
        Rule::operand | Rule::primary => "an expression",
        Rule::infix => "an operator",
    }
}

/// The pair's span, ending at its last token: pest would include trailing whitespace and
/// comments that the repetition after it skipped.
fn span_of(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    let end = pair
        .clone()
        .into_inner()
        .flatten()
        // Only tokens (leaves): inner rules' spans include trailing trivia too.
        .filter(|p| p.clone().into_inner().next().is_none())
        // A string's content ends one byte before its closing quote.
        .map(|p| p.as_span().end() + usize::from(p.as_rule() == Rule::string_inner))
        .max()
        .unwrap_or(s.end());
    Span::new(s.start(), end)
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident { name: pair.as_str().to_string(), span: span_of(&pair) }
}

fn build_header(pair: Pair<Rule>) -> Header {
    let span = span_of(&pair);
    let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_recipe);
    let name = ident(inner.next().expect("header has a name"));
    let title = inner.next().map(unescape);
    Header { name, title, span }
}

fn build_decl(pair: Pair<Rule>) -> Result<Decl, Diagnostic> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let kind = match inner.next().and_then(|k| k.into_inner().next()).map(|k| k.as_rule()) {
        Some(Rule::kw_data) => DeclKind::Data,
        Some(Rule::kw_model) => DeclKind::Model,
        _ => DeclKind::Reward,
    };
    let name = ident(inner.next().expect("decl has a name"));
    let value = build_expr(inner.find(|p| p.as_rule() == Rule::expr).expect("decl has a value"))?;
    Ok(Decl { kind, name, value, span })
}

fn build_stage(pair: Pair<Rule>) -> Result<Stage, Diagnostic> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(inner.find(|p| p.as_rule() == Rule::ident).expect("stage has a name"));
    let mut stmts = Vec::new();
    for p in inner {
        if matches!(p.as_rule(), Rule::lbrace | Rule::rbrace) {
            continue;
        }
        stmts.push(build_stmt(p)?);
    }
    Ok(Stage { name, stmts, span })
}

fn build_stmt(pair: Pair<Rule>) -> Result<Stmt, Diagnostic> {
    let span = span_of(&pair);
    let rule = pair.as_rule();
    let mut inner = pair.into_inner().peekable();
    let kw = inner.next().expect("statement starts with a keyword");
    let keyword = span_of(&kw);
    let kind = match rule {
        Rule::train_stmt => StmtKind::Train(
            inner
                .filter(|p| p.as_rule() == Rule::expr)
                .map(build_expr)
                .collect::<Result<_, _>>()?,
        ),
        Rule::source_stmt => {
            let kind = match kw.into_inner().next().map(|k| k.as_rule()) {
                Some(Rule::kw_prompts) => SourceKind::Prompts,
                Some(Rule::kw_pairs) => SourceKind::Pairs,
                _ => SourceKind::Data,
            };
            StmtKind::Source(kind, build_expr(inner.next().expect("source has a value"))?)
        }
        Rule::sample_stmt => StmtKind::Sample(build_settings(inner.next().expect("settings"))?),
        Rule::optim_stmt => StmtKind::Optim(build_settings(inner.next().expect("settings"))?),
        Rule::let_stmt => {
            let name = ident(inner.next().expect("let has a name"));
            let value =
                build_expr(inner.find(|p| p.as_rule() == Rule::expr).expect("let has a value"))?;
            StmtKind::Let(name, value)
        }
        _ => StmtKind::Loss(build_expr(
            inner.find(|p| p.as_rule() == Rule::expr).expect("loss value"),
        )?),
    };
    Ok(Stmt { kind, keyword, span })
}

fn build_settings(pair: Pair<Rule>) -> Result<Settings, Diagnostic> {
    let span = span_of(&pair);
    let mut entries = Vec::new();
    for p in pair.into_inner().filter(|p| p.as_rule() == Rule::setting) {
        let sspan = span_of(&p);
        let mut inner = p.into_inner();
        let key = ident(inner.next().expect("setting key"));
        let value = build_expr(inner.find(|p| p.as_rule() == Rule::expr).expect("setting value"))?;
        entries.push(Setting { key, value, span: sspan });
    }
    Ok(Settings { entries, span })
}

fn pratt() -> PrattParser<Rule> {
    PrattParser::new()
        .op(Op::infix(Rule::pipe, Assoc::Left))
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
        .op(Op::prefix(Rule::neg))
        .op(Op::infix(Rule::pow, Assoc::Right))
}

fn build_expr(pair: Pair<Rule>) -> Result<Expr, Diagnostic> {
    thread_local! { static PRATT: PrattParser<Rule> = pratt(); }
    PRATT.with(|pratt| build_operators(pratt, pair.into_inner()))
}

/// Operators in one expression beyond this are rejected: the tree they build would be too deep.
const MAX_OPERATORS: usize = 256;

fn too_deep(span: Span, what: &str) -> Diagnostic {
    Diagnostic::error("nesting-too-deep", "expression is nested too deeply")
        .primary(span, format!("more than {MAX_OPERATORS} {what}"))
        .help("split the expression into `let` bindings")
}

fn build_operators(pratt: &PrattParser<Rule>, pairs: Pairs<Rule>) -> Result<Expr, Diagnostic> {
    let span = pairs.clone().next().map(|p| span_of(&p)).unwrap_or_default();
    if pairs.clone().filter(|p| !matches!(p.as_rule(), Rule::postfix)).count() > MAX_OPERATORS {
        return Err(too_deep(span, "operators in one expression"));
    }
    pratt
        .map_primary(build_postfix)
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let span = span_of(&op).to(rhs.span);
            Ok(Expr { kind: ExprKind::Neg(Box::new(rhs)), span })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let span = lhs.span.to(rhs.span);
            let kind = match op.as_rule() {
                Rule::pipe => {
                    if !matches!(
                        rhs.kind,
                        ExprKind::Name(_) | ExprKind::Member(..) | ExprKind::Call(..)
                    ) {
                        return Err(Diagnostic::error(
                            "syntax-error",
                            "the right side of `|>` must be a call",
                        )
                        .primary(rhs.span, "not a call")
                        .secondary(
                            span_of(&op),
                            "this pipe passes its left side as a first argument",
                        )
                        .help("write `x |> f` or `x |> f(k = v)`"));
                    }
                    ExprKind::Pipe(Box::new(lhs), Box::new(rhs))
                }
                Rule::add => ExprKind::Binary(BinOp::Add, Box::new(lhs), Box::new(rhs)),
                Rule::sub => ExprKind::Binary(BinOp::Sub, Box::new(lhs), Box::new(rhs)),
                Rule::mul => ExprKind::Binary(BinOp::Mul, Box::new(lhs), Box::new(rhs)),
                Rule::div => ExprKind::Binary(BinOp::Div, Box::new(lhs), Box::new(rhs)),
                _ => ExprKind::Binary(BinOp::Pow, Box::new(lhs), Box::new(rhs)),
            };
            Ok(Expr { kind, span })
        })
        .parse(pairs)
}

fn build_postfix(pair: Pair<Rule>) -> Result<Expr, Diagnostic> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    if inner.len() > MAX_OPERATORS {
        return Err(too_deep(span, "member accesses and calls in a row"));
    }
    let mut expr = build_primary(inner.next().expect("postfix has a primary"))?;
    for p in inner {
        let span = expr.span.to(span_of(&p));
        let kind = match p.as_rule() {
            Rule::member => {
                let word = p.into_inner().find(|w| w.as_rule() == Rule::word).expect("member name");
                ExprKind::Member(Box::new(expr), ident(word))
            }
            _ => {
                let args = p
                    .into_inner()
                    .filter(|a| a.as_rule() == Rule::arg)
                    .map(build_arg)
                    .collect::<Result<Vec<_>, _>>()?;
                ExprKind::Call(Box::new(expr), args)
            }
        };
        expr = Expr { kind, span };
    }
    Ok(expr)
}

fn build_arg(pair: Pair<Rule>) -> Result<Arg, Diagnostic> {
    let span = span_of(&pair);
    let inner = pair.into_inner().next().expect("arg content");
    if inner.as_rule() == Rule::named_arg {
        let mut parts = inner.into_inner();
        let name = ident(parts.next().expect("arg name"));
        let value = build_expr(parts.find(|p| p.as_rule() == Rule::expr).expect("arg value"))?;
        Ok(Arg { name: Some(name), value, span })
    } else {
        Ok(Arg { name: None, value: build_expr(inner)?, span })
    }
}

fn build_primary(pair: Pair<Rule>) -> Result<Expr, Diagnostic> {
    let span = span_of(&pair);
    let kind = match pair.as_rule() {
        Rule::number => {
            let text = pair.as_str();
            let value: f64 = text.parse().unwrap_or(f64::INFINITY);
            if !value.is_finite() {
                return Err(Diagnostic::error(
                    "invalid-number",
                    format!("number `{text}` is too large"),
                )
                .primary(span, "does not fit in a 64-bit float")
                .help("use a finite number; the largest is about 1.8e308"));
            }
            ExprKind::Number(value, text.to_string())
        }
        Rule::string => ExprKind::Str(unescape(pair)),
        Rule::ident => ExprKind::Name(pair.as_str().to_string()),
        _ => {
            let inner =
                pair.into_inner().find(|p| p.as_rule() == Rule::expr).expect("paren content");
            ExprKind::Paren(Box::new(build_expr(inner)?))
        }
    };
    Ok(Expr { kind, span })
}

fn unescape(pair: Pair<Rule>) -> String {
    let raw = pair.into_inner().next().map_or("", |p| p.as_str());
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(src: &str) -> Expr {
        let text = format!("stage s {{ loss = {src} }}");
        let recipe = parse(&text).unwrap();
        let Item::Stage(stage) = &recipe.items[0] else { panic!() };
        let StmtKind::Loss(e) = &stage.stmts[0].kind else { panic!() };
        e.clone()
    }

    fn shape(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Number(_, t) => t.clone(),
            ExprKind::Str(s) => format!("{s:?}"),
            ExprKind::Name(n) => n.clone(),
            ExprKind::Member(b, m) => format!("{}.{}", shape(b), m.name),
            ExprKind::Call(f, args) => format!(
                "{}({})",
                shape(f),
                args.iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{}={}", n.name, shape(&a.value)),
                        None => shape(&a.value),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            ExprKind::Neg(x) => format!("(-{})", shape(x)),
            ExprKind::Binary(op, a, b) => format!("({} {} {})", shape(a), op.symbol(), shape(b)),
            ExprKind::Pipe(a, b) => format!("({} |> {})", shape(a), shape(b)),
            ExprKind::Paren(x) => shape(x),
        }
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(shape(&expr("a + b * c - d")), "((a + (b * c)) - d)");
        assert_eq!(shape(&expr("-x ^ 2")), "(-(x ^ 2))");
        assert_eq!(shape(&expr("2 ^ 3 ^ 2")), "(2 ^ (3 ^ 2))");
        assert_eq!(shape(&expr("a + b |> f(k = 1)")), "((a + b) |> f(k=1))");
        assert_eq!(shape(&expr("x |> f |> g")), "((x |> f) |> g)");
    }

    #[test]
    fn calls_members_and_named_args() {
        assert_eq!(
            shape(&expr("kl(old.logp, ref.logp, estimator = k1)")),
            "kl(old.logp,ref.logp,estimator=k1)"
        );
        assert_eq!(shape(&expr("arith.correct(response)")), "arith.correct(response)");
        assert_eq!(shape(&expr("f(reward = x, \"s\\\"q\")")), "f(reward=x,\"s\\\"q\")");
    }

    #[test]
    fn syntax_errors_name_tokens_not_rules() {
        let err = parse("stage s { loss = f(a, }").unwrap_err();
        assert_eq!(err.code, "syntax-error");
        assert!(!err.message.contains("Rule"), "{}", err.message);
        assert!(
            err.message.contains("an expression") || err.message.contains("`)`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn oversized_input_is_a_diagnostic() {
        let text = "#".repeat(MAX_SOURCE_BYTES + 1);
        assert_eq!(parse(&text).unwrap_err().code, "file-too-large");
    }

    #[test]
    fn deep_nesting_is_a_diagnostic() {
        let text = format!("stage s {{ loss = {}1{} }}", "(".repeat(500), ")".repeat(500));
        assert_eq!(parse(&text).unwrap_err().code, "nesting-too-deep");
        let text = format!("stage s {{ loss = {}1 }}", "-".repeat(500));
        assert_eq!(parse(&text).unwrap_err().code, "nesting-too-deep");
    }
}
