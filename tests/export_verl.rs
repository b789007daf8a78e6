//! `rlx export verl` and `rlx lint --target verl`: what exports, what the package holds, and the
//! diagnostics (code, line) for what verl would compute differently. The numbers of the exports
//! are checked against verl itself by tests/verl/run.sh (Python; run by .ci/run).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rlx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlx")).args(args).output().expect("rlx runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlx-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn export(recipe: &str, name: &str) -> (Output, PathBuf) {
    let dir = scratch(name);
    let out = rlx(&["export", "verl", recipe, "--out", dir.to_str().unwrap()]);
    (out, dir)
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The overrides as `key=value` lines.
fn overrides(dir: &Path) -> Vec<String> {
    read(dir, "overrides.yaml")
        .lines()
        .filter_map(|l| l.strip_prefix("- ").map(str::to_string))
        .collect()
}

fn has(o: &[String], line: &str) {
    assert!(o.iter().any(|x| x == line), "missing `{line}` in {o:#?}");
}

/// `(code, severity, line)` of every verl diagnostic `rlx lint --target verl` reports.
fn verl_lint(recipe: &str) -> (bool, Vec<(String, String, u64)>) {
    let out = rlx(&["lint", "--target", "verl", "--format", "json", recipe]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let found = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["code"].as_str().unwrap().starts_with("verl-"))
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_string(),
                d["severity"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
            )
        })
        .collect();
    (out.status.success(), found)
}

