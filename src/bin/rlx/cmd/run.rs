//! `rlx run`: trains every stage of a recipe into a run directory, or resumes one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rlx::check::lints::LintConfig;
use rlx::render::{self, Style};
use rlx::source::{self, SourceFile};

use crate::args::{EngineKind, ReductionArg, RunArgs};
use crate::run_dir::{
    RunConfig, TinkerConfig, default_eval_prompts, default_eval_samples, prepare_run_dir,
    stored_run,
};
use crate::ui;

pub fn main(args: RunArgs, style: Style) -> Result<ExitCode, String> {
    if args.steps == Some(0) {
        return Err("`--steps 0`: a stage needs at least one step".into());
    }
    if args.eval_prompts == Some(0) || args.eval_samples == Some(0) {
        return Err("`--eval-prompts` and `--eval-samples` must be at least 1".into());
    }
    let (src, config) = match (&args.resume, &args.recipe) {
        (Some(dir), recipe) => {
            let (config, stored) =
                stored_run(dir, |e| format!("cannot resume `{}`: {e}", dir.display()))?;
            check_resume_args(dir, &config, &stored, recipe.as_deref(), &args)?;
            let (src, _) = SourceFile::from_bytes(config.recipe.clone(), &stored);
            (src, config)
        }
        (None, Some(path)) => {
            let (src, _) = SourceFile::read(path)?;
            let config = RunConfig {
                recipe: path.display().to_string(),
                set: args.set.set.clone(),
                steps: args.steps,
                seed: args.seed.unwrap_or(0),
                eval_prompts: args.eval_prompts.unwrap_or_else(default_eval_prompts),
                eval_samples: args.eval_samples.unwrap_or_else(default_eval_samples),
                tinker: tinker_config(&args)?,
            };
            (src, config)
        }
        (None, None) => return Err("give a recipe, or `--resume DIR`".into()),
    };
    let mut analysis = source::analyze_with(&src, &LintConfig::defaults(), &config.set)?;
    // On a resumed remote run, new URLs for its servers.
    let tinker = match config.tinker.clone() {
        Some(mut t) => {
            let (default, own) = split_servers(&args.server)?;
            t.keep_adapters |= args.keep_adapters;
            if let Some(url) = default {
                t.server = url;
            }
            for (name, url) in own {
                if !t.servers.contains_key(&name) {
                    return Err(format!(
                        "`--server {name}=…`: the run put no model `{name}` on a server of its own"
                    ));
                }
                t.servers.insert(name, url);
            }
            Some(t)
        }
        None => None,
    };
    if let Some(t) = &tinker
        && !analysis.has_errors()
    {
        let checked = ui::checked(&analysis)?;
        // `ref` (the trained model as its stage starts) may have a server of its own too.
        for name in t.servers.keys().filter(|n| *n != "ref") {
            if !checked.program.models.iter().any(|m| &m.name.name == name) {
                return Err(format!("`--server {name}=…`: the recipe has no model `{name}`"));
            }
        }
        let own: Vec<&str> = t.servers.keys().map(String::as_str).collect();
        let found = rlx::engine::tinker::lint::check(checked, None, &own);
        source::add_diagnostics(&src, &mut analysis, found, &LintConfig::defaults());
        if !analysis.has_errors() && !analysis.diagnostics.is_empty() && !args.quiet {
            ui::print_diagnostics(&src, &analysis, style);
        }
    }
    if ui::reject(&src, &analysis, style) {
        return Ok(ui::findings());
    }
    let checked = ui::checked(&analysis)?;
    let name = checked.program.name.as_ref().map_or("run".to_string(), |n| n.name.clone());
    let out = args
        .resume
        .clone()
        .or(args.out.clone())
        .unwrap_or_else(|| PathBuf::from("runs").join(&name));
    if args.resume.is_none() {
        prepare_run_dir(&out, args.force)?;
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    if args.resume.is_none() {
        std::fs::write(out.join("recipe.rlx"), &src.text).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
        std::fs::write(out.join("run.json"), json).map_err(|e| e.to_string())?;
    }
    let resolved =
        rlx::graph_view::text(checked, None, rlx::graph_view::ViewOptions { resolved: true });
    let options = rlx::train::run::RunOptions {
        out: out.clone(),
        steps: config.steps,
        seed: config.seed,
        resume: args.resume.is_some(),
        device: rlx::exec::device::device(&args.device.device)?,
        quiet: args.quiet,
        eval_prompts: config.eval_prompts,
        eval_samples: config.eval_samples,
        tinker: tinker.map(|t| rlx::train::run::TinkerOptions {
            url: t.server,
            servers: t.servers,
            base_model: t.base_model,
            reduction: t.reduction.map(|r| match r {
                ReductionArg::Sum => rlx::engine::surrogate::Reduction::Sum,
                ReductionArg::Mean => rlx::engine::surrogate::Reduction::PerSequenceMean,
            }),
            keep_adapters: t.keep_adapters,
        }),
    };
    match rlx::train::run::run(checked, &resolved, &options) {
        Ok(summary) => {
            for (stage, before, after) in &summary.evals {
                println!("stage `{stage}` on held-out prompts (before → after, ± standard error):");
                let se = |m: &[(String, f64)], k: &str| {
                    m.iter().find(|(n, _)| *n == format!("{k}_se")).map_or(0.0, |(_, v)| *v)
                };
                for ((k, b), (_, a)) in before
                    .iter()
                    .zip(after)
                    .filter(|((k, _), _)| !k.ends_with("_se") && !k.starts_with("demo_"))
                {
                    println!(
                        "  {k:<12} {b:>8.3} ± {:<6.3} → {a:>8.3} ± {:.3}",
                        se(before, k),
                        se(after, k)
                    );
                }
            }
            if let Some(line) = rlx::report::curves::read_run(&out)
                .ok()
                .as_ref()
                .and_then(rlx::report::verdict::line)
            {
                println!("{line}");
            }
            println!("run finished in {:.1}s: {}", summary.seconds, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(d) => {
            eprint!("{}", render::human(&d, &src, style));
            // Only when there is a checkpoint to continue from.
            if out.join("state.json").exists() {
                eprintln!(
                    "the last checkpoint in {} is intact; continue with `rlx run --resume {}`",
                    out.display(),
                    out.display()
                );
            }
            Ok(ui::findings())
        }
    }
}

/// The server settings of a new run: `--server` and friends belong with `--engine tinker`.
fn tinker_config(args: &RunArgs) -> Result<Option<TinkerConfig>, String> {
    let (default, servers) = split_servers(&args.server)?;
    match (args.engine, default) {
        (EngineKind::Tinker, Some(server)) => Ok(Some(TinkerConfig {
            server,
            servers,
            base_model: args.base_model.clone(),
            reduction: args.reduction,
            keep_adapters: args.keep_adapters,
        })),
        (EngineKind::Tinker, None) => Err("`--engine tinker` needs `--server URL`".into()),
        (EngineKind::Local, _)
            if !args.server.is_empty()
                || args.base_model.is_some()
                || args.reduction.is_some()
                || args.keep_adapters =>
        {
            Err("`--server`, `--base-model`, `--reduction` and `--keep-adapters` belong with `--engine tinker`".into())
        }
        (EngineKind::Local, _) => Ok(None),
    }
}

/// `--server` values: the one plain URL (the default server), and `NAME=URL` pairs.
fn split_servers(
    values: &[String],
) -> Result<(Option<String>, std::collections::BTreeMap<String, String>), String> {
    let mut default = None;
    let mut own = std::collections::BTreeMap::new();
    for v in values {
        // A URL's own `=` (a query) comes after `://`; a model name has neither.
        let named = v.split_once('=').filter(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')
        });
        match named {
            Some((name, url)) => {
                if own.insert(name.to_string(), url.to_string()).is_some() {
                    return Err(format!("`--server {name}=…` given twice"));
                }
            }
            None if default.is_none() => default = Some(v.clone()),
            None => {
                return Err(format!(
                    "two default servers: `{}` and `{v}` (name the model of one: `--server NAME=URL`)",
                    default.unwrap_or_default()
                ));
            }
        }
    }
    Ok((default, own))
}

/// `--resume` continues a run exactly as it was started: a recipe, `--set`, `--steps` or
/// `--seed` given with it must be what run.json recorded.
fn check_resume_args(
    dir: &Path,
    config: &RunConfig,
    stored: &[u8],
    recipe: Option<&Path>,
    args: &RunArgs,
) -> Result<(), String> {
    let mut differ = Vec::new();
    if let Some(path) = recipe {
        let given =
            std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if given != stored {
            differ
                .push(format!("the recipe {} is not the one the run started with", path.display()));
        }
    }
    if !args.set.set.is_empty() && args.set.set != config.set {
        differ.push(format!("--set {:?} vs {:?}", args.set.set, config.set));
    }
    if args.steps.is_some() && args.steps != config.steps {
        differ.push(format!("--steps {:?} vs {:?}", args.steps, config.steps));
    }
    if let Some(seed) = args.seed.filter(|s| *s != config.seed) {
        differ.push(format!("--seed {seed} vs {}", config.seed));
    }
    if let Some(n) = args.eval_prompts.filter(|n| *n != config.eval_prompts) {
        differ.push(format!("--eval-prompts {n} vs {}", config.eval_prompts));
    }
    if let Some(n) = args.eval_samples.filter(|n| *n != config.eval_samples) {
        differ.push(format!("--eval-samples {n} vs {}", config.eval_samples));
    }
    // The engine stays; only a remote run's server may move to a new URL.
    let remote = config.tinker.is_some();
    if (args.engine == EngineKind::Tinker || !args.server.is_empty()) && !remote {
        differ.push("the run trained on this machine, not on a Tinker server".into());
    }
    if let Some(t) = &config.tinker
        && (args.base_model.as_ref().is_some_and(|b| Some(b) != t.base_model.as_ref())
            || args.reduction.is_some_and(|r| Some(r) != t.reduction))
    {
        differ.push("--base-model or --reduction vs the run's".into());
    }
    if differ.is_empty() {
        return Ok(());
    }
    Err(format!(
        "`--resume {}` continues the run as it was started; these differ: {}. Start a new run with another `--out` instead",
        dir.display(),
        differ.join("; ")
    ))
}
