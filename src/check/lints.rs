//! Lints: findings that are usually mistakes but may be intended. Each has a stable kebab-case
//! name and a default level, can be switched with `--allow`/`--deny`, and can be silenced for one
//! statement with a comment `# rlx: allow(NAME)` on the line before it or at the end of its line.

use std::collections::HashSet;

use petgraph::Direction;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;

use super::params::{self, Value};
use super::{Checked, CheckedStage, StageCx, Ty};
use crate::blocks::spec::{Demand, Family, GradRule, InputKind, Level};
use crate::diag::{Code, Diagnostic, Severity, Span, codes, did_you_mean};
use crate::ir::graph::*;
use crate::syntax::ast::SourceKind;

/// The lint named `name`: its entry in the one registry of codes (`diag::codes`), which holds
/// its default level, summary and explanation.
pub fn lint(name: &str) -> Option<&'static Code> {
    codes::code(name).filter(|c| c.lint_default().is_some())
}

pub(super) fn push(diags: &mut Vec<Diagnostic>, name: &'static str, diag: Diagnostic) {
    let severity = lint(name).and_then(Code::lint_default).unwrap_or(Severity::Warning);
    diags.push(Diagnostic { code: name, severity, ..diag });
}

/// Lints over one checked stage.
pub(super) fn stage_lints(cx: &StageCx, out: &CheckedStage, diags: &mut Vec<Diagnostic>) {
    let stage = cx.stage;
    let g = &stage.graph;
    for b in &stage.bindings {
        if b.uses == 0
            && !b.name.name.starts_with('_')
            && b.node.is_none_or(|n| Some(n) != stage.loss)
        {
            push(
                diags,
                "unused-binding",
                Diagnostic::warning("", format!("`{}` is never used", b.name.name))
                    .primary(b.name.span, "bound here")
                    .help(format!("remove it, or name it `_{}` to keep it", b.name.name)),
            );
        }
    }
    let Some(loss) = stage.loss else { return };
    let in_loss = ancestors(g, loss);

    // singleton-group
    let n = params::get_num(&out.sample, "n");
    if n == Some(1.0) {
        for &node in &in_loss {
            if let Op::Block { spec, .. } = &g[node].op {
                let by_group = spec.demand == Demand::Groups
                    || out
                        .params
                        .get(&node)
                        .is_some_and(|p| super::typing::param_is(p, "scope", "group"));
                if by_group {
                    push(
                        diags,
                        "singleton-group",
                        Diagnostic::error(
                            "",
                            format!(
                                "`{}` normalises within groups, but each prompt has one sample",
                                spec.name
                            ),
                        )
                        .primary(g[node].span, "every advantage is zero")
                        .help("sample several responses per prompt: `sample { n = 8 }`"),
                    );
                }
            }
        }
    }

    // unmasked-loss
    for &node in &in_loss {
        if let (Op::Block { spec, .. }, Some(p)) = (&g[node].op, out.params.get(&node)) {
            let is_token = wires(g, node).first().is_some_and(|(i, _)| {
                matches!(out.types.get(i), Some(Ty::Tensor { level: Level::Token, .. }))
            });
            if spec.family == Family::Aggregate
                && is_token
                && super::typing::param_is(p, "mask", "none")
            {
                let span = p
                    .iter()
                    .find(|r| r.name == "mask")
                    .and_then(|r| r.span)
                    .unwrap_or(g[node].span);
                push(
                    diags,
                    "unmasked-loss",
                    Diagnostic::warning("", format!("`{}` ignores the response mask", spec.name))
                        .primary(span, "padding positions enter the loss")
                        .help("drop `mask = none`: the loss should average response tokens only"),
                );
            }
        }
    }

    // unregularized-reward
    if stage.source_kind() == Some(SourceKind::Prompts) {
        let regularized =
            in_loss.iter().any(|&n| matches!(&g[n].op, Op::Block { spec, .. } if spec.regularizer));
        let learned = in_loss.iter().copied().find(|&n| match &g[n].op {
            Op::Score(ScorerRef::Model(m)) | Op::Scorer(ScorerRef::Model(m)) => !stage.trains(m),
            Op::Signal { model: ModelRef::Named(m), signal: Signal::KeepProb } => !stage.trains(m),
            _ => false,
        });
        if let (Some(score), false) = (learned, regularized) {
            push(
                diags,
                "unregularized-reward",
                Diagnostic::warning("", format!("`{}` is maximised without a KL term or a calibration", g[score].op.label()))
                    .primary(g[score].span, "a learned reward the policy can exploit")
                    .help("add a KL term (`kl(old.logp, ref.logp)` in the reward or `kl(policy.logp, ref.logp)` in the loss) or calibrate to demonstrations (`calibrate`)"),
            );
        }
    }

    // kl-in-reward-and-loss
    let mut in_reward = None;
    let mut in_loss_kl = None;
    for &node in &in_loss {
        if matches!(&g[node].op, Op::Block { spec, .. } if spec.name == "kl") {
            let (reward, direct) = kl_placement(g, node, loss);
            if reward {
                in_reward.get_or_insert(node);
            }
            if direct {
                in_loss_kl.get_or_insert(node);
            }
        }
    }
    // biased-kl-gradient: only the gradient of a KL minimised in the loss matters.
    for &node in &in_loss {
        let Op::Block { spec, .. } = &g[node].op else { continue };
        if spec.name != "kl" || !kl_placement(g, node, loss).1 {
            continue;
        }
        let Some(params) = out.params.get(&node) else { continue };
        if super::typing::param_is(params, "gradient", "k2") {
            continue;
        }
        let logp_has_grad = g.edges_directed(node, Direction::Incoming).any(|e| {
            e.weight().port == 0 && out.types.get(&e.source()).is_some_and(|t| t.has_grad())
        });
        let why = match params::get(params, "estimator") {
            Some(params::Value::Str(e)) if e == "k1" => {
                "k1's gradient ∇logp is zero in expectation on-policy: it does not pull towards the reference"
            }
            Some(params::Value::Str(e)) if e == "k3" => {
                "k3's gradient (1 − e^{−d})·∇logp is a biased estimate of ∇KL (verl PR #2953)"
            }
            Some(params::Value::Str(e)) if e == "abs" => {
                "|d|'s gradient sign(d)·∇logp is a biased estimate of ∇KL"
            }
            _ => continue,
        };
        if logp_has_grad {
            push(
                diags,
                "biased-kl-gradient",
                Diagnostic::warning("", format!("this KL is minimised through its gradient, and {why}"))
                    .primary(g[node].span, "KL in the loss")
                    .help("keep the estimate but take k2's gradient with `gradient = k2` (verl's `k3+`), use `estimator = k2`, or `kl_unbiased(...)`; where a paper prescribes this estimator, allow the lint with a comment"),
            );
        }
    }

    if let (Some(r), Some(l)) = (in_reward, in_loss_kl) {
        push(
            diags,
            "kl-in-reward-and-loss",
            Diagnostic::warning("", "KL is penalised twice: in the reward and in the loss")
                .primary(g[l].span, "KL added to the loss")
                .secondary(g[r].span, "KL folded into the reward")
                .help("keep one placement: in the reward (k1 on `old.logp`, through the advantage) or in the loss (k3 on `policy.logp`)"),
        );
    }

    // unused-value-head
    for t in stage.train.iter().filter(|t| t.value_head) {
        let reads = g.node_indices().any(|n| match &g[n].op {
            Op::Signal { model: ModelRef::Named(m), signal: Signal::Values } => *m == t.model.name,
            Op::Signal { model: ModelRef::Old, signal: Signal::Values } => {
                stage.trained() == Some(&t.model.name)
            }
            _ => false,
        });
        if !reads {
            push(
                diags,
                "unused-value-head",
                Diagnostic::warning(
                    "",
                    format!("the value head of `{}` is trained but never read", t.model.name),
                )
                .primary(t.span, "trained here")
                .help(format!(
                    "read `{0}.values` (e.g. in `value_loss`), or train just `{0}`",
                    t.model.name
                )),
            );
        }
    }
}

