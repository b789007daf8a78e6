//! Export by proof: which parts of a checked RL stage verl can run, and how.
//!
//! verl's PPO trainer computes an objective in fixed places: a reward function scores each
//! response (placed on its last token), an optional KL penalty is folded into those token rewards
//! (`algorithm.use_kl_in_reward`), an advantage estimator maps token rewards to advantages
//! (`register_adv_est`), a policy loss maps (old log-probs, log-probs, advantages, mask) to a loss
//! (`register_policy_loss`) aggregated by `agg_loss`, a KL loss to the reference is added
//! (`actor.use_kl_loss`), and a separate critic fits returns. The planner reads the typed graph
//! and assigns every node of the loss to one of those places, or reports, with the node's span,
//! why it has none. Nothing is exported that verl would compute differently.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use crate::blocks::spec::Level;
use crate::check::params::{Resolved, Value};
use crate::check::{Checked, CheckedStage, Ty};
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::*;

use super::python;

/// verl's `loss_agg_mode`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggMode {
    TokenMean,
    TokenSum,
    SeqMeanTokenSum,
    SeqMeanTokenMean,
    /// With verl's `loss_scale_factor`.
    SeqMeanTokenSumNorm(f64),
}

impl AggMode {
    fn of_block(name: &str, params: &[Resolved]) -> Option<AggMode> {
        Some(match name {
            "token_mean" => AggMode::TokenMean,
            "token_sum" => AggMode::TokenSum,
            "seq_mean_token_sum" => AggMode::SeqMeanTokenSum,
            "seq_mean_token_mean" => AggMode::SeqMeanTokenMean,
            "seq_mean_token_sum_norm" => AggMode::SeqMeanTokenSumNorm(
                crate::check::params::get_num(params, "norm").unwrap_or(1.0),
            ),
            _ => return None,
        })
    }

    pub fn verl(self) -> &'static str {
        match self {
            AggMode::TokenMean => "token-mean",
            AggMode::TokenSum => "token-sum",
            AggMode::SeqMeanTokenSum => "seq-mean-token-sum",
            AggMode::SeqMeanTokenMean => "seq-mean-token-mean",
            AggMode::SeqMeanTokenSumNorm(_) => "seq-mean-token-sum-norm",
        }
    }

    pub fn scale_factor(self) -> Option<f64> {
        match self {
            AggMode::SeqMeanTokenSumNorm(n) => Some(n),
            _ => None,
        }
    }
}

/// How the advantages are computed in verl.
#[derive(Debug, Clone, PartialEq)]
pub enum Estimator {
    /// A generated estimator, registered under the export's name.
    Generated,
    /// verl's own `gae` (it alone receives the critic's values): batch-whitened GAE.
    Gae { gamma: f64, lambda: f64 },
    /// verl's own `remax` (the trainer makes the greedy rollout only for it).
    Remax,
}

/// A KL estimate verl computes itself, in the reward or as a loss.
#[derive(Debug, Clone, PartialEq)]
pub struct KlUse {
    pub coef: f64,
    /// verl's name: `k1`, `k2`, `low_var_kl`, `abs`, with `+` for k2's gradient.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Critic {
    /// The value loss's weight in the recipe (verl's critic has its own optimiser).
    pub coef: f64,
    pub clip: Option<f64>,
    pub agg: AggMode,
}

/// One generated statement: the recipe text it comes from, and the Python.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub span: Span,
    pub code: String,
}

/// A reward component the reward function computes (a verifier of a data set).
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// The batch name `rlx eval` reads, e.g. `arith.correct(response)`.
    pub name: String,
    pub data: String,
    pub member: String,
}

/// Everything needed to write the package.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stage: String,
    pub estimator: Estimator,
    /// The advantage estimator's body (for `Estimator::Generated`), reading `reward`, `mask`,
    /// `group`; `adv_result` is the advantages.
    pub adv_lines: Vec<Line>,
    pub adv_result: String,
    /// Whether the estimator's `reward` is per sequence (token rewards summed) or per token.
    pub reward_level: Level,
    pub uses_groups: bool,
    /// The policy loss's body, reading `log_prob`, `old_log_prob`, `advantages`, `mask`;
    /// `loss_result` is the per-token loss matrix.
    pub loss_lines: Vec<Line>,
    pub loss_result: String,
    pub agg: AggMode,
    /// The score: a Python expression over `c[NAME]` for each component, and where it is written.
    pub score: String,
    pub score_span: Span,
    pub components: Vec<Component>,
    /// The greedy baseline's batch name (ReMax).
    pub greedy: Option<String>,
    pub kl_in_reward: Option<KlUse>,
    pub kl_loss: Option<KlUse>,
    pub critic: Option<Critic>,
}

struct Planner<'a> {
    checked: &'a Checked,
    stage: &'a StageIr,
    cs: &'a CheckedStage,
    policy: String,
    diags: Vec<Diagnostic>,
}

