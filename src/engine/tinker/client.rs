//! The HTTP side of the Tinker protocol: JSON control calls, protobuf bodies and results,
//! futures, retries. Every mutating call answers a future (`{"request_id": …}`) whose result
//! comes from `retrieve_future`, which long-polls: 408 means "not yet, ask again", a
//! `{"type": "try_again"}` body likewise, 410 means the future expired (the call is sent
//! again), 400 carries the server's refusal. Connection losses and 5xx answers are retried a
//! bounded number of times with exponential backoff; after that the error names the server and
//! the call. Credentials (`auth`) travel only in the `X-API-Key` header and are never printed.
//! `client/config` says how the server wants to be spoken to: whether it exchanges the
//! credential for JWTs, how many datums and bytes one `forward_backward` request may carry,
//! and how many `asample` requests may be in flight.

use std::fmt;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::auth::{self, Auth, Source};

/// The `tinker` SDK release whose wire protocol rlx speaks: sent as `client/config`'s
/// `sdk_version`, from which a server resolves its flags.
pub const SDK_PROTOCOL: &str = "0.38.0";

/// Largest reply body read (a sample or forward result of a large batch stays far below).
const MAX_REPLY: u64 = 256 << 20;

/// Largest weights archive downloaded (a rank-32 adapter of a 70B model is well below).
const MAX_DOWNLOAD: u64 = 8 << 30;

/// An error of one call to one server.
#[derive(Debug, Clone)]
pub struct CallError {
    pub server: String,
    pub call: String,
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not reachable, or the connection dropped (after the retries).
    Connection,
    /// The server refused the request (4xx with a reason).
    Refused,
    /// The server failed (5xx, after the retries).
    Server,
    /// The future expired before it was collected.
    Expired,
    /// The server rejected the call's token itself (401, `error="invalid_token"`).
    TokenRejected,
    /// The reply was not what the protocol says.
    Protocol,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tinker server {}: `{}`: {}", self.server, self.call, self.message)
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// Whether the server has no such route (FastAPI's bare 404 "Not Found", or 405): a call
    /// the protocol added later, which an older server does not know.
    pub fn route_missing(&self) -> bool {
        self.kind == ErrorKind::Refused
            && (self.message.starts_with("HTTP 404: Not Found")
                || self.message.starts_with("HTTP 405"))
    }
}

/// A request body.
pub enum Body {
    Json(Json),
    Proto(Vec<u8>),
}

/// A result body.
#[derive(Debug)]
pub enum Reply {
    Json(Json),
    Proto(Vec<u8>),
}

impl Reply {
    pub fn json(self) -> Option<Json> {
        match self {
            Reply::Json(j) => Some(j),
            Reply::Proto(_) => None,
        }
    }
}

/// A submitted request whose result is collected later: submit several, then wait on each,
/// and the server works on them together.
#[derive(Debug, Clone)]
pub struct Future {
    pub request_id: String,
    pub call: String,
}

/// How many times, and how patiently, a failed transport is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { attempts: 5, first_backoff: Duration::from_millis(200) }
    }
}

/// What a server's `client/config` says (the SDK's defaults where it says nothing, or has no
/// such route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// `pjwt_auth_enabled`: calls carry a JWT exchanged for the credential at `auth/token`.
    pub exchanges_jwt: bool,
    /// `fwdbwd_max_chunk_len`: most datums in one `forward_backward` request.
    pub max_chunk_datums: usize,
    /// `fwdbwd_max_chunk_bytes_count`: most (estimated, uncompressed) bytes in one.
    pub max_chunk_bytes: usize,
    /// `sample_max_concurrent_requests`: most `asample` requests in flight at once.
    pub max_samples_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        // `tinker` 0.38 `types/client_config_response.py`.
        ServerConfig {
            exchanges_jwt: false,
            max_chunk_datums: 1024,
            max_chunk_bytes: 5_000_000,
            max_samples_in_flight: 2000,
        }
    }
}

impl ServerConfig {
    fn from_json(j: &Json) -> ServerConfig {
        let d = ServerConfig::default();
        let size = |k: &str, default: usize| {
            j[k].as_u64().filter(|&n| n > 0).map_or(default, |n| n as usize)
        };
        ServerConfig {
            exchanges_jwt: j["pjwt_auth_enabled"].as_bool().unwrap_or(false),
            max_chunk_datums: size("fwdbwd_max_chunk_len", d.max_chunk_datums),
            max_chunk_bytes: size("fwdbwd_max_chunk_bytes_count", d.max_chunk_bytes),
            max_samples_in_flight: size("sample_max_concurrent_requests", d.max_samples_in_flight),
        }
    }
}

