//! `rlx lsp` spoken to the way editors do: JSON-RPC over the child's stdin/stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use serde_json::{Value, json};

struct Client {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: i64,
    /// Notifications received while waiting for responses.
    notes: Vec<Value>,
}

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rlx"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            loop {
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if out.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                out.read_exact(&mut body).unwrap();
                if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                    return;
                }
            }
        });
        Client { child, stdin, rx, next_id: 0, notes: Vec::new() }
    }

    fn raw(&mut self, body: &str) {
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, m: Value) {
        self.raw(&m.to_string());
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    fn recv(&mut self) -> Value {
        self.rx.recv_timeout(Duration::from_secs(30)).expect("the server answers")
    }

    /// Sends a request and returns its response (result or error object).
    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let m = self.recv();
            if m["id"] == id {
                return m;
            }
            self.notes.push(m);
        }
    }

    fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    /// The next diagnostics published for `uri` (from notes already received, or new ones).
    fn diagnostics(&mut self, uri: &str) -> Value {
        if let Some(i) = self.notes.iter().position(|n| {
            n["method"] == "textDocument/publishDiagnostics" && n["params"]["uri"] == uri
        }) {
            return self.notes.remove(i)["params"].clone();
        }
        loop {
            let m = self.recv();
            if m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri {
                return m["params"].clone();
            }
        }
    }
}

const URI: &str = "file:///work/grpo.rlx";

fn pos(text: &str, needle: &str, delta: usize) -> Value {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle}")) + delta;
    let line = text[..at].matches('\n').count();
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1);
    json!({ "line": line, "character": col })
}

fn at(text: &str, needle: &str, delta: usize) -> Value {
    json!({ "textDocument": { "uri": URI }, "position": pos(text, needle, delta) })
}

fn init(c: &mut Client) {
    let r =
        c.result("initialize", json!({ "processId": null, "rootUri": null, "capabilities": {} }));
    assert_eq!(r["capabilities"]["hoverProvider"], true, "{r}");
    assert_eq!(r["serverInfo"]["name"], "rlx");
    c.notify("initialized", json!({}));
}

fn open(c: &mut Client, text: &str, version: i64) {
    c.notify(
        "textDocument/didOpen",
        json!({ "textDocument": { "uri": URI, "languageId": "rlx", "version": version, "text": text } }),
    );
}

#[test]
fn an_editor_session_gets_diagnostics_hover_completion_navigation_formatting_and_fixes() {
    let text = std::fs::read_to_string("recipes/grpo.rlx")
        .unwrap()
        .replace("group_zscore(", "group_zscor(");
    let mut c = Client::start();
    init(&mut c);
    open(&mut c, &text, 1);
    let d = c.diagnostics(URI);
    let diags = d["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 1, "{d}");
    assert_eq!(diags[0]["code"], "unknown-block");
    assert_eq!(diags[0]["range"]["start"], pos(&text, "group_zscor(", 0));
    assert!(diags[0]["message"].as_str().unwrap().contains("did you mean `group_zscore`"));

    // The quick fix replaces the name.
    let range =
        json!({ "start": pos(&text, "group_zscor(", 2), "end": pos(&text, "group_zscor(", 2) });
    let actions = c.result(
        "textDocument/codeAction",
        json!({ "textDocument": { "uri": URI }, "range": range, "context": { "diagnostics": [] } }),
    );
    let edit = &actions[0]["edit"]["changes"][URI][0];
    assert_eq!(edit["newText"], "group_zscore", "{actions}");
    assert_eq!(actions[0]["kind"], "quickfix");

    // Fix it by an edit; diagnostics settle to none.
    let fixed = text.replace("group_zscor(", "group_zscore(");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": URI, "version": 2 }, "contentChanges": [{ "text": fixed }] }),
    );
    let d = c.diagnostics(URI);
    assert_eq!(d["diagnostics"], json!([]), "{d}");
    assert_eq!(d["version"], 2);
    let text = fixed;

    // Hover: a block, a setting, a binding.
    let h = c.result("textDocument/hover", at(&text, "ppo_clip(", 2));
    let md = h["contents"]["value"].as_str().unwrap();
    assert!(md.contains("ppo_clip(") && md.contains("**formula**"), "{md}");
    let h = c.result("textDocument/hover", at(&text, "lr =", 0));
    assert!(h["contents"]["value"].as_str().unwrap().contains("learning rate"), "{h}");
    let h = c.result("textDocument/hover", at(&text, "adv =", 0));
    let md = h["contents"]["value"].as_str().unwrap();
    assert!(md.contains("seq") && md.contains("no gradient"), "{md}");

    // Completion after `policy.`.
    let items = c.result("textDocument/completion", at(&text, "policy.logp, ref", 7));
    let labels: Vec<&str> =
        items.as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
    assert!(labels.contains(&"logp") && labels.contains(&"entropy"), "{labels:?}");

    // Definition and references of `adv`.
    let def = c.result("textDocument/definition", at(&text, "spread(adv)", 8));
    assert_eq!(def["range"]["start"], pos(&text, "adv =", 0), "{def}");
    let refs = c.result(
        "textDocument/references",
        json!({ "textDocument": { "uri": URI }, "position": pos(&text, "adv =", 0),
                "context": { "includeDeclaration": true } }),
    );
    assert_eq!(refs.as_array().unwrap().len(), 2, "{refs}");

    // Symbols: declarations and the stage with its bindings.
    let syms = c.result("textDocument/documentSymbol", json!({ "textDocument": { "uri": URI } }));
    let names: Vec<&str> =
        syms.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["arith", "policy", "rl"], "{syms}");

    // Formatting an untidy version gives the formatter's text.
    let untidy = text.replace("let adv = ", "let   adv=");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": URI, "version": 3 }, "contentChanges": [{ "text": untidy }] }),
    );
    let edits = c.result(
        "textDocument/formatting",
        json!({ "textDocument": { "uri": URI }, "options": { "tabSize": 4, "insertSpaces": true } }),
    );
    assert_eq!(
        edits[0]["newText"].as_str().unwrap(),
        rlx::syntax::format::format(&untidy).unwrap()
    );

    // Bad messages get error responses; the session goes on.
    c.raw("{not json");
    let e = c.recv();
    assert_eq!(e["error"]["code"], -32700, "{e}");
    let e = c.request("textDocument/frobnicate", json!({}));
    assert_eq!(e["error"]["code"], -32601, "{e}");
    let e = c.request("textDocument/hover", json!({ "nonsense": 1 }));
    assert_eq!(e["error"]["code"], -32602, "{e}");
    let e = c.request("textDocument/hover", at(&text, "x", 0).tap_uri("file:///not/open.rlx"));
    assert!(e.get("error").is_some(), "{e}");

    assert_eq!(c.result("shutdown", Value::Null), Value::Null);
    c.notify("exit", Value::Null);
    let status = c.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_no_panic(&mut c);
}

