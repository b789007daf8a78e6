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
//!
//! One file per place: `loss`, `advantage`, `reward`, `critic`, `settings`; `graph` holds the
//! planner's queries of the stage graph.

mod advantage;
mod critic;
mod graph;
mod loss;
mod reward;
mod settings;

use crate::blocks::spec::Level;
use crate::check::params::Resolved;
use crate::check::{Checked, CheckedStage};
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::*;

use super::python::{Component, Line};

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
    pub(super) fn of_block(name: &str, params: &[Resolved]) -> Option<AggMode> {
        Some(match name {
            "token_mean" => AggMode::TokenMean,
            "token_sum" => AggMode::TokenSum,
            "seq_mean_token_sum" => AggMode::SeqMeanTokenSum,
            "seq_mean_token_mean" => AggMode::SeqMeanTokenMean,
            "seq_mean_token_sum_norm" => AggMode::SeqMeanTokenSumNorm(
                // Resolved from `sample.max_tokens` where not written; verl exports RL stages only.
                crate::check::params::num(params, "norm"),
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
