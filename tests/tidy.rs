//! The shape of the source tree, kept by a test (as rust-analyzer's `tidy`): every file says
//! what it is for, files and functions stay small, the layers import only downward, and no two
//! modules import each other, directly or round a loop. ARCHITECTURE.md states these rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A source file over this many lines is split (by phase, construct or place) when it next
/// changes — or, listed here with the reason, kept whole.
const MAX_FILE_LINES: usize = 700;

/// A function over this many lines is a sequence of steps that want names.
const MAX_FN_LINES: usize = 200;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

/// The text before a file's unit tests: tests may reach anywhere.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests").map_or(text, |i| &text[..i])
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let mut files = rust_files(&root().join("src"));
    files.extend(rust_files(&root().join("tests")));
    files.extend(rust_files(&root().join("benches")));
    let missing: Vec<String> = files
        .iter()
        .filter(|p| !fs::read_to_string(p).unwrap().starts_with("//!"))
        .map(|p| rel(p))
        .collect();
    assert!(missing.is_empty(), "files that do not open with a `//!` comment: {missing:?}");
}

#[test]
fn source_files_stay_small() {
    let long: Vec<String> = rust_files(&root().join("src"))
        .iter()
        .map(|p| (rel(p), fs::read_to_string(p).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_FILE_LINES)
        .map(|(p, n)| format!("{p}: {n} lines"))
        .collect();
    assert!(long.is_empty(), "files over {MAX_FILE_LINES} lines: {long:?}");
}

/// Functions are found by their `fn` line and the closing brace at the same indentation (what
/// rustfmt writes).
#[test]
fn functions_stay_short() {
    let mut long = Vec::new();
    for path in rust_files(&root().join("src")) {
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let body = line.trim_start();
            let indent = &line[..line.len() - body.len()];
            let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "pub(super) fn ", "const fn "]
                .iter()
                .any(|p| body.starts_with(p));
            if !is_fn || line.ends_with(';') {
                continue;
            }
            let close = format!("{indent}}}");
            if let Some(len) = lines[i + 1..].iter().position(|l| *l == close)
                && len + 2 > MAX_FN_LINES
            {
                long.push(format!("{}:{}: {} lines", rel(&path), i + 1, len + 2));
            }
        }
    }
    assert!(long.is_empty(), "functions over {MAX_FN_LINES} lines: {long:?}");
}

/// The crate-level modules a file under `src/<dir>/` names through `crate::`.
fn crate_modules_named(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for path in rust_files(&root().join("src").join(dir)) {
        let text = fs::read_to_string(&path).unwrap();
        let named: BTreeSet<String> = text
            .split("crate::")
            .skip(1)
            .map(|rest| rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
            .collect();
        out.insert(rel(&path), named);
    }
    out
}

#[test]
fn blocks_never_reach_up_into_the_checker_executor_or_trainer() {
    for (file, named) in crate_modules_named("blocks") {
        for layer in ["check", "exec", "train"] {
            assert!(!named.contains(layer), "{file} names `crate::{layer}`");
        }
    }
}

#[test]
fn the_syntax_layer_knows_only_diagnostics() {
    for (file, named) in crate_modules_named("syntax") {
        let other: Vec<&String> = named.iter().filter(|m| *m != "diag" && *m != "syntax").collect();
        assert!(other.is_empty(), "{file} names {other:?}; src/syntax/ may name only crate::diag");
    }
}

/// A library file's module path: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_of(path: &Path) -> Vec<String> {
    let rel = path.strip_prefix(root().join("src")).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// Every `crate::a::b` and `super::a` path in `text` (a `{ .. }` group adds each first item),
/// as absolute paths, for a file whose module is `module`.
fn paths_named(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (marker, base) in [
        ("crate::", Vec::new()),
        // `super` from `a/b.rs` (module a::b) and from `a/b/mod.rs` (also a::b) is `a`.
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        for (at, _) in text.match_indices(marker) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &text[at + marker.len()..];
            let mut path = base.clone();
            let mut chars = rest;
            loop {
                let ident: String =
                    chars.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if ident.is_empty() {
                    break;
                }
                chars = &chars[ident.len()..];
                path.push(ident);
                if let Some(next) = chars.strip_prefix("::") {
                    chars = next;
                } else {
                    break;
                }
            }
            if let Some(group) = chars.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let first: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !first.is_empty() && first != "self" {
                        let mut p = path.clone();
                        p.push(first);
                        out.push(p);
                    }
                }
            }
            out.push(path);
        }
    }
    out
}

