//! The Tinker protocol (hosted Tinker, SkyRL, verl_tinker) as an [`Engine`]: one session per
//! run with a heartbeat, models as LoRA adapters over the server's base model, log-probabilities
//! from forward-only passes (trained models) or prompt log-probabilities of a sampler (the base
//! model, snapshots), backwards in the form the server's reduction needs (`surrogate`), and a
//! reduction profile checked by a self-test before any step (`profile`). The wire is read from
//! the `tinker` SDK 0.38 and SkyRL 0.4.0 (`../shared/reference/tinker-2026.md` §4).

pub mod archive;
mod asample;
pub mod auth;
mod chunks;
pub mod client;
mod heartbeat;
pub mod ledger;
pub mod lint;
pub mod profile;
pub mod proto;
pub(crate) mod snapshots;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use prost::Message;
use serde_json::{Value as Json, json};

use self::client::{Body, CallError, Client, Reply, Retry};
use self::heartbeat::Heartbeat;
use self::ledger::Ledger;
use super::surrogate::{CriticBackward, DatumBackward, LossFn, Reduction};
use super::{Adam, Engine, Lora, ModelId, SampleParams, Sampled, Sampler, Sampling, Seq};

/// LoRA rank of a model whose recipe trains every weight (Tinker servers train adapters).
pub const DEFAULT_RANK: usize = 32;

/// A session on one Tinker server.
pub struct Remote {
    client: Arc<Client>,
    session: String,
    base_model: String,
    reduction: Reduction,
    sampling: Sampling,
    /// The next `seq_id` of each model: its requests run in this order.
    seq: HashMap<String, i32>,
    /// The next `create_model`'s `model_seq_id`: hosted Tinker names a session's models by
    /// it (the SDK counts them from 0; SkyRL ignores it).
    models_made: u64,
    /// The sampling session opened for each sampler (`sessions`), or `None` where the server
    /// has none (`asample` then names the weights itself).
    sampling_sessions: Option<asample::SamplingSessions>,
    /// The adapters made here and not unloaded, and where they are recorded for the next
    /// process of the run (`None`: nowhere).
    held: BTreeSet<String>,
    ledger: Option<Ledger>,
    _heartbeat: Heartbeat,
}

fn msg(e: CallError) -> String {
    e.to_string()
}

impl Remote {
    /// Connects, picks the base model (`base_model`, or the server's only one), opens a session,
    /// unloads the adapters an earlier process of the run left there (`ledger`), and checks the
    /// server's reduction with a self-test (`profile`): a server whose gradients are not what
    /// either profile predicts is refused before any training.
    pub fn connect(
        name: Option<&str>,
        url: &str,
        base_model: Option<&str>,
        reduction: Option<Reduction>,
        retry: Retry,
        lora: Option<Lora>,
        ledger: Option<Ledger>,
    ) -> Result<Remote, String> {
        let client = Arc::new(Client::connect(name, url, retry).map_err(msg)?);
        let caps = client.get("get_server_capabilities").map_err(msg)?;
        let models: Vec<String> = caps["supported_models"]
            .as_array()
            .map(|a| {
                a.iter().filter_map(|m| m["model_name"].as_str().map(str::to_string)).collect()
            })
            .unwrap_or_default();
        let base_model = match (base_model, models.as_slice()) {
            (Some(b), []) => b.to_string(),
            (Some(b), list) if list.iter().any(|m| m == b) => b.to_string(),
            (Some(b), list) => {
                return Err(format!(
                    "Tinker server {}: the base model `{b}` is not one it serves ({})",
                    client.label(),
                    list.join(", ")
                ));
            }
            (None, [one]) => one.clone(),
            (None, list) => {
                return Err(format!(
                    "Tinker server {} serves {} base models ({}): say which with `--base-model`",
                    client.label(),
                    list.len(),
                    list.join(", ")
                ));
            }
        };
        let session = client
            .post_json(
                "create_session",
                // The SDK release whose protocol rlx speaks (a server may check it); who the
                // client is goes in the metadata.
                json!({"tags": ["rlx"], "user_metadata": {"client": concat!("rlx ", env!("CARGO_PKG_VERSION"))}, "sdk_version": client::SDK_PROTOCOL}),
            )
            .map_err(msg)?;
        let session = session["session_id"].as_str().map(str::to_string).ok_or_else(|| {
            format!("Tinker server {}: `create_session` named no session", client.label())
        })?;
        let heartbeat = Heartbeat::start(client.clone(), session.clone());
        let mut remote = Remote {
            client,
            session,
            base_model,
            reduction: Reduction::Sum,
            sampling: Sampling::FULL,
            seq: HashMap::new(),
            models_made: 0,
            sampling_sessions: Some(asample::SamplingSessions::default()),
            held: BTreeSet::new(),
            ledger,
            _heartbeat: heartbeat,
        };
        remote.unload_left()?;
        // The self-tests' throwaway adapter has the run's LoRA settings (`lora`, `None`: the
        // default rank): SkyRL's multi-LoRA runtime serves only the first adapter's (rank, alpha).
        let model = remote.create_model(lora, 0)?;
        let found = profile::detect(&mut remote, &model, reduction).and_then(|r| {
            remote.reduction = r;
            snapshots::detect(&mut remote, &model, r)
        });
        // The adapter is thrown away whatever the outcome.
        let _ = remote.unload(&model);
        remote.sampling = found?;
        Ok(remote)
    }

