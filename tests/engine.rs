//! The server backward (`rlx::engine::surrogate`) moves a model exactly as the stage loss would:
//! for every stage of every shipped recipe, a fake server — the reduction of each real server
//! kind, differentiated by candle in f64 — receives the backward inputs built from the
//! executor's ∂L/∂ℓ, and its gradient with respect to the log-probabilities equals ∂L/∂ℓ on
//! every response token. Objectives that couple sequences (DPO, Bradley–Terry, group
//! baselines) are included; that is what makes the per-sequence-mean servers need the
//! importance-sampling form.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rlx::check::lints::LintConfig;
use rlx::engine::surrogate::{
    DatumBackward, LossFn, Reduction, backward_inputs, critic_datum_loss, critic_inputs,
    server_datum_loss,
};
use rlx::exec::{Compiled, Dim, Options, mask_name, requirements};
use rlx::source::{SourceFile, analyze};

fn recipes() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("baselines"), root.join("peers")] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rlx") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One log-probability input of a stage with its gradient, values and mask, all `[B, T]` f64.
struct Input {
    name: String,
    grad: Tensor,
    logp: Tensor,
    mask: Tensor,
}

/// The log-probability inputs that carry gradient (the trained models'), from a synthetic batch.
fn logp_inputs(path: &Path, index: usize) -> Option<Vec<Input>> {
    grad_inputs(path, index, ".logp")
}

/// The inputs named `*{kind}*` that carry gradient, from a synthetic batch.
fn grad_inputs(path: &Path, index: usize, kind: &str) -> Option<Vec<Input>> {
    let text = std::fs::read_to_string(path).unwrap();
    let a = analyze(&SourceFile::new(path.display().to_string(), text), &LintConfig::defaults());
    let checked = a.checked.as_ref()?;
    if index >= checked.program.stages.len() {
        return None;
    }
    let dev = Device::Cpu;
    let batch = rlx::exec::synthetic::batch(checked, index, 8, 10, 7, &dev).ok()?;
    let compiled = Compiled::new(checked, index).with_dtype(DType::F64);
    let eval = compiled.run(&batch, &dev, Options { grads: true, profile: false }).ok()?;
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let mut out = Vec::new();
    for r in requirements(checked, index) {
        if !r.grad || !r.name.contains(kind) {
            continue;
        }
        let text = r.shape.iter().find_map(|d| match d {
            Dim::Tokens(t) => Some(t.clone()),
            _ => None,
        })?;
        let grad = eval.grads.iter().find(|(n, _)| *n == r.name)?.1.clone();
        out.push(Input {
            name: r.name.clone(),
            grad: f64_of(&grad),
            logp: f64_of(&batch[&r.name]),
            mask: f64_of(&batch[&mask_name(&text)]),
        });
    }
    Some(out)
}

