//! `rlx compare`: recipes over several seeds, run side by side (as child `rlx run`s), and the
//! report: metrics before → after, the recipes' diff, curves, a verdict.

use std::process::ExitCode;

use rlx::render::Style;

use crate::args::CompareArgs;
use crate::ui;

pub fn main(args: CompareArgs, style: Style) -> Result<ExitCode, String> {
    let CompareArgs { recipes, seeds, out, steps, set, eval_prompts, eval_samples } = args;
    let set = set.set;
    use rlx::report::compare;
    if seeds == 0 {
        return Err("`--seeds 0`: compare at least one seed".into());
    }
    // Every recipe is checked before any GPU-hour (or CPU-hour) is spent.
    let mut checked = Vec::new();
    for path in &recipes {
        let Some((_, analysis)) = ui::analyze_clean(path, style)? else {
            return Ok(ui::findings());
        };
        checked.push(analysis.checked.ok_or("internal: no checked graph")?);
    }
    let mut run_args = Vec::new();
    if let Some(n) = steps {
        run_args.extend(["--steps".to_string(), n.to_string()]);
    }
    for s in &set {
        run_args.extend(["--set".to_string(), s.clone()]);
    }
    if let Some(n) = eval_prompts {
        run_args.extend(["--eval-prompts".to_string(), n.to_string()]);
    }
    if let Some(n) = eval_samples {
        run_args.extend(["--eval-samples".to_string(), n.to_string()]);
    }
    let mut plan = compare::Plan::new(recipes.clone(), seeds, run_args.clone(), out.clone());
    plan.commit = env!("RLX_GIT_COMMIT").to_string();
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding the rlx executable: {e}"))?;
    let outcomes = compare::execute(&exe, &plan, &mut |line| eprintln!("{line}"));
    let collected = compare::collect(&plan, &outcomes);
    let diffs: Vec<(String, String)> = (1..recipes.len())
        .map(|i| {
            let d = rlx::diff::diff(&checked[0], &checked[i]);
            let text = if d.is_empty() {
                "(equivalent)".to_string()
            } else {
                rlx::diff::render(
                    &d,
                    &recipes[0].display().to_string(),
                    &recipes[i].display().to_string(),
                )
            };
            (plan.labels[i].clone(), text)
        })
        .collect();
    let metrics = compare::default_plot_metrics(&collected);
    let runs: Vec<_> = collected.iter().flat_map(|r| r.runs.iter().cloned()).collect();
    let plot = if runs.is_empty() || metrics.is_empty() {
        None
    } else {
        let spec = rlx::report::plot::PlotSpec {
            metrics: &metrics,
            smooth: 10,
            title: "rlx compare",
            wall: false,
        };
        rlx::report::plot::write(runs, &spec, &out.join("plot.svg"))?;
        Some("plot.svg")
    };
    let mut command = format!(
        "rlx compare {}",
        recipes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
    );
    command.push_str(&format!(" --seeds {seeds}"));
    for a in &run_args {
        command.push(' ');
        command.push_str(a);
    }
    command.push_str(&format!(" --out {}", out.display()));
    let mut provenance = rlx::report::provenance::Provenance::now(command, &plan.commit);
    provenance.run_commits = compare::run_commits(&plan);
    compare::write_report(&plan, &collected, &diffs, &provenance, plot)?;
    for (label, m) in compare::headline(&collected) {
        let parts: Vec<String> = m
            .iter()
            .filter(|(k, _)| !k.ends_with("_se"))
            .map(|(k, (b, a))| format!("{k} {b:.3} → {a:.3}"))
            .collect();
        println!("{label:<16} {}", parts.join(", "));
    }
    println!("report: {}", out.join("report.md").display());
    let failed = outcomes.iter().any(|(_, _, o)| matches!(o, compare::Outcome::Failed(_)));
    Ok(if failed { ui::findings() } else { ExitCode::SUCCESS })
}