    pub fn base_model(&self) -> &str {
        &self.base_model
    }

    /// Unloads the adapters the ledger holds for this server: an earlier process of the run
    /// made them and did not live to unload them. One the server no longer knows (404: it
    /// restarted, or cleaned up the dead session) is gone already; one it will not unload is
    /// reported and left (a server with room for it still serves the run).
    fn unload_left(&mut self) -> Result<(), String> {
        let Some(ledger) = &self.ledger else { return Ok(()) };
        let left = ledger.held()?;
        if left.is_empty() {
            return Ok(());
        }
        let (mut unloaded, mut gone) = (0, 0);
        for id in &left {
            let body = Body::Json(json!({"model_id": id}));
            match self.client.call("unload_model", &body, true) {
                Ok(_) => unloaded += 1,
                Err(e)
                    if e.kind == client::ErrorKind::Refused
                        && e.message.starts_with("HTTP 404") =>
                {
                    gone += 1
                }
                Err(e) => {
                    eprintln!("{e} (an adapter an earlier process of this run left; not unloaded)");
                    continue;
                }
            }
            self.forget(id)?;
        }
        eprintln!(
            "Tinker server {}: {} adapters an earlier process of this run left ({}): {unloaded} unloaded, {gone} gone already",
            self.client.label(),
            left.len(),
            left.join(", ")
        );
        Ok(())
    }

    /// An adapter the server no longer holds: out of `held` and the ledger.
    fn forget(&mut self, id: &str) -> Result<(), String> {
        self.held.remove(id);
        match &self.ledger {
            Some(ledger) => ledger.remove(id),
            None => Ok(()),
        }
    }

    fn next_seq(&mut self, model: &ModelId) -> i32 {
        let s = self.seq.entry(model.0.clone()).or_insert(1);
        *s += 1;
        *s - 1
    }

    fn call_json(&self, path: &str, body: Json, idempotent: bool) -> Result<Json, String> {
        match self.client.call(path, &Body::Json(body), idempotent).map_err(msg)? {
            Reply::Json(j) => Ok(j),
            Reply::Proto(_) => Err(format!(
                "Tinker server {}: `{path}`: a protobuf result where JSON was expected",
                self.client.label()
            )),
        }
    }

    fn protocol(&self, call: &str, what: impl std::fmt::Display) -> String {
        format!("Tinker server {}: `{call}`: {what}", self.client.label())
    }

