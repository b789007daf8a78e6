//! Executor overhead: each recipe's objective, evaluated and back-propagated through `rlx::exec`
//! on a 64 × 512 synthetic batch, against the same objective hand-written in candle
//! (`benches/handwritten.rs`). Runs alternate between the two; the table reports medians and
//! their ratio. Run with `cargo bench --bench objectives` (add `-- B T N` to change the shape and
//! the number of timed runs).

mod handwritten;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rlx::check::lints::LintConfig;
use rlx::exec::{self, Options, synthetic};
use rlx::source::{SourceFile, analyze};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (b, t, runs) = (
        args.first().copied().unwrap_or(64),
        args.get(1).copied().unwrap_or(512),
        args.get(2).copied().unwrap_or(21),
    );
    let device = Device::Cpu;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    // The shipped method recipes (not the peers/ and baselines/ folders).
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rlx"))
        .collect();
    paths.sort();
    println!(
        "executor vs hand-written candle, forward + backward, batch {b} × {t}, median of {runs} runs"
    );
    println!(
        "{:<10} {:>12} {:>14} {:>8} {:>10}",
        "recipe", "executor ms", "hand-written ms", "ratio", "min ratio"
    );
    let mut ratios = Vec::new();
    let mut min_ratios = Vec::new();
    for path in paths {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let src = SourceFile::new(&stem, std::fs::read_to_string(&path).unwrap());
        let checked = analyze(&src, &LintConfig::defaults()).checked.unwrap();
        let index = checked.program.stages.len() - 1;
        let batch = synthetic::batch(&checked, index, b, t, 0, &device).unwrap();
        let grad_inputs: Vec<String> = exec::evaluate(
            &checked,
            index,
            &batch,
            &device,
            Options { grads: true, profile: false },
        )
        .unwrap()
        .grads
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        let executor = || {
            let e = exec::evaluate(
                &checked,
                index,
                &batch,
                &device,
                Options { grads: true, profile: false },
            )
            .unwrap();
            e.loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
        };
        let hand = || {
            let mut inputs: HashMap<String, Tensor> = batch.clone();
            let mut vars = Vec::new();
            for name in &grad_inputs {
                let v = Var::from_tensor(&batch[name]).unwrap();
                inputs.insert(name.clone(), v.as_tensor().clone());
                vars.push(v);
            }
            let loss = handwritten::objective(&stem, &inputs).unwrap();
            let grads = loss.backward().unwrap();
            // Read what the executor reads: the loss and every gradient's finiteness.
            for v in &vars {
                let _ = grads
                    .get(v.as_tensor())
                    .map(|g| g.sum_all().unwrap().to_scalar::<f32>().unwrap());
            }
            loss.to_scalar::<f32>().unwrap()
        };
        let (a, h) = (executor(), hand());
        assert!(
            (a - h).abs() <= 1e-4 * (1.0 + h.abs()),
            "{stem}: executor {a} vs hand-written {h}"
        );
        for _ in 0..3 {
            executor();
            hand();
        }
        let (mut te, mut th) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let s = Instant::now();
            executor();
            te.push(s.elapsed().as_secs_f64() * 1e3);
            let s = Instant::now();
            hand();
            th.push(s.elapsed().as_secs_f64() * 1e3);
        }
        // The minimum is the least noisy estimate of the systematic cost on a shared machine.
        let min = |xs: &[f64]| xs.iter().copied().fold(f64::INFINITY, f64::min);
        let min_ratio = min(&te) / min(&th);
        let (me, mh) = (median(te), median(th));
        ratios.push(me / mh);
        min_ratios.push(min_ratio);
        println!("{stem:<10} {me:>12.3} {mh:>14.3} {:>8.3} {min_ratio:>10.3}", me / mh);
    }
    let geo = |rs: &[f64]| (rs.iter().map(|r| r.ln()).sum::<f64>() / rs.len() as f64).exp();
    println!(
        "geometric mean ratio: {:.3} (medians), {:.3} (minima)",
        geo(&ratios),
        geo(&min_ratios)
    );
}
