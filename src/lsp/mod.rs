//! `rlx lsp`: a Language Server Protocol server over stdio. It reuses the pipeline — the same
//! parser, checker and lints as `rlx lint`, the registry's docs, the formatter — and answers
//! diagnostics (debounced while typing), hover, completion, definition, references, document
//! symbols, formatting and quick fixes.
//!
//! Types come from `lsp-types`; the framing is our own (`transport`), so that a malformed
//! message gets an error response instead of ending the session. Every request runs under
//! `catch_unwind`: a bug answers one request with an internal error, the server keeps going.

mod actions;
mod complete;
mod diagnostics;
mod hover;
mod navigate;
pub mod position;
mod syntax_at;
pub mod transport;

use std::collections::HashMap;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lsp_types::*;
use serde_json::{Value, json};

use crate::check::Checked;
use crate::check::lints::LintConfig;
use crate::diag::Span;
use crate::source::{Analysis, SourceFile, analyze};
use crate::syntax::ast::Recipe;
use position::LineIndex;
use transport::Incoming;

/// Quiet time after the last edit before diagnostics are recomputed and published.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;
const REQUEST_FAILED: i64 = -32803;

struct Doc {
    text: String,
    version: i32,
    analysis: Option<Analysis>,
    /// The analysis of the last version that parsed, kept for completion inside half-typed
    /// text (moved here when that version is edited, not copied).
    last_parsed: Option<Analysis>,
}

impl Doc {
    fn new(text: String, version: i32) -> Doc {
        Doc { text, version, analysis: None, last_parsed: None }
    }

    /// The current text's analysis, computed on first use after an edit.
    fn analysis(&mut self, uri: &Uri) -> &Analysis {
        self.analysis.get_or_insert_with(|| {
            analyze(
                &SourceFile::new(uri.path().as_str(), self.text.clone()),
                &LintConfig::defaults(),
            )
        })
    }

    /// The text changed: its analysis is stale; one that parsed stays as the last that did.
    fn edited(&mut self) {
        if let Some(a) = self.analysis.take().filter(|a| a.recipe.is_some()) {
            self.last_parsed = Some(a);
        }
    }

    /// The current version's syntax tree and checked recipe, if it parsed.
    fn parsed(&self) -> Option<(&Recipe, Option<&Checked>)> {
        let a = self.analysis.as_ref()?;
        Some((a.recipe.as_ref()?, a.checked.as_ref()))
    }

    /// The current version's parse if there is one, else the last version's that parsed.
    fn last_parsed(&self) -> Option<(&Recipe, Option<&Checked>)> {
        self.parsed().or_else(|| {
            let a = self.last_parsed.as_ref()?;
            Some((a.recipe.as_ref()?, a.checked.as_ref()))
        })
    }
}

#[derive(Default)]
struct Server {
    docs: HashMap<Uri, Doc>,
    /// Documents edited since their diagnostics were last published, with the edit time.
    pending: HashMap<Uri, Instant>,
    shutdown: bool,
    out: Vec<Value>,
}

/// A failed request: a JSON-RPC error code and message.
type Failure = (i64, String);

/// Serves one client on stdin/stdout until `exit` or end of input; the exit status follows the
/// protocol (0 after `shutdown`, else 1).
pub fn serve_stdio() -> i32 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut input = std::io::BufReader::new(std::io::stdin());
        loop {
            let m = transport::read(&mut input).unwrap_or(Incoming::Eof);
            let end = matches!(m, Incoming::Eof);
            if tx.send(m).is_err() || end {
                break;
            }
        }
    });
    serve(rx, &mut std::io::stdout())
}

/// The server loop over already-framed input.
pub fn serve(rx: mpsc::Receiver<Incoming>, output: &mut impl Write) -> i32 {
    let mut server = Server::default();
    loop {
        let next = match server.pending.values().min() {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout((*t + DEBOUNCE).saturating_duration_since(Instant::now())),
        };
        let status = match next {
            Ok(Incoming::Message(m)) => server.message(m),
            Ok(Incoming::Malformed(why)) => {
                server.out.push(error_response(Value::Null, PARSE_ERROR, &why));
                None
            }
            Ok(Incoming::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                Some(if server.shutdown { 0 } else { 1 })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                server.publish_due();
                None
            }
        };
        for m in server.out.drain(..) {
            if transport::write(output, &m).is_err() {
                return 1;
            }
        }
        if let Some(code) = status {
            return code;
        }
    }
}

fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn params<T: serde::de::DeserializeOwned>(p: Value) -> Result<T, Failure> {
    serde_json::from_value(p).map_err(|e| (INVALID_PARAMS, format!("invalid params: {e}")))
}

