//! Rewards outside rlx, end to end: Python functions in TRL's and verl's signatures served by
//! `python/rlx_reward`, a hand-written JSON-lines process, an OpenRLHF-style HTTP server on
//! loopback (Python's standard library, started here) — each trains exactly as the built-in
//! verifier it re-implements — and every way a reward process can fail: the run stops with an
//! error naming the reward and what went wrong, its last checkpoint intact, and `--resume`
//! after the fix ends where an uninterrupted run ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `rlx` run from `dir`, with the shim importable and a test-only warm-start cache.
fn rlx(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlx"));
    c.current_dir(dir)
        .env("RLX_CACHE", std::env::temp_dir().join("rlx-test-cache"))
        .env("PYTHONPATH", repo().join("python"));
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlx-rewards-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The reward functions: arith's verifier rewritten in Python, as users write theirs.
const MY_REWARDS: &str = r#"
import re

def _stated(text):
    m = re.findall(r"answer:\s*(-?\d+)", text)
    return m[-1] if m else None

def accuracy_reward(prompts, completions, answer, **kwargs):
    """TRL's signature: one call per batch, the data set's columns as keyword lists."""
    print(f"accuracy_reward: a batch of {len(completions)}")  # goes to stderr, not the protocol
    return [1.0 if _stated(c) == str(a) else 0.0 for c, a in zip(completions, answer)]

def format_reward(completions, **kwargs):
    return [1.0 if _stated(c) is not None else 0.0 for c in completions]

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's signature: one call per response, a dict with `score` allowed."""
    return {"score": 1.0 if _stated(solution_str) == str(ground_truth) else 0.0}
"#;

/// A small GRPO recipe on a tiny model; `REWARD` is declared by the caller and read as
/// `SCORE(response)`.
fn recipe(reward_decl: &str, score: &str, steps: usize) -> String {
    format!(
        r#"recipe t "a reward under test"
data   arith  = builtin("arith", problems = 64)
model  policy = builtin("tiny", warm_start = arith.solutions, width = 32, heads = 2, layers = 1, warm_steps = 3)
{reward_decl}

stage rl {{
    train   policy
    prompts arith.problems
    sample  {{ n = 4, max_tokens = 24, temperature = 1.0 }}
    let adv = group_zscore({score}, eps = 1e-6)
    loss    = seq_mean_token_mean(ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.2))
    optim   {{ lr = 1e-3, steps = {steps}, batch = 8, minibatch = 8, epochs = 1 }}
}}
"#
    )
}

/// Runs a recipe text in `dir`; the output.
fn run(dir: &Path, name: &str, text: &str, extra: &[&str]) -> std::process::Output {
    std::fs::write(dir.join(format!("{name}.rlx")), text).unwrap();
    rlx(dir)
        .args(["run", &format!("{name}.rlx"), "--out", name, "--eval-prompts", "4", "--quiet"])
        .args(extra)
        .output()
        .unwrap()
}

/// The training records without timings, and the final checkpoint's bytes.
fn result(run: &Path) -> (Vec<serde_json::Value>, Vec<u8>) {
    let records = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.retain(|k, _| !k.contains("seconds") && !k.contains("per_s") && k != "wall");
            v
        })
        .collect();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    let ckpt = std::fs::read(run.join(state["file"].as_str().unwrap())).unwrap();
    (records, ckpt)
}

