//! What a Tinker-protocol server cannot run of a recipe, before any GPU time: `rlx lint
//! --target tinker` and `rlx run --engine tinker` (which refuses on an error). The remote engine
//! runs stages — RL, supervised and preference — that train one language model whose loss
//! reaches it only through log-probabilities of texts rlx holds (responses, demonstrations,
//! greedy responses, pairs, rewrites) of the trained model, `old` (its snapshot at sampling),
//! `ref` (at the stage's start) and models earlier stages trained (frozen: log-probabilities,
//! keep-probabilities, greedy rewrites), with rewards from verifiers, external rewards, Yes/No
//! reward models (`yes_no(...)`: log-probabilities of two answers) and VinePPO's step rollouts.
//! Everything else gets a code saying why, at the node that needs it.

use crate::check::Checked;
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::{ModelInit, ModelRef, Op, ScorerRef, Signal};
use crate::syntax::ast::SourceKind as DataKw;

/// Optimiser settings SkyRL's `optim_step` ignores (it applies only the learning rate).
const SERVER_FIXED: [&str; 4] = ["beta1", "beta2", "weight_decay", "clip_grad"];

/// How a recipe's reward model runs on a server.
const YES_NO_HELP: &str = "declare it `yes_no(policy, ...)`: a reward model read as the policy's copy answering yes or no, which a server holds as an adapter (a change of head: `rlx diff` the two recipes, as recipes/rcfd_yes_no.rlx does rcfd.rlx); or score with a verifier or an external reward";

/// Diagnostics of every stage of the recipe (`only`: one stage). `own`: the models a run puts
/// on servers of their own (`--server NAME=URL`), read there through their base model.
pub fn check(checked: &Checked, only: Option<usize>, own: &[&str]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for index in 0..checked.program.stages.len() {
        if only.is_some_and(|o| o != index) {
            continue;
        }
        check_stage(checked, index, own, &mut out);
    }
    out
}

