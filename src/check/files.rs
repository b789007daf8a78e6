//! The files a recipe names, checked before any training: a `pretrained(...)` directory must
//! exist and hold a config rlx can run (read without loading weights), so a typo or an
//! unsupported checkpoint is caught by `rlx lint`, not an hour into a job. Likewise the program
//! of a `command(...)` reward must be found (on `PATH`, or at the path written).

use super::Checked;
use crate::diag::Diagnostic;
use crate::ir::graph::ExternalKind;

/// One diagnostic per pretrained model whose directory is missing (the `missing-checkpoint`
/// lint) or unusable (`invalid-checkpoint`).
pub(super) fn check_models(checked: &Checked, diags: &mut Vec<Diagnostic>) {
    for m in &checked.program.models {
        if !m.init.is_pretrained() {
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

/// One `missing-reward-program` lint per `command(...)` reward whose program is not found.
pub(super) fn check_reward_programs(checked: &Checked, diags: &mut Vec<Diagnostic>) {
    for r in &checked.program.rewards {
        let Some(spec) = &r.external else { continue };
        let ExternalKind::Command(argv) = &spec.kind else { continue };
        let Some(program) = argv.first() else { continue };
        if find_program(program).is_some() {
            continue;
        }
        let where_ = if program.contains('/') {
            "no such file from the directory rlx runs in"
        } else {
            "not found on PATH"
        };
        super::lints::push(
            diags,
            "missing-reward-program",
            Diagnostic::warning("", format!("reward `{}`: program `{program}` not found", r.name.name))
                .primary(spec.span, where_)
                .help("install it or give its path; the run starts the command once and fails at the first batch if it cannot"),
        );
    }
}

/// Where a program would be run from: a path as written, else the first `PATH` entry that
/// has an executable of that name.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                m.is_file()
            }
        })
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}