/// The fake server: each datum's loss on its masked tokens of a fresh variable ℓ (initialised to
/// the forward's values), reduced as `reduction` says; returns ∂S/∂ℓ per input.
fn server_gradients(
    inputs: &[Input],
    payloads: &[Vec<DatumBackward>],
    reduction: Reduction,
) -> Vec<Tensor> {
    let datums: usize = payloads.iter().map(Vec::len).sum();
    let vars: Vec<Var> = inputs.iter().map(|i| Var::from_tensor(&i.logp).unwrap()).collect();
    let mut total = Tensor::new(0f64, &Device::Cpu).unwrap();
    for ((input, payload), var) in inputs.iter().zip(payloads).zip(&vars) {
        let mask = input.mask.to_vec2::<f64>().unwrap();
        for (row, datum) in payload.iter().enumerate() {
            let live: Vec<u32> =
                (0..mask[row].len()).filter(|&t| mask[row][t] > 0.0).map(|t| t as u32).collect();
            if live.is_empty() {
                continue;
            }
            let idx = Tensor::new(live.as_slice(), &Device::Cpu).unwrap();
            let l = var.as_tensor().get(row).unwrap().index_select(&idx, 0).unwrap();
            let loss = server_datum_loss(datum, &l, reduction).unwrap();
            total = (total + loss).unwrap();
        }
    }
    if reduction == Reduction::PerSequenceMean {
        total = (total / datums as f64).unwrap();
    }
    let grads = total.backward().unwrap();
    vars.iter()
        .map(|v| grads.get(v.as_tensor()).cloned().unwrap_or_else(|| v.zeros_like().unwrap()))
        .collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn a_servers_gradient_equals_the_stage_losss_for_every_recipe_and_reduction() {
    let mut checked_inputs = 0;
    for path in recipes() {
        for index in 0..4 {
            let Some(inputs) = logp_inputs(&path, index) else { continue };
            if inputs.is_empty() {
                continue;
            }
            let datums: usize = inputs.iter().map(|i| i.grad.dim(0).unwrap()).sum();
            for reduction in [Reduction::Sum, Reduction::PerSequenceMean] {
                let payloads: Vec<Vec<DatumBackward>> = inputs
                    .iter()
                    .map(|i| backward_inputs(&i.grad, &i.logp, &i.mask, reduction, datums).unwrap())
                    .collect();
                let got = server_gradients(&inputs, &payloads, reduction);
                for (input, got) in inputs.iter().zip(&got) {
                    // The loss does not read padding, so the server need not see it.
                    let padding = input.grad.mul(&(1.0 - &input.mask).unwrap()).unwrap();
                    assert!(
                        max_abs(&padding) < 1e-12,
                        "{}: {}: gradient at padding",
                        path.display(),
                        input.name
                    );
                    let want = input.grad.mul(&input.mask).unwrap();
                    let scale = max_abs(&want).max(1e-12);
                    let err = max_abs(&(got - &want).unwrap()) / scale;
                    assert!(
                        err < 1e-9,
                        "{} stage {index} {} {reduction:?}: relative error {err:e}",
                        path.display(),
                        input.name
                    );
                    checked_inputs += 1;
                }
            }
        }
    }
    eprintln!("{checked_inputs} (input, reduction) pairs checked");
    assert!(checked_inputs > 40, "only {checked_inputs} inputs checked");
}

/// A value head's values reach a server's critic through `ppo_critic`: for every stage that
/// trains one, the critic loss of the inputs built from the executor's ∂L/∂V — averaged over the
/// step's datums, with the server's value clip or without — has gradient ∂L/∂V on every token.
#[test]
fn a_critics_gradient_equals_the_stage_losss_for_every_recipe_with_a_value_head() {
    let mut checked_inputs = 0;
    for path in recipes() {
        for index in 0..4 {
            let Some(inputs) = grad_inputs(&path, index, ".values") else { continue };
            let datums: usize = inputs.iter().map(|i| i.grad.dim(0).unwrap()).sum();
            for clip in [None, Some(0.2)] {
                let vars: Vec<Var> =
                    inputs.iter().map(|i| Var::from_tensor(&i.logp).unwrap()).collect();
                let mut total = Tensor::new(0f64, &Device::Cpu).unwrap();
                for (input, var) in inputs.iter().zip(&vars) {
                    let data =
                        critic_inputs(&input.grad, &input.logp, &input.mask, datums).unwrap();
                    let mask = input.mask.to_vec2::<f64>().unwrap();
                    for (row, datum) in data.iter().enumerate() {
                        let live: Vec<u32> = (0..mask[row].len())
                            .filter(|&t| mask[row][t] > 0.0)
                            .map(|t| t as u32)
                            .collect();
                        if live.is_empty() {
                            continue;
                        }
                        let idx = Tensor::new(live.as_slice(), &Device::Cpu).unwrap();
                        let v = var.as_tensor().get(row).unwrap().index_select(&idx, 0).unwrap();
                        total = (total + critic_datum_loss(datum, &v, clip).unwrap()).unwrap();
                    }
                }
                let grads = (total / datums as f64).unwrap().backward().unwrap();
                for (input, var) in inputs.iter().zip(&vars) {
                    let got = grads.get(var.as_tensor()).unwrap();
                    let want = input.grad.mul(&input.mask).unwrap();
                    let scale = max_abs(&want).max(1e-12);
                    let err = max_abs(&(got - &want).unwrap()) / scale;
                    assert!(
                        err < 1e-9,
                        "{} stage {index} {} clip {clip:?}: relative error {err:e}",
                        path.display(),
                        input.name
                    );
                    checked_inputs += 1;
                }
            }
        }
    }
    eprintln!("{checked_inputs} (value input, clip) pairs checked");
    // ppo, rto, sppo, sa2c and the PPO baselines and peers.
    assert!(checked_inputs >= 12, "only {checked_inputs} value inputs checked");
}

/// On a per-sequence-mean server, the plain cross-entropy weights (w = −g) are not the
/// gradient: a datum whose weights sum to ≤ 0 (the rejected side of a preference pair) is
/// divided by max(Σw, 1e-9). The reference measured ×4e8 on SkyRL's JAX backend; the fake
/// server shows the same failure on DPO, which the importance-sampling form avoids (above).
#[test]
fn plain_weights_are_wrong_on_per_sequence_mean_servers() {
    let dpo = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/baselines");
    let path = std::fs::read_dir(&dpo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain(recipes())
        .find(|p| std::fs::read_to_string(p).unwrap().contains("dpo("))
        .expect("a recipe with a dpo term");
    let inputs = (0..4).find_map(|i| logp_inputs(&path, i).filter(|x| !x.is_empty())).unwrap();
    let datums: usize = inputs.iter().map(|i| i.grad.dim(0).unwrap()).sum();
    let plain: Vec<Vec<DatumBackward>> = inputs
        .iter()
        .map(|i| {
            let mut p = backward_inputs(&i.grad, &i.logp, &i.mask, Reduction::Sum, datums).unwrap();
            for d in &mut p {
                assert_eq!(d.loss_fn, LossFn::CrossEntropy);
            }
            p
        })
        .collect();
    let got = server_gradients(&inputs, &plain, Reduction::PerSequenceMean);
    let worst = inputs
        .iter()
        .zip(&got)
        .map(|(i, g)| {
            let want = i.grad.mul(&i.mask).unwrap();
            max_abs(&(g - &want).unwrap()) / max_abs(&want).max(1e-12)
        })
        .fold(0.0, f64::max);
    eprintln!(
        "{}: plain weights on a per-sequence-mean server: relative error {worst:e}",
        path.display()
    );
    assert!(worst > 1.0, "{}: plain weights off by only {worst:e}", path.display());
}
