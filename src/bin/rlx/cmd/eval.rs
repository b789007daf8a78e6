//! `rlx eval`: a stage's objective and its gradients on a batch of tensors — from a
//! safetensors file or synthetic — without a model or sampling; `--profile` times every node.

use std::process::ExitCode;

use rlx::check::lints::LintConfig;
use rlx::render::{self, Style};

use crate::args::{Dtype, EvalArgs};
use crate::ui;

/// Diagnostics about the training loop's batch sizes (groups of `sample.n`, minibatches), which
/// `rlx eval` does not run: there the batch's own `group` ids say what a group is.
const LOOP_ONLY: &[&str] =
    &["singleton-group", "batch-not-multiple-of-group", "minibatch-mismatch"];

/// Warm calls `rlx eval --profile` times (after one untimed call).
const PROFILE_RUNS: usize = 21;

pub fn main(args: EvalArgs, style: Style) -> Result<ExitCode, String> {
    let path = &args.recipe;
    let (src, mut analysis) = ui::analyze(path, &LintConfig::defaults(), &[])?;
    for d in analysis.diagnostics.iter_mut().filter(|d| LOOP_ONLY.contains(&d.code)) {
        d.severity = rlx::diag::Severity::Warning;
        d.help = Some(format!(
            "{} (rlx eval reads the groups from the batch's `group`, so it evaluates anyway)",
            d.help.clone().unwrap_or_default()
        ));
    }
    if ui::reject(&src, &analysis, style) {
        return Ok(ui::findings());
    }
    ui::print_diagnostics(&src, &analysis, style);
    let checked = ui::checked(&analysis)?;
    let index = ui::stage_of(checked, args.stage.stage.as_deref())?;
    let stage_name = &checked.program.stages[index].name.name;
    if args.inputs {
        println!("stage `{stage_name}` reads:");
        for r in rlx::exec::requirements(checked, index) {
            let grad = if r.grad { "  (gradient written as grad.NAME)" } else { "" };
            println!("  {:<28} {} {:<14} {}{grad}", r.name, r.dtype_text(), r.shape_text(), r.doc);
        }
        let bindings: Vec<String> = checked.program.stages[index]
            .bindings
            .iter()
            .map(|b| format!("`{}`", b.name.name))
            .collect();
        if !bindings.is_empty() {
            println!(
                "any binding ({}) may be given by name instead: it is read, not computed, and what only it needed is not read",
                bindings.join(", ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let device = rlx::exec::device::device(&args.device.device)?;
    let batch = match (&args.batch, &args.synthetic) {
        (Some(p), _) => candle_core::safetensors::load(p, &device)
            .map_err(|e| format!("cannot read `{}`: {e}", p.display()))?,
        (None, Some(spec)) => {
            let (b, t) = spec
                .split_once('x')
                .and_then(|(b, t)| Some((b.parse::<usize>().ok()?, t.parse::<usize>().ok()?)))
                .ok_or_else(|| format!("`--synthetic {spec}`: expected BxT, e.g. 8x32"))?;
            if b == 0 || t == 0 {
                return Err(format!("`--synthetic {spec}`: B and T must be at least 1"));
            }
            // Every node holds a B × T tensor (and its gradient): refuse what cannot fit.
            let nodes = checked.program.stages[index].graph.node_count().max(1) as u128;
            let need = 8 * nodes * b as u128 * t as u128;
            if let Some(free) = rlx::train::memory::available()
                && need > free as u128 / 10 * 9
            {
                return Err(format!(
                    "`--synthetic {spec}`: {nodes} nodes of {b} × {t} values need about {}; {} is free",
                    rlx::train::memory::gib(need.min(u64::MAX as u128) as u64),
                    rlx::train::memory::gib(free)
                ));
            }
            rlx::exec::synthetic::batch(checked, index, b, t, args.seed, &device)
                .map_err(|e| e.to_string())?
        }
        (None, None) => return Err("give `--batch FILE`, `--synthetic BxT` or `--inputs`".into()),
    };
    // A batch tensor named like a `let` binding is that binding's value.
    let names: Vec<&str> = batch.keys().map(String::as_str).collect();
    let dtype =
        if args.dtype == Dtype::F64 { candle_core::DType::F64 } else { candle_core::DType::F32 };
    let compiled =
        rlx::exec::Compiled::new(checked, index).with_given_bindings(&names).with_dtype(dtype);
    let options = rlx::exec::Options { grads: true, profile: args.profile };
    let mut evaluation = match compiled.run(&batch, &device, options) {
        Ok(e) => e,
        Err(d) => {
            eprint!("{}", render::human(&d, &src, style));
            return Ok(ui::findings());
        }
    };
    // The first call pays for thread start-up and first-touch allocation: time warm calls.
    let mut walls = Vec::new();
    if args.profile {
        let mut runs = Vec::new();
        for _ in 0..PROFILE_RUNS {
            let started = std::time::Instant::now();
            let e = compiled.run(&batch, &device, options).map_err(|d| d.message.clone())?;
            walls.push(started.elapsed().as_secs_f64() * 1e3);
            runs.push(e.profile);
        }
        for (i, (_, ms)) in evaluation.profile.iter_mut().enumerate() {
            *ms = rlx::bench::median(runs.iter().map(|r| r[i].1).collect());
        }
    }
    let scalar = |t: &candle_core::Tensor| {
        t.to_dtype(candle_core::DType::F32).and_then(|t| t.to_scalar::<f32>()).unwrap_or(f32::NAN)
    };
    println!("stage `{stage_name}`: loss = {:.6}", scalar(&evaluation.loss));
    for t in &evaluation.terms {
        let sign = if t.sign < 0.0 { "−" } else { "+" };
        println!("  {sign} {:<10} {:>12.6}  {}", t.name, scalar(&t.value), t.expr);
    }
    if args.profile {
        let total: f64 = evaluation.profile.iter().map(|(_, ms)| ms).sum();
        let wall = rlx::bench::median(walls);
        println!(
            "time per node (ms, medians of {PROFILE_RUNS} warm calls; {total:.3} in nodes, {wall:.3} per call):"
        );
        for (label, ms) in &evaluation.profile {
            println!("  {ms:>9.3}  {label}");
        }
        println!("  {:>9.3}  (validation, masks, checks, outputs)", wall - total);
    }
    if let Some(out) = &args.out {
        let tensors = evaluation.tensors();
        candle_core::safetensors::save(&tensors, out)
            .map_err(|e| format!("cannot write `{}`: {e}", out.display()))?;
        println!(
            "wrote {} tensors to {} ({} bindings, {} terms, {} gradients)",
            tensors.len(),
            out.display(),
            evaluation.bindings.len(),
            evaluation.terms.len(),
            evaluation.grads.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