    /// One forward-backward over `data`, in as many requests as the server's `client/config`
    /// allows (datums and bytes per request: the SDK's 1024 and 5 MB unless it says), all
    /// submitted before any result is collected; returns the outputs' records, in order. A
    /// backward's requests add up on the server until `optim_step` as one request would:
    /// summing servers sum, per-sequence-mean ones divide by the step's datums (SkyRL
    /// `backends/jax.py` `AccumulatedGradients`, and the SDK sends chunks the same way).
    fn forward_backward(
        &mut self,
        model: &ModelId,
        data: Vec<proto::Datum>,
        loss_fn: &str,
        forward_only: bool,
    ) -> Result<Vec<proto::ArrayRecord>, String> {
        let call = if forward_only { "forward" } else { "forward_backward" };
        let named = |mut e: CallError| {
            e.call = call.into();
            msg(e)
        };
        let config = self.client.config();
        let chunks = chunks::chunked(data, config.max_chunk_datums, config.max_chunk_bytes);
        let mut sent = Vec::with_capacity(chunks.len());
        for data in chunks {
            let n = data.len();
            let request = proto::ForwardBackwardRequest {
                model_id: model.0.clone(),
                seq_id: self.next_seq(model),
                data,
                loss_fn: loss_fn.into(),
                loss_fn_config: HashMap::new(),
                forward_only,
            };
            let body = Body::Proto(request.encode_to_vec());
            // A backward accumulates gradient: never sent twice.
            let future =
                self.client.submit("forward_backward", &body, forward_only).map_err(named)?;
            sent.push((future, body, n));
        }
        let mut records = Vec::new();
        for (future, body, n) in sent {
            let reply = match self.client.wait(&future) {
                // An expired forward is asked again (as `Client::call` does).
                Err(e) if e.kind == client::ErrorKind::Expired && forward_only => {
                    self.client.call("forward_backward", &body, true)
                }
                r => r,
            }
            .map_err(named)?;
            let Reply::Proto(bytes) = reply else {
                return Err(self.protocol(call, "a JSON result where protobuf was expected"));
            };
            let out = proto::ForwardBackwardOutput::decode(bytes.as_slice())
                .map_err(|e| self.protocol(call, format!("an undecodable result: {e}")))?;
            let datums: i64 = out.loss_fn_outputs.iter().map(|r| r.num_datums).sum();
            if datums as usize != n {
                return Err(self.protocol(call, format!("{datums} outputs for {n} datums")));
            }
            records.extend(out.loss_fn_outputs);
        }
        Ok(records)
    }

    /// `create_model` with a LoRA adapter of `lora`'s rank (or the default) in `role`.
    fn create(&mut self, lora: Option<Lora>, seed: u64, role: &str) -> Result<ModelId, String> {
        let rank = lora.map_or(DEFAULT_RANK, |l| l.rank);
        let mut lora_config = json!({"rank": rank, "seed": seed % (1 << 31)});
        if let Some(l) = lora {
            lora_config["alpha"] = json!(l.alpha);
        }
        let model_seq_id = self.models_made;
        self.models_made += 1;
        let r = self.call_json(
            "create_model",
            json!({"session_id": self.session, "model_seq_id": model_seq_id, "base_model": self.base_model, "lora_config": lora_config, "model_role": role}),
            false,
        )?;
        let id = r["model_id"]
            .as_str()
            .map(|s| ModelId(s.to_string()))
            .ok_or_else(|| self.protocol("create_model", "no model_id in the result"))?;
        self.held.insert(id.0.clone());
        if let Some(ledger) = &self.ledger {
            ledger.add(&id.0)?;
        }
        Ok(id)
    }

    /// A forward-only pass of `model` over `seqs`; each sequence's text tokens' `field`.
    fn forward_field(
        &mut self,
        model: &ModelId,
        seqs: &[Seq],
        field: &str,
    ) -> Result<Vec<Vec<f32>>, String> {
        let data =
            seqs.iter().map(|s| datum(s, &[("weights", &vec![0.0; s.toks.len()])])).collect();
        let records = self.forward_backward(model, data, "cross_entropy", true)?;
        let mut rows = Vec::new();
        for rec in &records {
            let lp = rec
                .fields
                .get(field)
                .ok_or_else(|| self.protocol("forward", format!("no {field} in the result")))?;
            rows.extend(
                lp.rows_f32(rec.num_datums as usize).map_err(|e| self.protocol("forward", e))?,
            );
        }
        seqs.iter()
            .zip(rows)
            .map(|(s, r)| {
                tail(&r, s.toks.len())
                    .ok_or_else(|| self.protocol("forward", format!("fewer {field} than targets")))
            })
            .collect()
    }
}

