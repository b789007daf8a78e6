//! The executor on whole recipes: every recipe's objective evaluates and differentiates on a
//! batch built from the documented input names; bad batches and non-finite values become
//! diagnostics that name the input or the node; `rlx eval` writes what it computed.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rlx::check::Checked;
use rlx::check::lints::LintConfig;
use rlx::exec::{self, Options, synthetic};
use rlx::source::{SourceFile, analyze};

fn check_text(name: &str, text: &str) -> Checked {
    let analysis = analyze(&SourceFile::new(name, text), &LintConfig::defaults());
    assert!(!analysis.has_errors(), "{name}: {:?}", analysis.diagnostics);
    analysis.checked.unwrap()
}

fn recipe(name: &str) -> Checked {
    recipe_at(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes").join(name))
}

fn recipe_at(path: &Path) -> Checked {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    check_text(&name, &std::fs::read_to_string(path).unwrap())
}

fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
}

fn all_finite(t: &Tensor) -> bool {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite())
}

#[test]
fn every_recipe_stage_evaluates_and_differentiates() {
    for path in common::recipe_paths() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let c = recipe_at(&path);
        for index in 0..c.program.stages.len() {
            let stage = &c.program.stages[index].name.name;
            let batch = synthetic::batch(&c, index, 8, 12, 1, &Device::Cpu).unwrap();
            let e = exec::evaluate(
                &c,
                index,
                &batch,
                &Device::Cpu,
                Options { grads: true, profile: false },
            )
            .unwrap_or_else(|d| panic!("{name}/{stage}: {d:?}"));
            assert!(scalar(&e.loss).is_finite(), "{name}/{stage}");
            assert!(!e.grads.is_empty(), "{name}/{stage}: no gradients");
            // Every differentiable input receives a finite gradient, and some of it is non-zero.
            let mut total = 0.0;
            for (input, g) in &e.grads {
                assert!(all_finite(g), "{name}/{stage}: grad.{input}");
                total += g
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
            }
            // verl's pass@k advantage is non-zero only in groups with exactly one best sample,
            // which random 0/1 rewards over 8 samples rarely give: flat is correct there.
            assert!(
                total > 0.0 || name == "grpo_passk.rlx",
                "{name}/{stage}: all gradients are zero"
            );
            // Terms add up to the loss.
            if !e.terms.is_empty() {
                let sum: f32 = e.terms.iter().map(|t| t.sign as f32 * scalar(&t.value)).sum();
                assert!(
                    (sum - scalar(&e.loss)).abs() < 1e-4,
                    "{name}/{stage}: terms {sum} vs loss"
                );
            }
        }
    }
}

#[test]
fn the_policy_gradient_reaches_exactly_the_trained_signals() {
    let c = recipe("ppo.rlx");
    let batch = synthetic::batch(&c, 0, 4, 6, 3, &Device::Cpu).unwrap();
    let e = exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: true, profile: false })
        .unwrap();
    let names: Vec<&str> = e.grads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["policy.values", "policy.logp"]
            .iter()
            .copied()
            .filter(|n| names.contains(n))
            .collect::<Vec<_>>()
    );
    assert!(names.contains(&"policy.logp") && names.contains(&"policy.values"));
    // Gradients vanish on padding.
    let mask = batch["mask"].to_vec2::<f32>().unwrap();
    for (_, g) in &e.grads {
        for (row, m) in g.to_vec2::<f32>().unwrap().iter().zip(&mask) {
            for (x, m) in row.iter().zip(m) {
                assert!(*m != 0.0 || *x == 0.0);
            }
        }
    }
    let bindings: Vec<&str> = e.bindings.iter().map(|(n, _)| n.as_str()).collect();
    for b in ["kl", "r", "adv"] {
        assert!(bindings.contains(&b), "{bindings:?}");
    }
}

