//! The `rlx` binary: outputs, formats and exit codes (0 ok, 1 findings, 2 usage or I/O failure).

use std::path::Path;
use std::process::{Command, Output};

fn rlx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlx"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("rlx runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn lint_exit_codes() {
    let all: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rlx"))
        .map(|p| p.display().to_string())
        .collect();
    // gsm8k_grpo's `models/policy` is made by the README's `rlx tiny-checkpoint` command.
    let mut args = vec!["lint", "--allow", "missing-checkpoint"];
    args.extend(all.iter().map(String::as_str));
    let ok = rlx(&args);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(stderr(&ok).is_empty());

    let bad = rlx(&["lint", "tests/ui/level_mismatch_input.rlx"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("level-mismatch"));

    let warn = rlx(&["lint", "tests/ui/unused_binding.rlx"]);
    assert_eq!(warn.status.code(), Some(0), "warnings alone pass");
    let denied = rlx(&["lint", "--deny", "unused-binding", "tests/ui/unused_binding.rlx"]);
    assert_eq!(denied.status.code(), Some(1));
    let all_denied = rlx(&["lint", "--deny", "warnings", "tests/ui/unused_binding.rlx"]);
    assert_eq!(all_denied.status.code(), Some(1));
    let allowed = rlx(&["lint", "--allow", "unused-binding", "tests/ui/unused_binding.rlx"]);
    assert_eq!(allowed.status.code(), Some(0));
    assert!(stderr(&allowed).is_empty());

    let unknown = rlx(&["lint", "--allow", "unused-bindings", "recipes/ppo.rlx"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("did you mean `unused-binding`"));

    let missing = rlx(&["lint", "no/such/file.rlx"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn lint_json_is_machine_readable() {
    let o = rlx(&["lint", "--format", "json", "tests/ui/many_errors_at_once.rlx"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["code"], "unknown-name");
    assert_eq!(items[0]["severity"], "error");
    assert_eq!(items[0]["line"], 10);
    assert_eq!(items[0]["column"], 42);
    assert_eq!(items[0]["help"], "did you mean `response`?");
    assert_eq!(items[1]["code"], "value-out-of-range");
}

#[test]
fn graph_text_dot_and_stage_selection() {
    let o = rlx(&["graph", "recipes/rto.rlx", "--stage", "rl"]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.contains("stage rl") && !text.contains("stage dpo"));
    assert!(text.contains("forward dpo_model: logp"));
    assert!(text.contains("← loss"));

    let dot = stdout(&rlx(&["graph", "recipes/vineppo.rlx", "--format", "dot"]));
    assert!(dot.starts_with("digraph rlx {") && dot.trim_end().ends_with('}'));
    assert!(dot.contains("vine_values") && dot.contains("[label=\"steps\"]"));

    let resolved = stdout(&rlx(&["graph", "recipes/ppo.rlx", "--resolved"]));
    assert!(resolved.contains("eps_high = 0.2"));

    let bad_stage = rlx(&["graph", "recipes/ppo.rlx", "--stage", "nope"]);
    assert_eq!(bad_stage.status.code(), Some(2));
    let broken = rlx(&["graph", "tests/ui/binding_cycle.rlx"]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(stderr(&broken).contains("binding-cycle"));
}

#[test]
fn diff_exit_codes() {
    let same = rlx(&["diff", "recipes/ppo.rlx", "recipes/ppo.rlx"]);
    assert_eq!(same.status.code(), Some(0));
    assert!(stdout(&same).contains("are equivalent"));
    let different = rlx(&["diff", "recipes/ppo.rlx", "recipes/vineppo.rlx"]);
    assert_eq!(different.status.code(), Some(1));
    assert!(stdout(&different).contains("stage rl:"));
    let stages = stdout(&rlx(&["diff", "recipes/dpo.rlx", "recipes/rto.rlx"]));
    assert!(stages.contains("- stage dpo") || stages.contains("stage dpo:"), "{stages}");
    assert!(stages.contains("+ stage rl"), "{stages}");
}

#[test]
fn fmt_check_and_rewrite() {
    let dir = std::env::temp_dir().join(format!("rlx-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("messy.rlx");
    std::fs::write(&file, "data a=builtin(\"arith\")\nmodel p=builtin(\"tiny\",warm_start=a.solutions) # keep me\nstage rl{train p\nprompts a.problems\nsample{n=8}\nloss=token_mean(pg(p.logp,spread(group_zscore(a.correct(response)))))}\n").unwrap();
    let path = file.display().to_string();
    assert_eq!(rlx(&["fmt", "--check", &path]).status.code(), Some(1));
    assert_eq!(rlx(&["fmt", &path]).status.code(), Some(0));
    let formatted = std::fs::read_to_string(&file).unwrap();
    assert!(formatted.contains("# keep me"));
    assert!(
        formatted.contains(
            "    loss    = token_mean(pg(p.logp, spread(group_zscore(a.correct(response)))))"
        ),
        "{formatted}"
    );
    assert_eq!(rlx(&["fmt", "--check", &path]).status.code(), Some(0));
    assert_eq!(rlx(&["lint", &path]).status.code(), Some(0));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn blocks_reference() {
    let index = stdout(&rlx(&["blocks"]));
    assert!(index.contains("advantages and returns:") && index.contains("ppo_clip"));
    let page = rlx(&["blocks", "ppo_clip"]);
    assert_eq!(page.status.code(), Some(0));
    let page = stdout(&page);
    assert!(page.contains("eps_high") && page.contains("Schulman et al. 2017"));
    let typo = rlx(&["blocks", "ppo_clp"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(stderr(&typo).contains("did you mean `ppo_clip`"));
}

#[test]
fn bench_reports_both_workloads() {
    let args = [
        "bench",
        "--layers",
        "1",
        "--width",
        "16",
        "--heads",
        "2",
        "--vocab",
        "64",
        "--context",
        "32",
        "--batch",
        "2",
        "--prompt",
        "3",
        "--new-tokens",
        "4",
        "--train-batch",
        "2",
        "--train-len",
        "8",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--json",
    ];
    let o = rlx(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let m = report["measurements"].as_array().unwrap();
    assert_eq!(m[0]["name"], "sampling");
    assert_eq!(m[0]["tokens"], 8, "2 rows × 4 new tokens, EOS masked");
    assert_eq!(m[1]["name"], "training");
    assert_eq!(m[1]["tokens"], 16);
    assert_eq!(report["config"]["layers"], 1);
    // Which CPU and which copy of the kernels: AVX2 and AVX-512 figures differ.
    assert!(!report["cpu"]["model"].as_str().unwrap().is_empty());
    assert!(!report["cpu"]["kernels"].as_str().unwrap().is_empty());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(report["cpu"]["features"].as_array().unwrap().contains(&"avx2".into()));
    }

    let bad = rlx(&["bench", "--width", "30", "--heads", "4"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("not a multiple"), "{}", stderr(&bad));
}

/// `--only matmuls` times the training step's matrix products alone and counts their FLOPs:
/// three products (forward, ∂x, ∂W) of 2·rows·in·out each, for every linear layer and the head.
#[test]
fn bench_matmuls_counts_the_step_s_products() {
    let shape = "--layers 1 --width 16 --heads 2 --vocab 64 --train-batch 2 --train-len 8";
    let bench = |extra: &str| {
        let args = format!("bench --only matmuls {shape} --warmup 0 {extra}");
        rlx(&args.split(' ').collect::<Vec<_>>())
    };
    let o = bench("--repeats 2 --json");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let m = &report["measurements"][0];
    assert_eq!(m["name"], "matmuls");
    // qkv 16×48, out 16×16, up 16×64, down 64×16, head 16×64, on 2 × 8 = 16 rows.
    let macs = 16 * (16 * 48 + 16 * 16 + 16 * 64 + 64 * 16 + 16 * 64);
    assert_eq!(m["flops"].as_f64().unwrap(), (3 * 2 * macs) as f64);
    assert_eq!(m["shape"], "16 rows × 5 weights");
    let text = bench("--repeats 1");
    assert!(stdout(&text).contains("GFLOP/s"), "{}", stdout(&text));
}

/// Sizes are checked before work starts: zero-sized benchmarks and batches are refused, and a
/// synthetic batch that cannot fit in memory is refused instead of being allocated.
#[test]
fn sizes_are_checked_before_work_starts() {
    let o = rlx(&["bench", "--layers", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`--layers 0`: must be at least 1"), "{}", stderr(&o));
    let o = rlx(&["eval", "recipes/ppo.rlx", "--synthetic", "0x8"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    let o = rlx(&["eval", "recipes/ppo.rlx", "--synthetic", "100000x100000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is free"), "{}", stderr(&o));
}

/// A huge one-line file is reported without echoing its line; the report stays short.
#[test]
fn a_huge_recipe_is_not_echoed() {
    let text = format!("recipe a \"{}\"\n", "x".repeat(2 << 20));
    let (src, _) = rlx::source::SourceFile::from_bytes("big.rlx", text.as_bytes());
    let analysis = rlx::source::analyze(&src, &rlx::check::lints::LintConfig::defaults());
    assert_eq!(analysis.diagnostics[0].code, "file-too-large");
    let shown = rlx::render::human(&analysis.diagnostics[0], &src, rlx::render::Style::plain());
    assert!(shown.len() < 2000, "{} bytes of report", shown.len());
}

/// Reading a recipe is bounded: a path that never ends (`/dev/zero`) or a file far past the
/// parser's limit is refused after reading just past the limit, for every command that reads
/// one, naming the file and the limit.
#[test]
fn reading_a_recipe_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.rlx");
    std::fs::write(&big, vec![b'#'; (1 << 20) + 1]).unwrap();
    let big = big.display().to_string();
    let mut paths = vec![big.as_str()];
    if Path::new("/dev/zero").exists() {
        paths.push("/dev/zero");
    }
    for path in paths {
        for args in [
            vec!["lint", path],
            vec!["fmt", "--check", path],
            vec!["graph", path],
            vec!["run", path, "--out", "/nonexistent/never"],
        ] {
            let o = rlx(&args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(&format!("`{path}` is larger than 1 MiB")),
                "{args:?}: {}",
                stderr(&o)
            );
        }
    }
}

/// `rlx explain` reads the one registry of codes: a code's page (summary, origin, explanation,
/// the UI case that triggers it with its output), the list, JSON, and a near miss suggested.
#[test]
fn explain_pages_come_from_the_registry() {
    let o = rlx(&["explain", "level-mismatch"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.starts_with("level-mismatch: "), "{page}");
    assert!(page.contains("From the checker.") && page.contains("`rlx lint` reports:"), "{page}");
    let lint = rlx(&["explain", "unused-binding"]);
    assert!(stdout(&lint).contains("a lint, a warning by default"), "{}", stdout(&lint));
    let list = stdout(&rlx(&["explain"]));
    for code in rlx::diag::codes::all() {
        assert!(list.contains(code.name), "{} missing from `rlx explain`", code.name);
    }
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&rlx(&["explain", "singleton-group", "--format", "json"])))
            .unwrap();
    assert_eq!(json["default"], "error");
    let miss = rlx(&["explain", "levle-mismatch"]);
    assert_eq!(miss.status.code(), Some(2));
    assert!(stderr(&miss).contains("did you mean `level-mismatch`?"), "{}", stderr(&miss));
}

/// One output switch: `--format text|json` (`human` still accepted where it was the name);
/// `--json` kept for old scripts.
#[test]
fn format_json_is_one_switch() {
    let human = rlx(&["lint", "--format", "human", "tests/ui/level_mismatch_input.rlx"]);
    let text = rlx(&["lint", "--format", "text", "tests/ui/level_mismatch_input.rlx"]);
    assert_eq!(stderr(&human), stderr(&text));
    let json = rlx(&["lint", "--format", "json", "tests/ui/level_mismatch_input.rlx"]);
    let parsed: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(parsed[0]["code"], "level-mismatch");
    let a = rlx(&["explain", "unused-binding", "--json"]);
    let b = rlx(&["explain", "unused-binding", "--format", "json"]);
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = rlx(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("explain") && stdout(&o).contains("--stage"), "{shell}");
    }
}
