//! The command line's grammar (clap derive): one `Args` struct per subcommand, and the flag
//! groups several share (`--device`, `--stage`, `--set`, `--format`) declared once.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// rlx: declarative RL objectives for language models.
#[derive(Parser)]
// The version names the commit it was built from (build.rs), so a binary says which code it is:
// the result pages' same-numbers check and bug reports rely on it.
#[command(name = "rlx", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RLX_GIT_COMMIT"), ")"), about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// When to colour output.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check recipes and report every diagnostic; exit 1 if any is an error.
    Lint(LintArgs),
    /// Print a recipe's dataflow graph and the plan of what the runtime must compute.
    Graph(GraphArgs),
    /// Semantic diff of two recipes; exit 0 when equivalent, 1 when different.
    Diff(DiffArgs),
    /// Format recipes canonically, in place (or check with --check).
    Fmt(FmtArgs),
    /// The block reference: every block, or one in full.
    Blocks(BlocksArgs),
    /// Train: run every stage of a recipe on the built-in model and tasks, writing a run directory.
    Run(RunArgs),
    /// Throughput of the built-in transformer: sampling (new tokens/s) and training (tokens/s of
    /// forward + backward + AdamW), on random weights of the given shape.
    Bench(BenchArgs),
    /// Per-token log-probabilities and the summed NLL of a text under a model (the numbers to
    /// compare with transformers' for the same ids), or a reward model's score of it (a score
    /// head, or a Yes/No head: log p(yes) − log p(no) after a question).
    Score(ScoreArgs),
    /// Sample from a model: what a trained run's policy writes.
    Generate(GenerateArgs),
    /// Write a tiny random Hugging Face checkpoint (config.json, safetensors, tokenizer.json,
    /// chat template) of a supported family: try `pretrained(...)` recipes without a download.
    TinyCheckpoint(TinyCheckpointArgs),
    /// Evaluate and differentiate a stage's objective on a batch of tensors (no model, no sampling).
    Eval(EvalArgs),
    /// Run recipes over several seeds and report them side by side: held-out metrics before →
    /// after (mean ± standard error), training metrics, wall time, the recipes' diff and curves.
    Compare(CompareArgs),
    /// Plot metrics.jsonl fields of runs against steps as an SVG: seeds of one recipe
    /// (`NAME-sN` directories) as a mean with a ±1 standard-error band, evaluations as points.
    Plot(PlotArgs),
    /// Export a recipe's RL stage for another engine: `rlx export verl RECIPE --out DIR` writes
    /// a verl plugin package (advantage estimator, policy loss, reward function, config
    /// overrides, launcher), or explains with diagnostics what verl would compute differently.
    Export(ExportArgs),
    /// A Language Server Protocol server on stdin/stdout, for editors: diagnostics as you type,
    /// hover, completion, go to definition, references, symbols, formatting and quick fixes.
    Lsp,
    /// Score a finished run's value estimates on held-out prompts: the value head (if the run
    /// trained one) and a K-rollout Monte-Carlo estimate, against the mean verifier reward of
    /// many rollouts from every reasoning-step start (VinePPO's value-prediction check).
    Values(ValuesArgs),
    /// What a diagnostic code means, with an example: `rlx explain level-mismatch`; every code
    /// and lint without one.
    Explain(ExplainArgs),
    /// A shell completion script on stdout: `rlx completions bash > /etc/bash_completion.d/rlx`.
    Completions(CompletionsArgs),
}

impl Command {
    /// Commands that compute with tensors, and so want the tuned thread pool and allocator
    /// (`crate::runtime`); the others start without re-executing.
    pub fn computes(&self) -> bool {
        matches!(
            self,
            Command::Run(_)
                | Command::Bench(_)
                | Command::Score(_)
                | Command::Generate(_)
                | Command::Eval(_)
                | Command::Compare(_)
                | Command::Values(_)
        )
    }
}

/// `--device`.
#[derive(Args)]
pub struct DeviceArg {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `--stage`, where it defaults to the last stage.
#[derive(Args)]
pub struct StageArg {
    /// The stage (default: the last).
    #[arg(long)]
    pub stage: Option<String>,
}

/// `--set PATH=VALUE`, repeatable.
#[derive(Args)]
pub struct SetArg {
    /// Override a recipe value, e.g. `rl.optim.lr=1e-5`, `policy.layers=1`,
    /// `arith.problems=200` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Target {
    /// verl's PPO trainer (`rlx export verl`).
    Verl,
}

/// What `rlx lint --target` checks a recipe against.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum LintTarget {
    /// verl's PPO trainer (`rlx export verl`).
    Verl,
    /// A Tinker-protocol training server (`rlx run --engine tinker`).
    Tinker,
}