/// The datum of a sequence: input = context ⊕ text without its last token, targets = the
/// sequence shifted by one; `fill` gives the text positions' values of each per-target input.
fn datum(seq: &Seq, inputs: &[(&str, &[f64])]) -> proto::Datum {
    let full: Vec<u32> = seq.ctx.iter().chain(&seq.toks).copied().collect();
    let targets: Vec<i64> = full[1..].iter().map(|&t| t as i64).collect();
    let lead = targets.len() - seq.toks.len();
    let mut loss_fn_inputs = HashMap::new();
    loss_fn_inputs.insert("target_tokens".to_string(), proto::Tensor::i64(&targets));
    for (name, values) in inputs {
        let mut v = vec![0f32; lead];
        v.extend(values.iter().map(|&x| x as f32));
        loss_fn_inputs.insert(name.to_string(), proto::Tensor::f32(&v));
    }
    proto::Datum {
        model_input: vec![proto::Chunk::tokens(&full[..full.len() - 1])],
        loss_fn_inputs,
    }
}

/// The last `n` values of a row of per-target (or per-prompt-token) log-probabilities.
fn tail(row: &[f32], n: usize) -> Option<Vec<f32>> {
    (row.len() >= n).then(|| row[row.len() - n..].to_vec())
}

fn decode_sample(reply: Reply, call: &str, label: &str) -> Result<proto::SampleResponse, String> {
    match reply {
        Reply::Proto(b) => proto::SampleResponse::decode(b.as_slice())
            .map_err(|e| format!("Tinker server {label}: `{call}`: an undecodable result: {e}")),
        // Older servers answer JSON with the same fields.
        Reply::Json(j) => {
            let seqs = j["sequences"].as_array().cloned().unwrap_or_default();
            let ints = |v: &Json| -> Vec<i32> {
                v.as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_i64()).map(|x| x as i32).collect())
                    .unwrap_or_default()
            };
            let floats = |v: &Json| -> Vec<f32> {
                v.as_array()
                    .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect())
                    .unwrap_or_default()
            };
            Ok(proto::SampleResponse {
                sequences: seqs
                    .iter()
                    .map(|s| proto::SampledSequence {
                        stop_reason: 0,
                        tokens: proto::i32_bytes(ints(&s["tokens"])),
                        logprobs: Some(proto::f32_bytes(floats(&s["logprobs"]))),
                    })
                    .collect(),
                prompt_logprobs: j
                    .get("prompt_logprobs")
                    .filter(|v| !v.is_null())
                    .map(|v| proto::f32_bytes(floats(v))),
                prompt_cache_hit_tokens: 0,
            })
        }
    }
}

impl Engine for Remote {
    fn label(&self) -> String {
        format!("Tinker server {}", self.client.label())
    }

    fn reduction(&self) -> Reduction {
        self.reduction
    }

    fn create_model(&mut self, lora: Option<Lora>, seed: u64) -> Result<ModelId, String> {
        self.create(lora, seed, "policy")
    }

    fn sampling(&self) -> Sampling {
        self.sampling
    }

    fn sampler(&mut self, model: &ModelId, name: &str) -> Result<Sampler, String> {
        let seq_id = self.next_seq(model);
        let r = self.call_json(
            "save_weights_for_sampler",
            json!({"model_id": model.0, "path": name, "seq_id": seq_id}),
            false,
        )?;
        let path = r["path"].as_str().or_else(|| r["sampling_session_id"].as_str());
        path.map(|p| Sampler::Weights(p.to_string()))
            .ok_or_else(|| self.protocol("save_weights_for_sampler", "no path in the result"))
    }