/// stderr as one line: miette wraps long messages and draws a margin.
fn flat_stderr(o: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&o.stderr).replace(['│', '×'], " ");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// TRL's `reward_func`, verl's `compute_score` and a raw JSON-lines script give the built-in
/// verifier's rewards, so the same seed trains to the same bytes; one request per step.
#[test]
fn python_rewards_in_trl_and_verl_signatures_train_exactly_as_the_builtin_verifier() {
    let dir = scratch("signatures");
    std::fs::write(dir.join("my_rewards.py"), MY_REWARDS).unwrap();
    std::fs::write(
        dir.join("raw.py"),
        r#"import json, re, sys
for line in sys.stdin:
    req = json.loads(line)
    out = []
    for it in req["items"]:
        m = re.findall(r"answer:\s*(-?\d+)", it["response"])
        out.append(1.0 if m and m[-1] == it["answer"] else 0.0)
    print(json.dumps({"rewards": out}), flush=True)
"#,
    )
    .unwrap();
    let builtin = run(&dir, "builtin", &recipe("", "arith.correct(response)", 3), &[]);
    ok(&builtin);
    let expected = result(&dir.join("builtin"));
    for (name, command) in [
        ("trl", "python3 -m rlx_reward my_rewards:accuracy_reward"),
        ("verl", "python3 -m rlx_reward my_rewards.py:compute_score"),
        ("raw", "python3 raw.py"),
    ] {
        let decl = format!("reward acc = command(\"{command}\")");
        let o = run(&dir, name, &recipe(&decl, "acc(response)", 3), &[]);
        ok(&o);
        let got = result(&dir.join(name));
        assert_eq!(got.0, expected.0, "{name}: metrics differ from the built-in verifier's");
        assert!(got.1 == expected.1, "{name}: the final checkpoint differs");
        let records: Vec<serde_json::Value> =
            std::fs::read_to_string(dir.join(name).join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        assert!(
            records
                .iter()
                .filter(|r| r.get("loss").is_some())
                .all(|r| r["reward_seconds"].is_f64()),
            "{name}: every step records its reward seconds"
        );
    }
    // The TRL function printed once per batch: one request per step, its prints in the log.
    let log = std::fs::read_to_string(dir.join("trl/rewards/acc.log")).unwrap();
    assert_eq!(log.lines().filter(|l| *l == "accuracy_reward: a batch of 8").count(), 3, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Several functions in one process reply as named rewards, read as `r.NAME(response)`
/// (GDPO-style recipes); both come from one request per step.
#[test]
fn named_rewards_from_one_process_are_read_by_name() {
    let dir = scratch("named");
    std::fs::write(dir.join("my_rewards.py"), MY_REWARDS).unwrap();
    let decl = r#"reward r = command("python3 -m rlx_reward acc=my_rewards:accuracy_reward fmt=my_rewards:format_reward")"#;
    let o = run(&dir, "named", &recipe(decl, "r.acc(response) + 0.5 * r.fmt(response)", 2), &[]);
    ok(&o);
    let log = std::fs::read_to_string(dir.join("named/rewards/r.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "one request per step: {log}");
    // A name the process does not reply with stops the run and lists the ones it has.
    let o = run(&dir, "wrong", &recipe(decl, "r.correct(response)", 2), &[]);
    let err = flat_stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("the reply has no reward `correct` (it has `acc`, `fmt`)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reward that misbehaves at its third batch (the third step) in each way the protocol can
/// break: the run stops naming the reward and the failure, the last lines of the script's
/// stderr come along, the checkpoint of step 2 is intact, and `--resume` with the script fixed
/// ends exactly where an uninterrupted run ends.
#[test]
fn every_reward_failure_stops_the_run_by_name_and_resume_after_the_fix_matches() {
    let dir = scratch("faults");
    std::fs::write(
        dir.join("flaky.py"),
        r#"import json, os, re, sys, time
mode = open("mode").read().strip() if os.path.exists("mode") else ""
for batch, line in enumerate(sys.stdin):
    items = json.loads(line)["items"]
    out = []
    for it in items:
        m = re.findall(r"answer:\s*(-?\d+)", it["response"])
        out.append(1.0 if m and m[-1] == it["answer"] else 0.0)
    if batch == 2 and mode:
        print(f"flaky: failing with {mode}", file=sys.stderr, flush=True)
        if mode == "exit":
            sys.exit(3)
        if mode == "hang":
            time.sleep(600)
        if mode == "garbage":
            print("this is not json", flush=True)
            continue
        if mode == "count":
            out = out[:-1]
        if mode == "nan":
            out[5] = float("nan")
    print(json.dumps({"rewards": out}), flush=True)
"#,
    )
    .unwrap();
    let decl = r#"reward r = command("python3 flaky.py", timeout = 3)"#;
    let text = recipe(decl, "r(response)", 4);
    let reference = run(&dir, "reference", &text, &[]);
    ok(&reference);
    let expected = result(&dir.join("reference"));
    for (mode, says) in [
        ("exit", "closed its stdout before replying: the process exited (exit status: 3)"),
        ("hang", "did not reply within 3 s"),
        ("garbage", "the reply is not JSON"),
        ("count", "the reply has 7 scores for a batch of 8 responses"),
        ("nan", "row 5: the score is NaN, not a finite number (prompt"),
    ] {
        std::fs::write(dir.join("mode"), mode).unwrap();
        let o = run(&dir, mode, &text, &[]);
        let err = flat_stderr(&o);
        assert!(!o.status.success(), "{mode}: the run did not stop");
        assert!(err.starts_with("reward-failed"), "{mode}: {err}");
        assert!(err.contains("reward `r` (command `python3 flaky.py`)"), "{mode}: {err}");
        assert!(err.contains(says), "{mode}: expected {says:?} in {err}");
        assert!(
            err.contains(&format!("flaky: failing with {mode}")),
            "{mode}: no stderr tail in {err}"
        );
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(mode).join("state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["step"], 2, "{mode}: the last checkpoint is step 2's");
        std::fs::remove_file(dir.join("mode")).unwrap();
        let o = rlx(&dir).args(["run", "--resume", mode, "--quiet"]).output().unwrap();
        ok(&o);
        let got = result(&dir.join(mode));
        assert!(got.1 == expected.1, "{mode}: the resumed run's checkpoint differs");
        assert_eq!(got.0, expected.0, "{mode}: the resumed run's metrics differ");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A command whose program does not exist: `rlx lint` warns with the span, the run stops at
/// its first batch naming the program.
#[test]
fn a_missing_program_is_linted_and_named_when_the_run_starts() {
    let dir = scratch("missing");
    let text = recipe(r#"reward r = command("no-such-reward-program --flag")"#, "r(response)", 2);
    std::fs::write(dir.join("m.rlx"), &text).unwrap();
    let o = rlx(&dir).args(["lint", "m.rlx"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("missing-reward-program"), "{out}");
    let o = run(&dir, "m", &text, &[]);
    let err = flat_stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("cannot start `no-such-reward-program`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An OpenRLHF-style reward server (`query`, `prompts`, `labels` in; `rewards` out) on
/// loopback trains as the built-in verifier does; a server that fails is named.
#[test]
fn an_openrlhf_style_http_reward_trains_as_the_builtin_verifier() {
    let dir = scratch("http");
    std::fs::write(
        dir.join("server.py"),
        r#"import json, re, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Reward(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"the model is not loaded")
            return
        out = []
        for query, prompt, label in zip(body["query"], body["prompts"], body["labels"]):
            assert query.startswith(prompt)
            m = re.findall(r"answer:\s*(-?\d+)", query[len(prompt):])
            out.append(1.0 if m and m[-1] == label else 0.0)
        lengths = [len(q) - len(p) for q, p in zip(body["query"], body["prompts"])]
        reply = json.dumps({"rewards": out, "scores": out, "extra_logs": {"length": lengths}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Reward)
print(server.server_address[1], flush=True)
server.serve_forever()
"#,
    )
    .unwrap();
    let mut server = Command::new("python3")
        .arg("server.py")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let port = port.trim();
    let builtin = run(&dir, "builtin", &recipe("", "arith.correct(response)", 2), &[]);
    ok(&builtin);
    let decl = format!(r#"reward r = http("http://127.0.0.1:{port}/get_reward", timeout = 30)"#);
    let o = run(&dir, "http", &recipe(&decl, "r(response)", 2), &[]);
    ok(&o);
    // The same metrics as the built-in verifier's run, plus the server's `extra_logs`.
    let mut got = result(&dir.join("http")).0;
    for r in got.iter_mut().filter(|r| r.get("loss").is_some()) {
        let length = r.as_object_mut().unwrap().remove("r.length");
        assert!(length.is_some_and(|l| l.as_f64().unwrap() > 0.0), "extra_logs logged: {r}");
    }
    assert_eq!(got, result(&dir.join("builtin")).0);
    let decl = format!(r#"reward r = http("http://127.0.0.1:{port}/broken", timeout = 5)"#);
    let o = run(&dir, "broken", &recipe(&decl, "r(response)", 2), &[]);
    let err = flat_stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains(&format!("reward `r` (server http://127.0.0.1:{port}/broken)")), "{err}");
    assert!(err.contains("answered 500: the model is not loaded"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