/// One Tinker server.
pub struct Client {
    /// `NAME (URL)` or `URL`, for errors.
    label: String,
    /// `URL/api/v1/`.
    base: String,
    agent: ureq::Agent,
    auth: Auth,
    /// Held while a JWT is exchanged, so that calls waiting on one exchange no other.
    exchanging: Mutex<()>,
    config: ServerConfig,
    retry: Retry,
}

impl Client {
    /// A client for the server at `url` (`http://host:port`, with or without `/api/v1`),
    /// with the credential in the environment (`auth::Source`) and the server's
    /// `client/config`, checked with `healthz`.
    pub fn connect(name: Option<&str>, url: &str, retry: Retry) -> Result<Client, CallError> {
        let trimmed = url.trim_end_matches('/');
        let base = match trimmed.strip_suffix("/api/v1") {
            Some(root) => format!("{root}/api/v1/"),
            None => format!("{trimmed}/api/v1/"),
        };
        let label = match name {
            Some(n) => format!("`{n}` ({trimmed})"),
            None => trimmed.to_string(),
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // `retrieve_future` long-polls (SkyRL: up to 300 s, then 408).
            .timeout_read(Duration::from_secs(400))
            .timeout_write(Duration::from_secs(120))
            .build();
        let mut client = Client {
            label,
            base,
            agent,
            auth: Auth::new(Source::from_env()),
            exchanging: Mutex::new(()),
            config: ServerConfig::default(),
            retry,
        };
        // `client/config` first, with the credential itself (as the SDK asks it): it says
        // whether every later call, `healthz` included, carries an exchanged token instead.
        client.config = client.fetch_config()?;
        let exchanges = client.config.exchanges_jwt;
        if exchanges && client.auth.source().is_none() {
            return Err(client.error(
                "auth/token",
                ErrorKind::Refused,
                "the server exchanges a credential for its tokens (`pjwt_auth_enabled`), and none is set: set `TINKER_API_KEY` (or `TINKER_CREDENTIAL_CMD`)",
            ));
        }
        client
            .auth
            .set_exchanges(exchanges)
            .map_err(|m| client.error("client/config", ErrorKind::Refused, m))?;
        client.get("healthz")?;
        Ok(client)
    }

    /// `client/config`, answered with the credential itself. A server without the route
    /// (SkyRL's older `skyrl-tx`) gets the SDK's defaults.
    fn fetch_config(&self) -> Result<ServerConfig, CallError> {
        let body = Body::Json(json!({ "sdk_version": SDK_PROTOCOL }));
        match self.send("client/config", Some(&body)) {
            Ok(Reply::Json(j)) => Ok(ServerConfig::from_json(&j)),
            Ok(Reply::Proto(_)) => {
                Err(self.error("client/config", ErrorKind::Protocol, "a protobuf reply"))
            }
            Err(e) if e.route_missing() => Ok(ServerConfig::default()),
            Err(e) => Err(e),
        }
    }

    /// What `client/config` said.
    pub fn config(&self) -> ServerConfig {
        self.config
    }

    /// The `X-API-Key` of a call: the credential, or a JWT with more than a minute left
    /// (exchanged now where there is none).
    fn credential_header(&self) -> Result<Option<String>, CallError> {
        let call = "auth/token";
        if !self.auth.exchanges() {
            return self.auth.plain().map_err(|m| self.error(call, ErrorKind::Refused, m));
        }
        if let Some(t) = self.auth.fresh() {
            return Ok(Some(t));
        }
        let _one_at_a_time = self.exchanging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.auth.fresh() {
            return Ok(Some(t));
        }
        let credential = self.auth.plain().map_err(|m| self.error(call, ErrorKind::Refused, m))?;
        let reply = self.send_as(call, Some(&Body::Json(json!({}))), false, credential.as_deref());
        let jwt = match reply {
            Ok(Reply::Json(j)) => j["jwt"].as_str().map(str::to_string),
            Ok(Reply::Proto(_)) => None,
            Err((Some(401 | 403), mut e)) => {
                let from = self.auth.source().map_or("", Source::variable);
                e.message =
                    format!("{}: the server does not accept the credential in `{from}`", e.message);
                return Err(e);
            }
            Err((_, e)) => return Err(e),
        };
        let jwt =
            jwt.ok_or_else(|| self.error(call, ErrorKind::Protocol, "a reply without `jwt`"))?;
        self.auth.store(jwt.clone());
        Ok(Some(jwt))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn error(&self, call: &str, kind: ErrorKind, message: impl Into<String>) -> CallError {
        CallError { server: self.label.clone(), call: call.into(), kind, message: message.into() }
    }

    /// `GET path`, as JSON.
    pub fn get(&self, path: &str) -> Result<Json, CallError> {
        let reply = self.send(path, None)?;
        reply.json().ok_or_else(|| self.error(path, ErrorKind::Protocol, "a protobuf reply"))
    }

    /// Where a checkpoint's archive can be downloaded (`GET training_runs/RUN/checkpoints/ID/
    /// archive`, as the `tinker` SDK asks): the redirect's `Location` (SkyRL, hosted Tinker) or
    /// the JSON `url` (the SDK's announced contract). `None`: the server has no such route.
    pub fn archive_url(&self, run: &str, checkpoint: &str) -> Result<Option<String>, CallError> {
        let call = format!("training_runs/{run}/checkpoints/{checkpoint}/archive");
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(120))
            .redirects(0)
            .build();
        let mut tries = 0;
        loop {
            let mut req =
                agent.get(&format!("{}{call}", self.base)).set("Accept", "application/json");
            if let Some(key) = self.credential_header()? {
                req = req.set("X-API-Key", &key);
            }
            let (status, resp) = match req.call() {
                Ok(r) => (r.status(), r),
                Err(ureq::Error::Status(code, r)) => (code, r),
                Err(e) if tries < self.retry.attempts => {
                    let _ = e;
                    tries += 1;
                    std::thread::sleep(self.retry.first_backoff * 2u32.pow(tries));
                    continue;
                }
                Err(e) => return Err(self.error(&call, ErrorKind::Connection, e.to_string())),
            };
            match status {
                300..=399 => {
                    let location =
                        resp.header("Location").map(str::to_string).ok_or_else(|| {
                            self.error(
                                &call,
                                ErrorKind::Protocol,
                                format!("HTTP {status} without a Location"),
                            )
                        })?;
                    return Ok(Some(self.absolute(&location)));
                }
                200 => {
                    let text = resp.into_string().unwrap_or_default();
                    let j: Json = serde_json::from_str(&text).map_err(|e| {
                        self.error(
                            &call,
                            ErrorKind::Protocol,
                            format!("a reply that is not JSON: {e}"),
                        )
                    })?;
                    let url = j["url"].as_str().ok_or_else(|| {
                        self.error(&call, ErrorKind::Protocol, "a reply without `url`")
                    })?;
                    return Ok(Some(self.absolute(url)));
                }
                // The route itself is missing (FastAPI's bare "Not Found"), or not a GET.
                404 | 405 => {
                    let text = resp.into_string().unwrap_or_default();
                    if status == 405 || text.contains("\"Not Found\"") {
                        return Ok(None);
                    }
                    return Err(self.error(&call, ErrorKind::Refused, format!("HTTP 404: {text}")));
                }
                // Still being written (SkyRL: 425), or the service is busy.
                425 | 503 | 500..=599 if tries < self.retry.attempts => {
                    tries += 1;
                    std::thread::sleep(self.retry.first_backoff * 2u32.pow(tries));
                }
                _ => {
                    let text: String =
                        resp.into_string().unwrap_or_default().chars().take(300).collect();
                    let kind = if status >= 500 { ErrorKind::Server } else { ErrorKind::Refused };
                    return Err(self.error(&call, kind, format!("HTTP {status}: {text}")));
                }
            }
        }
    }

    /// The bytes at `url`. The credential goes only to the server's own address, never to
    /// another host (a signed storage URL needs none).
    pub fn download(&self, url: &str) -> Result<Vec<u8>, CallError> {
        let call = "download";
        let mut req = self.agent.get(url);
        if url.starts_with(self.origin())
            && let Some(key) = self.credential_header()?
        {
            req = req.set("X-API-Key", &key);
        }
        let resp = req.call().map_err(|e| match e {
            ureq::Error::Status(code, _) => {
                self.error(call, ErrorKind::Refused, format!("HTTP {code} from {url}"))
            }
            e => self.error(call, ErrorKind::Connection, format!("{url}: {e}")),
        })?;
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_DOWNLOAD + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.error(call, ErrorKind::Connection, format!("{url}: {e}")))?;
        if bytes.len() as u64 > MAX_DOWNLOAD {
            return Err(self.error(
                call,
                ErrorKind::Protocol,
                format!("{url}: over {MAX_DOWNLOAD} bytes"),
            ));
        }
        Ok(bytes)
    }