/// `--format`: what a command with machine output prints.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Format {
    /// For people (`human` is accepted too).
    #[value(alias = "human")]
    Text,
    /// JSON on stdout, for programs.
    Json,
}

/// `--format text|json`, on every command with machine output.
#[derive(Args)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The same as `--format json` (kept for scripts written before `--format`).
    #[arg(long, hide = true)]
    pub json: bool,
}

impl FormatArg {
    pub fn json(&self) -> bool {
        self.json || self.format == Format::Json
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum GraphFormat {
    /// An indented listing and the runtime's plan.
    Text,
    /// Graphviz.
    Dot,
}

#[derive(Args)]
pub struct LintArgs {
    /// Recipe files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub format: FormatArg,
    /// Silence a lint (repeatable; `rlx explain` lists the lints).
    #[arg(long, value_name = "LINT")]
    pub allow: Vec<String>,
    /// Make a lint an error (repeatable); `--deny warnings` makes every warning an error.
    #[arg(long, value_name = "LINT")]
    pub deny: Vec<String>,
    /// Also report what this engine could not run: verl (the last stage, or `--stage`, as
    /// `rlx export verl` would), a Tinker server (every stage, or `--stage`, as `rlx run
    /// --engine tinker` would).
    #[arg(long, value_enum)]
    pub target: Option<LintTarget>,
    /// The stage `--target` checks (verl: default the last; tinker: default every stage).
    #[arg(long, requires = "target")]
    pub stage: Option<String>,
}

#[derive(Args)]
pub struct GraphArgs {
    /// The recipe.
    pub file: PathBuf,
    /// Only this stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    pub format: GraphFormat,
    /// Show every parameter and setting with its default filled in.
    #[arg(long)]
    pub resolved: bool,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The recipe diffed from.
    pub old: PathBuf,
    /// The recipe diffed to.
    pub new: PathBuf,
}

#[derive(Args)]
pub struct FmtArgs {
    /// Recipe files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Report unformatted files instead of rewriting them; exit 1 if any.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args)]
pub struct BlocksArgs {
    /// A block to show in full (default: the index of every block).
    pub name: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// The recipe (optional with --resume: the run directory has a copy).
    pub recipe: Option<PathBuf>,
    /// Run directory (default: runs/NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cap every stage at this many steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// The run's seed (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub set: SetArg,
    /// Continue the run in this directory from its last checkpoint, with the recipe,
    /// overrides, steps and seed it was started with.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Clear the run directory first if it holds an earlier run (without it, a non-empty
    /// directory is refused).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Held-out prompts for the before/after task metric (default 128).
    #[arg(long)]
    pub eval_prompts: Option<usize>,
    /// Samples per held-out prompt (default 4): metrics are means, `pass@k` uses them all.
    #[arg(long)]
    pub eval_samples: Option<usize>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Where the models train: this machine, or a Tinker-protocol server (`--server`).
    #[arg(long, value_enum, default_value_t = EngineKind::Local)]
    pub engine: EngineKind,
    /// The Tinker server's URL, e.g. `http://HOST:8000` (`--engine tinker`; its API key is
    /// read from `TINKER_API_KEY`, or printed by the command in `TINKER_CREDENTIAL_CMD`, and
    /// never written anywhere). `NAME=URL` puts the recipe's
    /// model NAME on a server of its own (whose base model is NAME's checkpoint: a teacher of
    /// another size, a model per GPU server), trained there if a stage trains it; repeat it
    /// for several. `ref=URL` reads `ref`
    /// there (for servers that hold one adapter, as SkyRL's FSDP backend). On `--resume`, new
    /// URLs for the same servers.
    #[arg(long, value_name = "[NAME=]URL")]
    pub server: Vec<String>,
    /// The server's base model, as the server names it (default: the only one it serves).
    #[arg(long, value_name = "NAME")]
    pub base_model: Option<String>,
    /// How the server reduces a backward (default: what its start-up self-test finds; needed
    /// for servers that report no gradient norm).
    #[arg(long, value_enum)]
    pub reduction: Option<ReductionArg>,
    /// Leave the run's adapters loaded on its servers when it ends, to sample or train them
    /// there afterwards (default: unloaded, which frees a server that holds one adapter, as
    /// SkyRL's FSDP backend, for the next run at once; the saves stay loadable either way).
    #[arg(long)]
    pub keep_adapters: bool,
}

/// `rlx run --engine`.
#[derive(Clone, Copy, ValueEnum, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// rlx's own trainer on this machine (CPU, or CUDA with `--device`).
    Local,
    /// A Tinker-protocol training server: hosted Tinker, SkyRL, verl_tinker.
    Tinker,
}

/// `rlx run --reduction`.
#[derive(Clone, Copy, ValueEnum, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReductionArg {
    /// Cross-entropy summed over tokens and datums (hosted Tinker, SkyRL FSDP/Megatron,
    /// verl_tinker).
    Sum,
    /// Normalised per datum, then averaged (SkyRL's JAX backend, skyrl-tx).
    Mean,
}

/// `rlx bench --preset`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Preset {
    /// 2 layers × 128.
    Tiny,
    /// 4 layers × 256.
    Small,
    /// 6 layers × 384.
    Base,
}

