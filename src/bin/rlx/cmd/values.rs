//! `rlx values`: how well a finished run's value estimates predict the verifier's reward from
//! every reasoning-step start (VinePPO's value-prediction check).

use std::process::ExitCode;

use rlx::check::lints::LintConfig;
use rlx::render::Style;
use rlx::source::{self, SourceFile};

use crate::args::ValuesArgs;
use crate::run_dir::stored_run;
use crate::ui;

/// `rlx values RUN`: the run's recipe is checked again with its overrides, then probed.
pub fn main(args: ValuesArgs, style: Style) -> Result<ExitCode, String> {
    let ValuesArgs { run, stage, prompts, samples, k, truth, seed, format, device } = args;
    let json = format.json();
    let opts = &rlx::report::values::ProbeOptions { stage, prompts, samples, k, truth, seed };
    let (run, device) = (&run, &device.device);
    if opts.prompts == 0 || opts.samples == 0 || opts.k == Some(0) || opts.truth < 2 {
        return Err(
            "`--prompts`, `--samples` and `--k` must be at least 1, `--truth` at least 2".into()
        );
    }
    let (config, stored) =
        stored_run(run, |e| format!("{} is not a run directory: {e}", run.display()))?;
    let (src, _) = SourceFile::from_bytes(config.recipe.clone(), &stored);
    let analysis = source::analyze_with(&src, &LintConfig::defaults(), &config.set)?;
    if analysis.has_errors() {
        ui::print_diagnostics(&src, &analysis, style);
        return Ok(ui::findings());
    }
    let checked = ui::checked(&analysis)?;
    let device = rlx::exec::device::device(device)?;
    let report = rlx::report::values::probe(run, checked, opts, &device)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "stage `{}`, model `{}`: {} held-out prompts × {} responses, {} step starts; mean value {:.3}",
        report.stage,
        report.model,
        report.prompts,
        report.samples,
        report.states,
        report.mean_value
    );
    println!(
        "reference: the verifier's mean over {} rollouts per state (its own noise adds {:.4} to every MSE)",
        report.truth_rollouts, report.truth_noise
    );
    println!(
        "{:<24} {:>16}   step advantage signed right (|Δ| ≥ {})",
        "estimator",
        "MSE ± se",
        rlx::report::values::MARGIN
    );
    for e in &report.estimators {
        println!(
            "{:<24} {:>8.4} ± {:<6.4}   {:.3} of {} steps",
            e.name, e.mse, e.mse_se, e.step_sign, e.step_pairs
        );
    }
    Ok(ExitCode::SUCCESS)
}