/// A tiny hand-written PPO objective in candle, to cross-check the executor numerically.
#[test]
fn executor_matches_a_hand_written_grpo_objective() {
    let c = recipe("grpo.rlx");
    let batch = synthetic::batch(&c, 0, 16, 10, 5, &Device::Cpu).unwrap();
    let e = exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: false, profile: false })
        .unwrap();
    // GRPO: A = group z-score of the verifier reward (unbiased std + 1e-6), spread over tokens;
    // loss = mean over sequences of the token mean of PPO-clip(0.2) + 0.04·k3.
    let f = |k: &str| batch[k].to_dtype(DType::F64).unwrap();
    let (logp, old, refp, mask) = (f("policy.logp"), f("old.logp"), f("ref.logp"), f("mask"));
    let r = f("arith.correct(response)").to_vec1::<f64>().unwrap();
    let groups = batch["group"].to_vec1::<i64>().unwrap();
    let mut adv = vec![0.0; r.len()];
    for g in 0..=*groups.iter().max().unwrap() {
        let idx: Vec<usize> = (0..r.len()).filter(|&i| groups[i] == g).collect();
        let n = idx.len() as f64;
        let mean = idx.iter().map(|&i| r[i]).sum::<f64>() / n;
        let std = (idx.iter().map(|&i| (r[i] - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        for &i in &idx {
            adv[i] = (r[i] - mean) / (std + 1e-6);
        }
    }
    let (lp, ol, rf, m) = (
        logp.to_vec2::<f64>().unwrap(),
        old.to_vec2::<f64>().unwrap(),
        refp.to_vec2::<f64>().unwrap(),
        mask.to_vec2::<f64>().unwrap(),
    );
    let mut total = 0.0;
    for b in 0..lp.len() {
        let (mut s, mut n) = (0.0, 0.0);
        for t in 0..lp[b].len() {
            if m[b][t] == 0.0 {
                continue;
            }
            let ratio = (lp[b][t] - ol[b][t]).exp();
            let pg = (-adv[b] * ratio).max(-adv[b] * ratio.clamp(0.8, 1.2));
            let d = lp[b][t] - rf[b][t];
            s += pg + 0.04 * ((-d).exp() + d - 1.0);
            n += 1.0;
        }
        total += s / n;
    }
    let want = total / lp.len() as f64;
    assert!((scalar(&e.loss) as f64 - want).abs() < 1e-5, "{} vs {want}", scalar(&e.loss));
}

#[test]
fn a_missing_or_misshaped_input_lists_everything_the_stage_reads() {
    let c = recipe("ppo.rlx");
    let mut batch = synthetic::batch(&c, 0, 4, 6, 1, &Device::Cpu).unwrap();
    batch.remove("old.values");
    batch.insert("ref.logp".into(), Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap());
    let d = exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: true, profile: false })
        .unwrap_err();
    assert_eq!(d.code, "invalid-batch");
    assert_eq!(d.message, "the batch lacks 1 input(s) and 1 do not fit");
    let help = d.help.unwrap();
    for line in [
        "policy.logp",
        "policy.values",
        "old.logp",
        "old.values",
        "ref.logp",
        "arith.correct(response)",
        "mask",
    ] {
        assert!(help.contains(line), "{help}");
    }
    assert!(help.contains("old.values") && help.contains("← missing"), "{help}");
    assert!(help.contains("T is 6 elsewhere"), "{help}");
    assert!(help.contains("f32 [B, T]") && help.contains("f32 [B]"), "{help}");
}

#[test]
fn documented_names_describe_every_recipe() {
    // What docs/eval.md documents: names in recipe syntax with dtypes and shapes.
    let reqs = |name: &str, stage: usize| -> Vec<(String, String, String)> {
        exec::requirements(&recipe(name), stage)
            .into_iter()
            .map(|r| (r.name.clone(), r.dtype_text().to_string(), r.shape_text()))
            .collect()
    };
    let grpo = reqs("grpo.rlx", 0);
    assert!(grpo.contains(&("group".into(), "i64".into(), "[B]".into())));
    let vine = reqs("vineppo.rlx", 0);
    assert!(vine.contains(&("step_ids".into(), "i64".into(), "[B, T]".into())));
    assert!(vine.contains(&("vine_values".into(), "f32".into(), "[B, S]".into())));
    let dpo = reqs("dpo.rlx", 0);
    assert!(dpo.contains(&("policy.logp(chosen)".into(), "f32".into(), "[B, T(chosen)]".into())));
    assert!(dpo.contains(&("mask(rejected)".into(), "f32".into(), "[B, T(rejected)]".into())));
    let rlmec = reqs("rlmec.rlx", 1);
    assert!(rlmec.contains(&(
        "tokens(grm.rewrite(response))".into(),
        "i64".into(),
        "[B, T(grm.rewrite(response))]".into()
    )));
    assert!(rlmec.contains(&("grm.keep_prob".into(), "f32".into(), "[B, T]".into())));
    let rcfd = reqs("rcfd.rlx", 1);
    assert!(rcfd.contains(&("rm(demonstration)".into(), "f32".into(), "[B]".into())));
    // RCfD reads no reference model.
    assert!(!rcfd.iter().any(|(n, _, _)| n.starts_with("ref.")));
}

const NAN_RECIPE: &str = r#"
data  arith  = builtin("arith")
model policy = builtin("tiny", warm_start = arith.solutions)