fn assert_no_panic(c: &mut Client) {
    let mut err = String::new();
    c.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

trait TapUri {
    fn tap_uri(self, uri: &str) -> Value;
}

impl TapUri for Value {
    fn tap_uri(mut self, uri: &str) -> Value {
        self["textDocument"]["uri"] = json!(uri);
        self
    }
}

/// A recipe typed one character at a time, with hover and completion asked at the cursor after
/// every keystroke: every request is answered (never an internal error), and the diagnostics
/// settle to `rlx lint`'s for the finished text.
#[test]
fn typing_a_recipe_character_by_character_never_breaks_the_server() {
    let text =
        std::fs::read_to_string("recipes/rcfd.rlx").unwrap().replace("calibrate(", "calibrat(");
    let mut c = Client::start();
    init(&mut c);
    open(&mut c, "", 0);
    let mut typed = String::new();
    for (i, ch) in text.chars().enumerate() {
        typed.push(ch);
        let version = i as i64 + 1;
        c.notify(
            "textDocument/didChange",
            json!({ "textDocument": { "uri": URI, "version": version },
                    "contentChanges": [{ "text": typed }] }),
        );
        if i % 3 == 0 {
            let line = typed.matches('\n').count();
            let col: usize =
                typed[typed.rfind('\n').map_or(0, |i| i + 1)..].chars().map(char::len_utf16).sum();
            let p = json!({ "textDocument": { "uri": URI }, "position": { "line": line, "character": col } });
            for method in
                ["textDocument/completion", "textDocument/hover", "textDocument/definition"]
            {
                let r = c.request(method, p.clone());
                assert!(r.get("error").is_none(), "{method} after {typed:?}: {r}");
            }
        }
    }
    // The last publication is for the final version and equals `rlx lint`'s diagnostics.
    let mut last = c.diagnostics(URI);
    while last["version"] != json!(text.chars().count()) {
        last = c.diagnostics(URI);
    }
    let path = std::env::temp_dir().join(format!("rlx-lsp-typed-{}.rlx", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let lint = Command::new(env!("CARGO_BIN_EXE_rlx"))
        .args(["lint", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    let lint: Value = serde_json::from_slice(&lint.stdout).unwrap();
    let ours: Vec<(String, u64, u64)> = last["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let s = &d["range"]["start"];
            (
                d["code"].as_str().unwrap().to_string(),
                s["line"].as_u64().unwrap() + 1,
                s["character"].as_u64().unwrap() + 1,
            )
        })
        .collect();
    let theirs: Vec<(String, u64, u64)> = lint
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!theirs.is_empty());
    assert_eq!(ours, theirs);
    let _ = std::fs::remove_file(&path);
    c.result("shutdown", Value::Null);
    c.notify("exit", Value::Null);
    assert_eq!(c.child.wait().unwrap().code(), Some(0));
    assert_no_panic(&mut c);
}