impl Server {
    /// Handles one message; `Some(code)` ends the session.
    fn message(&mut self, m: Value) -> Option<i32> {
        let method = m.get("method").and_then(Value::as_str).map(str::to_string);
        let id = m.get("id").cloned();
        let p = m.get("params").cloned().unwrap_or(Value::Null);
        match (method, id) {
            (Some(method), Some(id)) => {
                let result = if self.shutdown && method != "shutdown" {
                    Err((INVALID_REQUEST, "the server is shutting down".into()))
                } else {
                    catch_unwind(AssertUnwindSafe(|| self.request(&method, p))).unwrap_or_else(
                        |_| {
                            Err((
                                INTERNAL_ERROR,
                                format!("internal error while handling `{method}`"),
                            ))
                        },
                    )
                };
                self.out.push(match result {
                    Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
                    Err((code, msg)) => error_response(id, code, &msg),
                });
                None
            }
            (Some(method), None) => {
                if method == "exit" {
                    return Some(if self.shutdown { 0 } else { 1 });
                }
                // A notification has no one to tell about a failure.
                let _ = catch_unwind(AssertUnwindSafe(|| self.notification(&method, p)));
                None
            }
            // A response from the client (we send no requests) is ignored.
            (None, Some(_)) if m.get("result").is_some() || m.get("error").is_some() => None,
            (None, id) => {
                let id = id.unwrap_or(Value::Null);
                self.out.push(error_response(id, INVALID_REQUEST, "a message needs a `method`"));
                None
            }
        }
    }

    fn notification(&mut self, method: &str, p: Value) {
        match method {
            "textDocument/didOpen" => {
                let Ok(p) = params::<DidOpenTextDocumentParams>(p) else { return };
                let doc = p.text_document;
                self.docs.insert(doc.uri.clone(), Doc::new(doc.text, doc.version));
                self.publish(&doc.uri);
            }
            "textDocument/didChange" => {
                let Ok(p) = params::<DidChangeTextDocumentParams>(p) else { return };
                let uri = p.text_document.uri;
                let Some(doc) = self.docs.get_mut(&uri) else { return };
                for change in p.content_changes {
                    match change.range {
                        Some(r) => {
                            let ix = LineIndex::new(&doc.text);
                            let (a, b) = (ix.offset(r.start), ix.offset(r.end));
                            let (a, b) = (a.min(b), a.max(b));
                            doc.text.replace_range(a..b, &change.text);
                        }
                        None => doc.text = change.text,
                    }
                }
                doc.version = p.text_document.version;
                doc.edited();
                self.pending.insert(uri, Instant::now());
            }
            "textDocument/didClose" => {
                let Ok(p) = params::<DidCloseTextDocumentParams>(p) else { return };
                let uri = p.text_document.uri;
                self.docs.remove(&uri);
                self.pending.remove(&uri);
                self.out.push(json!({
                    "jsonrpc": "2.0",
                    "method": "textDocument/publishDiagnostics",
                    "params": { "uri": uri, "diagnostics": [] },
                }));
            }
            _ => {}
        }
    }

