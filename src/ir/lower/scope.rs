//! What lowering a stage keeps while it works: the stage's context (its graph, `let`
//! bindings, memo, cycle detection, shared nodes) and what an expression denotes.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use super::Cx;
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::*;
use crate::syntax::ast::*;

/// What an expression denotes while lowering.
#[derive(Debug, Clone)]
pub(super) enum Val {
    Node(NodeIndex),
    Model(String),
    Pseudo(ModelRef),
    Data(String),
    Scorer(ScorerRef),
    /// `policy.logp` before it is called (or defaulted to the stage's text).
    Method(ModelRef, &'static str),
    Error,
}

/// A call argument: an expression, or the left side of a pipe, already lowered.
pub(super) enum ArgVal<'e> {
    Expr(&'e Expr),
    Piped(Val),
}

pub(super) struct StageCx<'a> {
    pub(super) cx: &'a Cx,
    pub(super) graph: Graph,
    pub(super) lets: HashMap<String, (&'a Ident, &'a Expr)>,
    pub(super) memo: HashMap<String, Val>,
    pub(super) stack: Vec<(String, Span)>,
    pub(super) cycles: HashSet<Vec<String>>,
    pub(super) uses: HashMap<String, usize>,
    pub(super) cse: HashMap<String, NodeIndex>,
    pub(super) primary: Option<&'static str>,
    pub(super) depth: usize,
    pub(super) diags: Vec<Diagnostic>,
}

pub(super) const REWARD_MODEL_MEMBERS: &[&str] = &["score"];