/// Whether a KL node reaches the loss through an advantage/reward input (`reward`) and/or
/// without passing one (`direct`).
fn kl_placement(g: &Graph, kl: NodeIndex, loss: NodeIndex) -> (bool, bool) {
    let (mut reward, mut direct) = (false, false);
    let mut stack = vec![(kl, false)];
    let mut seen = HashSet::new();
    while let Some((n, through)) = stack.pop() {
        if !seen.insert((n, through)) {
            continue;
        }
        if n == loss {
            if through {
                reward = true
            } else {
                direct = true
            }
            continue;
        }
        for e in g.edges_directed(n, Direction::Outgoing) {
            let target = e.target();
            let detached = match &g[target].op {
                Op::Block { spec, .. } => {
                    matches!(
                        spec.inputs.get(e.weight().port).map(|i| i.kind),
                        Some(InputKind::Tensor(_, GradRule::Detached))
                    ) || spec.family == Family::Advantage
                }
                _ => false,
            };
            stack.push((target, through || detached));
        }
    }
    (reward, direct)
}

fn ancestors(g: &Graph, root: NodeIndex) -> Vec<NodeIndex> {
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    let mut out = Vec::new();
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            out.push(n);
            stack.extend(g.neighbors_directed(n, Direction::Incoming));
        }
    }
    out.sort();
    out
}

