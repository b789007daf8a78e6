//! What a Tinker-protocol server cannot run of a recipe, before any GPU time: `rlx lint
//! --target tinker` and `rlx run --engine tinker` (which refuses on an error). The remote engine
//! runs a stage that samples (`prompts`) and trains one language model whose loss reaches it
//! only through log-probabilities of texts rlx holds (the response, demonstrations, greedy
//! responses) — of the trained model, `old` (its snapshot at sampling) and `ref` (at the stage's
//! start) — with rewards from verifiers and VinePPO's step rollouts. Everything else gets a
//! code saying why, at the node that needs it.

use crate::check::Checked;
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::{ModelRef, Op, ScorerRef, Signal};
use crate::syntax::ast::SourceKind as DataKw;

/// Optimiser settings SkyRL's `optim_step` ignores (it applies only the learning rate).
const SERVER_FIXED: [&str; 4] = ["beta1", "beta2", "weight_decay", "clip_grad"];

/// Diagnostics of every stage of the recipe (`only`: one stage).
pub fn check(checked: &Checked, only: Option<usize>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for index in 0..checked.program.stages.len() {
        if only.is_some_and(|o| o != index) {
            continue;
        }
        check_stage(checked, index, &mut out);
    }
    out
}

fn check_stage(checked: &Checked, index: usize, out: &mut Vec<Diagnostic>) {
    let stage = &checked.program.stages[index];
    let name = &stage.name.name;
    if stage.source_kind() != Some(DataKw::Prompts) {
        out.push(
            Diagnostic::error("tinker-stage", format!("stage `{name}` does not sample: rlx's remote engine runs RL (`prompts`) stages only"))
                .primary(stage.name.span, "a supervised or preference stage")
                .help("run this stage locally (`rlx run`), save its model, and start the remote run from it as `pretrained(\"DIR\")` served by the Tinker server"),
        );
        return;
    }
    let Some(trained) = stage.trained() else { return };
    if stage.train.len() > 1 && stage.train.iter().any(|t| t.model.name != trained) {
        let t = stage.train.iter().find(|t| t.model.name != trained).expect("found above");
        out.push(
            Diagnostic::error(
                "tinker-stage",
                format!("stage `{name}` trains several models; the remote engine trains one"),
            )
            .primary(t.span, "a second trained model")
            .help("train the models in separate stages"),
        );
    }
    // One `tinker-critic` per stage: the trained head, or else the first read of one.
    let mut critic_said = false;
    for t in stage.train.iter().filter(|t| t.value_head).take(1) {
        out.push(critic(t.span, "a value head trained with the policy"));
        critic_said = true;
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
            Op::Signal { signal: Signal::Values, .. } if !critic_said => {
                out.push(critic(node.span, "reads a value head"));
                critic_said = true;
            }
            Op::Signal { signal: Signal::Values, .. } => {}
            Op::Signal { model, signal } => {
                let own = matches!(model, ModelRef::Named(m) if m == trained);
                let known = own || matches!(model, ModelRef::Old | ModelRef::Ref | ModelRef::Rollout);
                if !known || *signal == Signal::KeepProb {
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
            Op::Rewrite { model } => out.push(models(node.span, &format!("{model}.rewrite"))),
            Op::Score(ScorerRef::Model(m)) => out.push(
                Diagnostic::error("tinker-rm-head", format!("`{m}` is a reward model with a score head; no Tinker server trains or serves one"))
                    .primary(node.span, "a learned reward")
                    .help("score with a verifier, or (not yet in rlx) re-parametrise the head as a Yes/No logit difference of a language model"),
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
    let lora = checked
        .decl_params
        .get(trained)
        .is_some_and(|p| crate::check::params::get_num(p, "lora_rank").is_some());
    if !lora {
        let span = stage.train.first().map_or(stage.name.span, |t| t.span);
        out.push(
            Diagnostic::warning("tinker-lora", format!("`{trained}` trains every weight here; Tinker servers train a LoRA adapter (rank {})", super::DEFAULT_RANK))
                .primary(span, "trained as a LoRA adapter on the server")
                .help("give the model `lora_rank = R` to choose the rank, or use a full-weight server (verl_tinker)"),
        );
    }
}

fn critic(span: Span, label: &str) -> Diagnostic {
    Diagnostic::error("tinker-critic", "a value head: rlx's remote engine has no critic (SkyRL's FSDP backend serves one as a separate model; not yet driven by rlx)")
        .primary(span, label)
        .help("use a critic-free advantage (group baselines, `vine_values`), or run the recipe locally")
}

fn models(span: Span, what: &str) -> Diagnostic {
    Diagnostic::error("tinker-models", format!("`{what}` reads a model the remote engine does not hold: it holds the trained model, `old` and `ref`"))
        .primary(span, "another model's output")
        .help("run this recipe locally; rewriters and second models on a server are not yet implemented")
}
