//! `rlx plot`: metrics of runs against steps (or training seconds) as an SVG or PNG.

use std::process::ExitCode;

use crate::args::PlotArgs;

pub fn main(args: PlotArgs) -> Result<ExitCode, String> {
    let PlotArgs { runs, metrics, smooth, wall, out } = args;
    let (runs, out) = (&runs, &out);
    if !matches!(out.extension().and_then(|e| e.to_str()), Some("svg" | "png")) {
        return Err(format!("`{}`: name the plot `.svg` or `.png`", out.display()));
    }
    let dirs = rlx::report::curves::expand(runs);
    if dirs.is_empty() {
        return Err("no run directory (one holding metrics.jsonl) among the paths given".into());
    }
    let runs =
        dirs.iter().map(|d| rlx::report::curves::read_run(d)).collect::<Result<Vec<_>, _>>()?;
    let metrics = if metrics.is_empty() {
        vec![rlx::train::metrics::field::REWARD.to_string()]
    } else {
        metrics
    };
    let spec =
        rlx::report::plot::PlotSpec { metrics: &metrics, smooth: smooth.max(1), title: "", wall };
    rlx::report::plot::write(runs, &spec, out)?;
    println!("wrote {} ({} runs)", out.display(), dirs.len());
    Ok(ExitCode::SUCCESS)
}