/// `rlx bench --only`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Workload {
    /// Generating new tokens with a KV cache.
    Sampling,
    /// Forward, backward and an AdamW step.
    Training,
    /// The training step's matrix products alone (forward and both backward products of each
    /// linear layer), in GFLOP/s. Not run unless asked for.
    Matmuls,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Start from a preset shape; the flags below override it.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Transformer layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Hidden width.
    #[arg(long)]
    pub width: Option<usize>,
    /// Attention heads (must divide the width).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Vocabulary size.
    #[arg(long, default_value_t = 512)]
    pub vocab: usize,
    /// Context length (positions).
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Sampling: rows generated together.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Sampling: prompt tokens per row.
    #[arg(long, default_value_t = 16)]
    pub prompt: usize,
    /// Sampling: new tokens per row.
    #[arg(long, default_value_t = 48)]
    pub new_tokens: usize,
    /// Training: sequences per step.
    #[arg(long, default_value_t = 16)]
    pub train_batch: usize,
    /// Training: tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub train_len: usize,
    /// Timed runs per workload (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Only these workloads (repeatable; default: both).
    #[arg(long, value_enum)]
    pub only: Vec<Workload>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub format: FormatArg,
    /// Benchmark a Hugging Face checkpoint directory instead of a built-in shape.
    #[arg(long = "model")]
    pub checkpoint: Option<PathBuf>,
    /// With `--model`: compute in bfloat16 (GPU).
    #[arg(long, requires = "checkpoint")]
    pub bf16: bool,
}

#[derive(Args)]
pub struct ScoreArgs {
    /// A model directory (HF checkpoint, PEFT adapter, RUN/models/NAME) or a run directory.
    pub model: PathBuf,
    /// The text to score.
    #[arg(long, conflicts_with = "jsonl", required_unless_present = "jsonl")]
    pub text: Option<String>,
    /// Score one field of every line of a JSON-lines file.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// The field of each line (with --jsonl).
    #[arg(long, default_value = "text", requires = "jsonl")]
    pub field: String,
    /// Score the text as a `chat = true` recipe feeds a prompt: one user message through the
    /// chat template, generation prompt included.
    #[arg(long)]
    pub chat: bool,
    /// Score as a Yes/No reward model, `log p(yes) − log p(no)` after `text question`: a
    /// language model as a zero-shot judge (a run's `yes_no(...)` model saves its own question
    /// and answers beside its checkpoint; these flags replace them).
    #[arg(long, requires_all = ["yes", "no"])]
    pub question: Option<String>,
    /// The Yes answer (with --question).
    #[arg(long, requires = "question")]
    pub yes: Option<String>,
    /// The No answer (with --question).
    #[arg(long, requires = "question")]
    pub no: Option<String>,
    #[command(flatten)]
    pub format: FormatArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A model directory or a run directory (its `models/policy`).
    pub model: PathBuf,
    /// The prompt to continue.
    #[arg(long)]
    pub prompt: String,
    /// Samples to draw.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Softmax temperature; 0 decodes greedily.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches this.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// New tokens at most.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Render the prompt through the chat template.
    #[arg(long)]
    pub chat: bool,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// `rlx tiny-checkpoint --family`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Smollm,
}

/// `rlx tiny-checkpoint --size`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Size {
    /// For tests: width 32.
    Tiny,
    /// For benchmarks: 6 layers × 384.
    Small,
    /// Qwen2.5-0.5B's shape, about 2 GB.
    #[value(name = "0.5b")]
    HalfB,
}

/// `rlx tiny-checkpoint --transformers`: whose file layout.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Layout {
    /// rope_theta/rope_scaling, torch_dtype, the template in tokenizer_config.json.
    #[value(name = "4")]
    V4,
    /// rope_parameters, dtype, chat_template.jinja.
    #[value(name = "5")]
    V5,
}