fn check_stage(checked: &Checked, index: usize, own: &[&str], out: &mut Vec<Diagnostic>) {
    let stage = &checked.program.stages[index];
    let name = &stage.name.name;
    let Some(trained) = stage.trained() else { return };
    // Models an earlier stage trained: on the server, frozen, read through sampler snapshots.
    let earlier: Vec<&str> = checked.program.stages[..index]
        .iter()
        .flat_map(|s| s.train.iter().map(|t| t.model.name.as_str()))
        .collect();
    let reward_model = checked.program.models.iter().any(|m| {
        m.name.name == trained
            && matches!(m.init, ModelInit::RewardModel | ModelInit::PretrainedRewardModel)
    });
    if reward_model {
        let span = stage.train.first().map_or(stage.name.span, |t| t.span);
        out.push(
            Diagnostic::error("tinker-rm-head", format!("stage `{name}` trains `{trained}`, a reward model with a score head; no Tinker server trains one"))
                .primary(span, "a score head")
                .help(YES_NO_HELP),
        );
        return;
    }
    let sampling = stage.source_kind() == Some(DataKw::Prompts);
    if !sampling && stage.has_value_head(trained) {
        out.push(
            Diagnostic::error("tinker-critic", "a value head in a stage that does not sample: the remote engine trains a critic only in RL stages")
                .primary(stage.name.span, "a value head in a supervised stage")
                .help("train the value head in the RL stage that reads it, or run the recipe locally"),
        );
    }
    // A model trained only as a critic (`value_head(critic)`) is the server's critic.
    let second = stage
        .train
        .iter()
        .find(|t| t.model.name != trained && !stage.is_critic_only(&t.model.name));
    if let Some(t) = second {
        out.push(
            Diagnostic::error(
                "tinker-stage",
                format!("stage `{name}` trains several models; the remote engine trains one"),
            )
            .primary(t.span, "a second trained model")
            .help("train the models in separate stages"),
        );
    }
    // The trained model's own value head becomes a separate critic on the server: warned. A
    // critic declared as a model of its own is one already.
    for t in stage.train.iter().filter(|t| t.value_head && t.model.name == trained && sampling) {
        out.push(critic(t.span));
    }
    let temperature = crate::train::run::stage_sampling(checked, index).temperature;
    let mut warned_temperature = false;
    for n in stage.graph.node_indices() {
        let node = &stage.graph[n];
        match &node.op {
            Op::Signal { signal: Signal::Entropy | Signal::SumP2, .. } => out.push(
                Diagnostic::error("tinker-logits", format!("`{}` needs the full next-token distribution; Tinker servers return log-probabilities of given tokens only", node.op.label()))
                    .primary(node.span, "reads the logits")
                    .help("drop the term, or estimate it from sampled tokens (`-policy.logp` for entropy)"),
            ),
            Op::Signal { signal: Signal::Values, .. } => {}
            Op::Signal { model, signal } => {
                let is_trained = matches!(model, ModelRef::Named(m) if m == trained);
                // Frozen: trained earlier, or on a server of its own (read through its base).
                let frozen = matches!(model, ModelRef::Named(m) if m != trained
                    && (earlier.contains(&m.as_str()) || own.contains(&m.as_str())));
                let known = is_trained || frozen || matches!(model, ModelRef::Old | ModelRef::Ref | ModelRef::Rollout);
                let readable = match signal {
                    Signal::KeepProb => frozen,
                    _ => true,
                };
                if !known || !readable {
                    out.push(models(node.span, &node.op.label()));
                } else if temperature != 1.0 && !warned_temperature && *model != ModelRef::Rollout {
                    warned_temperature = true;
                    out.push(
                        Diagnostic::warning("tinker-temperature", format!("the server's log-probabilities are at temperature 1; run locally, rlx divides the logits by the sampling temperature {temperature}"))
                            .primary(node.span, "read at temperature 1 on the server")
                            .help("sample at temperature 1 for identical ratios, or accept the difference (verl and TRL divide by the temperature; Tinker does not)"),
                    );
                }
            }
            Op::Rewrite { model } if !earlier.contains(&model.as_str()) => {
                out.push(models(node.span, &format!("{model}.rewrite")))
            }
            // A Yes/No reward model is a language model on the server, read like one.
            Op::Score(ScorerRef::Model(m)) if checked.program.yes_no_decl(m).is_some() => {
                let held = m == trained || earlier.contains(&m.as_str()) || own.contains(&m.as_str());
                if !held {
                    out.push(models(node.span, m));
                }
            }
            Op::Score(ScorerRef::Model(m)) => out.push(
                Diagnostic::error("tinker-rm-head", format!("`{m}` is a reward model with a score head; no Tinker server trains or serves one"))
                    .primary(node.span, "a learned reward")
                    .help(YES_NO_HELP),
            ),
            _ => {}
        }
    }
    if let Some(optim) = &stage.optim {
        for e in optim.entries.iter().filter(|e| SERVER_FIXED.contains(&e.key.name.as_str())) {
            out.push(
                Diagnostic::warning("tinker-optim", format!("`{}` is sent with every optimiser step, but SkyRL's servers apply only the learning rate (hosted Tinker applies it)", e.key.name))
                    .primary(e.span, "may be ignored by the server")
                    .help("on SkyRL, set it in the server's `--backend-config` (trainer.policy.optimizer_config)"),
            );
        }
    }
    // The trained model, and a critic of its own: each an adapter on the server.
    let mut seen: Vec<&str> = Vec::new();
    for t in &stage.train {
        let model = t.model.name.as_str();
        if seen.contains(&model) || (model != trained && !stage.is_critic_only(model)) {
            continue;
        }
        seen.push(model);
        let lora = checked
            .decl_params
            .get(model)
            .is_some_and(|p| crate::check::params::get_num(p, "lora_rank").is_some());
        if !lora {
            out.push(
                Diagnostic::warning("tinker-lora", format!("`{model}` trains every weight here; Tinker servers train a LoRA adapter (rank {})", super::DEFAULT_RANK))
                    .primary(t.span, "trained as a LoRA adapter on the server")
                    .help("give the model `lora_rank = R` to choose the rank, or use a full-weight server (verl_tinker)"),
            );
        }
    }
}

/// A value head on a server is a critic: a network of its own (SkyRL's FSDP backend).
fn critic(span: Span) -> Diagnostic {
    Diagnostic::warning("tinker-critic", "the value head becomes a critic on the server: a separate network over the base model (its own LoRA adapter and value head), not a head on the policy's trunk; only servers with a critic run it (SkyRL's FSDP backend)")
        .primary(span, "a separate critic on the server")
        .help("to run the same method locally and on a server, declare the critic as a model of its own: `model critic = copy(policy)`, `train policy, value_head(critic)`, `critic.values` (as recipes/rto_tinker.rlx); on a server without a critic (SkyRL's JAX or Megatron backends, hosted Tinker, verl_tinker) use a critic-free advantage (group baselines, `vine_values`) or run locally")
}

fn models(span: Span, what: &str) -> Diagnostic {
    Diagnostic::error("tinker-models", format!("`{what}` reads a model the remote engine does not hold: it holds the trained model, `old`, `ref`, and the models earlier stages trained"))
        .primary(span, "another model's output")
        .help("give it a server of its own whose base model is its checkpoint (`--server NAME=URL`), train it in an earlier stage of the recipe (it then lives on the server as an adapter of the same base model), or run the recipe locally")
}
