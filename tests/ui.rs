//! Golden tests of diagnostics: every `tests/ui/NAME.rlx` is a recipe with a mistake, and
//! `tests/ui/NAME.stderr` is what `rlx lint` prints for it (colours off, 80 columns).
//! A first line `# args: --deny LINT --allow LINT` sets the lint configuration.
//! Regenerate with `RLX_BLESS=1 cargo test --test ui`, then review the diff.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use rlx::check::lints::LintConfig;
use rlx::diag::{Kind, codes};
use rlx::render::{self, Style};
use rlx::source::{SourceFile, analyze};

/// The lint configuration of a case, and the `--target` it lints for.
fn config_from(text: &str) -> (LintConfig, Option<&'static str>) {
    let mut config = LintConfig::defaults();
    let mut target = None;
    if let Some(args) = text.lines().next().and_then(|l| l.strip_prefix("# args:")) {
        let words: Vec<&str> = args.split_whitespace().collect();
        for pair in words.chunks(2) {
            match pair {
                ["--deny", "warnings"] => config.deny_warnings = true,
                ["--deny", l] => config.deny.push(l.to_string()),
                ["--allow", l] => config.allow.push(l.to_string()),
                ["--target", "verl"] => target = Some("verl"),
                ["--target", "tinker"] => target = Some("tinker"),
                other => panic!("bad args header: {other:?}"),
            }
        }
    }
    (config, target)
}

/// What `rlx lint` prints for a file.
fn render_case(name: &str, bytes: &[u8]) -> String {
    let (src, encoding) = SourceFile::from_bytes(name, bytes);
    let (config, target) = config_from(&src.text);
    let mut analysis = analyze(&src, &config);
    if let Some(d) = encoding {
        analysis.diagnostics.insert(0, d);
    }
    // As `rlx lint --target verl` (the last stage) or `--target tinker` (every stage), when
    // the recipe itself is sound.
    if let Some(target) = target.filter(|_| !analysis.has_errors()) {
        let checked = analysis.checked.as_ref().unwrap();
        let found = match target {
            "verl" => rlx::export::verl::check(checked, checked.program.stages.len() - 1),
            _ => rlx::engine::tinker::lint::check(checked, None, &[]),
        };
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

/// Every code emitted under `src/` (as `Diagnostic::error("CODE"`, `Diagnostic::warning(`,
/// the verl planner's `self.err("CODE"`), read across line breaks.
fn emitted_codes() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut emitted = BTreeSet::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            for marker in ["Diagnostic::error(", "Diagnostic::warning(", "self.err("] {
                for piece in text.split(marker).skip(1) {
                    let Some(rest) = piece.trim_start().strip_prefix('"') else { continue };
                    let code = rest.split('"').next().unwrap();
                    if !code.is_empty() && !code.contains(' ') {
                        emitted.insert(code.to_string());
                    }
                }
            }
        }
    }
    emitted
}

/// The codes the UI cases show (each diagnostic's first line is its code).
fn shown_codes() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let mut shown = BTreeSet::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "stderr") {
            let text = fs::read_to_string(path).unwrap();
            let mut previous = "";
            for line in text.lines() {
                // A code line: kebab-case alone on a line, before a blank or `×`/`⚠` line.
                if previous.is_empty()
                    && !line.is_empty()
                    && line
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && line.contains('-')
                {
                    shown.insert(line.to_string());
                }
                previous = line;
            }
        }
    }
    shown
}

/// One registry of codes: everything `src/` emits is in it (with a summary and explanation for
/// `rlx explain`), and everything the UI cases show is explained there.
#[test]
fn every_code_is_in_the_registry() {
    let missing: Vec<String> =
        emitted_codes().into_iter().filter(|c| codes::code(c).is_none()).collect();
    assert!(missing.is_empty(), "codes emitted but not in the registry (diag::codes): {missing:?}");
    let unexplained: Vec<String> =
        shown_codes().into_iter().filter(|c| codes::code(c).is_none()).collect();
    assert!(
        unexplained.is_empty(),
        "codes the UI cases show that `rlx explain` lacks: {unexplained:?}"
    );
    for c in codes::all() {
        assert!(!c.summary.is_empty() && !c.explanation.is_empty(), "{}", c.name);
    }
    let names: Vec<&str> = codes::all().iter().map(|c| c.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "the registry names each code once");
}

/// Every code a recipe can trigger has an example — a UI case that shows it — and a code only
/// runs and evaluations raise (or a file rlx cannot embed) has none.
#[test]
fn every_code_a_recipe_can_trigger_has_an_example_that_does() {
    for c in codes::all() {
        let runtime = matches!(c.kind, Kind::Evaluation | Kind::Run);
        match &c.example {
            Some(e) => assert!(
                e.output.lines().any(|l| l == c.name),
                "{}: its example {} does not show it",
                c.name,
                e.case
            ),
            None => assert!(
                runtime || ["file-too-large", "invalid-utf8"].contains(&c.name),
                "{} has no example",
                c.name
            ),
        }
    }
}
