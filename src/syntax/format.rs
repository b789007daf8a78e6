//! The canonical formatter. It prints the syntax tree with fixed spacing and alignment, keeps
//! every comment (a comment inside a multi-line statement moves above it), keeps at most one
//! blank line where the author left one, and is idempotent: formatting twice changes nothing.

use super::ast::*;
use super::comments::{Comment, comments};
use crate::diag::{Diagnostic, Span};

/// Lines longer than this break at top-level `+` and `-`, and settings go one per line.
const WIDTH: usize = 100;
const INDENT: &str = "    ";

/// Formats a recipe, or returns its syntax error.
pub fn format(text: &str) -> Result<String, Diagnostic> {
    let recipe = super::parse(text)?;
    let mut f =
        Formatter { text, comments: comments(text), next: 0, out: String::new(), prev_end: 0 };
    f.recipe(&recipe);
    let mut out = f.out.trim_end().to_string();
    out.push('\n');
    Ok(out)
}

struct Formatter<'a> {
    text: &'a str,
    comments: Vec<Comment>,
    /// Index of the first comment not yet printed.
    next: usize,
    out: String,
    /// End of the last unit printed, to find the author's blank lines.
    prev_end: usize,
}

impl Formatter<'_> {
    fn recipe(&mut self, r: &Recipe) {
        if let Some(h) = &r.header {
            self.leading(h.span.start, "");
            let title = h.title.as_ref().map(|t| format!(" {}", quote(t))).unwrap_or_default();
            let line = format!("recipe {}{title}", h.name.name);
            self.line("", &line, h.span);
        }
        let mut i = 0;
        while i < r.items.len() {
            match &r.items[i] {
                Item::Decl(_) => {
                    // A run of declarations with no blank line between them is aligned together.
                    let mut group = vec![];
                    while let Some(Item::Decl(d)) = r.items.get(i) {
                        if !group.is_empty() && self.blank_before(d.span.start) {
                            break;
                        }
                        group.push(d);
                        i += 1;
                    }
                    let kind_w = group.iter().map(|d| d.kind.keyword().len()).max().unwrap_or(0);
                    let name_w = group.iter().map(|d| d.name.name.len()).max().unwrap_or(0);
                    for (j, d) in group.iter().enumerate() {
                        self.separate(d.span.start, j == 0);
                        self.leading(d.span.start, "");
                        let head =
                            format!("{:<kind_w$} {:<name_w$} = ", d.kind.keyword(), d.name.name);
                        let body = self.expr_block(&d.value, head.len());
                        self.line("", &format!("{head}{body}"), d.span);
                    }
                }
                Item::Stage(s) => {
                    self.separate(s.span.start, true);
                    self.stage(s);
                    i += 1;
                }
            }
        }
        self.leading(self.text.len(), "");
    }

    /// Blank line before a unit: always before a group or stage start (except at the top), else
    /// only where the author left one.
    fn separate(&mut self, start: usize, group_start: bool) {
        if self.out.is_empty() {
            return;
        }
        if group_start || self.blank_before(start) {
            self.blank();
        }
    }

    fn blank(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    /// Whether the source has an empty line between the previous unit and `start` (or the first
    /// comment before it).
    fn blank_before(&self, start: usize) -> bool {
        let first = self.comments[self.next..]
            .iter()
            .find(|c| c.span.start < start)
            .map_or(start, |c| c.span.start);
        has_blank_line(self.text.get(self.prev_end.min(first)..first).unwrap_or(""))
    }

    /// Prints the comments that come before `pos`, each on its own line.
    fn leading(&mut self, pos: usize, indent: &str) {
        while let Some(c) = self.comments.get(self.next).cloned() {
            if c.span.start >= pos {
                break;
            }
            let text = c.text;
            if self.blank_before(c.span.start) && !self.out.is_empty() && !self.out.ends_with("{\n")
            {
                self.blank();
            }
            self.out.push_str(indent);
            self.out.push_str(&text);
            self.out.push('\n');
            self.prev_end = c.span.end;
            self.next += 1;
        }
    }

    /// Prints one unit: comments inside it move above it; a comment at the end of its last line
    /// stays there.
    fn line(&mut self, indent: &str, body: &str, span: Span) {
        let end_line_start =
            self.text[..span.end.min(self.text.len())].rfind('\n').map_or(0, |i| i + 1);
        let end_line_end = self.text[span.end.min(self.text.len())..]
            .find('\n')
            .map_or(self.text.len(), |i| span.end + i);
        // Comments strictly inside the unit, before its last line, go first.
        let mut inner = Vec::new();
        let mut trailing = None;
        while let Some(c) = self.comments.get(self.next) {
            if c.span.start >= end_line_end {
                break;
            }
            if c.span.start >= span.end && c.span.start >= end_line_start {
                trailing = Some(c.text.clone());
            } else {
                inner.push(c.text.clone());
            }
            self.next += 1;
        }
        for c in inner {
            self.out.push_str(indent);
            self.out.push_str(&c);
            self.out.push('\n');
        }
        self.out.push_str(indent);
        self.out.push_str(body);
        if let Some(t) = trailing {
            self.out.push_str("  ");
            self.out.push_str(&t);
        }
        self.out.push('\n');
        self.prev_end = end_line_end.max(span.end);
    }

    fn stage(&mut self, s: &Stage) {
        self.leading(s.span.start, "");
        let open = s.stmts.first().map_or(s.span.end, |st| st.span.start);
        let header_end = self.text[s.span.start..open]
            .find('{')
            .map_or(s.name.span.end, |i| s.span.start + i + 1);
        self.line("", &format!("stage {} {{", s.name.name), Span::new(s.span.start, header_end));
        let mut i = 0;
        while i < s.stmts.len() {
            // Consecutive `let` and `loss` statements align their `=`.
            let mut group = vec![&s.stmts[i]];
            if matches!(s.stmts[i].kind, StmtKind::Let(..) | StmtKind::Loss(_)) {
                while let Some(next) = s.stmts.get(i + group.len()) {
                    if !matches!(next.kind, StmtKind::Let(..) | StmtKind::Loss(_))
                        || self.blank_between(group[group.len() - 1], next)
                    {
                        break;
                    }
                    group.push(next);
                }
            }
            let name_w = group
                .iter()
                .filter_map(|st| match &st.kind {
                    StmtKind::Let(n, _) => Some(n.name.len()),
                    _ => None,
                })
                .max();
            for (j, st) in group.iter().enumerate() {
                if self.blank_before(st.span.start) && (j > 0 || i > 0) {
                    self.blank();
                }
                self.leading(st.span.start, INDENT);
                let body = self.stmt(st, name_w);
                self.line(INDENT, &body, st.span);
            }
            i += group.len();
        }
        self.leading(s.span.end.saturating_sub(1), INDENT);
        self.line("", "}", Span::new(s.span.end.saturating_sub(1), s.span.end));
    }

    fn blank_between(&self, a: &Stmt, b: &Stmt) -> bool {
        has_blank_line(&self.text[a.span.end..b.span.start])
    }

    fn stmt(&self, st: &Stmt, let_width: Option<usize>) -> String {
        let kw = |k: &str| format!("{k:<8}");
        match &st.kind {
            StmtKind::Train(targets) => {
                let ts: Vec<String> = targets.iter().map(expr).collect();
                format!("{}{}", kw("train"), ts.join(", "))
            }
            StmtKind::Source(kind, e) => format!("{}{}", kw(kind.keyword()), expr(e)),
            StmtKind::Sample(set) => format!("{}{}", kw("sample"), settings(set, INDENT.len() + 8)),
            StmtKind::Optim(set) => format!("{}{}", kw("optim"), settings(set, INDENT.len() + 8)),
            StmtKind::Let(name, e) => {
                let head =
                    format!("let {:<w$} = ", name.name, w = let_width.unwrap_or(name.name.len()));
                let body = self.expr_block(e, INDENT.len() + head.len());
                format!("{head}{body}")
            }
            StmtKind::Loss(e) => {
                let w = let_width.map_or(4, |w| w + 4);
                let head = format!("{:<w$} = ", "loss");
                let body = self.expr_block(e, INDENT.len() + head.len());
                format!("{head}{body}")
            }
        }
    }

    /// An expression starting at column `col`; too long, it breaks before each top-level `+`/`-`,
    /// the operators aligned under the `=`.
    fn expr_block(&self, e: &Expr, col: usize) -> String {
        let flat = expr(e);
        if col + flat.chars().count() <= WIDTH {
            return flat;
        }
        let mut terms = Vec::new();
        collect_terms(e, None, &mut terms);
        if terms.len() < 2 {
            return flat;
        }
        let pad = " ".repeat(col.saturating_sub(2));
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
}

/// Whether a gap between two tokens spans an empty line (comment lines do not count as empty).
fn has_blank_line(gap: &str) -> bool {
    let lines: Vec<&str> = gap.split('\n').collect();
    lines.len() > 2 && lines[1..lines.len() - 1].iter().any(|l| l.trim().is_empty())
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
    let inner: Vec<String> = items.iter().map(|i| format!("{INDENT}{INDENT}{i}")).collect();
    format!("{{\n{}\n{INDENT}}}", inner.join("\n"))
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