/// Lints over the whole recipe.
pub(super) fn program_lints(checked: &Checked, diags: &mut Vec<Diagnostic>) {
    let p = &checked.program;
    let mut used: HashSet<String> = HashSet::new();
    for m in &p.models {
        match &m.init {
            ModelInit::Copy(of) | ModelInit::YesNo(of) => {
                used.insert(of.name.clone());
            }
            ModelInit::Builtin { warm_start: Some(ws) } => {
                used.insert(ws.data.clone());
            }
            _ => {}
        }
    }
    for r in &p.rewards {
        match &r.scorer {
            ScorerRef::Model(m) | ScorerRef::Verifier { data: m, .. } => {
                used.insert(m.clone());
            }
            ScorerRef::External { .. } => {}
        }
    }
    let reward_names: Vec<(&str, &ScorerRef)> =
        p.rewards.iter().map(|r| (r.name.name.as_str(), &r.scorer)).collect();
    for (s, cs) in p.stages.iter().zip(&checked.stages) {
        used.extend(s.train.iter().map(|t| t.model.name.clone()));
        if let Some((_, d)) = &s.source {
            used.insert(d.data.clone());
        }
        for n in s.graph.node_indices() {
            match &s.graph[n].op {
                Op::Signal { model: ModelRef::Named(m), .. } | Op::Rewrite { model: m } => {
                    used.insert(m.clone());
                }
                Op::Score(sc) | Op::Scorer(sc) => {
                    match sc {
                        ScorerRef::Model(m) => used.insert(m.clone()),
                        ScorerRef::Verifier { data, .. } => used.insert(data.clone()),
                        ScorerRef::External { reward, .. } => used.insert(reward.clone()),
                    };
                    for (name, r) in &reward_names {
                        if *r == sc {
                            used.insert(name.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(Value::Str(from)) = params::get(&cs.sample, "from") {
            used.insert(from.clone());
        }
    }
    let decls = p
        .data
        .iter()
        .map(|d| (&d.name, "data set"))
        .chain(p.models.iter().map(|m| (&m.name, "model")))
        .chain(p.rewards.iter().map(|r| (&r.name, "reward")));
    for (name, what) in decls {
        if !used.contains(&name.name) && !name.name.starts_with('_') {
            push(
                diags,
                "unused-declaration",
                Diagnostic::warning("", format!("{what} `{}` is never used", name.name))
                    .primary(name.span, "declared here")
                    .help("remove it, or use it in a stage"),
            );
        }
    }
}

/// How the user configured lints on the command line.
#[derive(Debug, Clone)]
pub struct LintConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// `--deny warnings`: every warning becomes an error.
    pub deny_warnings: bool,
}

impl LintConfig {
    /// Every lint at its default level.
    pub fn defaults() -> LintConfig {
        LintConfig { allow: vec![], deny: vec![], deny_warnings: false }
    }

    /// Names given to `--allow`/`--deny` that are not lints.
    pub fn unknown_names(&self) -> Vec<String> {
        self.allow
            .iter()
            .chain(&self.deny)
            .filter(|n| lint(n).is_none() && *n != "warnings")
            .map(|n| match did_you_mean(n, codes::lints().map(|l| l.name)) {
                Some(s) => format!("unknown lint `{n}` (did you mean `{s}`?)"),
                None => format!("unknown lint `{n}`"),
            })
            .collect()
    }
}

/// A suppression comment: `# rlx: allow(a, b)` covering one statement.
#[derive(Debug, Clone)]
pub struct Suppression {
    pub names: Vec<(String, Span)>,
    /// The statement it covers.
    pub covers: Span,
}

/// Applies the configuration and the suppressions to lint diagnostics; others pass unchanged.
pub fn configure(
    diags: Vec<Diagnostic>,
    config: &LintConfig,
    suppressions: &[Suppression],
) -> Vec<Diagnostic> {
    let mut out = Vec::with_capacity(diags.len());
    for s in suppressions {
        for (name, span) in &s.names {
            if lint(name).is_none() {
                let d = Diagnostic::warning(
                    "unknown-lint",
                    format!("unknown lint `{name}` in a suppression comment"),
                )
                .primary(*span, "not a lint name");
                out.push(match did_you_mean(name, codes::lints().map(|l| l.name)) {
                    Some(m) => d.help(format!("did you mean `{m}`?")),
                    None => d.help("`rlx explain` lists the lints"),
                });
            }
        }
    }
    out.extend(apply(diags, config, suppressions));
    out
}

/// [`configure`] without reporting the suppression comments' unknown names: for diagnostics
/// found after the first pass (`rlx lint --target verl`).
pub fn apply(
    diags: Vec<Diagnostic>,
    config: &LintConfig,
    suppressions: &[Suppression],
) -> Vec<Diagnostic> {
    let mut out = Vec::with_capacity(diags.len());
    for mut d in diags {
        if lint(d.code).is_some() {
            if config.allow.iter().any(|a| a == d.code) {
                continue;
            }
            let at = d.primary_span();
            if suppressions.iter().any(|s| {
                s.covers.start <= at.start
                    && at.end <= s.covers.end
                    && s.names.iter().any(|(n, _)| n == d.code)
            }) {
                continue;
            }
            if config.deny.iter().any(|a| a == d.code) {
                d.severity = Severity::Error;
            }
        }
        if config.deny_warnings && d.severity == Severity::Warning {
            d.severity = Severity::Error;
        }
        out.push(d);
    }
    out
}