stage rl {
    train   policy
    prompts arith.problems
    sample  { n = 2 }

    let gap = log(exp(policy.logp) - exp(old.logp) + 1)
    loss    = token_mean(gap) + token_mean(pg(policy.logp, spread(group_zscore(arith.correct(response)))))
}
"#;

#[test]
fn a_non_finite_value_names_its_node() {
    let c = check_text("nan.rlx", NAN_RECIPE);
    let mut batch = synthetic::batch(&c, 0, 4, 4, 1, &Device::Cpu).unwrap();
    // exp(0) − exp(3) + 1 < 0 at one token: log of a negative number.
    let mut old = batch["old.logp"].to_vec2::<f32>().unwrap();
    let mut logp = batch["policy.logp"].to_vec2::<f32>().unwrap();
    old[0][0] = 3.0;
    logp[0][0] = 0.0;
    batch.insert("old.logp".into(), Tensor::new(old, &Device::Cpu).unwrap());
    batch.insert("policy.logp".into(), Tensor::new(logp, &Device::Cpu).unwrap());
    let d = exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: true, profile: false })
        .unwrap_err();
    assert_eq!(d.code, "non-finite-value");
    assert_eq!(d.message, "`log` (`gap`) produced NaN");
    let at = d.primary_span();
    assert_eq!(&NAN_RECIPE[at.start..at.end], "log(exp(policy.logp) - exp(old.logp) + 1)");
    // A NaN in the batch itself is reported at the input that carries it.
    let mut batch = synthetic::batch(&c, 0, 4, 4, 1, &Device::Cpu).unwrap();
    let mut r = batch["arith.correct(response)"].to_vec1::<f32>().unwrap();
    r[1] = f32::NAN;
    batch.insert("arith.correct(response)".into(), Tensor::new(r, &Device::Cpu).unwrap());
    let d = exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: true, profile: false })
        .unwrap_err();
    assert_eq!(d.code, "non-finite-value");
    assert!(d.message.starts_with("`arith.correct`"), "{}", d.message);
    // An inf on a real token of a batch input stops evaluation; at padding it is read as 0.
    let c = recipe("ppo.rlx");
    let base = synthetic::batch(&c, 0, 4, 6, 2, &Device::Cpu).unwrap();
    let mask = base["mask"].to_vec2::<f32>().unwrap();
    let (row, pad) = (0..4)
        .find_map(|r| mask[r].iter().position(|m| *m == 0.0).map(|t| (r, t)))
        .expect("a padded position");
    for (col, ok) in [(pad, true), (0, false)] {
        let mut batch = base.clone();
        let mut logp = batch["policy.logp"].to_vec2::<f32>().unwrap();
        logp[row][col] = f32::NEG_INFINITY;
        batch.insert("policy.logp".into(), Tensor::new(logp, &Device::Cpu).unwrap());
        let r =
            exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: true, profile: false });
        match (r, ok) {
            (Ok(e), true) => {
                let loss: f32 = e.loss.to_scalar().unwrap();
                assert!(loss.is_finite());
                assert!(e.grads.iter().all(|(_, g)| {
                    g.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite())
                }));
            }
            (Err(d), false) => {
                assert_eq!(d.code, "non-finite-value");
                assert!(
                    d.message.contains("policy.logp") && d.message.contains("inf"),
                    "{}",
                    d.message
                );
            }
            (r, _) => panic!("inf at column {col}: {:?}", r.map(|e| e.loss)),
        }
    }
}

#[test]
fn a_non_finite_gradient_names_its_input() {
    // sqrt has an infinite derivative at 0, while its value (0) is finite.
    let text = NAN_RECIPE
        .replace("log(exp(policy.logp) - exp(old.logp) + 1)", "sqrt(policy.logp - policy.logp)");
    let c = check_text("grad.rlx", &text);
    let batch = synthetic::batch(&c, 0, 4, 4, 1, &Device::Cpu).unwrap();
    let d = exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: true, profile: false })
        .unwrap_err();
    assert_eq!(d.code, "non-finite-gradient");
    assert!(d.message.contains("`policy.logp`"), "{}", d.message);
}

