//! The canonical formatter. It prints the syntax tree with fixed spacing, keeps every comment
//! (a comment inside a multi-line statement moves above it), keeps one blank line where the author
//! left any, and aligns like gofmt: within a run of lines with no blank line between them,
//! keywords, `=` signs and trailing comments line up. Formatting is idempotent.

use super::ast::*;
use super::comments::{Comment, comments};
use crate::diag::{Diagnostic, Span};

/// Lines longer than this break at top-level `+` and `-`, and settings go one per line.
const WIDTH: usize = 100;
const INDENT: &str = "    ";

/// Formats a recipe, or returns its syntax error.
pub fn format(text: &str) -> Result<String, Diagnostic> {
    let recipe = super::parse(text)?;
    let mut f = Formatter { text, comments: comments(text), next: 0, out: String::new() };
    f.recipe(&recipe);
    let mut out = f.out.trim_end().to_string();
    out.push('\n');
    Ok(out)
}

/// One printed unit: the comments above it, its code, and a comment at the end of its line.
struct Line {
    leading: Vec<String>,
    code: String,
    trailing: Option<String>,
}

struct Formatter<'a> {
    text: &'a str,
    comments: Vec<Comment>,
    /// Index of the first comment not yet printed.
    next: usize,
    out: String,
}

/// Whether a gap between two tokens spans an empty line (comment lines do not count as empty).
fn has_blank_line(gap: &str) -> bool {
    let lines: Vec<&str> = gap.split('\n').collect();
    lines.len() > 2 && lines[1..lines.len() - 1].iter().any(|l| l.trim().is_empty())
}

