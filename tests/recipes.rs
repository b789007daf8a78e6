//! Every recipe in `recipes/` lints clean, is canonically formatted, stays short, names its
//! paper, and demands exactly the runtime signals its method needs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use rlx::check::Checked;
use rlx::check::lints::LintConfig;
use rlx::source::{SourceFile, analyze};

fn recipes() -> Vec<PathBuf> {
    common::recipe_paths()
}

fn checked(name: &str) -> Checked {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes").join(name);
    let src = SourceFile::new(name, fs::read_to_string(path).unwrap());
    let analysis = analyze(&src, &LintConfig::defaults());
    assert!(analysis.diagnostics.is_empty(), "{name}: {:?}", analysis.diagnostics);
    analysis.checked.unwrap()
}

#[test]
fn the_required_methods_all_have_recipes() {
    let names: Vec<String> =
        recipes().iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "ppo",
        "grpo",
        "rloo",
        "reinforce",
        "dpo",
        "rcfd",
        "vineppo",
        "rlmec",
        "sppo",
        "rto",
        "sa2c",
    ] {
        assert!(names.iter().any(|n| n == want), "missing recipes/{want}.rlx");
    }
}

#[test]
fn every_recipe_lints_clean_is_formatted_short_and_cited() {
    for path in recipes() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&path).unwrap();
        let src = SourceFile::new(&name, text.clone());
        let analysis =
            // `gsm8k_grpo` names `models/policy`, which the README's `rlx tiny-checkpoint`
            // command creates: its absence is expected here.
            analyze(&src, &LintConfig {
                allow: vec!["missing-checkpoint".into()],
                deny: vec![],
                deny_warnings: true,
            });
        assert!(
            analysis.diagnostics.is_empty(),
            "{name} has findings: {:#?}",
            analysis.diagnostics
        );
        assert_eq!(
            rlx::syntax::format::format(&text).unwrap(),
            text,
            "{name} is not formatted (`rlx fmt`)"
        );
        assert!(text.lines().count() <= 40, "{name} is longer than 40 lines");
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("# ") && first.contains("20"),
            "{name} must open with a comment naming its paper"
        );
    }
}

#[test]
fn plans_demand_only_what_each_method_reads() {
    let rl = |c: &Checked| c.stages.last().unwrap().plan.clone();
    // RCfD: no KL, so no reference model; a reward model on response and demonstration.
    let rcfd = rl(&checked("rcfd.rlx"));
    assert!(rcfd.items.iter().all(|(t, _)| !t.starts_with("forward ref")), "{rcfd:?}");
    assert_eq!(rcfd.get("texts"), Some("demonstration, response"));
    // VinePPO: extra rollouts, no critic.
    let vine = rl(&checked("vineppo.rlx"));
    assert!(vine.get("extra rollouts").unwrap().starts_with("9 per step start"));
    assert_eq!(vine.get("forward policy"), Some("logp with gradient"));
    // PPO: a critic, and the reference for the KL.
    let ppo = rl(&checked("ppo.rlx"));
    assert_eq!(ppo.get("forward policy"), Some("logp with gradient, values with gradient"));
    assert!(ppo.get("forward ref (frozen copy of policy)").is_some());
    // RTO reads the DPO model trained by an earlier stage.
    let rto = rl(&checked("rto.rlx"));
    assert_eq!(rto.get("forward dpo_model"), Some("logp"));
    // ReMax demands a greedy rollout.
    assert_eq!(rl(&checked("remax.rlx")).get("texts"), Some("greedy, response"));
    // RLMEC samples from the reference and runs the rewriter.
    let rlmec = rl(&checked("rlmec.rlx"));
    assert!(rlmec.get("sampling").unwrap().ends_with("from ref"));
    assert_eq!(rlmec.get("forward grm"), Some("keep_prob, rewrite (generation)"));
}

#[test]
fn ppo_to_vineppo_diff_reads_like_the_paper() {
    let d = rlx::diff::diff(&checked("ppo.rlx"), &checked("vineppo.rlx"));
    let text = rlx::diff::render(&d, "ppo.rlx", "vineppo.rlx");
    for want in [
        "no longer trains value_head(policy)", // the critic is gone
        "n 1 → 8, temperature 1 → 0.6",        // 8 samples at T = 0.6
        "lr 1e-5 → 2e-5",
        "kl: estimator k1 → k3",                   // KL estimator
        "kl input `logp`: old.logp → policy.logp", // KL moves into the loss
        "scope batch → minibatch",                 // whitening per minibatch
        "adv = gae(r, old.values",                 // GAE replaced ...
        "to_tokens(step_advantage(arith.correct(response), v), steps)", // ... by MC step advantages
        "value_loss(policy.values",                // the value loss is gone
        "removed:  r = at_end(arith.correct(response)) - 0.05 * kl", // KL leaves the reward
        "v = vine_values(steps, arith.correct, k = 9)",
        "extra rollouts: now needed",
    ] {
        assert!(text.contains(want), "diff lacks {want:?}:\n{text}");
    }
}

#[test]
fn renaming_bindings_and_reformatting_changes_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/ppo.rlx");
    let text = fs::read_to_string(path).unwrap();
    let variant = text
        .replace("let adv", "let advantage")
        .replace("(adv", "(advantage")
        .replace(" adv ", " advantage ")
        .replace("let r ", "let outcome ")
        .replace("gae(r,", "gae(outcome,")
        .replace("    ", "  ")
        .replace("# outcome on the last token", "");
    let a = analyze(&SourceFile::new("a", text), &LintConfig::defaults());
    let b = analyze(&SourceFile::new("b", variant), &LintConfig::defaults());
    assert!(b.diagnostics.is_empty(), "{:?}", b.diagnostics);
    let d = rlx::diff::diff(a.checked.as_ref().unwrap(), b.checked.as_ref().unwrap());
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn resolved_graph_shows_every_default() {
    let c = checked("grpo.rlx");
    let text = rlx::graph_view::text(&c, None, rlx::graph_view::ViewOptions { resolved: true });
    for want in [
        "group_zscore(",
        "scale = std",
        "var = unbiased",
        "eps_high = 0.2",
        "dual_clip = none",
        "mask = response",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(text.contains(
        "optim { lr = 2e-5, steps = 200, epochs = 1, batch = 64, minibatch = 64, clip_grad = 1"
    ));
}
