//! Rewards computed outside rlx: a user's function in a child process (`command(...)`) or a
//! server (`http(...)`). One request per batch of responses — the rollout's, or VinePPO's
//! continuations — never one per response; a process is started once per run and reused.
//! Scores are checked (one finite number per response) and every failure is an error that
//! names the reward, so the run stops before a bad number reaches a loss, with its last
//! checkpoint intact.
//!
//! The wire format of a command, one JSON line each way:
//!
//! ```text
//! → {"reward": "r", "batch": 0, "items": [{"prompt": "…", "response": "…", "answer": "72",
//!                                          "data": "gsm8k", "row": {…the data set's row…}}]}
//! ← {"rewards": [1.0, …]}            or  {"rewards": {"format": […], "correct": […]}}
//! ```

pub mod argv;
pub mod http;
pub mod process;
pub mod reply;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ir::graph::{ExternalKind, ExternalSpec};
use reply::Scores;

/// Largest reply read from a reward process or server (a batch's scores are a few KiB).
pub const MAX_REPLY: usize = 16 << 20;

/// Seconds a reward may take for one batch unless the recipe says `timeout = …`.
pub const DEFAULT_TIMEOUT_S: f64 = 300.0;

/// One response to score, with what the data set knows about its prompt.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub prompt: &'a str,
    pub response: &'a str,
    /// The reference answer the built-in verifier would compare with, if the data has one.
    pub answer: Option<&'a str>,
    /// The data set the prompt came from.
    pub data: &'a str,
    /// The data set's whole row (every field of the file's line).
    pub row: Option<&'a Value>,
}

enum Backend {
    Process(Mutex<process::Process>),
    Http(http::Http),
}

/// A declared external reward, started on first use.
pub struct External {
    name: String,
    spec: ExternalSpec,
    backend: Backend,
    /// The last batch's scores: `r.a(response)` and `r.b(response)` share one request.
    last: Mutex<Option<(u64, Scores)>>,
    batches: Mutex<usize>,
    /// `extra_logs` of the batches since the last `take_logs`: (sum of batch means, batches).
    logs: Mutex<BTreeMap<String, (f64, usize)>>,
}

impl External {
    /// `log`: where a process's stderr is appended (the run directory's `rewards/NAME.log`).
    pub fn new(name: &str, spec: &ExternalSpec, log: Option<&Path>) -> Self {
        let timeout = Duration::from_secs_f64(spec.timeout_s.max(0.001));
        let backend = match &spec.kind {
            ExternalKind::Command(argv) => Backend::Process(Mutex::new(process::Process::new(
                argv.clone(),
                timeout,
                MAX_REPLY,
                log.map(Path::to_path_buf),
            ))),
            ExternalKind::Http(url) => {
                Backend::Http(http::Http::new(url.clone(), timeout, MAX_REPLY))
            }
        };
        External {
            name: name.to_string(),
            spec: spec.clone(),
            backend,
            last: Mutex::new(None),
            batches: Mutex::new(0),
            logs: Mutex::new(BTreeMap::new()),
        }
    }

