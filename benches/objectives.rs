//! Executor overhead: each recipe's objective, evaluated and back-propagated through `rlx::exec`
//! on a 64 × 512 synthetic batch, against the same objective hand-written in candle
//! (`benches/handwritten.rs`). Runs alternate between the two; the table reports medians and
//! their ratios. The hand-written side runs twice: with rlx's fused clamp/max/min kernels (so the
//! ratio is the executor's own cost) and with candle's composed ops. Run with `cargo bench --bench objectives` (add `-- B T N` to change the shape and
//! the number of timed runs, and a recipe name to measure only the recipes it names).

mod handwritten;

// The allocator the `rlx` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<usize> = raw.iter().filter_map(|a| a.parse().ok()).collect();
    // A word that is not a number (and not cargo's `--bench`) keeps only recipes named with it.
    let only: Vec<&String> =
        raw.iter().filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-')).collect();
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
        .filter(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy();
            only.is_empty() || only.iter().any(|o| stem.contains(o.as_str()))
        })
        .collect();
    paths.sort();
    println!(
        "executor vs hand-written candle, forward + backward, batch {b} × {t}, median of {runs} runs"
    );
    println!(
        "hand-written: with rlx's fused clamp/max/min kernels (the executor's own overhead), and \
         with candle's composed ops"
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "recipe", "executor ms", "same kernels", "candle ops", "overhead", "vs candle"
    );
    let mut ratios = Vec::new();
    let mut candle_ratios = Vec::new();
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
        // Compiled once, as the trainer does; each call validates the batch and evaluates.
        let compiled = exec::Compiled::new(&checked, index);
        let executor = || {
            let e = compiled.run(&batch, &device, Options { grads: true, profile: false }).unwrap();
            e.loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
        };
        let hand = |fused: bool| {
            handwritten::use_fused_kernels(fused);
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
        let (a, h, f) = (executor(), hand(false), hand(true));
        for other in [h, f] {
            assert!(
                (a - other).abs() <= 1e-4 * (1.0 + other.abs()),
                "{stem}: executor {a} vs hand-written {other}"
            );
        }
        for _ in 0..3 {
            executor();
            hand(false);
            hand(true);
        }
        let (mut te, mut tc, mut tf) = (Vec::new(), Vec::new(), Vec::new());
        let time = |f: &dyn Fn() -> f32, into: &mut Vec<f64>| {
            let s = Instant::now();
            f();
            into.push(s.elapsed().as_secs_f64() * 1e3);
        };
        for _ in 0..runs {
            time(&executor, &mut te);
            time(&|| hand(false), &mut tc);
            time(&|| hand(true), &mut tf);
        }
        let (me, mc, mf) = (median(te), median(tc), median(tf));
        ratios.push(me / mf);
        candle_ratios.push(me / mc);
        println!("{stem:<10} {me:>12.3} {mf:>12.3} {mc:>12.3} {:>10.3} {:>10.3}", me / mf, me / mc);
    }
    let geo = |rs: &[f64]| (rs.iter().map(|r| r.ln()).sum::<f64>() / rs.len() as f64).exp();
    println!(
        "geometric mean: executor / same kernels {:.3}, executor / candle ops {:.3}",
        geo(&ratios),
        geo(&candle_ratios)
    );
}