    /// `scheme://host:port` of the server.
    fn origin(&self) -> &str {
        let after_scheme = self.base.find("://").map_or(0, |i| i + 3);
        let end = self.base[after_scheme..].find('/').map_or(self.base.len(), |i| after_scheme + i);
        &self.base[..end]
    }

    /// `url` made absolute against the server's address.
    fn absolute(&self, url: &str) -> String {
        if url.starts_with('/') { format!("{}{url}", self.origin()) } else { url.to_string() }
    }

    /// `POST path` with a direct (not future) JSON reply.
    pub fn post_json(&self, path: &str, body: Json) -> Result<Json, CallError> {
        let reply = self.send(path, Some(&Body::Json(body)))?;
        reply.json().ok_or_else(|| self.error(path, ErrorKind::Protocol, "a protobuf reply"))
    }

    /// Submits a call whose result is a future. `idempotent`: sending it twice does no harm,
    /// so a dropped connection is retried; otherwise (a backward, an optimiser step) a
    /// connection lost after the request may have been sent is an error, never a second send
    /// that could apply it twice.
    pub fn submit(&self, path: &str, body: &Body, idempotent: bool) -> Result<Future, CallError> {
        let reply = if idempotent {
            self.send(path, Some(body))?
        } else {
            self.send_once(path, Some(body), false).map_err(|(_, mut e)| {
                if e.kind == ErrorKind::Connection {
                    e.message = format!(
                        "{}; the request may or may not have reached the server, so it is not sent again",
                        e.message
                    );
                }
                e
            })?
        };
        let id = reply.json().and_then(|j| {
            j.get("request_id").or_else(|| j.get("future_id")).and_then(|v| match v {
                Json::String(s) => Some(s.clone()),
                Json::Number(n) => Some(n.to_string()),
                _ => None,
            })
        });
        match id {
            Some(request_id) => Ok(Future { request_id, call: path.to_string() }),
            None => Err(self.error(path, ErrorKind::Protocol, "the reply names no request_id")),
        }
    }