    fn sample(
        &mut self,
        sampler: &Sampler,
        prompts: &[Vec<u32>],
        n: usize,
        params: &SampleParams,
    ) -> Result<Vec<Vec<Sampled>>, String> {
        let mut bodies = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            let p = SampleParams { seed: params.seed.wrapping_add(i as u64), ..params.clone() };
            bodies.push(self.sample_body(sampler, prompt, n, &p, false)?);
        }
        let mut out = Vec::with_capacity(prompts.len());
        for r in self.asample_all(bodies)? {
            if r.sequences.len() != n {
                return Err(self.protocol(
                    "asample",
                    format!("{} sequences for num_samples {n}", r.sequences.len()),
                ));
            }
            let mut rows = Vec::with_capacity(n);
            for s in &r.sequences {
                let tokens: Vec<u32> = proto::read_i32(&s.tokens, "tokens")
                    .map_err(|e| self.protocol("asample", e))?
                    .into_iter()
                    .map(|t| t as u32)
                    .collect();
                let logprobs = match &s.logprobs {
                    Some(b) => {
                        proto::read_f32(b, "logprobs").map_err(|e| self.protocol("asample", e))?
                    }
                    None => vec![f32::NAN; tokens.len()],
                };
                rows.push(Sampled { tokens, logprobs });
            }
            out.push(rows);
        }
        Ok(out)
    }

    fn logp(
        &mut self,
        model: Option<&ModelId>,
        sampler: &Sampler,
        seqs: &[Seq],
    ) -> Result<Vec<Vec<f32>>, String> {
        if let Some(model) = model {
            return self.forward_field(model, seqs, "logprobs");
        }
        // Prompt log-probabilities of the whole sequence, one token sampled and thrown away.
        let once = SampleParams {
            max_tokens: 1,
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
            stop_text: None,
            stop_tokens: vec![],
        };
        let mut bodies = Vec::with_capacity(seqs.len());
        for s in seqs {
            let full: Vec<u32> = s.ctx.iter().chain(&s.toks).copied().collect();
            bodies.push(self.sample_body(sampler, &full, 1, &once, true)?);
        }
        let mut out = Vec::new();
        for (s, r) in seqs.iter().zip(self.asample_all(bodies)?) {
            let lp = r
                .prompt_logprobs
                .ok_or_else(|| self.protocol("asample", "no prompt_logprobs in the result"))?;
            let lp =
                proto::read_f32(&lp, "prompt_logprobs").map_err(|e| self.protocol("asample", e))?;
            // Servers differ by one leading undefined entry: align by the end.
            out.push(tail(&lp, s.toks.len()).ok_or_else(|| {
                self.protocol("asample", "fewer prompt log-probabilities than tokens")
            })?);
        }
        Ok(out)
    }

    fn backward(
        &mut self,
        model: &ModelId,
        seqs: &[Seq],
        data: &[DatumBackward],
    ) -> Result<(), String> {
        let mut out = Vec::with_capacity(seqs.len());
        let mut loss_fn = "cross_entropy";
        for (s, d) in seqs.iter().zip(data) {
            if d.weights.len() != s.toks.len() {
                return Err(format!(
                    "a backward of {} weights for a text of {} tokens",
                    d.weights.len(),
                    s.toks.len()
                ));
            }
            out.push(match d.loss_fn {
                LossFn::CrossEntropy => datum(s, &[("weights", &d.weights)]),
                LossFn::ImportanceSampling => {
                    loss_fn = "importance_sampling";
                    datum(
                        s,
                        &[
                            ("weights", &d.weights),
                            ("logprobs", &d.logprobs),
                            ("advantages", &d.advantages),
                        ],
                    )
                }
            });
        }
        self.forward_backward(model, out, loss_fn, false).map(|_| ())
    }

    fn optim_step(&mut self, model: &ModelId, adam: &Adam) -> Result<Vec<(String, f64)>, String> {
        let seq_id = self.next_seq(model);
        let mut params = json!({
            "learning_rate": adam.lr, "beta1": adam.beta1, "beta2": adam.beta2,
            "eps": adam.eps, "weight_decay": adam.weight_decay,
        });
        if let Some(c) = adam.clip_grad {
            params["grad_clip_norm"] = json!(c);
        }
        let r = self.call_json(
            "optim_step",
            json!({"model_id": model.0, "seq_id": seq_id, "adam_params": params}),
            false,
        )?;
        let metrics = r["metrics"].as_object().cloned().unwrap_or_default();
        Ok(metrics.into_iter().filter_map(|(k, v)| v.as_f64().map(|v| (k, v))).collect())
    }

    fn save(&mut self, model: &ModelId, name: &str) -> Result<String, String> {
        let seq_id = self.next_seq(model);
        let r = self.call_json(
            "save_weights",
            json!({"model_id": model.0, "path": name, "seq_id": seq_id}),
            true,
        )?;
        r["path"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.protocol("save_weights", "no path in the result"))
    }

    fn unload(&mut self, model: &ModelId) -> Result<(), String> {
        self.call_json("unload_model", json!({"model_id": model.0}), true)?;
        self.forget(&model.0)
    }

    fn release(&mut self) -> Result<(), String> {
        let mut failed = Vec::new();
        for id in self.held.clone() {
            if let Err(e) = self.unload(&ModelId(id)) {
                failed.push(e);
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(failed.join("; ")),
        }
    }

    /// SkyRL's FSDP backend builds a critic network from the base model; servers without one
    /// refuse (SkyRL's JAX backend: "only supports model_role='policy'"; hosted Tinker).
    fn create_critic(&mut self, lora: Option<Lora>, seed: u64) -> Result<ModelId, String> {
        self.create(lora, seed, "critic").map_err(|e| {
            format!(
                "{e} — a critic (`model_role: \"critic\"`) is needed for the recipe's value head: SkyRL's FSDP backend serves one; its JAX and Megatron backends, hosted Tinker and verl_tinker do not"
            )
        })
    }

    fn values(&mut self, critic: &ModelId, seqs: &[Seq]) -> Result<Vec<Vec<f32>>, String> {
        self.forward_field(critic, seqs, "values")
    }

    /// `ppo_critic` with `values` = V^old and `returns` per target; the context's positions
    /// weigh 0. The server's `value_clip` is left as configured: V^old = V keeps it inert.
    fn critic_backward(
        &mut self,
        critic: &ModelId,
        seqs: &[Seq],
        data: &[CriticBackward],
    ) -> Result<(), String> {
        let out = seqs
            .iter()
            .zip(data)
            .map(|(s, d)| {
                datum(s, &[("weights", &d.weights), ("values", &d.values), ("returns", &d.returns)])
            })
            .collect();
        self.forward_backward(critic, out, "ppo_critic", false).map(|_| ())
    }

    /// `tinker://RUN/ID` (SkyRL) or `tinker://RUN/sampler_weights/ID` (hosted): the archive
    /// of checkpoint `ID` of training run `RUN`, asked for as the `tinker` SDK asks (`tinker
    /// checkpoint download`).
    fn download(&mut self, sampler: &Sampler) -> Result<Option<Vec<u8>>, String> {
        let Sampler::Weights(path) = sampler else { return Ok(None) };
        let parts = path.strip_prefix("tinker://").and_then(|rest| rest.split_once('/'));
        // Another form of path: a server the SDK's download could not address either.
        let Some((run, checkpoint)) = parts else { return Ok(None) };
        match self.client.archive_url(run, checkpoint).map_err(msg)? {
            Some(url) => self.client.download(&url).map(Some).map_err(msg),
            None => Ok(None),
        }
    }

    fn load(&mut self, model: &ModelId, path: &str) -> Result<(), String> {
        let seq_id = self.next_seq(model);
        self.call_json(
            "load_weights",
            json!({"model_id": model.0, "path": path, "optimizer": true, "seq_id": seq_id}),
            true,
        )
        .map(|_| ())
    }
}
