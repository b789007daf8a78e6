//! A fake Tinker server on loopback for the tests: the HTTP and wire format of SkyRL 0.4.0
//! (JSON control calls, protobuf `forward_backward` bodies and results, futures collected with
//! `retrieve_future`), whose model is rlx's own candle engine (`rlx::engine::candle`) in either
//! reduction profile. Faults can be queued: a 408 or `try_again` while a result is pending, a
//! 500, a dropped connection. It can also be a hosted-Tinker-like server (`Tokens`): its
//! `client/config` asks for a JWT exchange, `auth/token` trades the API key for short-lived
//! tokens, every other call must carry a live one, each `create_model` a fresh `model_seq_id`
//! and each `asample` a sampling session; and it can refuse `forward_backward` requests over a
//! number of datums it announces, and count the samples in flight.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use prost::Message;
use rlx::engine::candle::CandleEngine;
use rlx::engine::surrogate::{CriticBackward, DatumBackward, LossFn};
use rlx::engine::tinker::proto;
use rlx::engine::{Adam, Engine, ModelId, SampleParams, Sampler, Seq};
use serde_json::{Value as Json, json};

/// What the next matching request meets instead of its answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `retrieve_future` answers 408 (still pending).
    Pending,
    /// `retrieve_future` answers `{"type": "try_again"}`.
    TryAgain,
    /// The request (on this path) answers 500.
    ServerError(&'static str),
    /// The connection closes without an answer (on this path).
    Drop(&'static str),
    /// The connection closes without an answer to a backward (after the server applied it:
    /// the client cannot know whether it did).
    DropAfterBackward,
    /// Every token issued so far is rejected from this request on (on this path), as a
    /// server that revoked them before they expired.
    RevokeTokens(&'static str),
}

/// A server that exchanges an API key for JWTs (hosted Tinker's `pjwt_auth_enabled`).
pub struct Tokens {
    /// The only API key `auth/token` accepts.
    pub key: String,
    /// Seconds each token lives (`exp − iat`).
    pub lifetime: u64,
    /// Tokens issued and not revoked.
    live: HashSet<String>,
    /// How many were issued.
    pub issued: usize,
    /// The paths of calls that carried the API key itself rather than a token.
    pub key_seen_at: Vec<String>,
    /// How many calls were refused for their token.
    pub rejected: usize,
}

impl Tokens {
    pub fn new(key: &str, lifetime: u64) -> Tokens {
        Tokens {
            key: key.into(),
            lifetime,
            live: HashSet::new(),
            issued: 0,
            key_seen_at: vec![],
            rejected: 0,
        }
    }

    fn issue(&mut self) -> String {
        use base64::Engine as _;
        let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        self.issued += 1;
        let claims = format!(
            r#"{{"iat":{now},"exp":{},"sub":"fake","n":{}}}"#,
            now + self.lifetime,
            self.issued
        );
        let jwt = format!("{}.{}.sig", b64(r#"{"alg":"none"}"#.into()), b64(claims));
        self.live.insert(jwt.clone());
        jwt
    }

    /// Whether `token` is live: issued, not revoked, not expired.
    fn accepts(&self, token: &str) -> bool {
        self.live.contains(token) && rlx::engine::tinker::auth::seconds_left(token) > 0.0
    }
}

pub enum Reply {
    Json(Json),
    Proto(Vec<u8>),
    Status(u16, Json),
}

pub struct State {
    pub engine: CandleEngine,
    pub base_model: String,
    pub faults: VecDeque<Fault>,
    /// Every call, by path, in order.
    pub calls: Vec<String>,
    /// Every backward: the loss function and its datums' inputs.
    pub backwards: Vec<(String, Vec<DatumBackward>)>,
    /// Every critic backward's datums.
    pub critic_backwards: Vec<Vec<CriticBackward>>,
    /// Whether `model_role: "critic"` is served (SkyRL's FSDP backend) or refused (its JAX one).
    pub critic: bool,
    /// Whether one trained policy at a time is all it holds (SkyRL 0.4's FSDP backend).
    pub one_policy: bool,
    /// Whether a sampler path samples its model's weights as last synced by
    /// `save_weights_for_sampler`, whichever snapshot it names (SkyRL's FSDP and Megatron
    /// backends: `skyrl_train_backend.py` `sample` routes by model id), not the saved ones.
    pub live_samplers: bool,
    /// Whether sampling a snapshot loads it into its model's own weights unless it loaded that
    /// snapshot last, then samples the model as it is (SkyRL's JAX backend, `jax.py`
    /// `load_sampler_weights`: the sampled adapter slot is the trained one).
    pub samplers_load: bool,
    loaded: HashMap<ModelId, String>,
    /// Whether the base model can be sampled without an adapter (not on SkyRL's FSDP and
    /// Megatron backends: `unknown model_id(s): ['']`).
    pub base_sampling: bool,
    /// Each sampler path's model, and each model's last synced path.
    owner: HashMap<String, ModelId>,
    synced: HashMap<ModelId, String>,
    futures: HashMap<String, Reply>,
    next: u64,
    /// The most models it held at once.
    pub most_held: usize,
    /// Its `client/config` answer (`None`: no such route, as before SDK 0.25's servers).
    pub config: Option<Json>,
    /// Whether it exchanges keys for tokens, and its bookkeeping.
    pub tokens: Option<Tokens>,
    /// Each `forward_backward` request's datum count.
    pub request_datums: Vec<usize>,
    /// `asample` futures not yet collected, and the most there were at once.
    samples_out: HashSet<String>,
    pub most_samples_out: usize,
    /// The `model_seq_id`s of its `create_model` calls.
    pub model_seq_ids: HashSet<u64>,
    /// Whether it opens sampling sessions (`create_sampling_session`, SkyRL 0.4 and SDK 0.38),
    /// and the weights each stands for (`null`: the base model).
    pub sampling_sessions: bool,
    sampling_session_of: HashMap<String, Json>,
}

pub struct Fake {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl State {
    /// As a restarted server, or SkyRL's cleanup of a session without heartbeats: every model
    /// unloaded; saved weights and sampler snapshots stay where they were written.
    pub fn restart(&mut self) {
        for m in self.engine.model_ids() {
            let _ = self.engine.unload(&m);
        }
        self.loaded.clear();
        self.futures.clear();
    }
}

impl Fake {
    pub fn start(engine: CandleEngine, base_model: &str) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            engine,
            base_model: base_model.into(),
            faults: VecDeque::new(),
            calls: vec![],
            backwards: vec![],
            critic_backwards: vec![],
            critic: true,
            one_policy: false,
            live_samplers: false,
            samplers_load: false,
            loaded: HashMap::new(),
            base_sampling: true,
            owner: HashMap::new(),
            synced: HashMap::new(),
            futures: HashMap::new(),
            next: 1,
            most_held: 0,
            config: None,
            tokens: None,
            request_datums: vec![],
            samples_out: HashSet::new(),
            most_samples_out: 0,
            model_seq_ids: HashSet::new(),
            sampling_sessions: true,
            sampling_session_of: HashMap::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Fake { url, state }
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (_method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_string());
        let mut length = 0;
        let mut key = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                } else if k.eq_ignore_ascii_case("x-api-key") {
                    key = Some(v.trim().to_string());
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let path = path.trim_start_matches("/api/v1/").to_string();
        let reply = {
            let mut s = state.lock().unwrap();
            s.calls.push(path.clone());
            if let Some(Fault::RevokeTokens(p)) = s.faults.front().cloned()
                && p == path
            {
                s.faults.pop_front();
                if let Some(t) = s.tokens.as_mut() {
                    t.live.clear();
                }
            }
            let refused = s.tokens.as_mut().and_then(|t| authorise(t, &path, key.as_deref()));
            if let Some(refusal) = refused {
                refusal
            } else {
                match s.faults.front().cloned() {
                    Some(Fault::Drop(p)) if p == path => {
                        s.faults.pop_front();
                        drop(s);
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    Some(Fault::ServerError(p)) if p == path => {
                        s.faults.pop_front();
                        Reply::Status(500, json!({"detail": "injected failure"}))
                    }
                    Some(f @ (Fault::Pending | Fault::TryAgain)) if path == "retrieve_future" => {
                        s.faults.pop_front();
                        match f {
                            Fault::Pending => Reply::Status(408, json!({"detail": "pending"})),
                            _ => Reply::Json(json!({"type": "try_again"})),
                        }
                    }
                    Some(Fault::DropAfterBackward)
                        if path == "forward_backward"
                            && proto::ForwardBackwardRequest::decode(body.as_slice())
                                .is_ok_and(|r| !r.forward_only) =>
                    {
                        s.faults.pop_front();
                        let _ = route(&mut s, &path, &body);
                        drop(s);
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    _ => route(&mut s, &path, &body),
                }
            }
        };
        let (status, kind, bytes) = match reply {
            Reply::Json(j) => (200, "application/json", j.to_string().into_bytes()),
            Reply::Proto(b) => (200, "application/x-protobuf", b),
            Reply::Status(code, j) => (code, "application/json", j.to_string().into_bytes()),
        };
        let challenge =
            if status == 401 { "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n" } else { "" };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\n{challenge}Content-Length: {}\r\n\r\n",
            bytes.len()
        );
        if stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&bytes)).is_err() {
            return;
        }
    }
}

/// The refusal a call meets on a token-exchanging server, if any: `auth/token` takes the API
/// key, `healthz` and `client/config` anything, every other call a live token. (Its 401s carry
/// `error="invalid_token"`, except the API key's own refusal, a 403.)
fn authorise(t: &mut Tokens, path: &str, key: Option<&str>) -> Option<Reply> {
    if key == Some(t.key.as_str()) && !matches!(path, "auth/token" | "client/config") {
        t.key_seen_at.push(path.to_string());
    }
    match path {
        "healthz" | "client/config" => None,
        "auth/token" if key == Some(t.key.as_str()) => {
            Some(Reply::Json(json!({ "jwt": t.issue() })))
        }
        "auth/token" => Some(Reply::Status(403, json!({"detail": "invalid API key"}))),
        _ if key.is_some_and(|k| t.accepts(k)) => None,
        _ => {
            t.rejected += 1;
            Some(Reply::Status(401, json!({"detail": "invalid or expired token"})))
        }
    }
}

fn refused(message: String) -> Reply {
    Reply::Status(400, json!({ "detail": message }))
}

fn future(s: &mut State, result: Result<Reply, String>) -> Reply {
    let id = s.next.to_string();
    s.next += 1;
    s.futures.insert(id.clone(), result.unwrap_or_else(refused));
    Reply::Json(json!({"request_id": id, "future_id": id, "status": "pending"}))
}

fn route(s: &mut State, path: &str, body: &[u8]) -> Reply {
    let j = || serde_json::from_slice::<Json>(body).unwrap_or(Json::Null);
    let model = |j: &Json| ModelId(j["model_id"].as_str().unwrap_or("").to_string());
    match path {
        "healthz" => Reply::Json(json!({"status": "ok"})),
        "client/config" => match (&s.config, &s.tokens) {
            (None, None) => Reply::Status(404, json!({"detail": "Not Found"})),
            (config, tokens) => {
                let mut c = config.clone().unwrap_or(json!({}));
                c["pjwt_auth_enabled"] = json!(tokens.is_some());
                Reply::Json(c)
            }
        },
        "get_server_capabilities" => {
            Reply::Json(json!({"supported_models": [{"model_name": s.base_model}]}))
        }
        "create_session" => Reply::Json(json!({"session_id": "session_1"})),
        "session_heartbeat" => Reply::Json(json!({})),
        "retrieve_future" => {
            let id = j()["request_id"].as_str().unwrap_or("").to_string();
            s.samples_out.remove(&id);
            s.futures.remove(&id).unwrap_or_else(|| refused(format!("no future {id}")))
        }
        "create_model" => {
            let body = j();
            // Hosted Tinker names a session's models by `model_seq_id` (the SDK's required
            // field): the hosted-like fake refuses a request without one, or a repeated one.
            let seq = body["model_seq_id"].as_u64();
            let hosted_refusal = match seq {
                _ if s.tokens.is_none() => None,
                None => Some("model_seq_id: field required".to_string()),
                Some(n) if !s.model_seq_ids.insert(n) => Some(format!("model {n} exists")),
                Some(_) => None,
            };
            let r = if let Some(refusal) = hosted_refusal {
                Err(refusal)
            } else if body["base_model"].as_str() != Some(s.base_model.as_str()) {
                Err(format!("base model {} is not served", body["base_model"]))
            } else {
                let seed = body["lora_config"]["seed"].as_u64().unwrap_or(0);
                match body["model_role"].as_str() {
                    Some("critic") if !s.critic => {
                        Err("JaxBackend only supports model_role='policy'".to_string())
                    }
                    Some("critic") => s.engine.create_critic(None, seed),
                    _ if s.one_policy
                        && s.engine.model_ids().iter().any(|m| !s.engine.is_critic(m)) =>
                    {
                        Err("SkyRLTrainBackend already has a 'policy' model".to_string())
                    }
                    _ => s.engine.create_model(None, seed),
                }
                .map(|m| Reply::Json(json!({"model_id": m.0})))
            };
            s.most_held = s.most_held.max(s.engine.model_ids().len());
            future(s, r)
        }
        "unload_model" => {
            let m = model(&j());
            // SkyRL (`api.py` `unload_model`): any session's model; an unknown id is a 404.
            if !s.engine.model_ids().contains(&m) {
                return Reply::Status(404, json!({"detail": "Model not found"}));
            }
            let _ = s.engine.unload(&m);
            future(s, Ok(Reply::Json(json!({"model_id": m.0, "status": "unloaded"}))))
        }
        "optim_step" => {
            let body = j();
            let p = &body["adam_params"];
            let adam = Adam {
                lr: p["learning_rate"].as_f64().unwrap_or(0.0),
                beta1: p["beta1"].as_f64().unwrap_or(0.9),
                beta2: p["beta2"].as_f64().unwrap_or(0.95),
                eps: p["eps"].as_f64().unwrap_or(1e-8),
                weight_decay: p["weight_decay"].as_f64().unwrap_or(0.0),
                clip_grad: p["grad_clip_norm"].as_f64(),
            };
            let r = s.engine.optim_step(&model(&body), &adam).map(|m| {
                let metrics: serde_json::Map<String, Json> =
                    m.into_iter().map(|(k, v)| (format!("fake/{k}"), json!(v))).collect();
                Reply::Json(json!({ "metrics": metrics }))
            });
            future(s, r)
        }
        "save_weights_for_sampler" => {
            let body = j();
            let name = body["path"].as_str().unwrap_or("").to_string();
            let m = model(&body);
            let r = s.engine.sampler(&m, &name).map(|p| match p {
                Sampler::Weights(p) => {
                    s.owner.insert(p.clone(), m.clone());
                    s.synced.insert(m, p.clone());
                    Reply::Json(json!({"path": p, "type": "save_weights_for_sampler"}))
                }
                Sampler::Base => Reply::Json(json!({})),
            });
            future(s, r)
        }
        "save_weights" => {
            let body = j();
            let name = body["path"].as_str().unwrap_or("").to_string();
            let r = s.engine.save(&model(&body), &name).map(|p| Reply::Json(json!({"path": p})));
            future(s, r)
        }
        "load_weights" => {
            let body = j();
            let path = body["path"].as_str().unwrap_or("").to_string();
            let r = s
                .engine
                .load(&model(&body), &path)
                .map(|_| Reply::Json(json!({"type": "load_weights"})));
            future(s, r)
        }
        "create_sampling_session" if !s.sampling_sessions => {
            Reply::Status(404, json!({"detail": "Not Found"}))
        }
        "create_sampling_session" => {
            let body = j();
            let id = format!("sampling_{}", s.sampling_session_of.len());
            let weights = body["model_path"].clone();
            if body["session_id"].as_str().is_none()
                || body["sampling_session_seq_id"].as_u64().is_none()
            {
                return refused("session_id and sampling_session_seq_id are required".into());
            }
            s.sampling_session_of.insert(id.clone(), weights);
            Reply::Json(json!({"sampling_session_id": id}))
        }
        "asample" => {
            let mut body = j();
            // A sampling session stands for the weights it was opened on (SkyRL `api.py`).
            if let Some(id) = body["sampling_session_id"].as_str().map(str::to_string) {
                let Some(weights) = s.sampling_session_of.get(&id).cloned() else {
                    return Reply::Status(404, json!({"detail": "Sampling session not found"}));
                };
                if body["seq_id"].as_u64().is_none() {
                    return refused(
                        "'seq_id' must be provided when 'sampling_session_id' is used".into(),
                    );
                }
                body["model_path"] = weights;
            } else if s.tokens.is_some() {
                // The hosted-like fake takes samples as the SDK 0.38 sends them only.
                return refused("asample without a sampling_session_id".into());
            }
            let r = sample(s, &body);
            let reply = future(s, r);
            if let Reply::Json(f) = &reply {
                s.samples_out.insert(f["request_id"].as_str().unwrap_or("").to_string());
                s.most_samples_out = s.most_samples_out.max(s.samples_out.len());
            }
            reply
        }
        "forward_backward" => {
            let r = forward_backward(s, body);
            future(s, r)
        }
        // FastAPI's answer for a route it does not have (the weights archive here: the fake's
        // model trains every weight, so it has no adapter to hand out).
        _ => Reply::Status(404, json!({"detail": "Not Found"})),
    }
}

fn sample(s: &mut State, body: &Json) -> Result<Reply, String> {
    let prompt: Vec<u32> = body["prompt"]["chunks"][0]["tokens"]
        .as_array()
        .ok_or("no prompt tokens")?
        .iter()
        .map(|t| t.as_u64().unwrap_or(0) as u32)
        .collect();
    let unknown = |m: &str| format!("Sampling requested for unknown model_id(s): ['{m}']");
    let sampler = match body["model_path"].as_str() {
        Some(p) if s.live_samplers => {
            let m = s.owner.get(p).cloned().ok_or_else(|| format!("no checkpoint {p}"))?;
            if !s.engine.model_ids().contains(&m) {
                return Err(unknown(&m.0));
            }
            Sampler::Weights(s.synced[&m].clone())
        }
        Some(p) if s.samplers_load => {
            let m = s.owner.get(p).cloned().ok_or_else(|| format!("no checkpoint {p}"))?;
            if s.loaded.get(&m).map(String::as_str) != Some(p) {
                s.engine.load_snapshot(&m, p)?;
                s.loaded.insert(m.clone(), p.to_string());
            }
            let now = format!("as-loaded-{}", s.next);
            s.next += 1;
            s.engine.sampler(&m, &now)?
        }
        Some(p) => Sampler::Weights(p.to_string()),
        None if !s.base_sampling => return Err(unknown("")),
        None => Sampler::Base,
    };
    let sp = &body["sampling_params"];
    let stop_text =
        sp["stop"].as_array().and_then(|a| a.first()).and_then(|v| v.as_str()).map(str::to_string);
    let params = SampleParams {
        max_tokens: sp["max_tokens"].as_u64().unwrap_or(16) as usize,
        temperature: sp["temperature"].as_f64().unwrap_or(1.0),
        top_p: sp["top_p"].as_f64().unwrap_or(1.0),
        seed: sp["seed"].as_u64().unwrap_or(0),
        stop_text,
        stop_tokens: vec![],
    };
    let n = body["num_samples"].as_u64().unwrap_or(1) as usize;
    let out = s.engine.sample(&sampler, std::slice::from_ref(&prompt), n, &params)?;
    // The JAX backend's prompt log-probabilities: one per prompt token after the first.
    let prompt_logprobs = match body["prompt_logprobs"].as_bool() {
        Some(true) => {
            let seq = Seq { ctx: prompt[..1].to_vec(), toks: prompt[1..].to_vec() };
            let lp = s.engine.logp(None, &sampler, &[seq])?;
            Some(proto::f32_bytes(lp[0].iter().copied()))
        }
        _ => None,
    };
    let response = proto::SampleResponse {
        sequences: out[0]
            .iter()
            .map(|x| proto::SampledSequence {
                stop_reason: 0,
                tokens: proto::i32_bytes(x.tokens.iter().map(|&t| t as i32)),
                logprobs: Some(proto::f32_bytes(x.logprobs.iter().copied())),
            })
            .collect(),
        prompt_logprobs,
        prompt_cache_hit_tokens: 0,
    };
    Ok(Reply::Proto(response.encode_to_vec()))
}

/// A datum as the sequence it scores: the first token as context, every target after it.
fn seq_of(d: &proto::Datum) -> Result<(Seq, Vec<f64>), String> {
    let mut full = d.input_tokens()?;
    let targets = d.loss_fn_inputs.get("target_tokens").ok_or("no target_tokens")?.values()?;
    full.push(*targets.last().ok_or("no targets")? as u32);
    Ok((Seq { ctx: full[..1].to_vec(), toks: full[1..].to_vec() }, targets))
}

fn forward_backward(s: &mut State, body: &[u8]) -> Result<Reply, String> {
    let req = proto::ForwardBackwardRequest::decode(body).map_err(|e| e.to_string())?;
    s.request_datums.push(req.data.len());
    let most = s.config.as_ref().and_then(|c| c["fwdbwd_max_chunk_len"].as_u64());
    if let Some(most) = most.filter(|&m| req.data.len() as u64 > m) {
        return Err(format!("{} datums in one request: at most {most}", req.data.len()));
    }
    let model = ModelId(req.model_id.clone());
    if s.engine.is_critic(&model) {
        return critic_pass(s, &req, &model);
    }
    let mut seqs = Vec::new();
    let mut data = Vec::new();
    for d in &req.data {
        let (seq, _) = seq_of(d)?;
        let input = |k: &str| d.loss_fn_inputs.get(k).map(|t| t.values()).transpose();
        let weights = input("weights")?.unwrap_or_else(|| vec![1.0; seq.toks.len()]);
        data.push(match req.loss_fn.as_str() {
            "cross_entropy" => DatumBackward {
                loss_fn: LossFn::CrossEntropy,
                weights,
                logprobs: vec![],
                advantages: vec![],
            },
            "importance_sampling" => DatumBackward {
                loss_fn: LossFn::ImportanceSampling,
                weights,
                logprobs: input("logprobs")?.ok_or("no logprobs")?,
                advantages: input("advantages")?.ok_or("no advantages")?,
            },
            other => return Err(format!("loss_fn {other} is not served")),
        });
        seqs.push(seq);
    }
    let logprobs = s.engine.logp(Some(&model), &Sampler::Base, &seqs)?;
    if !req.forward_only {
        s.engine.backward(&model, &seqs, &data)?;
        s.backwards.push((req.loss_fn.clone(), data));
    }
    let record = proto::ArrayRecord {
        type_tag: "ArrayRecord".into(),
        fields: [("logprobs".to_string(), proto::BatchedTensor::from_rows_f32(&logprobs))].into(),
        num_datums: logprobs.len() as i64,
    };
    let out = proto::ForwardBackwardOutput {
        loss_fn_output_type: "ArrayRecord".into(),
        loss_fn_outputs: vec![record],
        metrics: HashMap::new(),
    };
    Ok(Reply::Proto(out.encode_to_vec()))
}

/// A critic's forward (`values`) or `ppo_critic` backward, as SkyRL's FSDP critic worker: the
/// loss masked by the weights, over every target (the context's weigh 0).
fn critic_pass(
    s: &mut State,
    req: &proto::ForwardBackwardRequest,
    model: &ModelId,
) -> Result<Reply, String> {
    let mut seqs = Vec::new();
    let mut data = Vec::new();
    for d in &req.data {
        let (seq, _) = seq_of(d)?;
        let input = |k: &str| -> Result<Vec<f64>, String> {
            d.loss_fn_inputs.get(k).ok_or_else(|| format!("no {k}"))?.values()
        };
        if !req.forward_only {
            if req.loss_fn != "ppo_critic" {
                return Err(format!(
                    "Critic batches must use loss_fn='ppo_critic', got {}",
                    req.loss_fn
                ));
            }
            data.push(CriticBackward {
                weights: input("weights")?,
                values: input("values")?,
                returns: input("returns")?,
            });
        }
        seqs.push(seq);
    }
    let values = s.engine.values(model, &seqs)?;
    if !req.forward_only {
        s.engine.critic_backward(model, &seqs, &data)?;
        s.critic_backwards.push(data);
    }
    let record = proto::ArrayRecord {
        type_tag: "ArrayRecord".into(),
        fields: [("values".to_string(), proto::BatchedTensor::from_rows_f32(&values))].into(),
        num_datums: values.len() as i64,
    };
    let out = proto::ForwardBackwardOutput {
        loss_fn_output_type: "ArrayRecord".into(),
        loss_fn_outputs: vec![record],
        metrics: HashMap::new(),
    };
    Ok(Reply::Proto(out.encode_to_vec()))
}
