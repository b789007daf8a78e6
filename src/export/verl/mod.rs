//! `rlx export verl`: a recipe's RL stage as a verl plugin package (registered advantage
//! estimator and policy loss, a reward function, config overrides), or diagnostics saying which
//! part verl would compute differently and why.

mod files;
mod plan;
mod python;

use std::path::Path;

pub use files::{File, Rows, VERL_VERSION, registry_name};
pub use plan::Plan;

use crate::check::Checked;
use crate::diag::Diagnostic;
use crate::source::SourceFile;
use crate::tasks::{Kind, Task};

/// What verl cannot run of stage `index`, as diagnostics (warnings where it runs with a caveat).
pub fn check(checked: &Checked, index: usize) -> Vec<Diagnostic> {
    plan::plan(checked, index).1
}

/// The package's files, or the diagnostics that stop the export (with its warnings either way).
pub fn export(
    checked: &Checked,
    index: usize,
    source: &SourceFile,
    recipe_path: &str,
) -> (Option<Vec<File>>, Vec<Diagnostic>) {
    let (plan, diags) = plan::plan(checked, index);
    let Some(plan) = plan else { return (None, diags) };
    let (data, verifier) = data_of(checked, index);
    let cx = files::Context { checked, index, source, recipe_path, data, verifier };
    (Some(files::files(&plan, &cx)), diags)
}

/// The stage's prompts with the ground truth its verifier needs, and which verifier that is.
fn data_of(checked: &Checked, index: usize) -> (Option<(Rows, Rows)>, Option<String>) {
    let stage = &checked.program.stages[index];
    let Some((_, data)) = &stage.source else { return (None, None) };
    let Some(decl) = checked.program.data_decl(&data.data) else { return (None, None) };
    let resolved = checked.decl_params.get(&decl.name.name).cloned().unwrap_or_default();
    let Ok(task) = Task::build(decl.spec.name, &resolved) else { return (None, None) };
    let truth = |p: &str| -> Option<String> {
        match task.kind {
            Kind::Arith => crate::tasks::arith::answer_of(p).map(|a| a.to_string()),
            Kind::Jsonl(_) => task.answers.get(p).cloned(),
            Kind::Reviews => None,
        }
    };
    let rows = |ps: &[crate::tasks::Prompt]| -> Rows {
        ps.iter().filter_map(|p| Some((p.text.clone(), truth(&p.text)?))).collect()
    };
    let verifier = match task.kind {
        Kind::Arith => Some("arith".to_string()),
        Kind::Jsonl(f) => Some(f.name().to_string()),
        Kind::Reviews => None,
    };
    (Some((rows(&task.train), rows(&task.eval))), verifier)
}

/// Writes the package into `dir` (created if missing).
pub fn write(files: &[File], dir: &Path) -> Result<(), String> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
        }
        std::fs::write(&path, &f.text)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let launch = dir.join("launch.sh");
        if launch.exists() {
            let _ = std::fs::set_permissions(&launch, std::fs::Permissions::from_mode(0o755));
        }
    }
    Ok(())
}
