//! The planner's view of the stage graph: a node's block, parameters, inputs, level, constant
//! value; linear combinations; and the diagnostics it reports.

use std::collections::HashSet;

use petgraph::stable_graph::NodeIndex;

use super::Planner;
use crate::blocks::spec::Level;
use crate::check::Ty;
use crate::check::params::{Resolved, Value};
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::*;

impl Planner<'_> {
    pub(super) fn g(&self) -> &Graph {
        &self.stage.graph
    }

    pub(super) fn err(
        &mut self,
        code: &'static str,
        span: Span,
        msg: String,
        label: &str,
        help: &str,
    ) {
        self.diags.push(Diagnostic::error(code, msg).primary(span, label).help(help));
    }

    pub(super) fn level(&self, n: NodeIndex) -> Option<Level> {
        match self.cs.types.get(&n) {
            Some(Ty::Tensor { level, .. }) => Some(*level),
            _ => None,
        }
    }

    pub(super) fn block(&self, n: NodeIndex) -> Option<&'static str> {
        match &self.g()[n].op {
            Op::Block { spec, .. } => Some(spec.name),
            _ => None,
        }
    }

    pub(super) fn params(&self, n: NodeIndex) -> &[Resolved] {
        self.cs.params.get(&n).map_or(&[], |v| v.as_slice())
    }

    pub(super) fn param(&self, n: NodeIndex, name: &str) -> Option<&Value> {
        crate::check::params::get(self.params(n), name)
    }

    pub(super) fn ins(&self, n: NodeIndex) -> Vec<NodeIndex> {
        inputs(self.g(), n)
    }

    pub(super) fn constant(&self, n: NodeIndex) -> Option<f64> {
        match &self.g()[n].op {
            Op::Const(v) => Some(*v),
            Op::Block { spec, .. } if spec.name == "neg" => {
                self.ins(n).first().and_then(|x| self.constant(*x)).map(|v| -v)
            }
            _ => None,
        }
    }

    pub(super) fn is_signal(&self, n: NodeIndex, model: &ModelRef, signal: Signal) -> bool {
        matches!(&self.g()[n].op, Op::Signal { model: m, signal: s } if m == model && *s == signal)
            && self.text_of(n).as_deref() == Some("response")
    }

    pub(super) fn text_of(&self, n: NodeIndex) -> Option<String> {
        match self.ins(n).first().map(|t| &self.g()[*t].op) {
            Some(Op::Text(t)) => Some(t.to_string()),
            _ => None,
        }
    }

    /// `x` as Σ cᵢ·termᵢ through `add`, `sub`, `neg` and multiplication or division by constants.
    pub(super) fn linear(&self, n: NodeIndex, c: f64, out: &mut Vec<(f64, NodeIndex)>) {
        let ins = self.ins(n);
        match self.block(n) {
            Some("add") => {
                self.linear(ins[0], c, out);
                self.linear(ins[1], c, out);
            }
            Some("sub") => {
                self.linear(ins[0], c, out);
                self.linear(ins[1], -c, out);
            }
            Some("neg") if self.constant(n).is_none() => self.linear(ins[0], -c, out),
            Some("mul") if self.constant(ins[0]).is_some() => {
                self.linear(ins[1], c * self.constant(ins[0]).unwrap_or(1.0), out)
            }
            Some("mul") if self.constant(ins[1]).is_some() => {
                self.linear(ins[0], c * self.constant(ins[1]).unwrap_or(1.0), out)
            }
            Some("div") if self.constant(ins[1]).is_some_and(|v| v != 0.0) => {
                self.linear(ins[0], c / self.constant(ins[1]).unwrap_or(1.0), out)
            }
            _ => out.push((c, n)),
        }
    }

    pub(super) fn find_block(&self, n: NodeIndex, name: &str) -> Option<NodeIndex> {
        let mut stack = vec![n];
        let mut seen = HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            if self.block(x) == Some(name) {
                return Some(x);
            }
            stack.extend(self.ins(x));
        }
        None
    }
}
