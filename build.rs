//! Records the git commit rlx is built from (`RLX_GIT_COMMIT`, `-dirty` when the work tree had
//! uncommitted changes), so that reports written by `rlx compare` name the code that produced
//! their numbers. Outside a git checkout (a crates.io build) it is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // A commit or checkout moves HEAD or the index; an edit moves a source file's mtime.
    for path in [".git/HEAD", ".git/index", "src", "grammar", "recipes", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) if !head.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{head}-dirty") } else { head }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=RLX_GIT_COMMIT={commit}");
}
