//! The files a recipe names, checked before any training: a `pretrained(...)` directory must
//! exist and hold a config rlx can run (read without loading weights), so a typo or an
//! unsupported checkpoint is caught by `rlx lint`, not an hour into a job.

use super::Checked;
use crate::diag::Diagnostic;
use crate::ir::graph::ModelInit;

/// One diagnostic per pretrained model whose directory is missing (the `missing-checkpoint`
/// lint) or unusable (`invalid-checkpoint`).
pub(super) fn check_models(checked: &Checked, diags: &mut Vec<Diagnostic>) {
    for m in &checked.program.models {
        if !matches!(m.init, ModelInit::Pretrained) {
            continue;
        }
        let Some(resolved) = checked.decl_params.get(&m.name.name) else { continue };
        let Some(path) = resolved.iter().find(|r| r.name == "path") else { continue };
        let Some(dir) = path.value.str() else { continue };
        let span = path.span.unwrap_or(m.span);
        let dir = std::path::Path::new(dir);
        if !dir.exists() {
            super::lints::push(
                diags,
                "missing-checkpoint",
                Diagnostic::warning("", format!("model directory `{}` does not exist", dir.display()))
                    .primary(span, "not found from the directory rlx runs in")
                    .help(format!(
                        "point it at a Hugging Face checkpoint (relative paths are relative to the working directory); `rlx tiny-checkpoint {}` writes a tiny random one to try the recipe",
                        dir.display()
                    )),
            );
            continue;
        }
        if let Err(e) = crate::model::dir::check(dir) {
            diags.push(
                Diagnostic::error("invalid-checkpoint", e)
                    .primary(span, "this checkpoint cannot be run")
                    .help("rlx runs Llama, Mistral, Qwen2, Qwen3 and GPT-2 checkpoints in safetensors, and PEFT LoRA adapters over them"),
            );
        }
    }
}