/// Which library modules each module names (a module's own ancestors are not counted: a parent
/// is its children's common vocabulary, as `mod.rs` declares them).
fn import_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = rust_files(&root().join("src"));
    let files: Vec<&PathBuf> =
        files.iter().filter(|p| !p.starts_with(root().join("src/bin"))).collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|p| module_of(p)).collect();
    let mut graph = BTreeMap::new();
    for path in files {
        let module = module_of(path);
        let text = fs::read_to_string(path).unwrap();
        let mut edges = BTreeSet::new();
        for named in paths_named(without_tests(&text), &module) {
            let Some(target) = (1..=named.len())
                .rev()
                .map(|k| named[..k].to_vec())
                .find(|prefix| modules.contains(prefix))
            else {
                continue;
            };
            let is_ancestor = target.len() <= module.len() && module[..target.len()] == target[..];
            if !is_ancestor {
                edges.insert(target);
            }
        }
        graph.insert(module, edges);
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'g Vec<String>, usize>,
        low: BTreeMap<&'g Vec<String>, usize>,
        stack: Vec<&'g Vec<String>>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let Some((w, _)) = s.graph.get_key_value(w) else { continue };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_two_modules_import_each_other() {
    let found = cycles(&import_graph());
    assert!(
        found.is_empty(),
        "modules that import each other, directly or round a loop: {found:?}"
    );
}

/// The scan itself sees a loop when there is one.
#[test]
fn the_import_scan_finds_a_loop() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let mut graph = BTreeMap::new();
    graph.insert(m("a"), BTreeSet::from([m("b")]));
    graph.insert(m("b"), BTreeSet::from([m("c")]));
    graph.insert(m("c"), BTreeSet::from([m("a")]));
    graph.insert(m("d"), BTreeSet::from([m("a")]));
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    let named = paths_named("use crate::x::{y, z::w};\nuse super::q;", &m("p::r"));
    assert!(named.contains(&m("x::y")) && named.contains(&m("x::z")) && named.contains(&m("p::q")));
    // Real edges are found: the executor reads the checker.
    assert!(import_graph()[&m("exec")].contains(&m("check")));
}

/// The checker fills every default (`check::params::resolve`), so code that reads a setting
/// reads the resolved value (`params::num`, `params::text`) and never restates its default: a
/// `get_num(..).unwrap_or(..)` is a second copy that drifts (the warm start's fell back to 400
/// steps where the spec says 800).
#[test]
fn settings_are_read_resolved_never_restated() {
    let mut restated = Vec::new();
    for path in rust_files(&root().join("src")) {
        let text = fs::read_to_string(&path).unwrap();
        for (i, line) in without_tests(&text).lines().enumerate() {
            let compact: String = line.split_whitespace().collect();
            if compact.contains("get_num(") && compact.contains(").unwrap_or(") {
                restated.push(format!("{}:{}: {}", rel(&path), i + 1, line.trim()));
            }
        }
    }
    assert!(restated.is_empty(), "defaults restated where settings are read: {restated:#?}");
}

/// `metrics.jsonl`'s field names are spelled once (`train::metrics::field`): the trainer that
/// writes them and `report/` that reads them use the constants, never a literal.
#[test]
fn metric_field_names_have_one_owner() {
    let owner = fs::read_to_string(root().join("src/train/metrics.rs")).unwrap();
    let names: Vec<String> = owner
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .map(|name| format!("\"{name}\""))
        .collect();
    assert!(names.len() > 20, "{names:?}");
    let mut files = rust_files(&root().join("src/train/run"));
    files.extend(rust_files(&root().join("src/report")));
    let mut literal = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        for (i, line) in without_tests(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for name in &names {
                let written = [".insert(", ".get(", "== ", "= ["].iter().any(|p| {
                    code.contains(&format!("{p}{name}")) || code.contains(&format!("{p}&{name}"))
                });
                if written {
                    literal.push(format!("{}:{}: {}", rel(&path), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        literal.is_empty(),
        "metric fields spelled outside train::metrics::field: {literal:#?}"
    );
}
