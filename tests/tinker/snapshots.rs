//! Servers whose sampler snapshots follow their model (SkyRL's FSDP and Megatron backends route
//! a sample to the model's adapter as last synced, whichever snapshot it names, and sample no
//! base model): the self-test finds it, and a run never reads a snapshot of a model trained
//! since — `ref` gets its frozen copy, or a server of its own (`--server ref=URL`), or the run
//! is refused before any step.

use rlx::engine::tinker::Remote;
use rlx::engine::tinker::client::Retry;
use rlx::engine::{Engine, Sampling, Snapshots};

use super::fake::Fake;
use super::*;

/// A fake as SkyRL's FSDP backend over the arith policy.
fn fsdp() -> Fake {
    super::fsdp::fsdp_on(base_model())
}

#[test]
fn the_self_test_finds_whether_snapshots_keep_their_weights_and_the_base_model_samples() {
    let kept = serve(Reduction::Sum);
    let live = fsdp();
    let jax = serve(Reduction::Sum);
    jax.state.lock().unwrap().samplers_load = true;
    let connect = |url: &str| Remote::connect(None, url, None, None, Retry::default(), None, None);
    assert_eq!(connect(&kept.url).unwrap().sampling(), Sampling::FULL);
    let found = connect(&live.url).unwrap().sampling();
    assert_eq!(found, Sampling { snapshots: Snapshots::FollowModel, base: false });
    let found = connect(&jax.url).unwrap().sampling();
    assert_eq!(found, Sampling { snapshots: Snapshots::LoadIntoModel, base: true });
    for fake in [&kept, &live, &jax] {
        let s = fake.state.lock().unwrap();
        assert!(s.engine.model_ids().is_empty(), "the throwaway adapter is gone");
    }
}

/// Before: a one-adapter server's `ref` was read from the policy's stage-start snapshot, which
/// on such a server is the current policy (a KL of 0 after the first step, silently).
#[test]
fn where_snapshots_follow_the_policy_ref_is_refused_or_read_on_a_server_of_its_own() {
    let dir = scratch("ref-server");
    let recipe = critic_recipe(&dir);
    let local = dir.join("local");
    ok(&run_args(&recipe, &local).output().unwrap());
    let alone = fsdp();
    let out = run_args(&recipe, &dir.join("refused"))
        .args(["--engine", "tinker", "--server", &alone.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = flat(&out);
    for part in
        ["refused a second adapter", "follow the policy's current weights", "--server ref=URL"]
    {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert_eq!(alone.state.lock().unwrap().backwards.len(), 5, "no step: the self-tests' only");
    let (fsdp, reference) = (fsdp(), fsdp());
    let remote = dir.join("remote");
    let out = run_args(&recipe, &remote)
        .args(["--engine", "tinker", "--server", &fsdp.url, "--keep-adapters"])
        .args(["--server", &format!("ref={}", reference.url)])
        .output()
        .unwrap();
    ok(&out);
    critic_run_ends_where_local_ends(&local, &remote, &fsdp);
    let r = reference.state.lock().unwrap();
    assert_eq!(r.engine.model_ids().len(), 1, "`ref`'s server holds one reader adapter");
    assert_eq!(r.backwards.len(), 5, "and trains nothing after its self-test");
    let after: Vec<&String> = r.calls.iter().rev().take_while(|c| *c != "unload_model").collect();
    assert!(after.iter().any(|c| *c == "forward_backward"), "`ref` is read there: {after:?}");
    // `ref` on a server of its own is the trained model as a stage starts: refused where an
    // earlier stage trains it.
    let twice = dir.join("twice.rlx");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let (head, rl) = text.split_at(text.find("stage rl").unwrap());
    std::fs::write(&twice, format!("{head}{}{rl}", rl.replacen("stage rl", "stage warm", 1)))
        .unwrap();
    let out = run_args(&twice, &dir.join("twice"))
        .args(["--engine", "tinker", "--server", &fsdp.url])
        .args(["--server", &format!("ref={}", reference.url)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = flat(&out);
    assert!(err.contains("stage `rl` trains `policy` after stage `warm` did"), "{err}");
}

/// `from = ref` on a server whose snapshots load into their model (SkyRL's JAX backend): the
/// rollouts come from `ref`'s frozen copy's snapshot, never the policy's stage-start one (which
/// there would sample the trained policy, or rewind it), and the run ends where the local one
/// ends.
#[test]
fn sampling_from_ref_reads_its_frozen_copy_where_snapshots_load_into_their_model() {
    let dir = scratch("from-ref");
    let text = std::fs::read_to_string(equal_recipe(&dir)).unwrap();
    let recipe = dir.join("from_ref.rlx");
    std::fs::write(&recipe, text.replace("sample  { n = 2,", "sample  { from = ref, n = 2,"))
        .unwrap();
    let local = dir.join("local");
    ok(&run_args(&recipe, &local).output().unwrap());
    let jax = serve(Reduction::Sum);
    jax.state.lock().unwrap().samplers_load = true;
    let remote = dir.join("remote");
    ok(&run_args(&recipe, &remote)
        .args(["--engine", "tinker", "--server", &jax.url, "--keep-adapters"])
        .output()
        .unwrap());
    let (l, r) = (losses(&local), losses(&remote));
    assert_eq!(l.len(), 2);
    for (a, b) in l.iter().zip(&r) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "losses: local {l:?}, remote {r:?}");
    }
    let state = jax.state.lock().unwrap();
    let policy = state.engine.model_ids()[0].clone();
    let served = state.engine.weights(&policy).unwrap();
    let mut worst = 0f64;
    for (k, w) in checkpoint_weights(&local, "policy") {
        let d = (&w - &served[&k]).unwrap().abs().unwrap().max_all().unwrap();
        worst = worst.max(d.to_scalar::<f32>().unwrap() as f64);
    }
    assert!(worst <= 1e-5, "remote and local weights differ by up to {worst:e}");
}
