//! `rlx run` end to end: every recipe trains a few steps on a tiny configuration, writes its run
//! directory, and a run killed with SIGKILL continues with `--resume` from its last checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn rlx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlx"));
    // Tests never share a warm-start cache with the user.
    c.env("RLX_CACHE", std::env::temp_dir().join("rlx-test-cache"));
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlx-run-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `--set` overrides that shrink a recipe: one narrow layer, a few warm-start steps, small data
/// sets and batches (whole groups; minibatches that divide them).
fn tiny(recipe: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(recipe).unwrap();
    let mut sets = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["model", name, "=", init, ..]
                if init.starts_with("builtin") || init.starts_with("reward_model") =>
            {
                sets.extend([
                    format!("{name}.width=32"),
                    format!("{name}.heads=2"),
                    format!("{name}.layers=1"),
                ]);
                if init.starts_with("builtin") {
                    sets.push(format!("{name}.warm_steps=3"));
                }
            }
            ["model", name, "=", init, ..] if init.starts_with("pretrained") => {
                // A tiny random checkpoint of the same layout stands in for the user's model.
                let dir = std::env::temp_dir()
                    .join(format!("rlx-run-test-checkpoint-{}", std::process::id()));
                rlx::model::hf_tiny::write(&dir, "qwen2", 1, 0).unwrap();
                sets.push(format!("{name}.path={}", dir.display()));
            }
            ["data", "arith", ..] => sets.push("arith.problems=64".into()),
            ["data", "reviews", ..] => sets.push("reviews.prompts=64".into()),
            _ => {}
        }
    }
    let mut stage = None;
    let mut n = 1;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("stage ") {
            stage = rest.split_whitespace().next().map(String::from);
            n = 1;
        }
        if let Some(at) = line.find("{ n = ") {
            n = line[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .unwrap_or(1);
        }
        if line.trim_start().starts_with("optim") {
            let s = stage.clone().unwrap();
            let batch = 2 * n.max(2);
            sets.push(format!("{s}.optim.batch={batch}"));
            // The optim block may span lines once formatted.
            let block = lines[i..].iter().take_while(|l| !l.trim_start().starts_with('}'));
            if line.contains("minibatch") || block.clone().any(|l| l.contains("minibatch")) {
                sets.push(format!("{s}.optim.minibatch={}", batch / 2));
            }
        }
    }
    sets
}