    /// Waits for a future's result.
    pub fn wait(&self, future: &Future) -> Result<Reply, CallError> {
        let body = Body::Json(json!({ "request_id": future.request_id }));
        let mut failures = 0;
        loop {
            match self.send_once("retrieve_future", Some(&body), true) {
                Ok(Reply::Json(j)) if j.get("type").and_then(Json::as_str) == Some("try_again") => {
                }
                Ok(Reply::Json(j)) if j.get("error").is_some() => {
                    let e = &j["error"];
                    let msg = e.as_str().map_or_else(|| e.to_string(), str::to_string);
                    return Err(self.error(&future.call, ErrorKind::Refused, msg));
                }
                Ok(reply) => return Ok(reply),
                Err((Some(408), _)) => {}
                Err((Some(410), _)) => {
                    return Err(self.error(&future.call, ErrorKind::Expired, "the future expired"));
                }
                // The result stays on the server: poll again after a pause, a bounded number of
                // times.
                Err((_, e)) if transient(&e) && failures < self.retry.attempts => {
                    std::thread::sleep(self.retry.first_backoff * 2u32.pow(failures.min(8)));
                    failures += 1;
                }
                Err((_, mut e)) => {
                    e.call = future.call.clone();
                    if failures > 0 {
                        e.message = format!("{} (after {failures} retries)", e.message);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Submits and waits; an expired future of an idempotent call is submitted again once.
    pub fn call(&self, path: &str, body: &Body, idempotent: bool) -> Result<Reply, CallError> {
        let f = self.submit(path, body, idempotent)?;
        match self.wait(&f) {
            Err(e) if e.kind == ErrorKind::Expired && idempotent => {
                let f = self.submit(path, body, idempotent)?;
                self.wait(&f)
            }
            r => r,
        }
    }

    /// A call with retries on connection loss and 5xx.
    fn send(&self, path: &str, body: Option<&Body>) -> Result<Reply, CallError> {
        let mut backoff = self.retry.first_backoff;
        let mut tries = 0;
        loop {
            match self.send_once(path, body, false) {
                Ok(r) => return Ok(r),
                Err((_, e)) if transient(&e) && tries < self.retry.attempts => {
                    tries += 1;
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                Err((_, e)) if tries > 0 => {
                    return Err(self.error(
                        path,
                        e.kind,
                        format!("{} (after {tries} retries)", e.message),
                    ));
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// One HTTP exchange with the call's credential; a token the server rejects as invalid
    /// is exchanged again and the call sent once more. Errors carry the status where there
    /// was one.
    fn send_once(
        &self,
        path: &str,
        body: Option<&Body>,
        accept_proto: bool,
    ) -> Result<Reply, (Option<u16>, CallError)> {
        let key = self.credential_header().map_err(|e| (None, e))?;
        match self.send_as(path, body, accept_proto, key.as_deref()) {
            Err((_, e)) if self.auth.exchanges() && e.kind == ErrorKind::TokenRejected => {
                self.auth.reject(key.as_deref().unwrap_or(""));
                let key = self.credential_header().map_err(|e| (None, e))?;
                self.send_as(path, body, accept_proto, key.as_deref()).map_err(|(code, mut e)| {
                    if e.kind == ErrorKind::TokenRejected {
                        e.message = format!("{} (a freshly exchanged token too)", e.message);
                    }
                    (code, e)
                })
            }
            r => r,
        }
    }

    /// One HTTP exchange carrying `key`.
    fn send_as(
        &self,
        path: &str,
        body: Option<&Body>,
        accept_proto: bool,
        key: Option<&str>,
    ) -> Result<Reply, (Option<u16>, CallError)> {
        let url = format!("{}{path}", self.base);
        let mut req = match body {
            Some(_) => self.agent.post(&url),
            None => self.agent.get(&url),
        };
        req = req.set("User-Agent", concat!("rlx/", env!("CARGO_PKG_VERSION")));
        if let Some(key) = key {
            req = req.set("X-API-Key", key);
        }
        if accept_proto {
            req = req.set("Accept", "application/x-protobuf, application/json");
        }
        let sent = match body {
            None => req.call(),
            Some(Body::Json(j)) => {
                req.set("Content-Type", "application/json").send_string(&j.to_string())
            }
            Some(Body::Proto(b)) => req.set("Content-Type", "application/x-protobuf").send_bytes(b),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let token_refused =
                    code == 401 && auth::invalid_token(r.header("WWW-Authenticate"));
                let text = r.into_string().unwrap_or_default();
                let detail = serde_json::from_str::<Json>(&text)
                    .ok()
                    .and_then(|j| j.get("detail").or_else(|| j.get("error")).cloned())
                    .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string))
                    .unwrap_or_else(|| text.chars().take(300).collect());
                let kind = match code {
                    500.. => ErrorKind::Server,
                    401 if token_refused => ErrorKind::TokenRejected,
                    _ => ErrorKind::Refused,
                };
                return Err((Some(code), self.error(path, kind, format!("HTTP {code}: {detail}"))));
            }
            Err(e) => {
                return Err((None, self.error(path, ErrorKind::Connection, e.to_string())));
            }
        };
        let proto = resp.content_type().contains("protobuf");
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_REPLY + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| (None, self.error(path, ErrorKind::Connection, e.to_string())))?;
        if bytes.len() as u64 > MAX_REPLY {
            return Err((
                None,
                self.error(path, ErrorKind::Protocol, format!("a reply over {MAX_REPLY} bytes")),
            ));
        }
        if proto {
            return Ok(Reply::Proto(bytes));
        }
        serde_json::from_slice(&bytes).map(Reply::Json).map_err(|e| {
            (None, self.error(path, ErrorKind::Protocol, format!("a reply that is not JSON: {e}")))
        })
    }
}

/// Worth trying again: no answer at all, or a server failure.
fn transient(e: &CallError) -> bool {
    matches!(e.kind, ErrorKind::Connection | ErrorKind::Server)
}
