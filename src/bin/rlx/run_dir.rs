//! A run directory as the command line sees it: `run.json` (how the run was started, for
//! `--resume` and `rlx values`), the recipe copy, and the rule for starting in one.

use std::path::Path;

/// A new run needs an empty (or absent) directory; `--force` clears one that holds an earlier
/// rlx run, and only such a one.
pub fn prepare_run_dir(out: &Path, force: bool) -> Result<(), String> {
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
pub struct RunConfig {
    pub recipe: String,
    pub set: Vec<String>,
    pub steps: Option<usize>,
    pub seed: u64,
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// A run on a Tinker server: where (never the API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tinker: Option<TinkerConfig>,
}

/// The server of a `--engine tinker` run.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub struct TinkerConfig {
    pub server: String,
    /// Models on servers of their own (`--server NAME=URL`), by model name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub servers: std::collections::BTreeMap<String, String>,
    pub base_model: Option<String>,
    pub reduction: Option<crate::args::ReductionArg>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_adapters: bool,
}

/// A run directory's `run.json` and the recipe bytes it ran; `missing` phrases a failure to
/// read `run.json` for the caller.
pub fn stored_run(
    dir: &Path,
    missing: impl FnOnce(std::io::Error) -> String,
) -> Result<(RunConfig, Vec<u8>), String> {
    let text = std::fs::read_to_string(dir.join("run.json")).map_err(missing)?;
    let config: RunConfig = serde_json::from_str(&text).map_err(|e| format!("run.json: {e}"))?;
    let stored = std::fs::read(dir.join("recipe.rlx")).map_err(|e| format!("recipe.rlx: {e}"))?;
    Ok((config, stored))
}

pub fn default_eval_samples() -> usize {
    4
}

pub fn default_eval_prompts() -> usize {
    128
}