fn run_tiny(recipe: &Path, out: &Path, steps: usize) -> std::process::Output {
    let mut c = rlx();
    c.arg("run").arg(recipe).arg("--out").arg(out).args([
        "--steps",
        &steps.to_string(),
        "--eval-prompts",
        "4",
        "--quiet",
    ]);
    for s in tiny(recipe) {
        c.args(["--set", &s]);
    }
    c.output().unwrap()
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_recipe_trains_a_few_steps() {
    let recipes = common::recipe_paths();
    assert!(recipes.len() >= 12);
    for recipe in &recipes {
        let name = recipe.file_stem().unwrap().to_string_lossy().to_string();
        let out = scratch(&name);
        let o = run_tiny(recipe, &out, 2);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        for f in
            ["metrics.jsonl", "tokenizer.json", "recipe.rlx", "recipe.resolved.rlx", "state.json"]
        {
            assert!(out.join(f).exists(), "{name}: no {f}");
        }
        let recs = records(&out);
        let steps: Vec<&serde_json::Value> =
            recs.iter().filter(|r| r.get("eval").is_none()).collect();
        assert!(!steps.is_empty(), "{name}: no step records");
        for r in &steps {
            let loss = r["loss"].as_f64().unwrap_or(f64::NAN);
            assert!(loss.is_finite(), "{name}: loss {loss} in {r}");
            // Zero is legitimate (equal rewards on a tiny model); missing or NaN is not.
            assert!(
                r["grad_norm"].as_f64().is_some_and(f64::is_finite),
                "{name}: no gradient norm in {r}"
            );
        }
        // Every RL stage, and every preference stage training a policy (DPO, KTO, …, not a
        // reward model), reports its task metric before and after.
        let evals = recs.iter().filter(|r| r.get("eval").is_some()).count();
        let text = std::fs::read_to_string(recipe).unwrap();
        let pair_stages = text.lines().filter(|l| l.trim_start().starts_with("pairs ")).count();
        let policy_pairs = pair_stages - text.matches("pairwise_rm(").count();
        let evaluated = text.matches("prompts ").count() + policy_pairs;
        assert_eq!(evals, 2 * evaluated, "{name}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn the_same_seed_gives_the_same_metrics() {
    let recipe = Path::new("recipes/grpo.rlx");
    let a = scratch("seed-a");
    let b = scratch("seed-b");
    assert!(run_tiny(recipe, &a, 2).status.success());
    assert!(run_tiny(recipe, &b, 2).status.success());
    let strip = |mut v: Vec<serde_json::Value>| {
        for r in &mut v {
            let o = r.as_object_mut().unwrap();
            o.retain(|k, _| !k.contains("seconds") && !k.contains("per_s") && k != "wall");
        }
        v
    };
    assert_eq!(strip(records(&a)), strip(records(&b)));
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint() {
    // 200 RL steps (the recipe's), tiny model; killed after its checkpoint at step ≥ 40.
    let recipe = Path::new("recipes/reinforce.rlx");
    let out = scratch("resume");
    let mut c = rlx();
    c.arg("run").arg(recipe).arg("--out").arg(&out).args([
        "--steps",
        "400",
        "--eval-prompts",
        "4",
        "--quiet",
    ]);
    for s in tiny(recipe) {
        c.args(["--set", &s]);
    }
    let mut child = c.spawn().unwrap();
    // Wait until at least one checkpoint exists past the start, then SIGKILL mid-run.
    let started = std::time::Instant::now();
    loop {
        let done = std::fs::read_to_string(out.join("state.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        if done >= 40 {
            break;
        }
        assert!(started.elapsed().as_secs() < 300, "no checkpoint after 5 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    let at = state["step"].as_u64().unwrap();
    assert!(at < 200, "killed after the end");
    assert!(
        out.join(state["file"].as_str().unwrap()).exists(),
        "the checkpoint named by state.json is intact"
    );
    let o = rlx().arg("run").arg("--resume").arg(&out).arg("--quiet").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = records(&out);
    let steps: Vec<u64> = recs
        .iter()
        .filter(|r| r.get("eval").is_none())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=200).collect::<Vec<_>>(), "every step exactly once after resuming");
    let _ = std::fs::remove_dir_all(&out);
}

/// Every model of a built-in run is saved in GPT-2's Hugging Face layout — the policy as a
/// `GPT2LMHeadModel`, the reward model as a `GPT2ForSequenceClassification` — and reads back
/// with the trained weights' logits; `rlx generate` samples from the run.
#[test]
fn built_in_models_are_saved_in_gpt2_layout_and_read_back() {
    use candle_core::{DType, Device, Tensor};
    let recipe = Path::new("recipes/rcfd.rlx");
    let out = scratch("gpt2-layout");
    let o = run_tiny(recipe, &out, 2);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(out.join("models").join(name).join("config.json"));
        serde_json::from_str(&text.unwrap()).unwrap()
    };
    assert_eq!(config("policy")["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(config("rm")["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(config("policy")["n_embd"], 32);
    // The trained policy from the run's last checkpoint…
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    let ckpt =
        candle_core::safetensors::load(out.join(state["file"].as_str().unwrap()), &Device::Cpu)
            .unwrap();
    let weights: std::collections::BTreeMap<String, Tensor> = ckpt
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("model.policy.").map(|k| (k.to_string(), v.clone())))
        .collect();
    let cfg = rlx::model::gpt2::parse_config(&config("policy")).unwrap();
    let trained = rlx::model::Transformer::from_tensors(&cfg, &weights).unwrap();
    // …and the saved directory give the same logits.
    let saved = rlx::inspect::load(&out, false, &Device::Cpu).unwrap();
    assert!(saved.dir.ends_with("models/policy"));
    let ids: Vec<u32> = vec![1, 7, 9, 12, 30, 8];
    let layout = rlx::model::Layout::new(&[&ids[..1]], &[&ids[1..]], &Device::Cpu).unwrap();
    let logits = |m: &rlx::model::Transformer| {
        m.logits(&m.hidden_of(&layout, false).unwrap()).unwrap().to_dtype(DType::F32).unwrap()
    };
    let d: f32 = (logits(&trained) - logits(&saved.model))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 1e-5, "saved policy differs by {d}");
    // `rlx score` on a reward model prints its score; `rlx generate` says why it cannot.
    let o =
        rlx().args(["score", "--text", "the food"]).arg(out.join("models/rm")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("score "));
    let o = rlx()
        .args(["generate", "--prompt", "the food"])
        .arg(out.join("models/rm"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a reward model"));
    let o = rlx()
        .args(["generate", "--prompt", "the food", "--n", "2", "--max-tokens", "8", "--seed", "3"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("--- sample").count(), 2, "{text}");
    assert!(text.lines().filter(|l| l.starts_with("the food")).count() == 2, "{text}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A trained Yes/No reward model is saved as a language model with its head beside it
/// (`yes_no.json`), and `rlx score` scores a text with it as the run did: `Σ log p(yes) −
/// Σ log p(no)` after `text question` — here checked against the per-token log-probabilities
/// of the two answered texts, read whole; `--question/--yes/--no` judge with any model.
#[test]
fn a_yes_no_reward_model_is_saved_with_its_head_and_rlx_score_reads_it() {
    use candle_core::Device;
    let recipe = Path::new("recipes/rcfd_yes_no.rlx");
    let out = scratch("yes-no-score");
    let o = run_tiny(recipe, &out, 2);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rm = out.join("models/rm");
    let head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("yes_no.json")).unwrap()).unwrap();
    assert_eq!(
        head,
        serde_json::json!({"question": " the food was", "yes": " great", "no": " bad"})
    );
    assert!(!out.join("models/policy/yes_no.json").exists());
    let score = |dir: &Path, extra: &[&str]| -> f64 {
        let o = rlx()
            .args(["score", "--format", "json", "--text", "the food"])
            .args(extra)
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["score"].as_f64().unwrap()
    };
    let got = score(&rm, &[]);
    // By hand: the answer tokens' log-probabilities in the whole texts.
    let loaded = rlx::inspect::load(&rm, false, &Device::Cpu).unwrap();
    let answered = |answer: &str| -> f64 {
        let ids =
            rlx::inspect::ids_of(&loaded.tok, &format!("the food the food was{answer}"), false)
                .unwrap();
        let n = loaded.tok.encode(answer).len();
        let s = rlx::inspect::score_ids(&loaded, &ids, &Device::Cpu).unwrap();
        s.tokens[ids.len() - n..].iter().map(|t| t.logp.unwrap()).sum()
    };
    let want = answered(" great") - answered(" bad");
    assert!((got - want).abs() < 1e-5, "rlx score {got}, by hand {want}");
    assert!(want.abs() > 1e-3, "a trained head tells the answers apart: {want}");
    // The same head from flags, on the policy (a zero-shot judge), and on the RM itself.
    let flags = ["--question", " the food was", "--yes", " great", "--no", " bad"];
    assert_eq!(score(&rm, &flags), got);
    let judged = score(&out.join("models/policy"), &flags);
    assert!(judged.is_finite() && judged != got, "{judged} vs {got}");
    let o = rlx().args(["score", "--text", "x", "--question", "q"]).arg(&rm).output().unwrap();
    assert!(!o.status.success(), "--question needs --yes and --no");
    let _ = std::fs::remove_dir_all(&out);
}

/// Crash safety: a two-stage run (reward model, then RL) is killed — `abort()`, as `kill -9`
/// leaves a process — at 24 points spread over every fault point it passes (between the steps
/// of each checkpoint write, after each metrics line, while saving models), then resumed. Every
/// time the resumed run ends with the weights, saved models and metrics of an uninterrupted
/// run: no line lost or duplicated.
#[test]
fn runs_killed_anywhere_resume_to_the_uninterrupted_result() {
    let recipe = Path::new("recipes/rcfd.rlx");
    let start = |out: &Path, extra: &[&str]| {
        let mut c = rlx();
        c.arg("run").arg(recipe).arg("--out").arg(out);
        c.args(["--steps", "4", "--eval-prompts", "4", "--quiet"]).args(extra);
        for s in tiny(recipe) {
            c.args(["--set", &s]);
        }
        c
    };
    let strip = |mut v: Vec<serde_json::Value>| {
        for r in &mut v {
            let o = r.as_object_mut().unwrap();
            o.retain(|k, _| !k.contains("seconds") && !k.contains("per_s") && k != "wall");
        }
        v
    };
    let finals = |dir: &Path| {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap())
                .unwrap();
        let ckpt = std::fs::read(dir.join(state["file"].as_str().unwrap())).unwrap();
        let policy = std::fs::read(dir.join("models/policy/model.safetensors")).unwrap();
        let rm = std::fs::read(dir.join("models/rm/model.safetensors")).unwrap();
        (state["stage"].clone(), ckpt, policy, rm, strip(records(dir)))
    };
    let reference = scratch("fault-reference");
    let count = reference.with_extension("count");
    let o = start(&reference, &[]).env("RLX_FAULT_COUNT", &count).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let points: u64 = std::fs::read_to_string(&count).unwrap().parse().unwrap();
    assert!(points >= 40, "only {points} fault points");
    let expected = finals(&reference);
    let kills: Vec<u64> = (0..24u64).map(|i| 1 + (i * (points - 1)) / 23).collect();
    for at in kills {
        let out = scratch(&format!("fault-{at}"));
        let o = start(&out, &[]).env("RLX_FAULT_AT", at.to_string()).output().unwrap();
        assert!(!o.status.success(), "point {at}: the run was not killed");
        // With a checkpoint the run resumes; killed before its first one it starts again.
        let o = if out.join("state.json").exists() {
            rlx().arg("run").arg("--resume").arg(&out).arg("--quiet").output().unwrap()
        } else {
            start(&out, &["--force"]).output().unwrap()
        };
        assert!(o.status.success(), "point {at}: {}", String::from_utf8_lossy(&o.stderr));
        let got = finals(&out);
        assert_eq!(got.0, expected.0, "point {at}: final stage");
        assert!(got.1 == expected.1, "point {at}: the final checkpoint differs");
        assert!(got.2 == expected.2 && got.3 == expected.3, "point {at}: saved models differ");
        assert_eq!(got.4, expected.4, "point {at}: metrics differ");
        let _ = std::fs::remove_dir_all(&out);
    }
    let _ = std::fs::remove_dir_all(&reference);
    let _ = std::fs::remove_file(&count);
}

/// A run directory that holds a run is never silently reused: a new run into it is refused
/// unless `--force`; `--resume` refuses settings other than the run's; a failed run without a
/// checkpoint does not advise resuming.
#[test]
fn run_directories_are_not_overwritten_and_resume_is_strict() {
    let recipe = Path::new("recipes/grpo.rlx");
    let out = scratch("dir-rules");
    assert!(run_tiny(recipe, &out, 2).status.success());
    let again = run_tiny(recipe, &out, 2);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("already holds a run"), "{err}");
    let o = rlx()
        .args(["run", "--quiet", "--resume"])
        .arg(&out)
        .args(["--seed", "7"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--seed 7 vs 0"), "{err}");
    let o =
        rlx().args(["run", "--quiet", "recipes/ppo.rlx", "--resume"]).arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not the one the run started with"), "{err}");
    // The finished run resumes to "nothing left to do", printing the before → after summary.
    let o = rlx().args(["run", "--resume"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("before → after") && stdout.contains("accuracy"), "{stdout}");
    let evals = records(&out).iter().filter(|r| r.get("eval").is_some()).count();
    assert_eq!(evals, 2, "no evaluation line duplicated");
    // --force clears it.
    let mut c = rlx();
    c.arg("run").arg(recipe).arg("--out").arg(&out).args(["--steps", "1", "--quiet", "--force"]);
    for s in tiny(recipe) {
        c.args(["--set", &s]);
    }
    assert!(c.output().unwrap().status.success());
    assert_eq!(records(&out).iter().filter(|r| r.get("eval").is_none()).count(), 1);
    // `--out` naming a file, a directory of something else, and `--steps 0`.
    let file = out.join("metrics.jsonl");
    let o = rlx().arg("run").arg(recipe).arg("--out").arg(&file).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a file, not a directory"));
    let o = rlx().arg("run").arg(recipe).arg("--out").arg("src").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no rlx run"));
    let o = rlx().arg("run").arg(recipe).args(["--steps", "0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least one step"));
    let _ = std::fs::remove_dir_all(&out);
}

/// An absurd learning rate is caught before any weight is saved: the update is refused, the
/// message names the weights (not the batch), and the checkpoint on disk stays finite.
#[test]
fn a_diverging_update_never_reaches_a_checkpoint() {
    let recipe = Path::new("recipes/dpo.rlx");
    let out = scratch("diverge");
    let mut c = rlx();
    c.arg("run").arg(recipe).arg("--out").arg(&out);
    c.args(["--steps", "3", "--eval-prompts", "4", "--quiet", "--set", "dpo.optim.lr=1e30"]);
    for s in tiny(recipe) {
        c.args(["--set", &s]);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    // After one update of 1e30 the weights are finite but huge: the next forward pass
    // overflows, and the message blames the model, not the batch.
    assert!(err.contains("the model `policy` produced non-finite"), "{err}");
    assert!(!err.contains("batch input"), "{err}");
    // The checkpoint on disk (if one was written before the failure) is finite and verified.
    if out.join("state.json").exists() {
        let o = rlx().arg("run").arg("--resume").arg(&out).arg("--quiet").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("cannot resume"), "{err}");
    }
    // An update to inf (lr 1e38 × a gradient-scale step) is refused before it is used.
    let o = {
        let mut c = rlx();
        c.arg("run").arg(recipe).arg("--out").arg(out.with_extension("huge"));
        c.args(["--steps", "3", "--eval-prompts", "4", "--quiet", "--set", "dpo.optim.lr=3e38"]);
        for s in tiny(recipe) {
            c.args(["--set", &s]);
        }
        c.output().unwrap()
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("non-finite-weights") && err.contains("lr 3e38"), "{err}");
    let _ = std::fs::remove_dir_all(out.with_extension("huge"));
    // `lr = inf` is refused by the checker, naming the flag.
    let o = rlx().arg("lint").arg(recipe).output().unwrap();
    assert!(o.status.success());
    let o = rlx()
        .arg("run")
        .arg(recipe)
        .args(["--set", "dpo.optim.lr=inf", "--out"])
        .arg(out.with_extension("inf"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("finite number") && err.contains("--set dpo.optim.lr=inf"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn compare_runs_seeds_reuses_finished_runs_and_writes_a_report_and_a_plot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let (grpo, rloo) = (root.join("grpo.rlx"), root.join("rloo.rlx"));
    let out = scratch("compare");
    let compare = || {
        let mut c = rlx();
        c.arg("compare").arg(&grpo).arg(&rloo).arg("--out").arg(&out);
        c.args(["--seeds", "2", "--steps", "3", "--eval-prompts", "4", "--eval-samples", "2"]);
        // Both recipes have `policy` and stage `rl`: one set of overrides shrinks both alike.
        for s in tiny(&grpo) {
            c.args(["--set", &s]);
        }
        c.output().unwrap()
    };
    let o = compare();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("[4/4] rloo seed 1"), "{err}");
    for run in ["grpo-s0", "grpo-s1", "rloo-s0", "rloo-s1"] {
        assert!(out.join("runs").join(run).join("metrics.jsonl").exists(), "{run}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Stage `rl`") && md.contains("| grpo |") && md.contains("| rloo |"),
        "{md}"
    );
    assert!(md.contains("accuracy") && md.contains("pass@2") && md.contains(" → **"), "{md}");
    assert!(md.contains("over seeds") && md.contains("### grpo → rloo"), "{md}");
    // What produced the numbers, and the verdict against the first recipe, paired by seed.
    assert!(md.starts_with("# rlx compare: `grpo` against `rloo`\n"), "{md}");
    assert!(md.contains("| rlx | 0.1.0 at commit `") && md.contains("| CPU | "), "{md}");
    assert!(md.contains("| instruction sets | ") && md.contains("| threads | "), "{md}");
    assert!(md.contains("## Verdict") && md.contains("| `rloo` | accuracy | "), "{md}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let after = &report["stages"][0]["rows"][1]["metrics"]["accuracy"]["after"];
    assert!(after["mean"].as_f64().is_some_and(|m| (0.0..=1.0).contains(&m)), "{report:#}");
    assert_eq!(report["training"][0]["runs"], 2);
    assert_eq!(report["verdict"]["pairs"][0]["seeds"], 2, "{report:#}");
    assert!(report["provenance"]["cpu"]["model"].as_str().is_some_and(|m| !m.is_empty()));
    // Every run records the commit that made it.
    let commits = report["provenance"]["run_commits"].as_object().unwrap();
    assert_eq!(commits.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 4, "{commits:?}");
    assert!(!commits.contains_key("unknown"), "{commits:?}");
    let svg = std::fs::read_to_string(out.join("plot.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("reward") && svg.contains("grpo"),
        "{svg:.300}"
    );
    // A mean line per recipe and panel, each with many points.
    let long_paths = svg.matches("<polyline").filter(|_| true).count();
    assert!(long_paths >= 2, "{long_paths} lines in\n{svg:.2000}");

    // A second compare reuses every finished run and rewrites the same report.
    let o = compare();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.matches("reused").count() == 4, "{err}");
    // (Its date aside: the two compares may straddle midnight.)
    let undated = |md: &str| md.lines().filter(|l| !l.starts_with("| date |")).collect::<String>();
    assert_eq!(undated(&std::fs::read_to_string(out.join("report.md")).unwrap()), undated(&md));

    // `rlx plot` overlays the runs from the compare's `runs/` directory.
    let svg_path = out.join("curves.svg");
    let o = rlx()
        .arg("plot")
        .arg(out.join("runs"))
        .args(["--metric", "reward", "--metric", "accuracy", "--out"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("accuracy") && svg.contains("rloo"), "{svg:.300}");
    // A PNG is the same plot rasterised with the system's fonts; other names are refused.
    let o = rlx()
        .arg("plot")
        .arg(out.join("runs"))
        .arg("--out")
        .arg(out.join("x.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(out.join("x.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} bytes", png.len());
    let o = rlx()
        .arg("plot")
        .arg(out.join("runs"))
        .arg("--out")
        .arg(out.join("x.pdf"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`.svg` or `.png`"));
    let o = rlx()
        .arg("plot")
        .arg(out.join("runs"))
        .args(["--metric", "nope", "--out"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("no run has values of `nope`"));
    let _ = std::fs::remove_dir_all(&out);
}

/// `rlx values` scores a finished run's value head and a Monte-Carlo estimate against
/// many-rollout reference values of its step starts.
#[test]
fn values_probe_scores_the_critic_and_monte_carlo_estimates_of_a_run() {
    let recipe = Path::new("recipes/baselines/ppo_critic.rlx");
    let out = scratch("values");
    let o = run_tiny(recipe, &out, 2);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let probe = |extra: &[&str]| {
        rlx()
            .arg("values")
            .arg(&out)
            .args(["--prompts", "3", "--samples", "2", "--truth", "4"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = probe(&["--k", "2", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["prompts"].as_u64(), r["samples"].as_u64()), (Some(3), Some(2)));
    assert_eq!(r["truth_rollouts"], 4);
    // Every response has at least the state after its prompt.
    assert!(r["states"].as_u64().unwrap() >= 6, "{r:#}");
    let names: Vec<&str> =
        r["estimators"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["critic (value head)", "monte-carlo, k = 2"], "{r:#}");
    for e in r["estimators"].as_array().unwrap() {
        let mse = e["mse"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&mse), "{e}");
    }
    // The human table names both estimators; bad arguments and non-runs are errors.
    let o = probe(&[]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("critic (value head)") && table.contains("k = 9"), "{table}");
    let o = probe(&["--truth", "1"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--truth"));
    let o = rlx().args(["values", "recipes"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not a run directory"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// grpo.rlx with its model and batch at their real sizes (the built-in tiny preset, 64 responses
/// a step: the norm and bias gradients and the gradient norm are summed on the thread pool,
/// which the width-32 models of the other tests never reach; at a quarter of the batch two
/// 2-thread runs happened to agree even with the old reductions), with a short warm start and a
/// small data set so the test stays quick.
fn full_size_grpo(out: &Path, threads: &str) -> Command {
    let mut c = rlx();
    c.env("RAYON_NUM_THREADS", threads);
    c.arg("run").arg("recipes/grpo.rlx").arg("--out").arg(out);
    c.args(["--steps", "3", "--eval-prompts", "4", "--quiet"]);
    c.args(["--set", "policy.warm_steps=10", "--set", "arith.problems=256"]);
    c
}

/// What must be bit-identical between two runs: the metrics without timings, the checkpoint
/// named by state.json and the saved policy.
fn run_result(dir: &Path) -> (Vec<serde_json::Value>, Vec<u8>, Vec<u8>) {
    let mut recs = records(dir);
    for r in &mut recs {
        let o = r.as_object_mut().unwrap();
        o.retain(|k, _| !k.contains("seconds") && !k.contains("per_s") && k != "wall");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let ckpt = std::fs::read(dir.join(state["file"].as_str().unwrap())).unwrap();
    let policy = std::fs::read(dir.join("models/policy/model.safetensors")).unwrap();
    (recs, ckpt, policy)
}

/// Same seed, same binary, grpo.rlx's real model size: two runs on two threads are bit-identical
/// (every reduction sums its parts in a fixed order; rayon's `reduce`/`sum` combined them as work
/// stealing split them, and runs differed from the first optimiser step), and so is a run on one
/// thread; a run killed mid-way (SIGKILL-like abort at a fault point) and resumed ends with the
/// uninterrupted run's checkpoint, weights and metrics.
#[test]
fn same_seed_runs_are_bit_identical_at_the_recipes_model_size() {
    let a = scratch("bits-a");
    let b = scratch("bits-b");
    let one = scratch("bits-one");
    let count = a.with_extension("count");
    let o = full_size_grpo(&a, "2").env("RLX_FAULT_COUNT", &count).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = run_result(&a);
    let steps = reference.0.iter().filter(|r| r.get("eval").is_none()).count();
    assert_eq!(steps, 3, "three RL steps recorded");
    let o = full_size_grpo(&b, "2").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = run_result(&b);
    assert_eq!(again.0, reference.0, "two threads, twice: metrics differ");
    assert!(again.1 == reference.1, "two threads, twice: checkpoints differ");
    assert!(again.2 == reference.2, "two threads, twice: saved policies differ");
    let o = full_size_grpo(&one, "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let single = run_result(&one);
    assert_eq!(single.0, reference.0, "one thread against two: metrics differ");
    assert!(single.2 == reference.2, "one thread against two: saved policies differ");

    // Killed two thirds through the run's fault points (inside the RL steps, between a
    // checkpoint's writes or after a metrics line), then resumed.
    let points: u64 = std::fs::read_to_string(&count).unwrap().parse().unwrap();
    let at = (2 * points) / 3;
    let out = scratch(&format!("bits-kill-{at}"));
    let o = full_size_grpo(&out, "2").env("RLX_FAULT_AT", at.to_string()).output().unwrap();
    assert!(!o.status.success(), "point {at} of {points}: the run was not killed");
    assert!(out.join("state.json").exists(), "point {at}: killed before any checkpoint");
    let o = rlx()
        .env("RAYON_NUM_THREADS", "2")
        .arg("run")
        .arg("--resume")
        .arg(&out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(o.status.success(), "point {at}: {}", String::from_utf8_lossy(&o.stderr));
    let resumed = run_result(&out);
    assert_eq!(resumed.0, reference.0, "point {at}: metrics differ after resuming");
    assert!(resumed.1 == reference.1, "point {at}: the final checkpoint differs");
    assert!(resumed.2 == reference.2, "point {at}: the saved policy differs");
    let _ = std::fs::remove_dir_all(&out);
    for d in [&a, &b, &one] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_file(&count);
}