impl Formatter<'_> {
    /// Takes the comments before `pos`.
    fn comments_before(&mut self, pos: usize) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(c) = self.comments.get(self.next) {
            if c.span.start >= pos {
                break;
            }
            out.push(c.text.clone());
            self.next += 1;
        }
        out
    }

    /// Builds a line for a unit spanning `span`: comments before it or inside it lead; a comment
    /// after it on its last line trails.
    fn unit(&mut self, span: Span, code: String) -> Line {
        let mut leading = self.comments_before(span.end);
        let line_end = self.text[span.end..].find('\n').map_or(self.text.len(), |i| span.end + i);
        let trailing = match self.comments.get(self.next) {
            Some(c) if c.span.start < line_end => {
                self.next += 1;
                Some(c.text.clone())
            }
            _ => None,
        };
        leading.retain(|c| !c.is_empty());
        Line { leading, code, trailing }
    }

    /// Prints a run of lines; trailing comments on consecutive lines share one column.
    fn flush(&mut self, indent: &str, lines: Vec<Line>) {
        let last_width = |code: &str| code.lines().last().map_or(0, |l| l.chars().count());
        let mut cols = vec![0; lines.len()];
        let mut i = 0;
        while i < lines.len() {
            let mut j = i;
            while j < lines.len()
                && lines[j].trailing.is_some()
                && (j == i || lines[j].leading.is_empty())
            {
                j += 1;
            }
            let col = lines[i..j].iter().map(|l| last_width(&l.code)).max().unwrap_or(0) + 2;
            for c in &mut cols[i..j] {
                *c = col;
            }
            i = j.max(i + 1);
        }
        for (line, col) in lines.into_iter().zip(cols) {
            for c in &line.leading {
                self.out.push_str(indent);
                self.out.push_str(c);
                self.out.push('\n');
            }
            for (i, l) in line.code.lines().enumerate() {
                if i > 0 {
                    self.out.push('\n');
                }
                self.out.push_str(indent);
                self.out.push_str(l);
            }
            if let Some(t) = &line.trailing {
                let width = last_width(&line.code);
                self.out.push_str(&" ".repeat(col.saturating_sub(width).max(2)));
                self.out.push_str(t);
            }
            self.out.push('\n');
        }
    }

    fn blank(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    fn recipe(&mut self, r: &Recipe) {
        if let Some(h) = &r.header {
            let title = h.title.as_ref().map(|t| format!(" {}", quote(t))).unwrap_or_default();
            let line = self.unit(h.span, format!("recipe {}{title}", h.name.name));
            self.flush("", vec![line]);
        }
        let mut i = 0;
        while i < r.items.len() {
            self.blank();
            match &r.items[i] {
                Item::Decl(_) => {
                    // A run of declarations with no blank line between them is aligned together.
                    let mut group: Vec<&Decl> = vec![];
                    while let Some(Item::Decl(d)) = r.items.get(i) {
                        if let Some(prev) = group.last()
                            && has_blank_line(&self.text[prev.span.end..d.span.start])
                        {
                            break;
                        }
                        group.push(d);
                        i += 1;
                    }
                    let kind_w = group.iter().map(|d| d.kind.keyword().len()).max().unwrap_or(0);
                    let name_w = group.iter().map(|d| d.name.name.len()).max().unwrap_or(0);
                    let lines: Vec<Line> = group
                        .iter()
                        .map(|d| {
                            let head = format!(
                                "{:<kind_w$} {:<name_w$} = ",
                                d.kind.keyword(),
                                d.name.name
                            );
                            let body = expr_block(&d.value, head.len());
                            self.unit(d.span, format!("{head}{body}"))
                        })
                        .collect();
                    self.flush("", lines);
                }
                Item::Stage(s) => {
                    self.stage(s);
                    i += 1;
                }
            }
        }
        let rest = self.comments_before(self.text.len());
        if !rest.is_empty() {
            self.blank();
            self.flush(
                "",
                vec![Line {
                    leading: rest[..rest.len() - 1].to_vec(),
                    code: rest[rest.len() - 1].clone(),
                    trailing: None,
                }],
            );
        }
    }

    fn stage(&mut self, s: &Stage) {
        let first = s.stmts.first().map_or(s.span.end, |st| st.span.start);
        let brace = self.text[s.name.span.end..first]
            .find('{')
            .map_or(s.name.span.end, |i| s.name.span.end + i + 1);
        let open = self.unit(Span::new(s.span.start, brace), format!("stage {} {{", s.name.name));
        self.flush("", vec![open]);
        let mut i = 0;
        while i < s.stmts.len() {
            if i > 0 {
                self.blank();
            }
            // A run: statements with no blank line between them.
            let mut run = vec![&s.stmts[i]];
            while let Some(next) = s.stmts.get(i + run.len()) {
                if has_blank_line(&self.text[run[run.len() - 1].span.end..next.span.start]) {
                    break;
                }
                run.push(next);
            }
            i += run.len();
            let has_lets = run.iter().any(|st| matches!(st.kind, StmtKind::Let(..)));
            let let_w = run
                .iter()
                .filter_map(|st| match &st.kind {
                    StmtKind::Let(n, _) => Some(n.name.len()),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let kw_w = run
                .iter()
                .filter_map(|st| match &st.kind {
                    StmtKind::Let(..) => None,
                    StmtKind::Loss(_) if has_lets => None,
                    other => Some(keyword(other).len()),
                })
                .max()
                .unwrap_or(0);
            let lines: Vec<Line> = run
                .iter()
                .map(|st| {
                    let code = stmt(st, kw_w, if has_lets { Some(let_w) } else { None });
                    self.unit(st.span, code)
                })
                .collect();
            self.flush(INDENT, lines);
        }
        let close_at = s.span.end.saturating_sub(1);
        let mut inner = self.comments_before(close_at);
        if !inner.is_empty() {
            let last = inner.pop().unwrap_or_default();
            self.flush(INDENT, vec![Line { leading: inner, code: last, trailing: None }]);
        }
        let close = self.unit(Span::new(close_at, s.span.end), "}".into());
        self.flush("", vec![close]);
    }
}

fn keyword(kind: &StmtKind) -> &'static str {
    match kind {
        StmtKind::Train(_) => "train",
        StmtKind::Source(k, _) => k.keyword(),
        StmtKind::Sample(_) => "sample",
        StmtKind::Optim(_) => "optim",
        StmtKind::Let(..) => "let",
        StmtKind::Loss(_) => "loss",
    }
}

/// A statement's code. `kw_w` pads keywords; `let_w`, when the run has `let`s, aligns `=`.
fn stmt(st: &Stmt, kw_w: usize, let_w: Option<usize>) -> String {
    let kw = format!("{:<kw_w$} ", keyword(&st.kind));
    let col = INDENT.len() + kw.len();
    match &st.kind {
        StmtKind::Train(targets) => {
            let ts: Vec<String> = targets.iter().map(expr).collect();
            format!("{kw}{}", ts.join(", "))
        }
        StmtKind::Source(_, e) => format!("{kw}{}", expr(e)),
        StmtKind::Sample(set) | StmtKind::Optim(set) => format!("{kw}{}", settings(set, col)),
        StmtKind::Let(name, e) => {
            let head = format!("let {:<w$} = ", name.name, w = let_w.unwrap_or(0));
            format!("{head}{}", expr_block(e, INDENT.len() + head.len()))
        }
        StmtKind::Loss(e) => {
            let w = let_w.map_or(kw_w, |w| w + 4);
            let head = format!("{:<w$} = ", "loss");
            format!("{head}{}", expr_block(e, INDENT.len() + head.len()))
        }
    }
}

/// An expression starting at column `col`; too long, it breaks before each top-level `+`/`-`,
/// the operators aligned under the `=` (continuation lines are relative to the indentation).
fn expr_block(e: &Expr, col: usize) -> String {
    let flat = expr(e);
    if col + flat.chars().count() <= WIDTH {
        return flat;
    }
    let mut terms = Vec::new();
    collect_terms(e, None, &mut terms);
    if terms.len() < 2 {
        return flat;
    }
    let indent_len =
        if col >= INDENT.len() && col - INDENT.len() >= 2 { col - INDENT.len() } else { col };
    let pad = " ".repeat(indent_len.saturating_sub(2));
    let mut out = expr(terms[0].1);
    for (op, t) in &terms[1..] {
        out.push('\n');
        out.push_str(&pad);
        out.push_str(op.map_or("+", |o| o.symbol()));
        out.push(' ');
        out.push_str(&expr(t));
    }
    out
}

fn collect_terms<'e>(e: &'e Expr, op: Option<BinOp>, out: &mut Vec<(Option<BinOp>, &'e Expr)>) {
    match &e.kind {
        ExprKind::Binary(o @ (BinOp::Add | BinOp::Sub), a, b) => {
            collect_terms(a, op, out);
            out.push((Some(*o), b));
        }
        _ => out.push((op, e)),
    }
}

fn settings(set: &Settings, col: usize) -> String {
    if set.entries.is_empty() {
        return "{ }".into();
    }
    let items: Vec<String> =
        set.entries.iter().map(|s| format!("{} = {}", s.key.name, expr(&s.value))).collect();
    let flat = format!("{{ {} }}", items.join(", "));
    if col + flat.chars().count() <= WIDTH {
        return flat;
    }
    let inner: Vec<String> = items.iter().map(|i| format!("{INDENT}{i}")).collect();
    format!("{{\n{}\n}}", inner.join("\n"))
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One expression on one line, in canonical spacing.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number(_, text) => text.clone(),
        ExprKind::Str(s) => quote(s),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Member(b, m) => format!("{}.{}", expr(b), m.name),
        ExprKind::Call(f, args) => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{} = {}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", expr(f), args.join(", "))
        }
        ExprKind::Neg(x) => format!("-{}", expr(x)),
        ExprKind::Binary(op, a, b) => format!("{} {} {}", expr(a), op.symbol(), expr(b)),
        ExprKind::Pipe(a, b) => format!("{} |> {}", expr(a), expr(b)),
        ExprKind::Paren(x) => format!("({})", expr(x)),
    }
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn aligns_runs_and_keeps_comments() {
        let src = "# head\nrecipe x \"t\"\ndata a = builtin(\"arith\")  # a\nmodel policy = builtin(\"tiny\")\n\nstage rl {\n  train policy\n  prompts a.problems # p\n  let kl = kl(old.logp, ref.logp)   # first\n  let r = 1 - kl\n  # before loss\n  loss = token_mean(r)\n}\n# tail\n";
        let out = format(src).unwrap();
        let want = "# head\nrecipe x \"t\"\n\ndata  a      = builtin(\"arith\")  # a\nmodel policy = builtin(\"tiny\")\n\nstage rl {\n    train   policy\n    prompts a.problems               # p\n    let kl = kl(old.logp, ref.logp)  # first\n    let r  = 1 - kl\n    # before loss\n    loss   = token_mean(r)\n}\n\n# tail\n";
        assert_eq!(out, want);
        assert_eq!(format(&out).unwrap(), out, "idempotent");
    }

    #[test]
    fn long_expressions_break_at_top_level_terms() {
        let long =
            "token_mean(ppo_clip(policy.logp, old.logp, whiten(adv, scope = batch), eps = 0.2))";
        let src = format!("stage s {{\n    let adv = 1\n    loss = {long} + 0.5 * {long}\n}}\n");
        let out = format(&src).unwrap();
        assert!(
            out.contains(&format!("    loss    = {long}\n            + 0.5 * {long}\n")),
            "{out}"
        );
        assert_eq!(format(&out).unwrap(), out);
    }
}