    /// The scores of a batch: `part` names one of several named rewards (`r.part(response)`).
    pub fn score(&self, part: Option<&str>, items: &[Item<'_>]) -> Result<Vec<f32>, String> {
        let key = batch_key(items);
        let mut last = self.last.lock().map_err(|_| self.fail("a previous call panicked"))?;
        if !matches!(&*last, Some((k, _)) if *k == key) {
            *last = Some((key, self.request(items)?));
        }
        let scores = &last.as_ref().expect("set above").1;
        scores.part(part).map(<[f32]>::to_vec).map_err(|e| self.fail_at(e, items))
    }

    fn request(&self, items: &[Item<'_>]) -> Result<Scores, String> {
        let batch = {
            let mut b = self.batches.lock().map_err(|_| self.fail("a previous call panicked"))?;
            *b += 1;
            *b - 1
        };
        match &self.backend {
            Backend::Process(p) => {
                let line = json!({"reward": self.name, "batch": batch, "items": items.iter().map(item_json).collect::<Vec<_>>()});
                let mut p = p.lock().map_err(|_| self.fail("a previous call panicked"))?;
                let text = p.call(&line.to_string()).map_err(|e| self.fail_batch(e, items))?;
                let (scores, logs) = reply::parse_with_logs(&text, "rewards", items.len())
                    .map_err(|e| self.fail_at(e, items))
                    .map_err(|e| p.with_stderr(e))?;
                self.keep_logs(logs);
                Ok(scores)
            }
            Backend::Http(h) => {
                let text = h.call(items).map_err(|e| self.fail_batch(e, items))?;
                let (scores, logs) = reply::parse_with_logs(&text, "rewards", items.len())
                    .map_err(|e| self.fail_at(e, items))?;
                self.keep_logs(logs);
                Ok(scores)
            }
        }
    }

    fn keep_logs(&self, batch: BTreeMap<String, f64>) {
        if let Ok(mut logs) = self.logs.lock() {
            for (k, v) in batch {
                let e = logs.entry(k).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
        }
    }

    fn fail(&self, e: impl std::fmt::Display) -> String {
        format!("reward `{}` ({}): {e}", self.name, self.spec.display())
    }

    /// A failure of the whole batch: its size and first prompt say which.
    fn fail_batch(&self, e: String, items: &[Item<'_>]) -> String {
        let first = items.first().map_or(String::new(), |i| {
            format!(", the first prompt {:?}", reply::excerpt(i.prompt))
        });
        self.fail(format!("scoring a batch of {} responses{first}: {e}", items.len()))
    }

    /// A failure at one row (`row N: …`): that row's prompt and response are named.
    fn fail_at(&self, e: String, items: &[Item<'_>]) -> String {
        let row = e
            .strip_prefix("row ")
            .and_then(|r| r.split(':').next())
            .and_then(|r| r.parse::<usize>().ok())
            .and_then(|r| items.get(r));
        match row {
            Some(i) => self.fail(format!(
                "{e} (prompt {:?}, response {:?})",
                reply::excerpt(i.prompt),
                reply::excerpt(i.response)
            )),
            None => self.fail(format!("a batch of {} responses: {e}", items.len())),
        }
    }
}

fn item_json(i: &Item<'_>) -> Value {
    json!({
        "prompt": i.prompt,
        "response": i.response,
        "answer": i.answer,
        "data": i.data,
        "row": i.row.cloned().unwrap_or_else(|| json!({"prompt": i.prompt})),
    })
}

fn batch_key(items: &[Item<'_>]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for i in items {
        (i.prompt, i.response).hash(&mut h);
    }
    h.finish()
}

/// Every external reward of a run, by declared name, and the time spent in them.
#[derive(Default)]
pub struct Rewards {
    external: HashMap<String, External>,
    seconds: Mutex<f64>,
    /// The reward whose failure stopped the run, for the diagnostic to point at.
    failed: Mutex<Option<String>>,
}

impl Rewards {
    /// `log_dir`: where each command's stderr is appended as `NAME.log`.
    pub fn new<'a>(
        declared: impl IntoIterator<Item = (&'a str, &'a ExternalSpec)>,
        log_dir: Option<&Path>,
    ) -> Self {
        let declared: Vec<_> = declared.into_iter().collect();
        if let Some(d) = log_dir.filter(|_| !declared.is_empty()) {
            let _ = std::fs::create_dir_all(d);
        }
        let external = declared
            .into_iter()
            .map(|(name, spec)| {
                let log = log_dir.map(|d| d.join(format!("{name}.log")));
                (name.to_string(), External::new(name, spec, log.as_deref()))
            })
            .collect();
        Rewards { external, seconds: Mutex::new(0.0), failed: Mutex::new(None) }
    }

    pub fn is_empty(&self) -> bool {
        self.external.is_empty()
    }

    /// The scores of `items` by reward `name` (and `part`, for named rewards).
    pub fn score(
        &self,
        name: &str,
        part: Option<&str>,
        items: &[Item<'_>],
    ) -> Result<Vec<f32>, String> {
        let reward =
            self.external.get(name).ok_or_else(|| format!("no external reward `{name}`"))?;
        let start = Instant::now();
        let out = reward.score(part, items);
        if let Ok(mut s) = self.seconds.lock() {
            *s += start.elapsed().as_secs_f64();
        }
        if out.is_err()
            && let Ok(mut f) = self.failed.lock()
        {
            *f = Some(name.to_string());
        }
        out
    }

    /// The reward that failed, if one did.
    pub fn failed(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// The rewards' `extra_logs` since the last call, as `REWARD.KEY`: the mean over batches
    /// of each batch's mean.
    pub fn take_logs(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (name, r) in &self.external {
            if let Ok(mut logs) = r.logs.lock() {
                for (k, (sum, n)) in std::mem::take(&mut *logs) {
                    out.insert(format!("{name}.{k}"), sum / n.max(1) as f64);
                }
            }
        }
        out
    }

    /// Seconds spent waiting for external rewards since the last call.
    pub fn take_seconds(&self) -> f64 {
        self.seconds.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or(0.0)
    }
}
