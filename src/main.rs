//! The `rlx` command line: parses arguments, calls the library, prints, and sets the exit code
//! (0 ok, 1 findings: errors or differences, 2 usage or I/O failure).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rlx::bench::BenchConfig;
use rlx::check::lints::LintConfig;
use rlx::model::ModelConfig;
use rlx::render::{self, Style};
use rlx::source::{self, Analysis, SourceFile};

/// glibc's allocator returns every large tensor buffer to the OS and maps it again on the next
/// step (a third of a training step on 2 cores); mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// rlx: declarative RL objectives for language models.
#[derive(Parser)]
#[command(name = "rlx", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// When to colour output.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Target {
    /// verl's PPO trainer (`rlx export verl`).
    Verl,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum LintFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum GraphFormat {
    Text,
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Check recipes and report every diagnostic; exit 1 if any is an error.
    Lint {
        /// Recipe files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = LintFormat::Human)]
        format: LintFormat,
        /// Silence a lint (repeatable).
        #[arg(long, value_name = "LINT")]
        allow: Vec<String>,
        /// Make a lint an error (repeatable); `--deny warnings` makes every warning an error.
        #[arg(long, value_name = "LINT")]
        deny: Vec<String>,
        /// Also report what an export to this engine could not run (of the last stage, or
        /// `--stage`), as `rlx export` would.
        #[arg(long, value_enum)]
        target: Option<Target>,
        /// The stage `--target` checks (default: the last).
        #[arg(long, requires = "target")]
        stage: Option<String>,
    },
    /// Print a recipe's dataflow graph and the plan of what the runtime must compute.
    Graph {
        file: PathBuf,
        /// Only this stage.
        #[arg(long)]
        stage: Option<String>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
        /// Show every parameter and setting with its default filled in.
        #[arg(long)]
        resolved: bool,
    },
    /// Semantic diff of two recipes; exit 0 when equivalent, 1 when different.
    Diff { old: PathBuf, new: PathBuf },
    /// Format recipes canonically, in place (or check with --check).
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Report unformatted files instead of rewriting them; exit 1 if any.
        #[arg(long)]
        check: bool,
    },
    /// The block reference: every block, or one in full.
    Blocks { name: Option<String> },
    /// Train: run every stage of a recipe on the built-in model and tasks, writing a run directory.
    Run(RunArgs),
    /// Throughput of the built-in transformer: sampling (new tokens/s) and training (tokens/s of
    /// forward + backward + AdamW), on random weights of the given shape.
    Bench {
        /// Start from a preset shape (tiny, small, base); the flags below override it.
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long)]
        width: Option<usize>,
        #[arg(long)]
        heads: Option<usize>,
        #[arg(long, default_value_t = 512)]
        vocab: usize,
        #[arg(long, default_value_t = 256)]
        context: usize,
        /// Sampling: rows generated together.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Sampling: prompt tokens per row.
        #[arg(long, default_value_t = 16)]
        prompt: usize,
        /// Sampling: new tokens per row.
        #[arg(long, default_value_t = 48)]
        new_tokens: usize,
        /// Training: sequences per step.
        #[arg(long, default_value_t = 16)]
        train_batch: usize,
        /// Training: tokens per sequence.
        #[arg(long, default_value_t = 64)]
        train_len: usize,
        /// Timed runs per workload (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Untimed runs first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Only these workloads (repeatable): sampling, training.
        #[arg(long, value_parser = ["sampling", "training"])]
        only: Vec<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Benchmark a Hugging Face checkpoint directory instead of a built-in shape.
        #[arg(long = "model")]
        checkpoint: Option<PathBuf>,
        /// With `--model`: compute in bfloat16 (GPU).
        #[arg(long, requires = "checkpoint")]
        bf16: bool,
    },
    /// Per-token log-probabilities and the summed NLL of a text under a model: the numbers to
    /// compare with transformers' for the same ids.
    Score {
        /// A model directory (HF checkpoint, PEFT adapter, RUN/models/NAME) or a run directory.
        model: PathBuf,
        /// The text to score.
        #[arg(long, conflicts_with = "jsonl", required_unless_present = "jsonl")]
        text: Option<String>,
        /// Score one field of every line of a JSON-lines file.
        #[arg(long)]
        jsonl: Option<PathBuf>,
        /// The field of each line (with --jsonl).
        #[arg(long, default_value = "text", requires = "jsonl")]
        field: String,
        /// Score the text as a `chat = true` recipe feeds a prompt: one user message through the
        /// chat template, generation prompt included.
        #[arg(long)]
        chat: bool,
        /// One JSON object per text instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Sample from a model: what a trained run's policy writes.
    Generate {
        /// A model directory or a run directory (its `models/policy`).
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Samples to draw.
        #[arg(long, default_value_t = 1)]
        n: usize,
        /// 0 decodes greedily.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Render the prompt through the chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Write a tiny random Hugging Face checkpoint (config.json, safetensors, tokenizer.json,
    /// chat template) of a supported family: try `pretrained(...)` recipes without a download.
    TinyCheckpoint {
        /// The directory to create.
        dir: PathBuf,
        /// llama, mistral, qwen2, qwen3 or smollm.
        #[arg(long, default_value = "qwen2")]
        family: String,
        /// Safetensors files to split the weights into (more than one writes an index).
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// `tiny`; for benchmarks `small` (6 layers × 384) or `0.5b` (Qwen2.5-0.5B's shape, about 2 GB).
        #[arg(long, default_value = "tiny")]
        size: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Whose file layout: transformers `5` (rope_parameters, dtype, chat_template.jinja) or
        /// `4` (rope_theta/rope_scaling, torch_dtype, the template in tokenizer_config.json).
        #[arg(long, default_value = "5", value_parser = ["4", "5"])]
        transformers: String,
        /// Store the weights in bfloat16, as most released models are.
        #[arg(long)]
        bf16: bool,
    },
    /// Evaluate and differentiate a stage's objective on a batch of tensors (no model, no sampling).
    Eval {
        recipe: PathBuf,
        /// The stage (default: the last).
        #[arg(long)]
        stage: Option<String>,
        /// Input tensors by name, as safetensors.
        #[arg(long, conflicts_with_all = ["synthetic", "inputs"])]
        batch: Option<PathBuf>,
        /// Evaluate on a deterministic synthetic batch of B sequences × T tokens, e.g. `8x32`.
        #[arg(long, value_name = "BxT")]
        synthetic: Option<String>,
        /// Seed of the synthetic batch.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write every binding, the loss, its terms and `grad.INPUT` here, as safetensors.
        #[arg(long)]
        out: Option<PathBuf>,
        /// List the inputs the stage reads (names, dtypes, shapes) and exit.
        #[arg(long)]
        inputs: bool,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print the time spent on every node.
        #[arg(long)]
        profile: bool,
        /// Float precision of the evaluation: f64 compares long sums with a float64 reference.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f64"])]
        dtype: String,
    },
    /// Run recipes over several seeds and report them side by side: held-out metrics before →
    /// after (mean ± standard error), training metrics, wall time, the recipes' diff and curves.
    Compare {
        /// Recipes (the first is the one the others are diffed against).
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        /// Seeds 0..N for every recipe.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Directory for the runs and the report; finished runs in it are reused, stopped ones
        /// resumed.
        #[arg(long)]
        out: PathBuf,
        /// Cap every stage at this many steps (every recipe alike).
        #[arg(long)]
        steps: Option<usize>,
        /// Override a value in every recipe, e.g. `arith.problems=200` (repeatable).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Held-out prompts (default 128).
        #[arg(long)]
        eval_prompts: Option<usize>,
        /// Samples per held-out prompt (default 4).
        #[arg(long)]
        eval_samples: Option<usize>,
    },
    /// Plot metrics.jsonl fields of runs against steps as an SVG: seeds of one recipe
    /// (`NAME-sN` directories) as a mean with a ±1 standard-error band, evaluations as points.
    Plot {
        /// Run directories, or directories holding them (a compare's `runs/`).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Fields to plot, one panel each (default: reward).
        #[arg(long = "metric", value_name = "FIELD")]
        metrics: Vec<String>,
        /// Trailing moving average over this many steps.
        #[arg(long, default_value_t = 1)]
        smooth: usize,
        /// Training seconds on the x axis instead of steps (the steps' own times summed; warm starts
        /// and evaluations left out): compare methods at equal compute time.
        #[arg(long)]
        wall: bool,
        /// The file to write: `.svg`, or `.png` (the SVG rasterised with the system's fonts).
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a recipe's RL stage for another engine: `rlx export verl RECIPE --out DIR` writes
    /// a verl plugin package (advantage estimator, policy loss, reward function, config
    /// overrides, launcher), or explains with diagnostics what verl would compute differently.
    Export {
        #[arg(value_enum)]
        engine: Target,
        recipe: PathBuf,
        /// The stage (default: the last).
        #[arg(long)]
        stage: Option<String>,
        /// The package directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Override a recipe value before exporting, e.g. `rl.optim.lr=5e-6` (repeatable).
        #[arg(long, value_name = "PATH=VALUE")]
        set: Vec<String>,
    },
    /// A Language Server Protocol server on stdin/stdout, for editors: diagnostics as you type,
    /// hover, completion, go to definition, references, symbols, formatting and quick fixes.
    Lsp,
    /// Score a finished run's value estimates on held-out prompts: the value head (if the run
    /// trained one) and a K-rollout Monte-Carlo estimate, against the mean verifier reward of
    /// many rollouts from every reasoning-step start (VinePPO's value-prediction check).
    Values {
        /// A run directory (it holds the recipe, the overrides and the trained model).
        run: PathBuf,
        /// The RL stage whose model and sampling to probe (default: the first that samples).
        #[arg(long)]
        stage: Option<String>,
        /// Held-out prompts.
        #[arg(long, default_value_t = 64)]
        prompts: usize,
        /// Responses per prompt.
        #[arg(long, default_value_t = 2)]
        samples: usize,
        /// Rollouts per state for the Monte-Carlo estimate (default: the recipe's
        /// `vine_values` k, else 9).
        #[arg(long)]
        k: Option<usize>,
        /// Rollouts per state for the reference ("true") value.
        #[arg(long, default_value_t = 64)]
        truth: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// Runtime settings measured to matter on CPU: candle asks for the thread count on every matmul,
/// reading /proc/cpuinfo each time unless `RAYON_NUM_THREADS` is set; and mimalloc returning
/// freed tensor buffers to the OS costs a page fault per page on the next step
/// (`MIMALLOC_PURGE_DELAY=-1`: a 40-step warm start 10.9 s → 8.4 s, same resident set); and
/// candle's element-wise thread pool spins 25 000 times after every op before sleeping, taking a
/// core from the matmuls and rlx's kernels on the other pool (`CANDLE_BARRIER_POOL_SPIN_LIMIT=1000`
/// on 2 cores: tiny training step 27.6 → 20.8 ms, 6 L × 384 392 → 332 ms, GRPO small step
/// 1.45 → 1.36 s). All are read from the environment at start-up, so the process re-executes
/// itself once with them set (values the user set are kept).
#[cfg(unix)]
fn tune_runtime() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("RLX_TUNED").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env("RLX_TUNED", "1");
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        cmd.env("MIMALLOC_PURGE_DELAY", "-1");
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        cmd.env("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
    // `exec` returns only on failure; then run untuned.
    let _ = cmd.exec();
}

#[cfg(not(unix))]
fn tune_runtime() {}

fn main() -> ExitCode {
    tune_runtime();
    let cli = Cli::parse();
    let style = Style {
        color: match cli.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        },
        width: 100,
    };
    let result = match cli.command {
        Command::Lint { files, format, allow, deny, target, stage } => {
            lint(&files, format, LintArgs { allow, deny, target, stage }, style)
        }
        Command::Export { engine: Target::Verl, recipe, stage, out, set } => {
            export_verl(&recipe, stage.as_deref(), &out, &set, style)
        }
        Command::Graph { file, stage, format, resolved } => {
            graph(&file, stage.as_deref(), format, resolved, style)
        }
        Command::Diff { old, new } => diff(&old, &new, style),
        Command::Fmt { files, check } => fmt(&files, check, style),
        Command::Blocks { name } => blocks(name.as_deref()),
        Command::Run(args) => run(args, style),
        Command::Bench {
            preset,
            layers,
            width,
            heads,
            vocab,
            context,
            batch,
            prompt,
            new_tokens,
            train_batch,
            train_len,
            repeats,
            warmup,
            only,
            device,
            seed,
            json,
            checkpoint,
            bf16,
        } => (|| {
            let base = ModelConfig::preset(&preset, vocab)
                .ok_or_else(|| format!("unknown preset `{preset}`: use tiny, small or base"))?;
            let model = ModelConfig {
                layers: layers.unwrap_or(base.layers),
                width: width.unwrap_or(base.width),
                heads: heads.unwrap_or(base.heads),
                context,
                vocab,
                family: Default::default(),
            };
            let sizes = [
                ("--layers", model.layers),
                ("--width", model.width),
                ("--heads", model.heads),
                ("--vocab", model.vocab),
                ("--context", model.context),
                ("--batch", batch),
                ("--prompt", prompt),
                ("--new-tokens", new_tokens),
                ("--train-batch", train_batch),
                ("--train-len", train_len),
                ("--repeats", repeats),
            ];
            if let Some((flag, _)) = sizes.iter().find(|(_, v)| *v == 0) {
                return Err(format!("`{flag} 0`: must be at least 1"));
            }
            if !model.width.is_multiple_of(model.heads) {
                return Err(format!(
                    "--width {} is not a multiple of --heads {}",
                    model.width, model.heads
                ));
            }
            let cfg = BenchConfig {
                model,
                batch,
                prompt,
                new_tokens,
                train_batch,
                train_len,
                warmup,
                repeats,
                seed,
            };
            let which: Vec<&str> = if only.is_empty() {
                vec!["sampling", "training"]
            } else {
                only.iter().map(String::as_str).collect()
            };
            bench(&cfg, checkpoint.as_deref().map(|m| (m, bf16)), &which, &device, json)
        })(),
        Command::TinyCheckpoint { dir, family, shards, size, seed, transformers, bf16 } => {
            use rlx::model::hf_tiny::{self, ConfigStyle, TinySpec};
            let style = if transformers == "4" { ConfigStyle::V4 } else { ConfigStyle::V5 };
            let spec =
                TinySpec { family: family.clone(), size: size.clone(), shards, seed, style, bf16 };
            hf_tiny::write_tiny(&dir, &spec).map(|()| {
                println!(
                    "wrote a random {size} {family} checkpoint (transformers {transformers} layout) to {}",
                    dir.display()
                );
                ExitCode::SUCCESS
            })
        }
        Command::Score { model, text, jsonl, field, chat, json, device } => {
            score(&model, text.as_deref(), jsonl.as_deref(), &field, chat, json, &device)
        }
        Command::Generate {
            model,
            prompt,
            n,
            temperature,
            top_p,
            max_tokens,
            chat,
            seed,
            device,
        } => (|| {
            if !(temperature >= 0.0 && temperature.is_finite()) {
                return Err(format!("--temperature {temperature}: use a finite value ≥ 0"));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(format!("--top-p {top_p}: use a value in (0, 1]"));
            }
            if n == 0 || max_tokens == 0 {
                return Err("--n and --max-tokens must be at least 1".into());
            }
            let device = rlx::exec::device::device(&device)?;
            let loaded = rlx::inspect::load(&model, chat, &device)?;
            let sampling = rlx::sample::Sampling {
                temperature: temperature.max(1e-6),
                top_p,
                max_tokens,
                min_tokens: 0,
                stop: None,
                greedy: temperature == 0.0,
            };
            let texts = rlx::inspect::generate(&loaded, &prompt, n, &sampling, seed, &device)?;
            eprintln!("model: {}", loaded.dir.display());
            for (i, t) in texts.iter().enumerate() {
                if n > 1 {
                    println!("--- sample {}", i + 1);
                }
                println!("{prompt}{t}");
            }
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Eval {
            recipe,
            stage,
            batch,
            synthetic,
            seed,
            out,
            inputs,
            device,
            profile,
            dtype,
        } => eval(
            &recipe,
            EvalArgs { stage, batch, synthetic, seed, out, inputs, device, profile, dtype },
            style,
        ),
        Command::Compare { recipes, seeds, out, steps, set, eval_prompts, eval_samples } => {
            compare(recipes, seeds, out, steps, set, eval_prompts, eval_samples, style)
        }
        Command::Plot { runs, metrics, smooth, wall, out } => {
            plot(&runs, metrics, smooth, wall, &out)
        }
        Command::Lsp => Ok(ExitCode::from(rlx::lsp::serve_stdio() as u8)),
        Command::Values { run, stage, prompts, samples, k, truth, seed, json, device } => {
            let opts =
                rlx::report::values::ProbeOptions { stage, prompts, samples, k, truth, seed };
            values(&run, &opts, json, &device, style)
        }
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<(SourceFile, Option<rlx::diag::Diagnostic>), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    Ok(SourceFile::from_bytes(path.display().to_string(), &bytes))
}

/// Reads and analyses a file; an encoding error is reported like any other diagnostic.
fn analyze(path: &Path, config: &LintConfig) -> Result<(SourceFile, Analysis), String> {
    let (src, encoding) = read(path)?;
    let mut analysis = source::analyze(&src, config);
    if let Some(d) = encoding {
        analysis.diagnostics.insert(0, d);
    }
    Ok((src, analysis))
}

fn print_diagnostics(src: &SourceFile, analysis: &Analysis, style: Style) {
    for d in &analysis.diagnostics {
        eprint!("{}", render::human(d, src, style));
    }
}

/// Analyses a file that a command needs error-free; prints its diagnostics.
fn analyze_clean(path: &Path, style: Style) -> Result<Option<(SourceFile, Analysis)>, String> {
    let (src, analysis) = analyze(path, &LintConfig::defaults())?;
    if analysis.has_errors() {
        print_diagnostics(&src, &analysis, style);
        eprintln!("{}: {}", src.name, render::summary(&analysis.diagnostics));
        return Ok(None);
    }
    Ok(Some((src, analysis)))
}

struct LintArgs {
    allow: Vec<String>,
    deny: Vec<String>,
    target: Option<Target>,
    stage: Option<String>,
}

fn lint(
    files: &[PathBuf],
    format: LintFormat,
    args: LintArgs,
    style: Style,
) -> Result<ExitCode, String> {
    let deny_warnings = args.deny.iter().any(|d| d == "warnings");
    let config = LintConfig { allow: args.allow, deny: args.deny, deny_warnings };
    if let Some(problem) = config.unknown_names().first() {
        return Err(problem.clone());
    }
    let mut failed = false;
    let mut json = Vec::new();
    for path in files {
        let (src, mut analysis) = analyze(path, &config)?;
        if args.target == Some(Target::Verl) && !analysis.has_errors() {
            let checked = analysis.checked.as_ref().ok_or("internal: no checked graph")?;
            let index = stage_of(checked, args.stage.as_deref())?;
            let found = rlx::export::verl::check(checked, index);
            source::add_diagnostics(&src, &mut analysis, found, &config);
        }
        failed |= analysis.has_errors();
        match format {
            LintFormat::Human => {
                print_diagnostics(&src, &analysis, style);
                if !analysis.diagnostics.is_empty() {
                    eprintln!("{}: {}", src.name, render::summary(&analysis.diagnostics));
                }
            }
            LintFormat::Json => {
                json.extend(analysis.diagnostics.iter().map(|d| render::json(d, &src)))
            }
        }
    }
    if format == LintFormat::Json {
        println!("{}", serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Stage `name`, or the last.
fn stage_of(checked: &rlx::check::Checked, name: Option<&str>) -> Result<usize, String> {
    rlx::exec::stage_index(checked, name).ok_or_else(|| {
        let names: Vec<&str> =
            checked.program.stages.iter().map(|s| s.name.name.as_str()).collect();
        format!("no stage `{}`; the stages are {}", name.unwrap_or(""), names.join(", "))
    })
}

fn export_verl(
    path: &Path,
    stage: Option<&str>,
    out: &Path,
    set: &[String],
    style: Style,
) -> Result<ExitCode, String> {
    let (src, encoding) = read(path)?;
    let mut analysis = source::analyze_with(&src, &LintConfig::defaults(), set)?;
    if let Some(d) = encoding {
        analysis.diagnostics.insert(0, d);
    }
    if analysis.has_errors() {
        print_diagnostics(&src, &analysis, style);
        eprintln!("{}: {}", src.name, render::summary(&analysis.diagnostics));
        return Ok(ExitCode::from(1));
    }
    let checked = analysis.checked.clone().ok_or("internal: no checked graph")?;
    let index = stage_of(&checked, stage)?;
    let (files, found) =
        rlx::export::verl::export(&checked, index, &src, &path.display().to_string());
    let mut shown = analysis;
    source::add_diagnostics(&src, &mut shown, found, &LintConfig::defaults());
    print_diagnostics(&src, &shown, style);
    let Some(files) = files.filter(|_| !shown.has_errors()) else {
        eprintln!(
            "{}: not exported: {} (`rlx lint --target verl` reports the same)",
            src.name,
            render::summary(&shown.diagnostics)
        );
        return Ok(ExitCode::from(1));
    };
    rlx::export::verl::write(&files, out)?;
    let name = rlx::export::verl::registry_name(&checked);
    println!(
        "wrote {} ({} files) for verl {}: plugin `{name}`; see {}/README.md",
        out.display(),
        files.len(),
        rlx::export::verl::VERL_VERSION,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn graph(
    path: &Path,
    stage: Option<&str>,
    format: GraphFormat,
    resolved: bool,
    style: Style,
) -> Result<ExitCode, String> {
    let Some((_, analysis)) = analyze_clean(path, style)? else { return Ok(ExitCode::from(1)) };
    let checked = analysis.checked.as_ref().ok_or("internal: no checked graph")?;
    if let Some(s) = stage
        && !checked.program.stages.iter().any(|st| st.name.name == s)
    {
        let names: Vec<&str> =
            checked.program.stages.iter().map(|st| st.name.name.as_str()).collect();
        return Err(format!("no stage `{s}`; the stages are {}", names.join(", ")));
    }
    let opts = rlx::graph_view::ViewOptions { resolved };
    match format {
        GraphFormat::Text => print!("{}", rlx::graph_view::text(checked, stage, opts)),
        GraphFormat::Dot => print!("{}", rlx::graph_view::dot(checked, stage, opts)),
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(old: &Path, new: &Path, style: Style) -> Result<ExitCode, String> {
    let Some((_, a)) = analyze_clean(old, style)? else { return Ok(ExitCode::from(2)) };
    let Some((_, b)) = analyze_clean(new, style)? else { return Ok(ExitCode::from(2)) };
    let (Some(a), Some(b)) = (a.checked.as_ref(), b.checked.as_ref()) else {
        return Err("internal: no checked graph".into());
    };
    let d = rlx::diff::diff(a, b);
    print!("{}", rlx::diff::render(&d, &old.display().to_string(), &new.display().to_string()));
    Ok(if d.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn fmt(files: &[PathBuf], check: bool, style: Style) -> Result<ExitCode, String> {
    let mut unformatted = false;
    for path in files {
        let (src, encoding) = read(path)?;
        if let Some(d) = encoding {
            eprint!("{}", render::human(&d, &src, style));
            return Ok(ExitCode::from(1));
        }
        let formatted = match rlx::syntax::format::format(&src.text) {
            Ok(f) => f,
            Err(d) => {
                eprint!("{}", render::human(&d, &src, style));
                return Ok(ExitCode::from(1));
            }
        };
        if formatted == src.text {
            continue;
        }
        if check {
            eprintln!("{} is not formatted", src.name);
            unformatted = true;
        } else {
            std::fs::write(path, formatted)
                .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            eprintln!("formatted {}", src.name);
        }
    }
    Ok(if unformatted { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn blocks(name: Option<&str>) -> Result<ExitCode, String> {
    match name {
        None => print!("{}", rlx::blocks::docs::index()),
        Some(n) => print!("{}", rlx::blocks::docs::page(n)?),
    }
    Ok(ExitCode::SUCCESS)
}

struct EvalArgs {
    stage: Option<String>,
    batch: Option<PathBuf>,
    synthetic: Option<String>,
    seed: u64,
    out: Option<PathBuf>,
    inputs: bool,
    device: String,
    profile: bool,
    dtype: String,
}

/// Diagnostics about the training loop's batch sizes (groups of `sample.n`, minibatches), which
/// `rlx eval` does not run: there the batch's own `group` ids say what a group is.
const LOOP_ONLY: &[&str] =
    &["singleton-group", "batch-not-multiple-of-group", "minibatch-mismatch"];

/// Warm calls `rlx eval --profile` times (after one untimed call).
const PROFILE_RUNS: usize = 21;

fn eval(path: &Path, args: EvalArgs, style: Style) -> Result<ExitCode, String> {
    let (src, mut analysis) = analyze(path, &LintConfig::defaults())?;
    for d in analysis.diagnostics.iter_mut().filter(|d| LOOP_ONLY.contains(&d.code)) {
        d.severity = rlx::diag::Severity::Warning;
        d.help = Some(format!(
            "{} (rlx eval reads the groups from the batch's `group`, so it evaluates anyway)",
            d.help.clone().unwrap_or_default()
        ));
    }
    if analysis.has_errors() {
        print_diagnostics(&src, &analysis, style);
        eprintln!("{}: {}", src.name, render::summary(&analysis.diagnostics));
        return Ok(ExitCode::from(1));
    }
    print_diagnostics(&src, &analysis, style);
    let checked = analysis.checked.as_ref().ok_or("internal: no checked graph")?;
    let index = stage_of(checked, args.stage.as_deref())?;
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
    let device = rlx::exec::device::device(&args.device)?;
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
    let dtype = if args.dtype == "f64" { candle_core::DType::F64 } else { candle_core::DType::F32 };
    let compiled =
        rlx::exec::Compiled::new(checked, index).with_given_bindings(&names).with_dtype(dtype);
    let options = rlx::exec::Options { grads: true, profile: args.profile };
    let mut evaluation = match compiled.run(&batch, &device, options) {
        Ok(e) => e,
        Err(d) => {
            eprint!("{}", render::human(&d, &src, style));
            return Ok(ExitCode::from(1));
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

fn bench(
    cfg: &BenchConfig,
    checkpoint: Option<(&Path, bool)>,
    which: &[&str],
    device: &str,
    json: bool,
) -> Result<ExitCode, String> {
    let device = rlx::exec::device::device(device)?;
    let report = match checkpoint {
        Some((dir, bf16)) => rlx::bench::run_checkpoint(cfg, dir, bf16, which, &device),
        None => rlx::bench::run(cfg, which, &device),
    }
    .map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &report.config;
    println!(
        "model: {} layers, width {}, {} heads, vocabulary {}, context {} — {:.2}M parameters",
        m.layers,
        m.width,
        m.heads,
        m.vocab,
        m.context,
        report.parameters as f64 / 1e6
    );
    println!(
        "device: {}, {} threads; median of {} runs",
        report.device, report.threads, cfg.repeats
    );
    for x in &report.measurements {
        println!(
            "{:<9} {:<28} {:>10.0} tokens/s  ({:.1} ms per run)",
            x.name,
            x.shape,
            x.tokens_per_second(),
            x.median_seconds() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `rlx score`: one text, or a field of every line of a JSON-lines file.
fn score(
    model: &Path,
    text: Option<&str>,
    jsonl: Option<&Path>,
    field: &str,
    chat: bool,
    json: bool,
    device: &str,
) -> Result<ExitCode, String> {
    let device = rlx::exec::device::device(device)?;
    let loaded = rlx::inspect::load(model, chat, &device)?;
    let texts: Vec<String> = match (text, jsonl) {
        (Some(t), _) => vec![t.to_string()],
        (None, Some(path)) => {
            let body =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut out = Vec::new();
            for (i, line) in body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let at = || format!("{}:{}", path.display(), i + 1);
                let doc: serde_json::Value =
                    serde_json::from_str(line.trim_start_matches('\u{feff}'))
                        .map_err(|e| format!("{}: {e}", at()))?;
                let t = doc[field]
                    .as_str()
                    .ok_or_else(|| format!("{}: no text field `{field}`", at()))?;
                out.push(t.to_string());
            }
            out
        }
        (None, None) => return Err("give --text or --jsonl".into()),
    };
    if !json {
        eprintln!("model: {}", loaded.dir.display());
    }
    let (mut total, mut predicted) = (0.0, 0);
    for (i, t) in texts.iter().enumerate() {
        let ids = rlx::inspect::ids_of(&loaded.tok, t, chat)?;
        let s = rlx::inspect::score_ids(&loaded, &ids, &device)?;
        total += s.nll;
        predicted += s.predicted;
        if json {
            println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
            continue;
        }
        if texts.len() > 1 {
            println!("text {}: {} tokens, NLL {:.6}", i + 1, s.tokens.len(), s.nll);
            continue;
        }
        println!("{:>5}  {:>8}  {:>12}  piece", "pos", "id", "log-prob");
        for (pos, tok) in s.tokens.iter().enumerate() {
            let lp = tok.logp.map_or("-".to_string(), |l| format!("{l:.6}"));
            println!("{pos:>5}  {:>8}  {lp:>12}  {:?}", tok.id, tok.piece);
        }
    }
    if !json {
        let per = if predicted > 0 { total / predicted as f64 } else { 0.0 };
        println!("summed NLL {total:.6} over {predicted} predicted tokens ({per:.6} per token)");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
struct RunArgs {
    /// The recipe (optional with --resume: the run directory has a copy).
    recipe: Option<PathBuf>,
    /// Run directory (default: runs/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Cap every stage at this many steps.
    #[arg(long)]
    steps: Option<usize>,
    /// The run's seed (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Override a recipe value, e.g. `rl.optim.lr=1e-5`, `policy.layers=1`, `arith.problems=200`.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Continue the run in this directory from its last checkpoint, with the recipe,
    /// overrides, steps and seed it was started with.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Clear the run directory first if it holds an earlier run (without it, a non-empty
    /// directory is refused).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Held-out prompts for the before/after task metric (default 128).
    #[arg(long)]
    eval_prompts: Option<usize>,
    /// Samples per held-out prompt (default 4): metrics are means, `pass@k` uses them all.
    #[arg(long)]
    eval_samples: Option<usize>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
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
    if !args.set.is_empty() && args.set != config.set {
        differ.push(format!("--set {:?} vs {:?}", args.set, config.set));
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
    if differ.is_empty() {
        return Ok(());
    }
    Err(format!(
        "`--resume {}` continues the run as it was started; these differ: {}. Start a new run with another `--out` instead",
        dir.display(),
        differ.join("; ")
    ))
}

/// A new run needs an empty (or absent) directory; `--force` clears one that holds an earlier
/// rlx run, and only such a one.
fn prepare_run_dir(out: &Path, force: bool) -> Result<(), String> {
    if out.exists() && !out.is_dir() {
        return Err(format!("`--out {}` is a file, not a directory", out.display()));
    }
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(()) };
    if entries.count() == 0 {
        return Ok(());
    }
    let is_run = ["run.json", "metrics.jsonl", "state.json", "recipe.rlx"]
        .iter()
        .any(|f| out.join(f).exists());
    match (is_run, force) {
        (true, true) => std::fs::remove_dir_all(out).map_err(|e| format!("{}: {e}", out.display())),
        (true, false) => Err(format!(
            "{} already holds a run: continue it with `rlx run --resume {}`, clear it with `--force`, or choose another `--out`",
            out.display(),
            out.display()
        )),
        (false, _) => Err(format!(
            "{} is not empty and holds no rlx run: choose another `--out`",
            out.display()
        )),
    }
}

/// What a run directory remembers about how it was started, for `--resume`.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunConfig {
    recipe: String,
    set: Vec<String>,
    steps: Option<usize>,
    seed: u64,
    #[serde(default = "default_eval_prompts")]
    eval_prompts: usize,
    #[serde(default = "default_eval_samples")]
    eval_samples: usize,
}

/// A run directory's `run.json` and the recipe bytes it ran; `missing` phrases a failure to
/// read `run.json` for the caller.
fn stored_run(
    dir: &Path,
    missing: impl FnOnce(std::io::Error) -> String,
) -> Result<(RunConfig, Vec<u8>), String> {
    let text = std::fs::read_to_string(dir.join("run.json")).map_err(missing)?;
    let config: RunConfig = serde_json::from_str(&text).map_err(|e| format!("run.json: {e}"))?;
    let stored = std::fs::read(dir.join("recipe.rlx")).map_err(|e| format!("recipe.rlx: {e}"))?;
    Ok((config, stored))
}

fn default_eval_samples() -> usize {
    4
}

fn default_eval_prompts() -> usize {
    128
}

fn run(args: RunArgs, style: Style) -> Result<ExitCode, String> {
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
            let (src, _) = read(path)?;
            let config = RunConfig {
                recipe: path.display().to_string(),
                set: args.set.clone(),
                steps: args.steps,
                seed: args.seed.unwrap_or(0),
                eval_prompts: args.eval_prompts.unwrap_or_else(default_eval_prompts),
                eval_samples: args.eval_samples.unwrap_or_else(default_eval_samples),
            };
            (src, config)
        }
        (None, None) => return Err("give a recipe, or `--resume DIR`".into()),
    };
    let analysis = source::analyze_with(&src, &LintConfig::defaults(), &config.set)?;
    if analysis.has_errors() {
        print_diagnostics(&src, &analysis, style);
        eprintln!("{}: {}", src.name, render::summary(&analysis.diagnostics));
        return Ok(ExitCode::from(1));
    }
    let checked = analysis.checked.as_ref().ok_or("internal: no checked graph")?;
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
        device: rlx::exec::device::device(&args.device)?,
        quiet: args.quiet,
        eval_prompts: config.eval_prompts,
        eval_samples: config.eval_samples,
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
            Ok(ExitCode::from(1))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn compare(
    recipes: Vec<PathBuf>,
    seeds: u64,
    out: PathBuf,
    steps: Option<usize>,
    set: Vec<String>,
    eval_prompts: Option<usize>,
    eval_samples: Option<usize>,
    style: Style,
) -> Result<ExitCode, String> {
    use rlx::report::compare;
    if seeds == 0 {
        return Err("`--seeds 0`: compare at least one seed".into());
    }
    // Every recipe is checked before any GPU-hour (or CPU-hour) is spent.
    let mut checked = Vec::new();
    for path in &recipes {
        let Some((_, analysis)) = analyze_clean(path, style)? else { return Ok(ExitCode::from(1)) };
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
    let plan = compare::Plan::new(recipes.clone(), seeds, run_args.clone(), out.clone());
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
    compare::write_report(&plan, &collected, &diffs, &command, plot)?;
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
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn plot(
    runs: &[PathBuf],
    metrics: Vec<String>,
    smooth: usize,
    wall: bool,
    out: &Path,
) -> Result<ExitCode, String> {
    if !matches!(out.extension().and_then(|e| e.to_str()), Some("svg" | "png")) {
        return Err(format!("`{}`: name the plot `.svg` or `.png`", out.display()));
    }
    let dirs = rlx::report::curves::expand(runs);
    if dirs.is_empty() {
        return Err("no run directory (one holding metrics.jsonl) among the paths given".into());
    }
    let runs =
        dirs.iter().map(|d| rlx::report::curves::read_run(d)).collect::<Result<Vec<_>, _>>()?;
    let metrics = if metrics.is_empty() { vec!["reward".to_string()] } else { metrics };
    let spec =
        rlx::report::plot::PlotSpec { metrics: &metrics, smooth: smooth.max(1), title: "", wall };
    rlx::report::plot::write(runs, &spec, out)?;
    println!("wrote {} ({} runs)", out.display(), dirs.len());
    Ok(ExitCode::SUCCESS)
}

/// `rlx values RUN`: the run's recipe is checked again with its overrides, then probed.
fn values(
    run: &Path,
    opts: &rlx::report::values::ProbeOptions,
    json: bool,
    device: &str,
    style: Style,
) -> Result<ExitCode, String> {
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
        print_diagnostics(&src, &analysis, style);
        return Ok(ExitCode::from(1));
    }
    let checked = analysis.checked.as_ref().ok_or("internal: no checked graph")?;
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
