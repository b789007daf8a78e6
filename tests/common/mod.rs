//! What several test files share.

use std::path::{Path, PathBuf};

/// Every recipe file: `recipes/*.rlx`, the peer profiles in `recipes/peers/*.rlx` and the
/// comparison baselines in `recipes/baselines/*.rlx`, sorted.
#[allow(dead_code)]
pub fn recipe_paths() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("peers"), root.join("baselines")] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "rlx") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