/// Plans stage `index` for verl: the plan, or the diagnostics that say why not (warnings may
/// come with a plan).
pub fn plan(checked: &Checked, index: usize) -> (Option<Plan>, Vec<Diagnostic>) {
    let stage = &checked.program.stages[index];
    let mut p = Planner {
        checked,
        stage,
        cs: &checked.stages[index],
        policy: stage.trained().unwrap_or("").to_string(),
        diags: vec![],
    };
    let plan = p.run(index);
    let plan = if p.diags.iter().any(Diagnostic::is_error) { None } else { plan };
    (plan, p.diags)
}

/// The codes of export diagnostics, with what each means (for `rlx lint --target verl`).
pub const CODES: &[(&str, &str)] = &[
    ("verl-stage", "the stage is not an RL stage verl's PPO trainer runs"),
    ("verl-earlier-stage", "the stage uses a model an earlier stage trains"),
    ("verl-engine", "something verl's trainer does not produce: step rollouts, rewrites"),
    ("verl-loss-shape", "the loss is not a weighted sum of aggregated token terms"),
    ("verl-aggregation", "terms aggregated differently where verl uses one mode"),
    ("verl-signal", "a signal verl does not pass to the place that needs it"),
    ("verl-advantage", "the policy loss reads more than one advantage, or one per sequence"),
    ("verl-reward", "a reward verl's reward function and KL penalty cannot express"),
    ("verl-unsupported-block", "a block without a verl export yet"),
    ("verl-kl", "a KL term verl computes differently"),
    ("verl-kl-clamp", "verl clamps k3 into [-10, 10] where the recipe does not"),
    ("verl-setting", "a sampling or optimiser setting verl cannot express"),
    ("verl-critic", "a value loss or GAE verl's critic computes differently"),
];