#[derive(Args)]
pub struct TinyCheckpointArgs {
    /// The directory to create.
    pub dir: PathBuf,
    /// The model family.
    #[arg(long, value_enum, default_value = "qwen2")]
    pub family: Family,
    /// Safetensors files to split the weights into (more than one writes an index).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// The shape.
    #[arg(long, value_enum, default_value = "tiny")]
    pub size: Size,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Whose file layout: transformers 5 or 4.
    #[arg(long, value_enum, default_value = "5")]
    pub transformers: Layout,
    /// Store the weights in bfloat16, as most released models are.
    #[arg(long)]
    pub bf16: bool,
    /// A reward model: `*ForSequenceClassification` with one label (a score head instead of
    /// the LM head), padding = EOS, for `reward_model(pretrained(DIR))`.
    #[arg(long)]
    pub reward_model: bool,
}

/// `rlx eval --dtype`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Dtype {
    F32,
    /// Compares long sums with a float64 reference.
    F64,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The recipe.
    pub recipe: PathBuf,
    #[command(flatten)]
    pub stage: StageArg,
    /// Input tensors by name, as safetensors.
    #[arg(long, conflicts_with_all = ["synthetic", "inputs"])]
    pub batch: Option<PathBuf>,
    /// Evaluate on a deterministic synthetic batch of B sequences × T tokens, e.g. `8x32`.
    #[arg(long, value_name = "BxT")]
    pub synthetic: Option<String>,
    /// Seed of the synthetic batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write every binding, the loss, its terms and `grad.INPUT` here, as safetensors.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// List the inputs the stage reads (names, dtypes, shapes) and exit.
    #[arg(long)]
    pub inputs: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Print the time spent on every node.
    #[arg(long)]
    pub profile: bool,
    /// Float precision of the evaluation.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Recipes (the first is the one the others are diffed against).
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    /// Seeds 0..N for every recipe.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Directory for the runs and the report; finished runs in it are reused, stopped ones
    /// resumed.
    #[arg(long)]
    pub out: PathBuf,
    /// Cap every stage at this many steps (every recipe alike).
    #[arg(long)]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub set: SetArg,
    /// Held-out prompts (default 128).
    #[arg(long)]
    pub eval_prompts: Option<usize>,
    /// Samples per held-out prompt (default 4).
    #[arg(long)]
    pub eval_samples: Option<usize>,
}

#[derive(Args)]
pub struct PlotArgs {
    /// Run directories, or directories holding them (a compare's `runs/`).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Fields to plot, one panel each (default: reward).
    #[arg(long = "metric", value_name = "FIELD")]
    pub metrics: Vec<String>,
    /// Trailing moving average over this many steps.
    #[arg(long, default_value_t = 1)]
    pub smooth: usize,
    /// Training seconds on the x axis instead of steps (the steps' own times summed; warm starts
    /// and evaluations left out): compare methods at equal compute time.
    #[arg(long)]
    pub wall: bool,
    /// The file to write: `.svg`, or `.png` (the SVG rasterised with the system's fonts).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The engine to export for.
    #[arg(value_enum)]
    pub engine: Target,
    /// The recipe.
    pub recipe: PathBuf,
    #[command(flatten)]
    pub stage: StageArg,
    /// The package directory to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub set: SetArg,
}

#[derive(Args)]
pub struct ValuesArgs {
    /// A run directory (it holds the recipe, the overrides and the trained model).
    pub run: PathBuf,
    /// The RL stage whose model and sampling to probe (default: the first that samples).
    #[arg(long)]
    pub stage: Option<String>,
    /// Held-out prompts.
    #[arg(long, default_value_t = 64)]
    pub prompts: usize,
    /// Responses per prompt.
    #[arg(long, default_value_t = 2)]
    pub samples: usize,
    /// Rollouts per state for the Monte-Carlo estimate (default: the recipe's
    /// `vine_values` k, else 9).
    #[arg(long)]
    pub k: Option<usize>,
    /// Rollouts per state for the reference ("true") value.
    #[arg(long, default_value_t = 64)]
    pub truth: usize,
    /// Seed of the probe's sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub format: FormatArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args)]
pub struct ExplainArgs {
    /// A diagnostic code or lint, e.g. `level-mismatch` (default: list them all).
    pub code: Option<String>,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand and every argument says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(sub.get_name().to_string());
            }
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !["help", "version"].contains(&id) {
                    missing.push(format!("{} {id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
