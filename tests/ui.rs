//! Golden tests of diagnostics: every `tests/ui/NAME.rlx` is a recipe with a mistake, and
//! `tests/ui/NAME.stderr` is what `rlx lint` prints for it (colours off, 80 columns).
//! A first line `# args: --deny LINT --allow LINT` sets the lint configuration.
//! Regenerate with `RLX_BLESS=1 cargo test --test ui`, then review the diff.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use rlx::check::lints::{LINTS, LintConfig};
use rlx::render::{self, Style};
use rlx::source::{SourceFile, analyze};

/// The lint configuration of a case, and whether it lints `--target verl`.
fn config_from(text: &str) -> (LintConfig, bool) {
    let mut config = LintConfig::defaults();
    let mut verl = false;
    if let Some(args) = text.lines().next().and_then(|l| l.strip_prefix("# args:")) {
        let words: Vec<&str> = args.split_whitespace().collect();
        for pair in words.chunks(2) {
            match pair {
                ["--deny", "warnings"] => config.deny_warnings = true,
                ["--deny", l] => config.deny.push(l.to_string()),
                ["--allow", l] => config.allow.push(l.to_string()),
                ["--target", "verl"] => verl = true,
                other => panic!("bad args header: {other:?}"),
            }
        }
    }
    (config, verl)
}

/// What `rlx lint` prints for a file.
fn render_case(name: &str, bytes: &[u8]) -> String {
    let (src, encoding) = SourceFile::from_bytes(name, bytes);
    let (config, verl) = config_from(&src.text);
    let mut analysis = analyze(&src, &config);
    if let Some(d) = encoding {
        analysis.diagnostics.insert(0, d);
    }
    // As `rlx lint --target verl`: the last stage, when the recipe itself is sound.
    if verl && !analysis.has_errors() {
        let checked = analysis.checked.as_ref().unwrap();
        let found = rlx::export::verl::check(checked, checked.program.stages.len() - 1);
        rlx::source::add_diagnostics(&src, &mut analysis, found, &config);
    }
    let mut out = String::new();
    for d in &analysis.diagnostics {
        out.push_str(&render::human(d, &src, Style::plain()));
    }
    out.push_str(&format!("{name}: {}\n", render::summary(&analysis.diagnostics)));
    out
}

#[test]
fn ui_cases_match_their_golden_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let bless = std::env::var_os("RLX_BLESS").is_some();
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for path in names.iter().filter(|p| p.extension().is_some_and(|e| e == "rlx")) {
        cases += 1;
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let actual = render_case(&name, &fs::read(path).unwrap());
        let golden = path.with_extension("stderr");
        if bless {
            fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&golden).unwrap_or_default();
        if actual != expected {
            failures
                .push(format!("--- {name}: expected\n{expected}\n--- {name}: actual\n{actual}"));
        }
    }
    assert!(cases >= 30, "only {cases} UI cases");
    assert!(
        failures.is_empty(),
        "{} UI case(s) differ (RLX_BLESS=1 to regenerate):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every diagnostic code the front half can emit, and every lint, has at least one UI case.
/// (Runtime diagnostics, emitted under `src/exec/` and `src/train/`, are covered by
/// `tests/eval.rs` and `tests/run.rs`.)
#[test]
fn every_diagnostic_code_has_a_ui_case() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut emitted = BTreeSet::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("exec") && !path.ends_with("train") {
                    stack.push(path);
                }
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            for marker in ["Diagnostic::error(\"", "Diagnostic::warning(\""] {
                for piece in text.split(marker).skip(1) {
                    let code = piece.split('"').next().unwrap();
                    if !code.is_empty() {
                        emitted.insert(code.to_string());
                    }
                }
            }
        }
    }
    emitted.extend(LINTS.iter().map(|l| l.name.to_string()));
    // Too large to keep as a case; covered by a unit test of the parser.
    emitted.remove("file-too-large");
    let mut covered = String::new();
    for entry in fs::read_dir(root.join("tests/ui")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "stderr") {
            covered.push_str(&fs::read_to_string(path).unwrap());
        }
    }
    let missing: Vec<&String> = emitted
        .iter()
        .filter(|c| {
            !covered.contains(&format!("\n{c}\n")) && !covered.starts_with(&format!("{c}\n"))
        })
        .collect();
    assert!(missing.is_empty(), "diagnostics without a UI case: {missing:?}");
}