impl Planner<'_> {
    fn g(&self) -> &Graph {
        &self.stage.graph
    }

    fn err(&mut self, code: &'static str, span: Span, msg: String, label: &str, help: &str) {
        self.diags.push(Diagnostic::error(code, msg).primary(span, label).help(help));
    }

    fn level(&self, n: NodeIndex) -> Option<Level> {
        match self.cs.types.get(&n) {
            Some(Ty::Tensor { level, .. }) => Some(*level),
            _ => None,
        }
    }

    fn block(&self, n: NodeIndex) -> Option<&'static str> {
        match &self.g()[n].op {
            Op::Block { spec, .. } => Some(spec.name),
            _ => None,
        }
    }

    fn params(&self, n: NodeIndex) -> &[Resolved] {
        self.cs.params.get(&n).map_or(&[], |v| v.as_slice())
    }

    fn param(&self, n: NodeIndex, name: &str) -> Option<&Value> {
        crate::check::params::get(self.params(n), name)
    }

    fn ins(&self, n: NodeIndex) -> Vec<NodeIndex> {
        inputs(self.g(), n)
    }

    fn constant(&self, n: NodeIndex) -> Option<f64> {
        match &self.g()[n].op {
            Op::Const(v) => Some(*v),
            Op::Block { spec, .. } if spec.name == "neg" => {
                self.ins(n).first().and_then(|x| self.constant(*x)).map(|v| -v)
            }
            _ => None,
        }
    }

    fn is_signal(&self, n: NodeIndex, model: &ModelRef, signal: Signal) -> bool {
        matches!(&self.g()[n].op, Op::Signal { model: m, signal: s } if m == model && *s == signal)
            && self.text_of(n).as_deref() == Some("response")
    }

    fn text_of(&self, n: NodeIndex) -> Option<String> {
        match self.ins(n).first().map(|t| &self.g()[*t].op) {
            Some(Op::Text(t)) => Some(t.to_string()),
            _ => None,
        }
    }

    /// `x` as Σ cᵢ·termᵢ through `add`, `sub`, `neg` and multiplication or division by constants.
    fn linear(&self, n: NodeIndex, c: f64, out: &mut Vec<(f64, NodeIndex)>) {
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

    fn run(&mut self, index: usize) -> Option<Plan> {
        let stage = self.stage;
        if stage.source_kind() != Some(crate::syntax::ast::SourceKind::Prompts) {
            self.err(
                "verl-stage",
                stage.name.span,
                format!("stage `{}` does not sample prompts: verl's PPO trainer runs RL stages", stage.name.name),
                "not an RL stage",
                "export an RL stage with `--stage NAME` (preference and supervised stages stay in rlx; verl's SFT trainer is separate)",
            );
            return None;
        }
        self.earlier_stages(index);
        self.settings();
        if self.engine_gaps() {
            return None;
        }
        let loss = stage.loss?;
        // The loss: Σ c·aggregate(Σ c'·token term).
        let mut outer = vec![];
        self.linear(loss, 1.0, &mut outer);
        let mut terms: Vec<(f64, AggMode, NodeIndex, NodeIndex)> = vec![];
        for (c, n) in outer {
            if c == 0.0 {
                continue;
            }
            let Some(mode) = self.block(n).and_then(|b| AggMode::of_block(b, self.params(n)))
            else {
                let span = self.g()[n].span;
                self.err(
                    "verl-loss-shape",
                    span,
                    format!("verl's loss is a weighted sum of token terms aggregated by `agg_loss`; this term is `{}`", self.g()[n].op.label()),
                    "not an aggregated token term",
                    "write each term as token_mean, token_sum, seq_mean_token_mean, seq_mean_token_sum or seq_mean_token_sum_norm of a token expression",
                );
                continue;
            };
            let x = self.ins(n)[0];
            let mut inner = vec![];
            self.linear(x, c, &mut inner);
            terms
                .extend(inner.into_iter().filter(|(c, _)| *c != 0.0).map(|(c, t)| (c, mode, t, n)));
        }
        // Sort the terms into KL loss, value loss and policy terms.
        let mut kl_loss = None;
        let mut critic_term = None;
        let mut policy_terms = vec![];
        for (c, mode, t, agg) in terms {
            if let Some(kind) = self.kl_of(t, &ModelRef::Named(self.policy.clone())) {
                if kl_loss.is_some() {
                    let span = self.g()[t].span;
                    self.err(
                        "verl-kl",
                        span,
                        "verl adds one KL loss; this loss has two".into(),
                        "a second KL term",
                        "merge the KL terms into one",
                    );
                }
                let Ok(kind) = kind else {
                    self.kl_mismatch(t);
                    continue;
                };
                self.warn_k3_clamp(t);
                kl_loss = Some((KlUse { coef: c, kind }, mode, t));
            } else if self.block(t) == Some("value_loss") {
                critic_term = Some((c, mode, t));
            } else {
                policy_terms.push((c, mode, t, agg));
            }
        }
        let Some(&(_, agg, _, _)) = policy_terms.first() else {
            if self.diags.iter().any(Diagnostic::is_error) {
                return None;
            }
            self.err(
                "verl-loss-shape",
                stage.loss_span,
                "the loss has no policy term: verl's actor loss is a policy loss plus optional KL"
                    .into(),
                "no term reads the policy's log-probabilities",
                "add a policy-gradient term, e.g. token_mean(ppo_clip(policy.logp, old.logp, adv))",
            );
            return None;
        };
        for &(_, mode, _, n) in &policy_terms[1..] {
            if mode != agg {
                let span = self.g()[n].span;
                self.err(
                    "verl-aggregation",
                    span,
                    format!("verl aggregates the whole policy loss with one `loss_agg_mode`; this term uses `{}`, the first `{}`", mode.verl(), agg.verl()),
                    "aggregated differently",
                    "aggregate every policy term the same way",
                );
            }
        }
        if let Some((_, mode, t)) = &kl_loss
            && *mode != agg
        {
            let span = self.g()[*t].span;
            self.err(
                "verl-aggregation",
                span,
                format!("verl aggregates the KL loss with the actor's `loss_agg_mode` (`{}`); this KL term is aggregated `{}`", agg.verl(), mode.verl()),
                "aggregated differently from the policy term",
                "aggregate the KL term like the policy term (verl has no separate KL aggregation)",
            );
        }
        // The policy loss: one function of log_prob, old_log_prob and one advantage tensor.
        let mut loss_em = python::Emitter::new(self.checked, self.stage, self.cs);
        loss_em.leaf_policy_logp = Some(self.policy.clone());
        let mut frontier: Vec<NodeIndex> = vec![];
        let region = self.loss_region(&policy_terms.iter().map(|t| t.2).collect::<Vec<_>>());
        let mut signals = vec![];
        for &(_, _, t, _) in &policy_terms {
            self.frontier(t, &region, &mut frontier, &mut signals, &mut HashSet::new());
        }
        if !signals.is_empty() {
            for signal in signals {
                let span = self.g()[signal].span;
                let label = self.g()[signal].op.label();
                self.err("verl-signal", span, format!("verl's policy loss receives the policy's and the old log-probabilities and the advantages; not `{label}`"), "not passed to verl's policy loss", "use verl's KL loss for `ref.logp` (kl(policy.logp, ref.logp) as its own term), or fold it into the advantage");
            }
            return None;
        }
        let adv_node = match frontier.as_slice() {
            [a] => *a,
            [] => {
                self.err("verl-advantage", stage.loss_span, "the policy loss reads no advantage: verl's policy loss is driven by `advantages`".into(), "no advantage", "use the advantages in the loss, e.g. ppo_clip(policy.logp, old.logp, spread(adv))");
                return None;
            }
            [a, b, ..] => {
                let (sa, sb) = (self.g()[*a].span, self.g()[*b].span);
                self.diags.push(
                    Diagnostic::error("verl-advantage", "verl passes the policy loss one advantage tensor; this loss reads two values computed without the policy")
                        .primary(sb, "a second advantage-like input")
                        .secondary(sa, "the first")
                        .help("combine them into one advantage before the loss"),
                );
                return None;
            }
        };
        if self.level(adv_node) != Some(Level::Token) {
            let span = self.g()[adv_node].span;
            self.err(
                "verl-advantage",
                span,
                "verl's advantages are per token; the loss reads this value per sequence".into(),
                "one value per sequence",
                "spread it over the tokens with `spread(...)` where the loss reads it",
            );
            return None;
        }
        loss_em.leaf(adv_node, "advantages");
        let mut loss_parts = vec![];
        for &(c, _, t, _) in &policy_terms {
            let v = loss_em.emit(t, &mut self.diags);
            loss_parts.push(python::scaled(c, &v));
        }
        let loss_result = loss_em.bind(
            stage.loss_span,
            if loss_parts.is_empty() { "0.0".into() } else { loss_parts.join(" + ") },
        );
        for signal in loss_em.stray_signals.clone() {
            let span = self.g()[signal].span;
            let label = self.g()[signal].op.label();
            self.err("verl-signal", span, format!("verl's policy loss receives the policy's and the old log-probabilities and the advantages; not `{label}`"), "not passed to verl's policy loss", "move it into the advantage (computed without gradient), or use verl's KL loss for `ref.logp`");
        }

        // The advantages: verl's built-ins where only they get their inputs, else generated.
        let mut adv_em = python::Emitter::new(self.checked, self.stage, self.cs);
        let (estimator, root) = self.estimator(adv_node)?;
        let reward_level = self.level(root).unwrap_or(Level::Seq);
        adv_em.leaf(root, "reward");
        let adv_result = if estimator == Estimator::Generated {
            adv_em.emit(adv_node, &mut self.diags)
        } else {
            String::new()
        };
        for signal in adv_em.stray_signals.clone() {
            let span = self.g()[signal].span;
            let label = self.g()[signal].op.label();
            self.err("verl-signal", span, format!("verl's advantage estimator receives the token rewards, the response mask and the prompt ids; not `{label}`"), "not passed to verl's advantage estimator", "compute advantages from the reward, the groups and the mask");
        }
        let (score, components, kl_in_reward) = self.reward(root)?;
        if estimator == Estimator::Remax && kl_in_reward.is_some() {
            let span = self.g()[root].span;
            self.err("verl-reward", span, "verl's `remax` subtracts the baseline from token returns, so a KL in the reward would vary along the response; rlx's `remax` is per sequence".into(), "KL in ReMax's reward", "put the KL in the loss");
        }
        let greedy = self.greedy_name(adv_node, &estimator);
        let critic = match (critic_term, &estimator) {
            (Some((c, mode, t)), Estimator::Gae { .. }) => {
                self.check_critic(t, adv_node);
                let clip = self.param(t, "clip").and_then(Value::num);
                Some(Critic { coef: c, clip, agg: mode })
            }
            (Some((_, _, t)), _) => {
                let span = self.g()[t].span;
                self.err("verl-critic", span, "verl trains a critic only with its `gae` estimator; this value loss goes with other advantages".into(), "a value loss without GAE", "use gae(..., old.values) whitened over the batch, or drop the value loss");
                None
            }
            (None, Estimator::Gae { .. }) => {
                self.err("verl-critic", stage.loss_span, "verl's `gae` needs a critic: the loss has no value_loss".into(), "no value loss", "add `+ c * token_mean(value_loss(policy.values, old.values, adv + old.values))`");
                None
            }
            (None, _) => None,
        };
        let uses_groups = adv_em.uses_groups;
        Some(Plan {
            stage: stage.name.name.clone(),
            estimator,
            adv_lines: adv_em.lines,
            adv_result,
            reward_level,
            uses_groups,
            loss_lines: loss_em.lines,
            loss_result,
            agg,
            score,
            score_span: self.g()[root].span,
            components,
            greedy,
            kl_in_reward,
            kl_loss: kl_loss.map(|k| k.0),
            critic,
        })
    }

    /// Nodes that depend on the policy's or the old log-probabilities, among the terms' inputs.
    fn loss_region(&self, roots: &[NodeIndex]) -> HashSet<NodeIndex> {
        let mut memo: HashMap<NodeIndex, bool> = HashMap::new();
        let mut region = HashSet::new();
        let mut stack: Vec<NodeIndex> = roots.to_vec();
        let mut seen = HashSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            if self.reads_logp(n, &mut memo) {
                region.insert(n);
                stack.extend(self.ins(n));
            }
        }
        region
    }

    fn reads_logp(&self, n: NodeIndex, memo: &mut HashMap<NodeIndex, bool>) -> bool {
        if let Some(v) = memo.get(&n) {
            return *v;
        }
        // Only the trained model's signals carry the gradient; `old.logp` is a leaf verl passes.
        let own = matches!(&self.g()[n].op, Op::Signal { model: ModelRef::Named(m), .. } if *m == self.policy);
        let v = own || self.ins(n).into_iter().any(|i| self.reads_logp(i, memo));
        memo.insert(n, v);
        v
    }

    /// Inputs of the loss region computed without the policy: the advantage(s).
    fn frontier(
        &self,
        n: NodeIndex,
        region: &HashSet<NodeIndex>,
        out: &mut Vec<NodeIndex>,
        signals: &mut Vec<NodeIndex>,
        seen: &mut HashSet<NodeIndex>,
    ) {
        if !seen.insert(n) {
            return;
        }
        if !region.contains(&n) {
            if matches!(self.g()[n].op, Op::Signal { .. })
                && !self.is_signal(n, &ModelRef::Old, Signal::Logp)
            {
                // A raw signal is not an advantage: the policy loss does not receive it.
                signals.push(n);
                return;
            }
            let trivial = matches!(self.g()[n].op, Op::Const(_) | Op::Text(_))
                || self.constant(n).is_some()
                || self.is_signal(n, &ModelRef::Old, Signal::Logp);
            if !trivial && !out.contains(&n) {
                out.push(n);
            }
            return;
        }
        if matches!(self.g()[n].op, Op::Signal { .. }) {
            return;
        }
        for i in self.ins(n) {
            self.frontier(i, region, out, signals, seen);
        }
    }

    /// Which estimator computes `adv` and which node is the reward it starts from.
    fn estimator(&mut self, adv: NodeIndex) -> Option<(Estimator, NodeIndex)> {
        let ins = self.ins(adv);
        // verl's gae: whiten(gae(r, old.values), scope = batch) with verl's whitening.
        let whitened_gae = self.block(adv) == Some("whiten") && self.block(ins[0]) == Some("gae");
        let gae_anywhere = self.find_block(adv, "gae");
        if let Some(gae) = gae_anywhere {
            if !whitened_gae {
                let span = self.g()[gae].span;
                self.err("verl-critic", span, "verl's `gae` estimator always whitens the advantages over the batch; here GAE is used otherwise".into(), "GAE not whitened over the batch as verl does", "write the loss's advantage as whiten(gae(r, old.values, ...), scope = batch)");
                return None;
            }
            self.check_verl_whiten(adv);
            let gae = ins[0];
            let gae_ins = self.ins(gae);
            if !self.is_signal(gae_ins[1], &ModelRef::Old, Signal::Values) {
                let span = self.g()[gae_ins[1]].span;
                self.err(
                    "verl-critic",
                    span,
                    "verl's GAE reads the critic's values at sampling time, `old.values`".into(),
                    "not old.values",
                    "use old.values",
                );
            }
            if self.param(gae, "holes").and_then(|v| v.str()) != Some("skip") {
                let span = self.g()[gae].span;
                self.err(
                    "verl-critic",
                    span,
                    "verl's GAE carries through masked holes (`holes = skip`)".into(),
                    "holes = zero",
                    "use holes = skip",
                );
            }
            let gamma = self.param(gae, "gamma").and_then(Value::num).unwrap_or(1.0);
            let lambda = self.param(gae, "lambda").and_then(Value::num).unwrap_or(1.0);
            return Some((Estimator::Gae { gamma, lambda }, gae_ins[0]));
        }
        // verl's remax: spread(remax(score(response), score(greedy))).
        if let Some(remax) = self.find_block(adv, "remax") {
            let r = self.ins(remax);
            let strict = self.block(adv) == Some("spread") && ins[0] == remax;
            let same_scorer = match (&self.g()[r[0]].op, &self.g()[r[1]].op) {
                (Op::Score(a), Op::Score(b)) => {
                    a == b
                        && self.text_of(r[0]).as_deref() == Some("response")
                        && self.text_of(r[1]).as_deref() == Some("greedy")
                }
                _ => false,
            };
            if !strict || !same_scorer {
                let span = self.g()[remax].span;
                self.err("verl-reward", span, "verl's `remax` estimator is the only one that gets a greedy rollout, and it is spread(score(response) − score(greedy)) with one reward function".into(), "ReMax in another form", "write the advantage as spread(remax(S(response), S(greedy))) with the same scorer S");
                return None;
            }
            return Some((Estimator::Remax, r[0]));
        }
        let root = self.reward_root(adv)?;
        Some((Estimator::Generated, root))
    }

    fn find_block(&self, n: NodeIndex, name: &str) -> Option<NodeIndex> {
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

    /// verl whitens GAE with `masked_whiten`: unbiased variance over the batch's response tokens,
    /// (v + 1e-8)^-½, mean shifted.
    fn check_verl_whiten(&mut self, w: NodeIndex) {
        let ok = |p: &Planner, name: &str, want: &str| {
            p.param(w, name).map(|v| v.display()).as_deref() == Some(want)
        };
        let scope_ok = ok(self, "scope", "batch")
            || (ok(self, "scope", "minibatch") && self.minibatch_is_batch());
        let same = scope_ok
            && ok(self, "var", "unbiased")
            && ok(self, "shift_mean", "true")
            && ok(self, "mask", "response")
            && ok(self, "floor", "add")
            && self.param(w, "eps").and_then(Value::num) == Some(1e-8);
        if !same {
            let span = self.g()[w].span;
            self.err("verl-critic", span, "verl's `gae` whitens with `masked_whiten`: over the whole batch's response tokens, unbiased variance, eps 1e-8 added".into(), "whitened differently", "use whiten(..., scope = batch) with its defaults");
        }
    }

    fn minibatch_is_batch(&self) -> bool {
        let get = |k| crate::check::params::get_num(&self.cs.optim, k);
        get("minibatch") == get("batch")
    }

    /// The value loss must fit verl's critic: value_loss(policy.values, old.values, A + old.values)
    /// with the same GAE as the advantage.
    fn check_critic(&mut self, t: NodeIndex, adv: NodeIndex) {
        let ins = self.ins(t);
        let gae = self.ins(adv)[0];
        let values_ok =
            self.is_signal(ins[0], &ModelRef::Named(self.policy.clone()), Signal::Values)
                && self.is_signal(ins[1], &ModelRef::Old, Signal::Values);
        let r = ins[2];
        let returns_ok = self.block(r) == Some("add") && {
            let a = self.ins(r);
            (a[0] == gae && self.is_signal(a[1], &ModelRef::Old, Signal::Values))
                || (a[1] == gae && self.is_signal(a[0], &ModelRef::Old, Signal::Values))
        };
        if !values_ok || !returns_ok {
            let span = self.g()[t].span;
            self.err(
                "verl-critic",
                span,
                "verl's critic fits returns = GAE + old values with its own value loss".into(),
                "a different value target",
                "write value_loss(policy.values, old.values, adv + old.values) with the GAE `adv`",
            );
        }
    }

    /// The greedy score's batch name for verl's `remax`.
    fn greedy_name(&self, adv: NodeIndex, estimator: &Estimator) -> Option<String> {
        if *estimator != Estimator::Remax {
            return None;
        }
        let remax = self.ins(adv)[0];
        let b = self.ins(remax)[1];
        crate::exec::source_name(self.stage, b)
    }

    /// The reward the advantage starts from: the one node below `adv` that is a function of
    /// scores and the reward KL only.
    fn reward_root(&mut self, adv: NodeIndex) -> Option<NodeIndex> {
        let mut roots = vec![];
        let mut seen = HashSet::new();
        let mut stack = vec![adv];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            if self.reward_like(n) && !matches!(self.g()[n].op, Op::Const(_)) {
                if !roots.contains(&n) {
                    roots.push(n);
                }
                continue;
            }
            stack.extend(self.ins(n));
        }
        match roots.as_slice() {
            [r] => Some(*r),
            [] => {
                let span = self.g()[adv].span;
                self.err("verl-reward", span, "the advantage reads no reward: verl's estimator starts from the reward function's scores".into(), "no reward", "compute the advantage from a verifier's or reward model's score");
                None
            }
            [a, b, ..] => {
                let (sa, sb) = (self.g()[*a].span, self.g()[*b].span);
                self.diags.push(
                    Diagnostic::error("verl-reward", "verl's estimator receives one token reward tensor; this advantage reads two rewards")
                        .primary(sb, "a second reward")
                        .secondary(sa, "the first")
                        .help("combine the rewards into one `let r = ...` and compute the advantage from it"),
                );
                None
            }
        }
    }

    /// A function of scores, constants and KL(old ‖ ref) only, through maths, `at_end` and
    /// `sum_tokens`.
    fn reward_like(&self, n: NodeIndex) -> bool {
        match &self.g()[n].op {
            Op::Const(_) | Op::Score(_) => true,
            Op::Block { .. } if self.kl_of(n, &ModelRef::Old).is_some() => true,
            Op::Block { spec, .. } => {
                use crate::blocks::spec::Family;
                let shaping = matches!(spec.family, Family::Maths | Family::Shaping)
                    && spec.name != "spread"
                    || spec.name == "sum_tokens";
                shaping && self.ins(n).into_iter().all(|i| self.reward_like(i))
            }
            _ => false,
        }
    }

    /// `kl(M.logp, ref.logp)` (optionally clamped as verl clamps k3) as verl's KL type, or the
    /// diagnostics why verl's differs. None: not a KL of `M`.
    fn kl_of(&self, n: NodeIndex, model: &ModelRef) -> Option<Result<String, ()>> {
        let (kl, outer_clamp) = match self.block(n) {
            Some("kl") => (n, None),
            Some("clamp") if self.block(self.ins(n)[0]) == Some("kl") => {
                let lo = self.param(n, "lo").and_then(Value::num);
                let hi = self.param(n, "hi").and_then(Value::num);
                (self.ins(n)[0], Some((lo, hi)))
            }
            _ => return None,
        };
        let ins = self.ins(kl);
        if !self.is_signal(ins[0], model, Signal::Logp)
            || !self.is_signal(ins[1], &ModelRef::Ref, Signal::Logp)
        {
            return None;
        }
        let est = self.param(kl, "estimator").map(|v| v.display()).unwrap_or_default();
        let base = match est.as_str() {
            "k1" => "k1",
            "k2" | "mse" => "k2",
            "k3" => "low_var_kl",
            "abs" => "abs",
            _ => return Some(Err(())),
        };
        let clamp = self.param(kl, "clamp").and_then(Value::num);
        // verl clamps only k3, into [-10, 10]; k3 ≥ 0, so a lower bound ≤ 0 changes nothing.
        let effective_hi = match (clamp, outer_clamp) {
            (c, None) => c,
            (None, Some((lo, hi))) if lo.is_none_or(|l| l <= 0.0) => hi,
            _ => Some(f64::NAN),
        };
        let matches_verl = match base {
            "low_var_kl" => effective_hi.is_none() || effective_hi == Some(10.0),
            _ => effective_hi.is_none() && outer_clamp.is_none(),
        };
        if !matches_verl {
            return Some(Err(()));
        }
        let straight = self.param(kl, "gradient").map(|v| v.display()).as_deref() == Some("k2");
        let kind = if straight && base != "k2" {
            format!("{}+", if base == "low_var_kl" { "k3" } else { base })
        } else {
            base.to_string()
        };
        Some(Ok(kind))
    }

    /// The reward as verl forms it: a score placed on the last token, minus β·KL(old ‖ ref).
    fn reward(&mut self, root: NodeIndex) -> Option<(String, Vec<Component>, Option<KlUse>)> {
        let level = self.level(root).unwrap_or(Level::Seq);
        let mut terms = vec![];
        self.linear(root, 1.0, &mut terms);
        let mut em = python::Emitter::new(self.checked, self.stage, self.cs);
        em.score_mode = true;
        let mut score_parts = vec![];
        let mut kl: Option<KlUse> = None;
        for (c, t) in terms {
            let (kl_node, seq_sum) = match self.block(t) {
                Some("sum_tokens") => (self.ins(t)[0], true),
                _ => (t, false),
            };
            if let Some(kind) = self.kl_of(kl_node, &ModelRef::Old) {
                let span = self.g()[t].span;
                let fits = (level == Level::Seq) == seq_sum;
                if !fits {
                    self.err("verl-reward", span, "verl folds the KL into each token's reward, and a per-sequence reward is their sum: KL summed over tokens (`sum_tokens`) in a sequence reward, per token in a token reward".into(), "KL at a level verl does not fold", "use sum_tokens(kl(old.logp, ref.logp)) in a sequence reward, or kl(...) with at_end(score) in a token reward");
                    return None;
                }
                let Ok(kind) = kind else {
                    self.kl_mismatch(kl_node);
                    return None;
                };
                if kl.is_some() {
                    self.err(
                        "verl-reward",
                        span,
                        "verl folds one KL into the reward; this reward has two".into(),
                        "a second KL",
                        "merge the KL terms",
                    );
                    return None;
                }
                self.warn_k3_clamp(kl_node);
                kl = Some(KlUse { coef: -c, kind });
                continue;
            }
            let s = match (level, self.block(t)) {
                (Level::Token, Some("at_end")) => self.ins(t)[0],
                (Level::Token, _) => {
                    let span = self.g()[t].span;
                    self.err("verl-reward", span, "verl's reward function gives one score per response, placed on its last token; this token reward is not of that form".into(), "a token reward verl cannot express", "place sequence scores with at_end(...); other token rewards stay in rlx");
                    return None;
                }
                _ => t,
            };
            let v = em.emit(s, &mut self.diags);
            score_parts.push(python::scaled(c, &v));
        }
        for signal in em.stray_signals.clone() {
            let span = self.g()[signal].span;
            let label = self.g()[signal].op.label();
            self.err(
                "verl-reward",
                span,
                format!("verl's reward function sees the response text, not `{label}`"),
                "not available to verl's reward function",
                "compute the reward from verifiers of the response",
            );
        }
        for (scorer, span) in em.model_scores.clone() {
            self.err("verl-reward", span, format!("`{scorer}` is a reward model: verl's custom reward function scores text without a model, and its reward-model worker gives the score alone, not inside an expression"), "a reward model's score", "score with a verifier (e.g. arith.correct), or keep this recipe in rlx");
        }
        for (name, span) in em.unverifiable.clone() {
            self.err("verl-reward", span, format!("`{name}` has no verl reward function: only the built-in `arith` verifier and `jsonl` answers (gsm8k, boxed, exact) are ported"), "no Python verifier", "use a data set whose verifier is ported");
        }
        if score_parts.is_empty() {
            score_parts.push("0.0".into());
        }
        Some((score_parts.join(" + "), em.components.clone(), kl))
    }

    fn kl_mismatch(&mut self, kl: NodeIndex) {
        let span = self.g()[kl].span;
        self.err("verl-kl", span, "verl's KL penalty clamps only k3 (`low_var_kl`), into [-10, 10], and has no other clamp or estimator".into(), "a KL verl computes differently", "drop the clamp (k1, k2, abs) or clamp k3 at 10");
    }

    fn warn_k3_clamp(&mut self, kl: NodeIndex) {
        if self.block(kl) == Some("clamp") {
            // kl_of accepted the outer clamp: its upper bound is verl's 10.
            return;
        }
        let est = self.param(kl, "estimator").map(|v| v.display());
        let clamp = self.param(kl, "clamp").and_then(Value::num);
        if est.as_deref() == Some("k3") && clamp.is_none() {
            let span = self.g()[kl].span;
            self.diags.push(
                Diagnostic::warning("verl-kl-clamp", "verl clamps the k3 estimate into [-10, 10]; this recipe does not clamp it")
                    .primary(span, "unclamped k3")
                    .help("the export equals the recipe wherever k3 ≤ 10 (|log-ratio| below about 2.5 nats); add `clamp = 10` to make them equal everywhere"),
            );
        }
    }

    /// What verl's trainer does not produce at all: extra rollouts from step starts (VinePPO),
    /// rewrites by a generative reward model (RLMEC). True when found (the rest would be noise).
    fn engine_gaps(&mut self) -> bool {
        let g = self.g();
        let mut found = vec![];
        for n in g.node_indices() {
            match &g[n].op {
                Op::Block { spec, .. }
                    if matches!(spec.demand, crate::blocks::spec::Demand::StepRollouts { .. }) =>
                {
                    found.push((g[n].span, format!("`{}` needs extra rollouts from every reasoning-step start (Monte-Carlo values); verl's trainer samples only the responses themselves", spec.name), "extra rollouts verl does not make", "keep this recipe in rlx, or replace the Monte-Carlo values with a critic (gae) or group baselines"));
                }
                Op::Rewrite { model } => {
                    found.push((g[n].span, format!("`{model}.rewrite(...)` asks a generative reward model to rewrite each response; verl has no rewrite pass between rollout and reward"), "a rewrite verl does not make", "keep this recipe in rlx (verl would need a custom reward loop that rewrites and aligns tokens)"));
                }
                Op::Signal { signal: Signal::KeepProb, .. } => {
                    found.push((g[n].span, "`keep_prob` needs the rewriter's token probabilities; verl's workers compute log-probabilities of the policy and the reference only".into(), "a signal verl does not compute", "keep this recipe in rlx"));
                }
                _ => {}
            }
        }
        found.sort_by_key(|f| f.0.start);
        let any = !found.is_empty();
        for (span, msg, label, help) in found {
            self.err("verl-engine", span, msg, label, help);
        }
        any
    }

    /// A stage that reads a model an earlier stage trains cannot run alone in verl.
    fn earlier_stages(&mut self, index: usize) {
        let program = &self.checked.program;
        let earlier: Vec<(&str, &str)> = program.stages[..index]
            .iter()
            .flat_map(|s| {
                s.train.iter().map(move |t| (t.model.name.as_str(), s.name.name.as_str()))
            })
            .collect();
        let g = self.g();
        let mut found = vec![];
        for n in g.node_indices() {
            let model = match &g[n].op {
                Op::Score(ScorerRef::Model(m)) => Some(m.clone()),
                Op::Signal { model: ModelRef::Named(m), .. } => Some(m.clone()),
                _ => None,
            };
            if let Some(m) = model
                && let Some((_, s)) = earlier.iter().find(|(t, _)| *t == m)
            {
                found.push((n, m, s.to_string()));
            }
        }
        if let Some((n, m, s)) = found.into_iter().min_by_key(|(n, _, _)| g[*n].span.start) {
            let span = g[n].span;
            self.err(
                "verl-earlier-stage",
                span,
                format!("`{m}` is trained by stage `{s}` first: verl runs one RL stage, not a pipeline"),
                "trained by an earlier stage",
                "train it in rlx, save it as a Hugging Face checkpoint, and declare it with pretrained(...) for the exported stage",
            );
        }
    }

    /// Sampling and optimiser settings verl cannot express.
    fn settings(&mut self) {
        let get = |r: &[Resolved], k| crate::check::params::get(r, k).cloned();
        let span_of = |r: &[Resolved], k| r.iter().find(|x| x.name == k).and_then(|x| x.span);
        let sample = self.cs.sample.clone();
        let optim = self.cs.optim.clone();
        let stage_span = self.stage.name.span;
        if let Some(Value::Str(s)) = get(&sample, "from")
            && s != "old"
        {
            let span = span_of(&sample, "from").unwrap_or(stage_span);
            self.err("verl-setting", span, "verl samples from the trained policy; `from = ref` (offline sampling) has no verl setting".into(), "not the policy", "sample from `old`");
        }
        if get(&sample, "stop").is_some_and(|v| v != Value::Off) {
            let span = span_of(&sample, "stop").unwrap_or(stage_span);
            self.err("verl-setting", span, "a stop string has no key in verl's rollout config".into(), "no verl key", "stop at EOS, or pass the stop string through your engine's kwargs and drop it here");
        }
        if get(&sample, "min_tokens").and_then(|v| v.num()).is_some_and(|v| v > 0.0) {
            let span = span_of(&sample, "min_tokens").unwrap_or(stage_span);
            self.err(
                "verl-setting",
                span,
                "`min_tokens` has no key in verl's rollout config".into(),
                "no verl key",
                "drop it",
            );
        }
        if crate::check::params::get_num(&optim, "warmup").is_some_and(|w| w > 0.0) {
            let span = span_of(&optim, "warmup").unwrap_or(stage_span);
            self.err("verl-setting", span, "verl's warm-up is counted in RL steps and starts at a learning rate of 0; rlx's is counted in optimiser steps and starts at lr/w".into(), "a warm-up verl schedules differently", "drop `warmup` here and set verl's actor_rollout_ref.actor.optim.lr_warmup_steps on the command line");
        }
        let num = |k| crate::check::params::get_num(&sample, k).unwrap_or(1.0);
        let n = num("n");
        for key in ["batch", "minibatch"] {
            let v = crate::check::params::get_num(&optim, key).unwrap_or(n);
            if (v / n).fract() != 0.0 {
                let span = span_of(&optim, key).unwrap_or(stage_span);
                self.err("verl-setting", span, format!("verl counts `{key}` in prompts: {v} sequences is not a whole number of prompts of {n} samples"), "not a multiple of `sample.n`", "make it a multiple of n");
            }
        }
    }
}
