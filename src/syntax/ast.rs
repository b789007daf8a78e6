//! The syntax tree of a recipe. Every node keeps the span of the text it came from.

use crate::diag::Span;

/// A whole `.rlx` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub header: Option<Header>,
    pub items: Vec<Item>,
}

/// `recipe NAME "title"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub name: Ident,
    pub title: Option<String>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Decl(Decl),
    Stage(Stage),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Decl(d) => d.span,
            Item::Stage(s) => s.span,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclKind {
    Data,
    Model,
    Reward,
}

impl DeclKind {
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Data => "data",
            DeclKind::Model => "model",
            DeclKind::Reward => "reward",
        }
    }
}

/// `model policy = builtin("tiny")`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decl {
    pub kind: DeclKind,
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

/// `stage NAME { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: Ident,
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    /// The span of the leading keyword.
    pub keyword: Span,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Prompts,
    Pairs,
    Data,
}

impl SourceKind {
    pub fn keyword(self) -> &'static str {
        match self {
            SourceKind::Prompts => "prompts",
            SourceKind::Pairs => "pairs",
            SourceKind::Data => "data",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StmtKind {
    Train(Vec<Expr>),
    Source(SourceKind, Expr),
    Sample(Settings),
    Optim(Settings),
    Let(Ident, Expr),
    Loss(Expr),
}

/// `{ key = value, ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub entries: Vec<Setting>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "^",
        }
    }

    /// Binding strength; higher binds tighter. Pipes bind loosest of all (0).
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Add | BinOp::Sub => 1,
            BinOp::Mul | BinOp::Div => 2,
            BinOp::Pow => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A number and its text as written (the formatter keeps `1e-6` as `1e-6`).
    Number(f64, String),
    Str(String),
    Name(String),
    Member(Box<Expr>, Ident),
    Call(Box<Expr>, Vec<Arg>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `lhs |> rhs`: `rhs` is a name or a call that receives `lhs` as its first argument.
    Pipe(Box<Expr>, Box<Expr>),
    Paren(Box<Expr>),
}

/// A call argument, positional or `name = value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

impl Expr {
    /// The dotted path this expression spells, if it is one: `arith.correct` → `["arith", "correct"]`.
    pub fn as_path(&self) -> Option<Vec<&str>> {
        match &self.kind {
            ExprKind::Name(n) => Some(vec![n.as_str()]),
            ExprKind::Member(base, m) => {
                let mut p = base.as_path()?;
                p.push(m.name.as_str());
                Some(p)
            }
            _ => None,
        }
    }
}
