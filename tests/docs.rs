//! The book (`docs/`) and the README stay true to the code: the reference pages are generated
//! from the block registry, the diagnostic code registry and the CLI's own help, and a stale
//! committed page fails this test (which rewrites it: commit the result); every fenced `rlx`
//! block lints without errors; every page is in the book's table of contents and every
//! relative link resolves.

use std::path::{Path, PathBuf};
use std::process::Command;

use rlx::check::lints::LintConfig;
use rlx::source::{SourceFile, analyze};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Writes `contents` to `path` when it differs and fails, naming the page (rust-analyzer's
/// `ensure_file_contents`): the next run passes, and the diff is there to commit.
fn ensure_current(path: &Path, contents: &str) -> Option<String> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    if old.replace("\r\n", "\n") == contents {
        return None;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    Some(format!("{} was stale and has been regenerated; commit it", path.display()))
}

fn rlx(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_rlx")).args(args).output().unwrap();
    assert!(o.status.success(), "rlx {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Every command's `--help`, from clap through the binary.
fn commands_page() -> String {
    let top = rlx(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() > 10, "{top}");
    let mut out = String::from(
        "<!-- Generated from the command line's own help (clap) by `cargo test --test docs`; \
         do not edit. -->\n\n# Commands\n\nEvery command with every option, as `rlx COMMAND \
         --help` prints it.\n\n```text\n",
    );
    out.push_str(top.trim_end());
    out.push_str("\n```\n");
    for c in &commands {
        out.push_str(&format!("\n## `rlx {c}`\n\n```text\n"));
        out.push_str(rlx(&[c, "--help"]).trim_end());
        out.push_str("\n```\n");
    }
    out
}

#[test]
fn reference_pages_are_generated_from_the_code() {
    let dir = root().join("docs/reference");
    let stale: Vec<String> = [
        ("blocks.md", rlx::blocks::docs::markdown()),
        ("diagnostics.md", rlx::diag::reference::markdown()),
        ("builtins.md", rlx::ir::reference::markdown()),
        ("commands.md", commands_page()),
    ]
    .into_iter()
    .filter_map(|(name, text)| ensure_current(&dir.join(name), &text))
    .collect();
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

/// Markdown files of the book and the README.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                // mdbook's output.
                if p.file_name().is_some_and(|n| n != "book") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut out);
    out.sort();
    out
}

/// The fenced blocks of one language in a Markdown text, with the line each starts on.
fn fenced(text: &str, lang: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.strip_prefix("```").is_some_and(|l| l.trim() == lang) => {
                current = Some((i + 1, String::new()));
            }
            Some(_) if trimmed.starts_with("```") => out.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_rlx_block_in_the_docs_and_the_readme_lints_without_errors() {
    // The diagnostics reference shows the `tests/ui` cases: recipes that are wrong on purpose,
    // checked by `tests/ui.rs` to print exactly what the page shows.
    let skip = root().join("docs/reference/diagnostics.md");
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in pages().into_iter().filter(|p| *p != skip) {
        let text = std::fs::read_to_string(&page).unwrap();
        for (line, body) in fenced(&text, "rlx") {
            let name = format!("{}:{line}", page.strip_prefix(root()).unwrap().display());
            // Files a recipe names (checkpoints, data, reward programs) are the reader's.
            let config = LintConfig {
                allow: ["missing-checkpoint", "missing-reward-program"].map(String::from).to_vec(),
                deny: vec![],
                deny_warnings: false,
            };
            let analysis = analyze(&SourceFile::new(&name, body), &config);
            let errors: Vec<_> = analysis
                .diagnostics
                .iter()
                .filter(|d| d.severity == rlx::diag::Severity::Error)
                // A block of declarations alone shows how to declare something; everything
                // else in it is still checked.
                .filter(|d| d.code != "missing-stage")
                .map(|d| format!("{name}: {} {}", d.code, d.message))
                .collect();
            failures.extend(errors);
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 6, "only {checked} rlx blocks found");
}

#[test]
fn every_page_is_in_the_table_of_contents_and_every_relative_link_resolves() {
    let docs = root().join("docs");
    let summary = std::fs::read_to_string(docs.join("SUMMARY.md")).unwrap();
    let mut problems = Vec::new();
    for page in pages() {
        // mdBook renders only the pages its table of contents names.
        if let Ok(rel) = page.strip_prefix(&docs)
            && rel != Path::new("SUMMARY.md")
            && !summary.contains(&format!("]({})", rel.display()))
        {
            problems.push(format!("docs/{} is not in docs/SUMMARY.md", rel.display()));
        }
        let text = std::fs::read_to_string(&page).unwrap();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            for target in links(line) {
                let file = target.split('#').next().unwrap();
                if file.is_empty() || file.contains("://") || file.starts_with("mailto:") {
                    continue;
                }
                if !page.parent().unwrap().join(file).exists() {
                    problems.push(format!("{}: broken link `{target}`", page.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The targets of `[text](target)` and `![alt](target)` links on one line.
fn links(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim());
        rest = &after[end..];
    }
    out
}

/// What a change to which makes a result page's numbers out of date: the code that computes
/// them (besides the page's own recipes).
const MATHS: [&str; 13] = [
    "src/blocks",
    "src/exec",
    "src/model",
    "src/train",
    "src/tasks",
    "src/sample.rs",
    "src/rng.rs",
    "src/tokenizer.rs",
    // Files there that compute nothing a result reads.
    ":(exclude)src/blocks/docs.rs",
    ":(exclude)src/train/tensorboard.rs",
    ":(exclude)src/train/progress.rs",
    ":(exclude)src/model/hf_tiny.rs",
    // A run on a Tinker server: no result page is one (a page of remote runs would need it).
    ":(exclude)src/train/run/remote",
];

const STALE_BEGIN: &str = "<!-- stale: written by `cargo test --test docs` -->";
const STALE_END: &str = "<!-- /stale -->";

/// The files among `paths` that differ between `commit` and the work tree, new files not yet
/// added to git included (they are compiled in all the same); `None` when git or the commit is
/// not at hand (a tarball, a shallow clone).
fn changed_since(commit: &str, paths: &[String]) -> Option<Vec<String>> {
    let git = |args: &[&str]| {
        let o = Command::new("git").current_dir(root()).args(args).args(paths).output().ok()?;
        o.status.success().then(|| {
            String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect::<Vec<_>>()
        })
    };
    let mut files = git(&["diff", "--name-only", commit, "--"])?;
    files.extend(git(&["ls-files", "--others", "--exclude-standard", "--"])?);
    files.sort();
    files.dedup();
    Some(files)
}

/// One result page: where it is, the commits whose runs it reports, its recipes, and the
/// files that determine its numbers and changed since those commits.
struct ResultPage {
    md_path: PathBuf,
    commits: Vec<String>,
    recipes: Vec<String>,
    changed: Vec<String>,
}

fn result_pages() -> Vec<ResultPage> {
    let results = root().join("docs/results");
    let mut pages = Vec::new();
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&results).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    for dir in dirs {
        let (md_path, json_path) = (dir.join("report.md"), dir.join("report.json"));
        if !json_path.exists() {
            continue;
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let prov = &report["provenance"];
        // The numbers come from the runs, which a compare may have reused from older commits.
        let mut commits: Vec<String> = prov["run_commits"]
            .as_object()
            .map(|m| m.keys().filter(|c| *c != "unknown").cloned().collect())
            .unwrap_or_default();
        if commits.is_empty() {
            commits.push(prov["commit"].as_str().unwrap().to_string());
        }
        let command = prov["command"].as_str().unwrap();
        let recipes: Vec<String> =
            command.split_whitespace().filter(|w| w.ends_with(".rlx")).map(String::from).collect();
        assert!(!recipes.is_empty(), "{}: no recipes in `{command}`", json_path.display());
        let mut paths = recipes.clone();
        paths.extend(MATHS.iter().map(|p| p.to_string()));
        let mut changed = std::collections::BTreeSet::new();
        for c in &commits {
            let c = c.trim_end_matches("-dirty");
            match changed_since(c, &paths) {
                Some(files) => changed.extend(files),
                None => eprintln!("{}: commit {c} not in this checkout", md_path.display()),
            }
        }
        pages.push(ResultPage {
            md_path,
            commits,
            recipes,
            changed: changed.into_iter().collect(),
        });
    }
    pages
}

/// Where `same_numbers_as_the_pages_runs` records that the code as it is now gives a page's
/// runs' numbers bit for bit: per commit of runs, the recipes run with both binaries and the
/// content (git blob hash) of every file that had changed since.
const SAME_NUMBERS: &str = "docs/results/same-numbers.json";

/// A work-tree file's git blob hash.
fn blob(path: &str) -> Option<String> {
    let o = Command::new("git").current_dir(root()).args(["hash-object", path]).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The changed files of `page` that a recorded check covers: same commit of runs, all the
/// page's recipes run, and the file's content now what was checked.
fn verified(page: &ResultPage, checks: &serde_json::Value) -> Vec<String> {
    let empty = vec![];
    let checks = checks["checks"].as_array().unwrap_or(&empty);
    page.changed
        .iter()
        .filter(|f| {
            checks.iter().any(|c| {
                let from = c["from"].as_str().unwrap_or("-");
                let recipes: Vec<&str> = c["recipes"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(|r| r.as_str())
                    .collect();
                page.commits.iter().all(|p| p.trim_end_matches("-dirty") == from)
                    && page.recipes.iter().all(|r| recipes.contains(&r.as_str()))
                    && c["files"][f.as_str()]
                        .as_str()
                        .is_some_and(|h| Some(h.to_string()) == blob(f))
            })
        })
        .cloned()
        .collect()
}

fn same_numbers_checks() -> serde_json::Value {
    std::fs::read_to_string(root().join(SAME_NUMBERS))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::json!({"checks": []}))
}

/// A result page (`docs/results/NAME/report.md`, written by `rlx compare`) says so at its top
/// when a file that determines its numbers — its recipes, or the maths — changed after the
/// commit that produced it, unless `same_numbers_as_the_pages_runs` found the code as it is
/// now to give those runs' numbers bit for bit.
#[test]
fn result_pages_say_when_the_code_changed_after_them() {
    let checks = same_numbers_checks();
    let mut stale = Vec::new();
    let pages = result_pages();
    for page in &pages {
        let ok = verified(page, &checks);
        let changed: Vec<String> =
            page.changed.iter().filter(|f| !ok.contains(f)).cloned().collect();
        let (md_path, commits) = (&page.md_path, &page.commits);
        let commit = commits.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
        let changed: Vec<String> = changed.into_iter().collect();
        let md = std::fs::read_to_string(md_path).unwrap();
        let body = match (md.find(STALE_BEGIN), md.find(STALE_END)) {
            (Some(a), Some(b)) => format!("{}{}", &md[..a], md[b + STALE_END.len()..].trim_start()),
            _ => md.clone(),
        };
        let note = if changed.is_empty() {
            String::new()
        } else {
            let shown: Vec<String> = changed.iter().take(6).map(|f| format!("`{f}`")).collect();
            let more = if changed.len() > 6 {
                format!(" and {} more", changed.len() - 6)
            } else {
                String::new()
            };
            format!(
                "{STALE_BEGIN}\n> **Older than the code.** Since {commit}, the commit(s) that produced \
                 these numbers, {} file(s) that determine them changed ({}{more}): re-run the \
                 command below to measure them again.\n{STALE_END}\n\n",
                changed.len(),
                shown.join(", ")
            )
        };
        // The note goes right under the page's title.
        let (title, rest) = body.split_once('\n').unwrap_or((&body, ""));
        let want = format!("{title}\n\n{note}{}", rest.trim_start());
        if let Some(why) = ensure_current(md_path, &want) {
            stale.push(why);
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
    eprintln!("{} result pages checked", pages.len());
}

/// After a change to a file the result pages' numbers depend on: runs every page's recipes
/// for 3 steps (seed 0, 16 held-out prompts × 2 samples) with the binary that made the
/// pages' runs (`RLX_OLD_BIN`, which must name that commit, or `COMMIT=PATH`; pages of runs at several commits:
/// one binary each, separated by `:`) and with this one, each with its
/// own warm-start cache, and compares every metric but the timings. Equal throughout: the
/// files' contents are recorded in `docs/results/same-numbers.json`, and the pages stay
/// current; any difference fails, naming the recipe and the line. Run with
/// `RLX_OLD_BIN=... cargo test --release --test docs -- --ignored same_numbers --nocapture`.
#[test]
#[ignore]
fn same_numbers_as_the_pages_runs() {
    // Each entry is `PATH` (the commit read from `PATH --version`, or found among its bytes:
    // binaries older than the version line embed it only where the compiler kept it whole) or
    // `COMMIT=PATH` (declared by whoever built it).
    let olds: Vec<(PathBuf, String)> = std::env::var("RLX_OLD_BIN")
        .expect("RLX_OLD_BIN: the binary that made the runs")
        .split(':')
        .map(|entry| match entry.split_once('=') {
            Some((commit, path)) => (PathBuf::from(path), format!("({commit})")),
            None => {
                let version = Command::new(entry).arg("--version").output().unwrap();
                let bytes = std::fs::read(entry).unwrap();
                (
                    PathBuf::from(entry),
                    String::from_utf8_lossy(&version.stdout).into_owned()
                        + &String::from_utf8_lossy(&bytes),
                )
            }
        })
        .collect();
    let new = PathBuf::from(env!("CARGO_BIN_EXE_rlx"));
    let mut checks = same_numbers_checks();
    let mut by_commit: std::collections::BTreeMap<String, (Vec<String>, Vec<String>)> =
        Default::default();
    for page in result_pages().into_iter().filter(|p| !p.changed.is_empty()) {
        assert_eq!(page.commits.len(), 1, "{}: runs of several commits", page.md_path.display());
        let entry =
            by_commit.entry(page.commits[0].trim_end_matches("-dirty").to_string()).or_default();
        entry.0.extend(page.recipes.iter().cloned());
        entry.1.extend(page.changed.iter().cloned());
    }
    let tmp = tempfile::tempdir().unwrap();
    let metrics = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.retain(|k, _| !(k.contains("second") || k.contains("per_s") || k == "wall"));
                v
            })
            .collect()
    };
    // The changed files' contents as they are when the runs start: what this binary was built
    // from (cargo builds it just before), and what the check records if it passes.
    let before: std::collections::BTreeMap<String, Option<String>> =
        by_commit.values().flat_map(|(_, files)| files).map(|f| (f.clone(), blob(f))).collect();
    for (from, (mut recipes, mut files)) in by_commit {
        // The binary built from `from`: it embeds the commit, and not as `-dirty`.
        let dirty = format!("{from}-dirty");
        let old = olds
            .iter()
            .find(|(_, said)| said.contains(&from) && !said.contains(&dirty))
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| panic!("no binary in RLX_OLD_BIN is a build of commit {from}"));
        recipes.sort();
        recipes.dedup();
        files.sort();
        files.dedup();
        for recipe in &recipes {
            let mut got = Vec::new();
            for (which, bin) in [("old", &old), ("new", &new)] {
                // A recipe can be on pages of two commits: one run directory per commit.
                let out = tmp.path().join(format!("{which}-{from}-{}", recipe.replace('/', "_")));
                let o = Command::new(bin)
                    .current_dir(root())
                    .env("RLX_CACHE", tmp.path().join(format!("cache-{which}-{from}")))
                    .args(["run", recipe, "--steps", "3", "--seed", "0", "--quiet"])
                    .args(["--eval-prompts", "16", "--eval-samples", "2", "--out"])
                    .arg(&out)
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "{which} {recipe}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                got.push(metrics(&out));
            }
            assert_eq!(got[0].len(), got[1].len(), "{recipe}: lines of metrics");
            for (i, (a, b)) in got[0].iter().zip(&got[1]).enumerate() {
                assert_eq!(a, b, "{recipe}: metrics line {i} differs");
            }
            eprintln!("{recipe}: the same {} lines of metrics", got[0].len());
        }
        let head = Command::new("git")
            .current_dir(root())
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .unwrap();
        let record = serde_json::json!({
            "from": from,
            "checked_on": String::from_utf8_lossy(&head.stdout).trim(),
            "how": "3 steps, seed 0, 16 held-out prompts x 2 samples, every metric but timings, old binary vs work tree (cargo test --release --test docs -- --ignored same_numbers)",
            "recipes": recipes,
            "files": files.iter().map(|f| (f.clone(), serde_json::json!(before[f]))).collect::<serde_json::Map<_, _>>(),
        });
        let list = checks["checks"].as_array_mut().unwrap();
        list.retain(|c| c["from"] != from.as_str());
        list.push(record);
    }
    // A file edited while the runs went on was not what they ran: record nothing.
    for (f, was) in &before {
        assert_eq!(&blob(f), was, "{f} changed while the check ran: run it again");
    }
    let text = serde_json::to_string_pretty(&checks).unwrap() + "\n";
    std::fs::write(root().join(SAME_NUMBERS), text).unwrap();
}