#[test]
fn grpo_exports_with_its_settings_and_a_clamp_warning() {
    let (out, dir) = export("recipes/grpo.rlx", "grpo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("verl-kl-clamp"), "{stderr}");
    for f in [
        "rlx_grpo/__init__.py",
        "rlx_grpo/objective.py",
        "rlx_grpo/rlx_blocks.py",
        "rlx_grpo/reward.py",
        "rlx_grpo/verifiers.py",
        "overrides.yaml",
        "launch.sh",
        "pyproject.toml",
        "README.md",
        "prepare_data.py",
        "rlx_export.json",
        "data/train.jsonl",
        "data/test.jsonl",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let o = overrides(&dir);
    for line in [
        "algorithm.adv_estimator=rlx_grpo",
        "algorithm.use_kl_in_reward=false",
        "actor_rollout_ref.actor.policy_loss.loss_mode=rlx_grpo",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_coef=0.04",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.optim.lr=2e-5",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.rollout.temperature=1.0",
        "data.train_batch_size=8",
        "data.max_response_length=64",
        "trainer.total_training_steps=200",
    ] {
        has(&o, line);
    }
    let objective = read(&dir, "rlx_grpo/objective.py");
    assert!(objective.contains("@register_adv_est(NAME)"), "{objective}");
    assert!(objective.contains("@register_policy_loss(NAME)"), "{objective}");
    // One statement per block use, under the recipe line it comes from.
    assert!(
        objective.contains("# grpo.rlx:13  group_zscore(arith.correct(response), eps = 1e-6)"),
        "{objective}"
    );
    assert!(
        objective.contains("singleton=\"zero\""),
        "rlx's singleton rule, not verl's: {objective}"
    );
    let launch = read(&dir, "launch.sh");
    assert!(launch.contains("VERL_USE_EXTERNAL_MODULES=rlx_grpo"), "{launch}");
    assert!(launch.contains("verl.trainer.main_ppo"), "{launch}");
    // The data: prompts with the ground truth arith's verifier needs.
    let first = read(&dir, "data/train.jsonl").lines().next().unwrap().to_string();
    let row: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(row["prompt"].as_str().is_some() && row["ground_truth"].as_str().is_some(), "{row}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ppo_maps_onto_verls_gae_and_critic_with_the_kl_in_the_reward() {
    let (out, dir) = export("recipes/ppo.rlx", "ppo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let o = overrides(&dir);
    for line in [
        "algorithm.adv_estimator=gae",
        "algorithm.gamma=1.0",
        "algorithm.lam=0.95",
        "algorithm.use_kl_in_reward=true",
        "algorithm.kl_penalty=k1",
        "algorithm.kl_ctrl.kl_coef=0.05",
        "actor_rollout_ref.actor.use_kl_loss=false",
        "actor_rollout_ref.actor.ppo_epochs=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=16",
        "critic.cliprange_value=0.2",
        "critic.loss_agg_mode=token-mean",
    ] {
        has(&o, line);
    }
    let objective = read(&dir, "rlx_ppo/objective.py");
    assert!(!objective.contains("@register_adv_est"), "verl's own gae: {objective}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn remax_uses_verls_remax_for_the_greedy_rollout() {
    let (out, dir) = export("recipes/remax.rlx", "remax");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    has(&overrides(&dir), "algorithm.adv_estimator=remax");
    let manifest: serde_json::Value = serde_json::from_str(&read(&dir, "rlx_export.json")).unwrap();
    assert_eq!(manifest["greedy"], "arith.correct(greedy)");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn what_verl_cannot_run_is_an_error_at_its_span_and_nothing_is_written() {
    let (out, dir) = export("recipes/vineppo.rlx", "vineppo");
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.exists(), "a refused export writes nothing");
    let cases: &[(&str, &[(&str, u64)])] = &[
        // VinePPO's Monte-Carlo values need rollouts from every step start.
        ("recipes/vineppo.rlx", &[("verl-engine", 14)]),
        // RLMEC's rewriter and its training stage.
        ("recipes/rlmec.rlx", &[("verl-engine", 26), ("verl-earlier-stage", 26)]),
        // RCfD: the RM is trained by the stage before; its score is a model's.
        ("recipes/rcfd.rlx", &[("verl-earlier-stage", 21), ("verl-reward", 22)]),
        // A preference stage followed by RL (RTO).
        ("recipes/rto.rlx", &[("verl-earlier-stage", 0)]),
        ("recipes/dpo.rlx", &[("verl-stage", 0)]),
        // The KL term aggregated unlike the policy term.
        ("recipes/baselines/ppo_critic.rlx", &[("verl-aggregation", 15)]),
    ];
    for (recipe, want) in cases {
        let (ok, found) = verl_lint(recipe);
        assert!(!ok, "{recipe}: exit 1 on export errors");
        for (code, line) in *want {
            assert!(
                found
                    .iter()
                    .any(|(c, s, l)| c == code && s == "error" && (*line == 0 || l == line)),
                "{recipe}: no error {code} at line {line} in {found:?}"
            );
        }
    }
}

#[test]
fn the_exportable_recipes_lint_clean_for_verl_but_for_the_k3_clamp() {
    for recipe in
        ["recipes/dr_grpo.rlx", "recipes/rloo.rlx", "recipes/reinforce.rlx", "recipes/ppo.rlx"]
    {
        let (ok, found) = verl_lint(recipe);
        assert!(ok && found.is_empty(), "{recipe}: {found:?}");
    }
    let (ok, found) = verl_lint("recipes/grpo.rlx");
    assert!(ok, "a warning does not fail");
    assert_eq!(found, vec![("verl-kl-clamp".to_string(), "warning".to_string(), 14)]);
}

fn temp_recipe(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("rlx-export-{name}-{}.rlx", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

const GRPO_LIKE: &str = r#"recipe g "test"
data  arith  = builtin("arith")
model policy = builtin("tiny")
stage rl {
    train   policy
    prompts arith.problems
    sample  { n = 4, max_tokens = 16 }
    let adv = group_zscore(arith.correct(response))
    KL
    loss    = LOSS
    optim { lr = 1e-5, steps = 2, batch = 8, minibatch = MB }
}
"#;

fn grpo_like(kl: &str, loss: &str, minibatch: &str) -> String {
    GRPO_LIKE.replace("KL", kl).replace("LOSS", loss).replace("MB", minibatch)
}

#[test]
fn a_clamped_or_allowed_k3_exports_without_the_warning() {
    let pg = "token_mean(ppo_clip(policy.logp, old.logp, spread(adv)) + 0.1 * kl)";
    for (name, kl) in [
        ("clamped", "let kl = kl(policy.logp, ref.logp, estimator = k3, clamp = 10)"),
        ("wrapped", "let kl = clamp(kl(policy.logp, ref.logp, estimator = k3), 0, 10)"),
        (
            "allowed",
            "let kl = kl(policy.logp, ref.logp, estimator = k3)  # rlx: allow(verl-kl-clamp)",
        ),
    ] {
        let path = temp_recipe(name, &grpo_like(kl, pg, "8"));
        let (ok, found) = verl_lint(path.to_str().unwrap());
        assert!(ok && found.is_empty(), "{name}: {found:?}");
        let _ = std::fs::remove_file(path);
    }
    // A clamp verl does not apply is an error.
    let path = temp_recipe(
        "clamp5",
        &grpo_like("let kl = kl(policy.logp, ref.logp, estimator = k3, clamp = 5)", pg, "8"),
    );
    let (_, found) = verl_lint(path.to_str().unwrap());
    assert_eq!(found, vec![("verl-kl".to_string(), "error".to_string(), 9)]);
    let _ = std::fs::remove_file(path);
}

#[test]
fn settings_and_aggregations_verl_cannot_express_are_errors() {
    let kl = "let kl = kl(policy.logp, ref.logp, estimator = k1)";
    let cases = [
        // The KL aggregated unlike the policy term: verl has one loss_agg_mode.
        (
            "agg",
            grpo_like(
                kl,
                "token_mean(ppo_clip(policy.logp, old.logp, spread(adv))) + 0.1 * seq_mean_token_sum(kl)",
                "8",
            ),
            "verl-aggregation",
            9,
        ),
        // A minibatch of 6 sequences is not a whole number of prompts of 4 samples.
        (
            "minibatch",
            grpo_like(
                kl,
                "token_mean(ppo_clip(policy.logp, old.logp, spread(adv)) + 0.1 * kl)",
                "6",
            )
            .replace("batch = 8", "batch = 12"),
            "verl-setting",
            11,
        ),
        // Two advantage tensors in one policy loss.
        (
            "two",
            grpo_like(
                "let other = spread(rloo(arith.correct(response)))",
                "token_mean(pg(policy.logp, spread(adv)) + pg(policy.logp, other))",
                "8",
            ),
            "verl-advantage",
            9,
        ),
    ];
    for (name, text, code, line) in cases {
        let path = temp_recipe(name, &text);
        let (ok, found) = verl_lint(path.to_str().unwrap());
        assert!(!ok, "{name}");
        assert!(
            found.iter().any(|(c, s, l)| c == code && s == "error" && *l == line),
            "{name}: {found:?}"
        );
        let _ = std::fs::remove_file(path);
    }
}