    fn publish_due(&mut self) {
        let now = Instant::now();
        let due: Vec<Uri> = self
            .pending
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= DEBOUNCE)
            .map(|(u, _)| u.clone())
            .collect();
        for uri in due {
            self.pending.remove(&uri);
            self.publish(&uri);
        }
    }

    fn publish(&mut self, uri: &Uri) {
        let Ok(doc) = self.analysed(uri) else { return };
        let version = doc.version;
        let ix = LineIndex::new(&doc.text);
        let diagnostics: Vec<lsp_types::Diagnostic> = doc
            .analysis
            .iter()
            .flat_map(|a| &a.diagnostics)
            .map(|d| diagnostics::to_lsp(d, &ix, uri))
            .collect();
        self.out.push(json!({
            "jsonrpc": "2.0",
            "method": "textDocument/publishDiagnostics",
            "params": { "uri": uri, "version": version, "diagnostics": diagnostics },
        }));
    }

    fn doc(&mut self, uri: &Uri) -> Result<&mut Doc, Failure> {
        self.docs
            .get_mut(uri)
            .ok_or_else(|| (REQUEST_FAILED, format!("`{}` is not open", uri.as_str())))
    }

    /// An open document with its analysis up to date.
    fn analysed(&mut self, uri: &Uri) -> Result<&Doc, Failure> {
        let doc = self.doc(uri)?;
        doc.analysis(uri);
        Ok(doc)
    }

    fn request(&mut self, method: &str, p: Value) -> Result<Value, Failure> {
        match method {
            "initialize" => Ok(initialize_result()),
            "shutdown" => {
                self.shutdown = true;
                Ok(Value::Null)
            }
            "textDocument/hover" => {
                let at: TextDocumentPositionParams =
                    params::<HoverParams>(p)?.text_document_position_params;
                let doc = self.analysed(&at.text_document.uri)?;
                let ix = LineIndex::new(&doc.text);
                let Some((recipe, checked)) = doc.parsed() else { return Ok(Value::Null) };
                let hover = hover::hover(&doc.text, recipe, checked, ix.offset(at.position));
                Ok(hover.map_or(Value::Null, |(value, span)| {
                    to_json(&Hover {
                        contents: HoverContents::Markup(MarkupContent {
                            kind: MarkupKind::Markdown,
                            value,
                        }),
                        range: Some(ix.range(span)),
                    })
                }))
            }
            "textDocument/completion" => {
                let at = params::<CompletionParams>(p)?.text_document_position;
                let doc = self.analysed(&at.text_document.uri)?;
                let offset = LineIndex::new(&doc.text).offset(at.position);
                let (recipe, checked) =
                    doc.last_parsed().map_or((None, None), |(r, c)| (Some(r), c));
                let items = complete::complete(&doc.text, offset, recipe, checked);
                Ok(to_json(&CompletionResponse::Array(items)))
            }
            "textDocument/definition" => {
                let at = params::<GotoDefinitionParams>(p)?.text_document_position_params;
                let uri = at.text_document.uri;
                let doc = self.analysed(&uri)?;
                let ix = LineIndex::new(&doc.text);
                let Some((recipe, _)) = doc.parsed() else { return Ok(Value::Null) };
                let def = navigate::definition(recipe, ix.offset(at.position));
                Ok(def.map_or(Value::Null, |d| {
                    to_json(&GotoDefinitionResponse::Scalar(Location {
                        uri: uri.clone(),
                        range: ix.range(d.span),
                    }))
                }))
            }
            "textDocument/references" => {
                let p: ReferenceParams = params(p)?;
                let at = p.text_document_position;
                let uri = at.text_document.uri;
                let doc = self.analysed(&uri)?;
                let ix = LineIndex::new(&doc.text);
                let Some((recipe, _)) = doc.parsed() else { return Ok(json!([])) };
                let spans = navigate::references(
                    recipe,
                    ix.offset(at.position),
                    p.context.include_declaration,
                );
                let locations: Vec<Location> = spans
                    .into_iter()
                    .map(|s| Location { uri: uri.clone(), range: ix.range(s) })
                    .collect();
                Ok(to_json(&locations))
            }
            "textDocument/documentSymbol" => {
                let uri = params::<DocumentSymbolParams>(p)?.text_document.uri;
                let doc = self.analysed(&uri)?;
                let ix = LineIndex::new(&doc.text);
                let Some((recipe, _)) = doc.parsed() else { return Ok(json!([])) };
                Ok(to_json(&DocumentSymbolResponse::Nested(navigate::symbols(recipe, &ix))))
            }
            "textDocument/formatting" => {
                let uri = params::<DocumentFormattingParams>(p)?.text_document.uri;
                let doc = self.doc(&uri)?;
                match crate::syntax::format::format(&doc.text) {
                    Ok(f) if f == doc.text => Ok(json!([])),
                    Ok(f) => {
                        let range = LineIndex::new(&doc.text).full();
                        Ok(to_json(&vec![TextEdit { range, new_text: f }]))
                    }
                    Err(d) => Err((REQUEST_FAILED, format!("cannot format: {}", d.message))),
                }
            }
            "textDocument/codeAction" => {
                let p: CodeActionParams = params(p)?;
                let uri = p.text_document.uri;
                let doc = self.analysed(&uri)?;
                let ix = LineIndex::new(&doc.text);
                let range = Span::new(ix.offset(p.range.start), ix.offset(p.range.end));
                let diags = &doc.analysis.as_ref().expect("analysed").diagnostics;
                Ok(to_json(&actions::quick_fixes(diags, &doc.text, &uri, range)))
            }
            _ => Err((METHOD_NOT_FOUND, format!("unknown method `{method}`"))),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn initialize_result() -> Value {
    let caps = ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Kind(TextDocumentSyncKind::FULL)),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(vec![".".into(), "(".into(), ",".into(), "{".into()]),
            ..Default::default()
        }),
        definition_provider: Some(OneOf::Left(true)),
        references_provider: Some(OneOf::Left(true)),
        document_symbol_provider: Some(OneOf::Left(true)),
        document_formatting_provider: Some(OneOf::Left(true)),
        code_action_provider: Some(CodeActionProviderCapability::Options(CodeActionOptions {
            code_action_kinds: Some(vec![CodeActionKind::QUICKFIX]),
            ..Default::default()
        })),
        ..Default::default()
    };
    json!({
        "capabilities": caps,
        "serverInfo": { "name": "rlx", "version": env!("CARGO_PKG_VERSION") },
    })
}
