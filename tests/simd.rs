//! rlx's own CPU kernels are compiled once per instruction set (`model::fastmath::dispatch`),
//! and every copy must compute what the widest one does, bit for bit. `RLX_SIMD=avx2` and
//! `RLX_SIMD=baseline` run the narrower copies on a CPU that has more, so an AVX-512 machine
//! tests the AVX2 + FMA and baseline paths too: every shipped recipe's objective and gradients
//! (`rlx eval --synthetic`), and a short training run's metrics and weights.

use std::path::{Path, PathBuf};
use std::process::Command;

const CAPS: [&str; 3] = ["", "avx2", "baseline"];

fn rlx(cap: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlx"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env("RLX_CACHE", std::env::temp_dir().join(format!("rlx-simd-cache-{cap}")));
    if cap.is_empty() {
        c.env_remove("RLX_SIMD");
    } else {
        c.env("RLX_SIMD", cap);
    }
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlx-simd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn recipes() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rlx"))
            .collect();
    out.sort();
    out
}

#[test]
fn every_kernel_copy_evaluates_every_recipe_to_the_same_bits() {
    let dir = scratch("eval");
    let mut compared = 0;
    for recipe in recipes() {
        let mut outputs = Vec::new();
        for cap in CAPS {
            let out = dir.join(format!(
                "{}-{cap}.safetensors",
                recipe.file_stem().unwrap().to_string_lossy()
            ));
            let o = rlx(cap)
                .arg("eval")
                .arg(&recipe)
                .args(["--synthetic", "8x24", "--seed", "3", "--out"])
                .arg(&out)
                .output()
                .unwrap();
            if !o.status.success() {
                // A recipe `rlx eval` cannot run synthetically fails alike on every copy.
                outputs.push(None);
                continue;
            }
            outputs.push(Some(std::fs::read(&out).unwrap()));
        }
        assert!(
            outputs.iter().all(|o| *o == outputs[0]),
            "{}: the kernel copies disagree",
            recipe.display()
        );
        compared += outputs[0].is_some() as usize;
    }
    assert!(compared > 20, "only {compared} recipes evaluated");
}

#[test]
fn every_kernel_copy_trains_to_the_same_weights() {
    let mut results = Vec::new();
    for cap in CAPS {
        let out = scratch(&format!("run-{cap}"));
        let o = rlx(cap)
            .arg("run")
            .arg("recipes/grpo.rlx")
            .arg("--out")
            .arg(&out)
            .args(["--force", "--steps", "2", "--eval-prompts", "4", "--quiet"])
            .args(["--set", "policy.warm_steps=5", "--set", "arith.problems=64"])
            .args([
                "--set",
                "policy.layers=1",
                "--set",
                "rl.optim.batch=16",
                "--set",
                "rl.optim.minibatch=16",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{cap}: {}", String::from_utf8_lossy(&o.stderr));
        let metrics: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut()
                    .unwrap()
                    .retain(|k, _| !k.contains("seconds") && !k.contains("per_s") && k != "wall");
                v
            })
            .collect();
        let weights = std::fs::read(out.join("models/policy/model.safetensors")).unwrap();
        results.push((metrics, weights));
    }
    for (cap, r) in CAPS.iter().zip(&results).skip(1) {
        assert!(r.0 == results[0].0, "RLX_SIMD={cap}: metrics differ from the widest copy's");
        assert!(r.1 == results[0].1, "RLX_SIMD={cap}: weights differ from the widest copy's");
    }
}