#[test]
fn rlx_eval_writes_bindings_loss_terms_and_gradients() {
    let dir = std::env::temp_dir().join(format!("rlx-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = recipe("ppo.rlx");
    let batch: HashMap<String, Tensor> = synthetic::batch(&c, 0, 4, 6, 2, &Device::Cpu).unwrap();
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    candle_core::safetensors::save(&batch, &input).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rlx"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let o = run(&[
        "eval",
        "recipes/ppo.rlx",
        "--batch",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("stage `rl`: loss = ") && stdout.contains("value_loss"), "{stdout}");
    let out = candle_core::safetensors::load(&output, &Device::Cpu).unwrap();
    for key in [
        "loss",
        "loss.term1",
        "loss.term2",
        "kl",
        "r",
        "adv",
        "grad.policy.logp",
        "grad.policy.values",
    ] {
        assert!(out.contains_key(key), "missing {key}: {:?}", out.keys().collect::<Vec<_>>());
    }
    assert_eq!(out["grad.policy.logp"].dims(), &[4, 6]);
    // The same evaluation in process gives the same loss.
    let e = exec::evaluate(&c, 0, &batch, &Device::Cpu, Options { grads: false, profile: false })
        .unwrap();
    assert_eq!(scalar(&e.loss), scalar(&out["loss"]));
    // A batch missing inputs: exit 1 and the full list of inputs on stderr.
    let mut partial = batch.clone();
    partial.remove("ref.logp");
    candle_core::safetensors::save(&partial, &input).unwrap();
    let o = run(&["eval", "recipes/ppo.rlx", "--batch", input.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("invalid-batch")
            && stderr.contains("ref.logp")
            && stderr.contains("missing"),
        "{stderr}"
    );
    // `--inputs` lists the names, dtypes and shapes.
    let o = run(&["eval", "recipes/vineppo.rlx", "--inputs"]);
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.contains("vine_values")
            && listing.contains("[B, S]")
            && listing.contains("step_ids"),
        "{listing}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `rlx eval` as a conformance tool: advantages fed by name replace the computation (and what
/// only they needed is not read), an alias writes both names, `--dtype f64` evaluates in
/// float64, and a group block evaluates on the batch's own groups whatever `sample.n` says.
#[test]
fn rlx_eval_takes_bindings_aliases_f64_and_any_groups() {
    let dir = std::env::temp_dir().join(format!("rlx-eval-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rlx"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let recipe = dir.join("given.rlx");
    std::fs::write(
        &recipe,
        r#"data  arith  = builtin("arith")
model policy = builtin("tiny", warm_start = arith.solutions)
stage rl {
    train   policy
    prompts arith.problems
    sample  { n = 1 }
    let adv   = group_zscore(arith.correct(response))
    let alias = adv
    loss      = token_mean(ppo_clip(policy.logp, old.logp, spread(alias), eps = 0.2))
}
"#,
    )
    .unwrap();
    let r = recipe.to_str().unwrap();
    // n = 1 makes `singleton-group` an error for training; eval reads groups from the batch.
    let dev = Device::Cpu;
    let logp = Tensor::new(&[[-1.0f64, -2.0], [-0.5, -3.0]], &dev).unwrap();
    let old = Tensor::new(&[[-1.1f64, -2.0], [-0.5, -2.9]], &dev).unwrap();
    let mask = Tensor::new(&[[1.0f32, 1.0], [1.0, 0.0]], &dev).unwrap();
    let mut batch: HashMap<String, Tensor> = HashMap::new();
    batch.insert("policy.logp".into(), logp.clone());
    batch.insert("old.logp".into(), old.clone());
    batch.insert("mask".into(), mask.clone());
    batch.insert("adv".into(), Tensor::new(&[1.5f64, -0.5], &dev).unwrap());
    let input = dir.join("in.safetensors");
    candle_core::safetensors::save(&batch, &input).unwrap();
    let output = dir.join("out.safetensors");
    let o = run(&[
        "eval",
        r,
        "--batch",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
        "--dtype",
        "f64",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("singleton-group"));
    let out = candle_core::safetensors::load(&output, &dev).unwrap();
    assert_eq!(out["loss"].dtype(), DType::F64);
    // Both names of the aliased binding, with the value given for `adv`.
    assert_eq!(out["alias"].to_vec1::<f64>().unwrap(), vec![1.5, -0.5]);
    assert_eq!(out["adv"].to_vec1::<f64>().unwrap(), vec![1.5, -0.5]);
    // The loss by hand, in f64: ρ = e^{logp − old}; A = [1.5, 1.5 | −0.5]; eps 0.2.
    let rho = [0.1f64.exp(), 1.0, 1.0];
    let adv = [1.5, 1.5, -0.5];
    let per: Vec<f64> =
        rho.iter().zip(adv).map(|(r, a)| (-a * r).max(-a * r.clamp(0.8, 1.2))).collect();
    let want = per.iter().sum::<f64>() / 3.0;
    let got: f64 = out["loss"].to_scalar().unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // The verifier's reward and the group ids were not needed, so not read.
    let o = run(&["eval", r, "--inputs"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("may be given by name"));
}
