//! What the syntax tree holds at an offset, and where names are defined and used: the common
//! ground of hover, go to definition, references and document symbols.

use crate::diag::Span;
use crate::syntax::ast::*;

/// Something under the cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum Hit {
    /// The callee of a call that names a block: `whiten` in `whiten(adv)`.
    Block { name: String, span: Span },
    /// A named argument of a block call: `eps` in `ppo_clip(..., eps = 0.2)`.
    Param { block: String, name: String, span: Span },
    /// A name read in an expression (a binding, a declaration, `old`, `response`, …).
    Name { name: String, span: Span, stage: Option<usize> },
    /// A member: `logp` in `policy.logp`, `correct` in `arith.correct`.
    Member { base: String, member: String, span: Span },
    /// A key of `sample { }` or `optim { }`.
    Setting { section: &'static str, key: String, span: Span },
    /// A defining name: a `let`, a declaration or a stage.
    Definition { name: String, span: Span, stage: Option<usize> },
}

/// Where a name is defined.
#[derive(Debug, Clone, PartialEq)]
pub struct Def {
    pub name: String,
    pub span: Span,
    /// The whole statement or declaration.
    pub full: Span,
    pub kind: DefKind,
    /// The stage a `let` belongs to (its scope).
    pub stage: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefKind {
    Data,
    Model,
    Reward,
    Stage,
    Let,
}

/// Every definition of a recipe, in source order.
pub fn definitions(recipe: &Recipe) -> Vec<Def> {
    let mut out = Vec::new();
    let mut stage_no = 0;
    for item in &recipe.items {
        match item {
            Item::Decl(d) => out.push(Def {
                name: d.name.name.clone(),
                span: d.name.span,
                full: d.span,
                kind: match d.kind {
                    DeclKind::Data => DefKind::Data,
                    DeclKind::Model => DefKind::Model,
                    DeclKind::Reward => DefKind::Reward,
                },
                stage: None,
            }),
            Item::Stage(s) => {
                out.push(Def {
                    name: s.name.name.clone(),
                    span: s.name.span,
                    full: s.span,
                    kind: DefKind::Stage,
                    stage: None,
                });
                for st in &s.stmts {
                    if let StmtKind::Let(name, _) = &st.kind {
                        out.push(Def {
                            name: name.name.clone(),
                            span: name.span,
                            full: st.span,
                            kind: DefKind::Let,
                            stage: Some(stage_no),
                        });
                    }
                }
                stage_no += 1;
            }
        }
    }
    out
}

/// The definition a name read in `stage` refers to: the stage's own `let`, else a declaration.
pub fn resolve<'a>(defs: &'a [Def], name: &str, stage: Option<usize>) -> Option<&'a Def> {
    defs.iter()
        .find(|d| d.kind == DefKind::Let && d.stage == stage && stage.is_some() && d.name == name)
        .or_else(|| {
            defs.iter().find(|d| {
                matches!(d.kind, DefKind::Data | DefKind::Model | DefKind::Reward) && d.name == name
            })
        })
}

/// Every name read in the recipe, with the stage it is read in.
pub fn name_uses(recipe: &Recipe) -> Vec<(String, Span, Option<usize>)> {
    let mut out = Vec::new();
    let mut stage_no = 0;
    for item in &recipe.items {
        match item {
            Item::Decl(d) => names_in(&d.value, None, &mut out),
            Item::Stage(s) => {
                for st in &s.stmts {
                    for e in stmt_exprs(st) {
                        names_in(e, Some(stage_no), &mut out);
                    }
                }
                stage_no += 1;
            }
        }
    }
    out
}

fn stmt_exprs(st: &Stmt) -> Vec<&Expr> {
    match &st.kind {
        StmtKind::Train(es) => es.iter().collect(),
        StmtKind::Source(_, e) | StmtKind::Let(_, e) | StmtKind::Loss(e) => vec![e],
        StmtKind::Sample(s) | StmtKind::Optim(s) => s.entries.iter().map(|e| &e.value).collect(),
    }
}

fn names_in(e: &Expr, stage: Option<usize>, out: &mut Vec<(String, Span, Option<usize>)>) {
    match &e.kind {
        ExprKind::Name(n) => out.push((n.clone(), e.span, stage)),
        ExprKind::Member(base, _) => names_in(base, stage, out),
        ExprKind::Call(callee, args) => {
            names_in(callee, stage, out);
            for a in args {
                names_in(&a.value, stage, out);
            }
        }
        ExprKind::Neg(x) | ExprKind::Paren(x) => names_in(x, stage, out),
        ExprKind::Binary(_, a, b) | ExprKind::Pipe(a, b) => {
            names_in(a, stage, out);
            names_in(b, stage, out);
        }
        ExprKind::Number(..) | ExprKind::Str(_) => {}
    }
}

fn inside(span: Span, offset: usize) -> bool {
    span.start <= offset && offset <= span.end
}

/// What is at `offset`.
pub fn hit(recipe: &Recipe, offset: usize) -> Option<Hit> {
    let mut stage_no = 0;
    for item in &recipe.items {
        match item {
            Item::Decl(d) if inside(d.span, offset) => {
                if inside(d.name.span, offset) {
                    return Some(Hit::Definition {
                        name: d.name.name.clone(),
                        span: d.name.span,
                        stage: None,
                    });
                }
                return in_expr(&d.value, offset, None);
            }
            Item::Stage(s) => {
                if inside(s.span, offset) {
                    if inside(s.name.span, offset) {
                        return Some(Hit::Definition {
                            name: s.name.name.clone(),
                            span: s.name.span,
                            stage: None,
                        });
                    }
                    let st = s.stmts.iter().find(|st| inside(st.span, offset))?;
                    return in_stmt(st, offset, stage_no);
                }
                stage_no += 1;
            }
            Item::Decl(_) => {}
        }
    }
    None
}

