//! `asample` requests, through sampling sessions as the `tinker` SDK 0.38 samples: each sampler
//! (a snapshot's weights, or the base model) gets a session of its own, opened once with
//! `create_sampling_session` and numbered in the run's session (`sampling_session_seq_id`, from
//! 0), and each `asample` names the session and its own `seq_id` in it (from 0). SkyRL 0.4
//! resolves the session to the same weights an `asample` naming them would (`api.py`
//! `create_sampling_session`); a server without the route is sent the weights in each request.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use super::client::Body;
use super::{Remote, decode_sample, msg, proto};
use crate::engine::{SampleParams, Sampler};

#[derive(Debug, Default)]
pub struct SamplingSessions {
    /// Each sampler's session id and the next `seq_id` in it.
    open: HashMap<Sampler, (String, u64)>,
}

impl SamplingSessions {
    /// How many were opened: the next one's `sampling_session_seq_id`.
    pub fn opened(&self) -> usize {
        self.open.len()
    }

    /// The session of `sampler` and the `seq_id` of its next request, if it has one.
    pub fn next(&mut self, sampler: &Sampler) -> Option<(String, u64)> {
        let (id, seq) = self.open.get_mut(sampler)?;
        *seq += 1;
        Some((id.clone(), *seq - 1))
    }

    /// Records `id` as `sampler`'s session; its first request's `seq_id`.
    pub fn open(&mut self, sampler: &Sampler, id: String) -> (String, u64) {
        self.open.insert(sampler.clone(), (id.clone(), 1));
        (id, 0)
    }
}

impl Remote {
    /// `asample` for every body, submitted before any result is collected (the server
    /// batches them) up to the server's `sample_max_concurrent_requests` in flight, then one
    /// more as each result comes; results in order.
    pub(super) fn asample_all(
        &self,
        bodies: Vec<Json>,
    ) -> Result<Vec<proto::SampleResponse>, String> {
        let most = self.client.config().max_samples_in_flight.max(1);
        let mut results = Vec::with_capacity(bodies.len());
        let mut in_flight = std::collections::VecDeque::new();
        let mut bodies = bodies.into_iter();
        loop {
            while in_flight.len() < most {
                let Some(body) = bodies.next() else { break };
                in_flight.push_back(
                    self.client.submit("asample", &Body::Json(body), true).map_err(msg)?,
                );
            }
            let Some(f) = in_flight.pop_front() else { break };
            let reply = self.client.wait(&f).map_err(msg)?;
            results.push(decode_sample(reply, "asample", self.client.label())?);
        }
        Ok(results)
    }

    pub(super) fn sample_body(
        &mut self,
        sampler: &Sampler,
        prompt: &[u32],
        n: usize,
        p: &SampleParams,
        prompt_logprobs: bool,
    ) -> Result<Json, String> {
        let mut body = json!({
            "num_samples": n,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompt}]},
            "sampling_params": {
                "max_tokens": p.max_tokens,
                "temperature": p.temperature,
                "top_p": p.top_p,
                "seed": p.seed % (1 << 31),
            },
            "prompt_logprobs": prompt_logprobs,
        });
        // Servers take stop strings or stop token ids, not both.
        body["sampling_params"]["stop"] = match &p.stop_text {
            Some(t) => json!([t]),
            None => json!(p.stop_tokens),
        };
        match self.sampling_session(sampler)? {
            Some((id, seq_id)) => {
                body["sampling_session_id"] = json!(id);
                body["seq_id"] = json!(seq_id);
            }
            None => self.name_weights(&mut body, sampler),
        }
        Ok(body)
    }

    /// Names what `sampler` samples in a request: the base model or the snapshot's path.
    fn name_weights(&self, body: &mut Json, sampler: &Sampler) {
        match sampler {
            Sampler::Base => body["base_model"] = json!(self.base_model),
            Sampler::Weights(path) => body["model_path"] = json!(path),
        }
    }

    /// The sampling session of `sampler` and its request's `seq_id`, the session opened on
    /// first use (`create_sampling_session`, as the SDK 0.38 samples); `None` where the server
    /// has no such route, found on the first try.
    fn sampling_session(&mut self, sampler: &Sampler) -> Result<Option<(String, u64)>, String> {
        let Some(sessions) = self.sampling_sessions.as_mut() else { return Ok(None) };
        if let Some(next) = sessions.next(sampler) {
            return Ok(Some(next));
        }
        let mut body = json!({
            "session_id": self.session,
            "sampling_session_seq_id": sessions.opened(),
        });
        self.name_weights(&mut body, sampler);
        match self.client.post_json("create_sampling_session", body) {
            Ok(r) => {
                let id = r["sampling_session_id"].as_str().ok_or_else(|| {
                    self.protocol("create_sampling_session", "no sampling_session_id in the reply")
                })?;
                let sessions = self.sampling_sessions.as_mut().expect("checked above");
                Ok(Some(sessions.open(sampler, id.to_string())))
            }
            Err(e) if e.route_missing() => {
                self.sampling_sessions = None;
                Ok(None)
            }
            Err(e) => Err(msg(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sampler_has_its_session_and_its_own_request_numbers() {
        let mut s = SamplingSessions::default();
        let base = Sampler::Base;
        let snap = Sampler::Weights("tinker://m/s1".into());
        assert_eq!(s.next(&base), None);
        assert_eq!(s.opened(), 0);
        assert_eq!(s.open(&base, "b".into()), ("b".to_string(), 0));
        assert_eq!(s.opened(), 1);
        assert_eq!(s.next(&base), Some(("b".to_string(), 1)));
        assert_eq!(s.next(&snap), None);
        assert_eq!(s.open(&snap, "w".into()), ("w".to_string(), 0));
        assert_eq!(s.next(&snap), Some(("w".to_string(), 1)));
        assert_eq!(s.next(&base), Some(("b".to_string(), 2)));
        assert_eq!(s.opened(), 2);
    }
}
