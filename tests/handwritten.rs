//! The executor agrees with every recipe's objective written directly in candle
//! (`benches/handwritten.rs`), in value and in gradient, on synthetic batches.

mod common;

#[path = "../benches/handwritten.rs"]
mod handwritten;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rlx::check::lints::LintConfig;
use rlx::exec::{self, Options, synthetic};
use rlx::source::{SourceFile, analyze};

#[test]
fn executor_matches_hand_written_objectives() {
    for path in common::recipe_paths() {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let src = SourceFile::new(&stem, std::fs::read_to_string(&path).unwrap());
        let checked = analyze(&src, &LintConfig::defaults()).checked.unwrap();
        let index = checked.program.stages.len() - 1;
        for seed in 0..3 {
            let batch = synthetic::batch(&checked, index, 8, 10, seed, &Device::Cpu).unwrap();
            let e = exec::evaluate(
                &checked,
                index,
                &batch,
                &Device::Cpu,
                Options { grads: true, profile: false },
            )
            .unwrap();
            // The same inputs as variables, through the hand-written objective.
            let mut vars: HashMap<String, Var> = HashMap::new();
            let mut hand_batch = batch.clone();
            for (name, _) in &e.grads {
                let v = Var::from_tensor(&batch[name]).unwrap();
                hand_batch.insert(name.clone(), v.as_tensor().clone());
                vars.insert(name.clone(), v);
            }
            let loss = handwritten::objective(&stem, &hand_batch).unwrap();
            let (a, b) = (scalar(&e.loss), scalar(&loss));
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{stem} (seed {seed}): executor {a} vs hand-written {b}"
            );
            let grads = loss.backward().unwrap();
            for (name, g) in &e.grads {
                // An input the hand-written objective never differentiates has gradient 0.
                let zero = g.zeros_like().unwrap();
                let want = grads.get(vars[name].as_tensor()).unwrap_or(&zero);
                let diff = g
                    .sub(want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-5, "{stem} (seed {seed}): grad.{name} differs by {diff}");
            }
        }
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}
