//! A reward behind HTTP, spoken as OpenRLHF's remote reward protocol (its
//! `openrlhf/utils/agent.py`, `SingleTurnAgentExecutor._fetch_rewards_via_http`, and
//! `openrlhf/cli/serve_rm.py`): POST a JSON object with `query` (each prompt followed by its
//! response, the text the policy saw and wrote), `prompts` and `labels` (the reference
//! answers, `""` where there is none); the reply's `rewards` holds one number per query
//! (`scores` and `extra_logs` may come along and are ignored). rlx adds `responses` (the
//! responses alone), which servers that do not know it ignore. Connection failures and 5xx
//! replies are tried again a few times within the timeout, as OpenRLHF does; the reply body is
//! capped.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Item;

/// Tries of one batch (OpenRLHF tries 5 times with a second between).
const TRIES: usize = 3;

pub struct Http {
    url: String,
    timeout: Duration,
    max_reply: usize,
    agent: ureq::Agent,
}

impl Http {
    pub fn new(url: String, timeout: Duration, max_reply: usize) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .build();
        Http { url, timeout, max_reply, agent }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request body of a batch.
    pub fn body(items: &[Item<'_>]) -> serde_json::Value {
        json!({
            "query": items.iter().map(|i| format!("{}{}", i.prompt, i.response)).collect::<Vec<_>>(),
            "prompts": items.iter().map(|i| i.prompt).collect::<Vec<_>>(),
            "labels": items.iter().map(|i| i.answer.unwrap_or("")).collect::<Vec<_>>(),
            "responses": items.iter().map(|i| i.response).collect::<Vec<_>>(),
        })
    }

    /// POSTs one batch; the reply body as text.
    pub fn call(&self, items: &[Item<'_>]) -> Result<String, String> {
        let body = Self::body(items);
        let start = Instant::now();
        let mut last = String::new();
        for attempt in 0..TRIES {
            if attempt > 0 {
                let wait = Duration::from_millis(250 << attempt);
                if start.elapsed() + wait >= self.timeout {
                    break;
                }
                std::thread::sleep(wait);
            }
            match self
                .agent
                .post(&self.url)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string())
            {
                Ok(reply) => return self.read(reply),
                Err(ureq::Error::Status(code, reply)) if code >= 500 => {
                    last = format!("answered {code}: {}", self.read(reply).unwrap_or_default());
                }
                Err(ureq::Error::Status(code, reply)) => {
                    let text = self.read(reply).unwrap_or_default();
                    return Err(format!("answered {code}: {}", super::reply::excerpt(&text)));
                }
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() >= self.timeout {
                break;
            }
        }
        Err(format!(
            "failed after {} s: {}",
            start.elapsed().as_secs(),
            super::reply::excerpt(&last)
        ))
    }

    fn read(&self, reply: ureq::Response) -> Result<String, String> {
        let mut body = Vec::new();
        reply
            .into_reader()
            .take(self.max_reply as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("the reply could not be read: {e}"))?;
        if body.len() > self.max_reply {
            return Err(format!(
                "the reply is longer than {} (the cap on a reply)",
                super::reply::size(self.max_reply)
            ));
        }
        String::from_utf8(body).map_err(|_| "the reply is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A one-shot server on loopback answering every connection with `status` and `body`.
    fn serve(status: u16, body: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/r", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        url
    }

    fn items() -> Vec<Item<'static>> {
        vec![Item { prompt: "2+2=", response: "4", answer: Some("4"), data: "d", row: None }]
    }

    #[test]
    fn the_request_is_openrlhfs_and_the_reply_is_capped() {
        let body = Http::body(&items());
        assert_eq!(body["query"][0], "2+2=4");
        assert_eq!(body["prompts"][0], "2+2=");
        assert_eq!(body["labels"][0], "4");
        let ok = Http::new(
            serve(200, br#"{"rewards": [1.0]}"#.to_vec()),
            Duration::from_secs(5),
            1 << 10,
        );
        assert_eq!(ok.call(&items()).unwrap(), r#"{"rewards": [1.0]}"#);
        let big = Http::new(serve(200, vec![b' '; 4096]), Duration::from_secs(5), 1 << 10);
        assert_eq!(
            big.call(&items()).unwrap_err(),
            "the reply is longer than 1 KiB (the cap on a reply)"
        );
        let refused =
            Http::new(serve(404, b"no such path".to_vec()), Duration::from_secs(5), 1 << 10);
        assert_eq!(refused.call(&items()).unwrap_err(), "answered 404: no such path");
        let failing =
            Http::new(serve(503, b"overloaded".to_vec()), Duration::from_secs(2), 1 << 10);
        let e = failing.call(&items()).unwrap_err();
        assert!(e.starts_with("failed after") && e.ends_with("answered 503: overloaded"), "{e}");
    }
}
