//! What hosted Tinker asks of a client beyond SkyRL, on the fake server: the credential
//! exchanged at `auth/token` for short-lived JWTs that every other call carries (renewed as
//! they near expiry, and once more when the server rejects one), `forward_backward` requests
//! no larger, and no more `asample` requests in flight, than its `client/config` allows; each
//! `create_model` numbered in its session (`model_seq_id`); samples through sampling sessions.

use std::path::Path;

use serde_json::json;

use super::fake::{Fault, Tokens};
use super::*;

const KEY: &str = "tml-rlx-test-key";

/// Every file under `dir`, as text where it is.
fn texts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(texts_under(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

#[test]
fn a_token_exchanging_server_with_small_requests_ends_where_a_plain_server_ends() {
    let dir = scratch("hosted");
    let recipe = equal_recipe(&dir);
    // The plain server is an older one, too: no sampling sessions (each `asample` then names
    // the weights it samples).
    let plain = serve(Reduction::Sum);
    plain.state.lock().unwrap().sampling_sessions = false;
    let plain_run = dir.join("plain");
    ok(&run_args(&recipe, &plain_run)
        .args(["--engine", "tinker", "--server", &plain.url, "--keep-adapters"])
        .output()
        .unwrap());

    // Tokens live 62 s and are renewed with a minute left: a new one every second or two. All
    // are revoked at the self-test's first optimiser step (a 401 `invalid_token`, then one
    // exchange and the call again). Three datums per request at most, two samples in flight.
    let hosted = serve(Reduction::Sum);
    {
        let mut s = hosted.state.lock().unwrap();
        s.tokens = Some(Tokens::new(KEY, 62));
        s.config = Some(json!({ "fwdbwd_max_chunk_len": 3, "sample_max_concurrent_requests": 2 }));
        s.faults.push_back(Fault::RevokeTokens("optim_step"));
    }
    let hosted_run = dir.join("hosted");
    // The credential from a command, as organisations with short-lived credentials give it.
    let out = run_args(&recipe, &hosted_run)
        .args(["--engine", "tinker", "--server", &hosted.url, "--keep-adapters"])
        .env("TINKER_CREDENTIAL_CMD", format!("printf '%s\\n' {KEY}"))
        .output()
        .unwrap();
    ok(&out);

    let (a, b) = (losses(&plain_run), losses(&hosted_run));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "step losses: {a:?} against {b:?}");
    }
    let (a, b) = (served_policy(&plain), served_policy(&hosted));
    for (k, w) in &a {
        let d = (w - &b[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-5, "{k}: the served weights differ by {d:e}");
    }

    let s = hosted.state.lock().unwrap();
    let t = s.tokens.as_ref().unwrap();
    assert!(t.key_seen_at.is_empty(), "the key itself went to {:?}", t.key_seen_at);
    assert!(t.issued >= 3, "tokens renewed as they neared expiry: {} issued", t.issued);
    assert_eq!(t.rejected, 1, "the revoked token's call, replayed once with a new one");
    assert!(s.faults.is_empty());
    assert!(s.request_datums.iter().all(|&n| n <= 3), "{:?}", s.request_datums);
    assert_eq!(s.most_samples_out, 2, "samples in flight");
    // Every adapter the session made (the self-tests' and the policy), numbered from 0.
    let made = s.calls.iter().filter(|c| *c == "create_model").count() as u64;
    assert!(made >= 2);
    assert_eq!(s.model_seq_ids, (0..made).collect(), "model_seq_id of each create_model");
    // Every sample went through a sampling session (the hosted-like fake refuses others).
    assert!(s.calls.iter().any(|c| c == "create_sampling_session"));
    let p = plain.state.lock().unwrap();
    let plain_most = p.request_datums.iter().copied().max();
    assert!(plain_most > Some(3), "the plain server got larger requests: {plain_most:?}");
    assert!(p.most_samples_out > 2, "the plain server had {} in flight", p.most_samples_out);
    drop(p);
    // The key is nowhere in what the run printed or wrote.
    let printed =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!printed.contains(KEY));
    for (p, text) in texts_under(&hosted_run) {
        assert!(!text.contains(KEY) && !text.contains("eyJ"), "{} holds a credential", p.display());
    }
}

#[test]
fn a_refused_or_missing_credential_stops_before_any_call_naming_the_server() {
    let dir = scratch("hosted-refused");
    let recipe = equal_recipe(&dir);
    let hosted = serve(Reduction::Sum);
    hosted.state.lock().unwrap().tokens = Some(Tokens::new(KEY, 3600));
    let wrong = run_args(&recipe, &dir.join("wrong"))
        .args(["--engine", "tinker", "--server", &hosted.url])
        .env("TINKER_API_KEY", "tml-not-the-key")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let err = flat(&wrong);
    for needle in [hosted.url.as_str(), "auth/token", "HTTP 403", "TINKER_API_KEY"] {
        assert!(err.contains(needle), "{needle} in: {err}");
    }
    assert!(!err.contains("tml-not-the-key"), "{err}");
    let none = run_args(&recipe, &dir.join("none"))
        .args(["--engine", "tinker", "--server", &hosted.url])
        .output()
        .unwrap();
    assert!(!none.status.success());
    let err = flat(&none);
    assert!(err.contains(&hosted.url) && err.contains("none is set"), "{err}");
    let s = hosted.state.lock().unwrap();
    assert_eq!(s.tokens.as_ref().unwrap().issued, 0);
    assert!(!s.calls.iter().any(|c| c == "create_session"), "{:?}", s.calls);
}