fn in_stmt(st: &Stmt, offset: usize, stage: usize) -> Option<Hit> {
    match &st.kind {
        StmtKind::Let(name, _) if inside(name.span, offset) => {
            Some(Hit::Definition { name: name.name.clone(), span: name.span, stage: Some(stage) })
        }
        StmtKind::Sample(s) | StmtKind::Optim(s) => {
            let section = if matches!(st.kind, StmtKind::Sample(_)) { "sample" } else { "optim" };
            let e = s.entries.iter().find(|e| inside(e.span, offset))?;
            if inside(e.key.span, offset) {
                return Some(Hit::Setting { section, key: e.key.name.clone(), span: e.key.span });
            }
            in_expr(&e.value, offset, Some(stage))
        }
        _ => stmt_exprs(st)
            .into_iter()
            .find(|e| inside(e.span, offset))
            .and_then(|e| in_expr(e, offset, Some(stage))),
    }
}

fn in_expr(e: &Expr, offset: usize, stage: Option<usize>) -> Option<Hit> {
    if !inside(e.span, offset) {
        return None;
    }
    match &e.kind {
        ExprKind::Name(n) => Some(Hit::Name { name: n.clone(), span: e.span, stage }),
        ExprKind::Member(base, m) => {
            if inside(m.span, offset) {
                let base = base.as_path().map(|p| p.join(".")).unwrap_or_default();
                return Some(Hit::Member { base, member: m.name.clone(), span: m.span });
            }
            in_expr(base, offset, stage)
        }
        ExprKind::Call(callee, args) => {
            let block = match &callee.kind {
                ExprKind::Name(n) if crate::blocks::lookup(n).is_some() => Some(n.as_str()),
                _ => None,
            };
            if inside(callee.span, offset) {
                return match block {
                    Some(b) => Some(Hit::Block { name: b.to_string(), span: callee.span }),
                    None => in_expr(callee, offset, stage),
                };
            }
            for a in args {
                if let Some(name) = &a.name
                    && inside(name.span, offset)
                {
                    // A block's parameter, or a declaration constructor's (`builtin`, …).
                    let callee = block.or(match &callee.kind {
                        ExprKind::Name(n) => Some(n.as_str()),
                        _ => None,
                    });
                    return callee.map(|b| Hit::Param {
                        block: b.to_string(),
                        name: name.name.clone(),
                        span: name.span,
                    });
                }
                if let Some(h) = in_expr(&a.value, offset, stage) {
                    return Some(h);
                }
            }
            None
        }
        ExprKind::Neg(x) | ExprKind::Paren(x) => in_expr(x, offset, stage),
        ExprKind::Binary(_, a, b) | ExprKind::Pipe(a, b) => {
            in_expr(a, offset, stage).or_else(|| in_expr(b, offset, stage))
        }
        ExprKind::Number(..) | ExprKind::Str(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "data arith = builtin(\"arith\")
model policy = builtin(\"tiny\")
stage rl {
    train policy
    prompts arith.problems
    sample { n = 4 }
    let adv = group_zscore(arith.correct(response), eps = 1e-6)
    loss = token_mean(ppo_clip(policy.logp, old.logp, adv))
    optim { lr = 1e-5 }
}
";

    fn at(needle: &str, nth: usize) -> usize {
        RECIPE.match_indices(needle).nth(nth).unwrap().0 + 1
    }

    #[test]
    fn hits_name_what_is_under_the_cursor() {
        let r = crate::syntax::parse(RECIPE).unwrap();
        assert!(
            matches!(hit(&r, at("group_zscore", 0)), Some(Hit::Block { name, .. }) if name == "group_zscore")
        );
        assert!(
            matches!(hit(&r, at("eps", 0)), Some(Hit::Param { block, name, .. }) if block == "group_zscore" && name == "eps")
        );
        assert!(
            matches!(hit(&r, at("logp", 0)), Some(Hit::Member { base, member, .. }) if base == "policy" && member == "logp")
        );
        assert!(
            matches!(hit(&r, at("adv", 1)), Some(Hit::Name { name, stage: Some(0), .. }) if name == "adv")
        );
        assert!(
            matches!(hit(&r, at("adv", 0)), Some(Hit::Definition { name, stage: Some(0), .. }) if name == "adv")
        );
        assert!(
            matches!(hit(&r, at("lr", 0)), Some(Hit::Setting { section: "optim", key, .. }) if key == "lr")
        );
        assert!(matches!(hit(&r, at("arith", 2)), Some(Hit::Name { name, .. }) if name == "arith"));
    }

    #[test]
    fn names_resolve_to_lets_of_their_stage_then_declarations() {
        let r = crate::syntax::parse(RECIPE).unwrap();
        let defs = definitions(&r);
        let kinds: Vec<DefKind> = defs.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, [DefKind::Data, DefKind::Model, DefKind::Stage, DefKind::Let]);
        assert_eq!(resolve(&defs, "adv", Some(0)).unwrap().kind, DefKind::Let);
        assert!(resolve(&defs, "adv", None).is_none());
        assert_eq!(resolve(&defs, "arith", Some(0)).unwrap().kind, DefKind::Data);
        let uses: Vec<_> = name_uses(&r).into_iter().filter(|(n, ..)| n == "arith").collect();
        assert_eq!(uses.len(), 2);
    }
}
