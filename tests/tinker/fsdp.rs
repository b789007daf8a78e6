//! The seeds' multi-model recipes on servers as SkyRL's FSDP backend: one trained adapter per
//! server (and its critic), sampler snapshots that follow their model, no base-model sampling.
//! Each trained model and `ref` get a server of their own (`--server NAME=URL`), and the run
//! ends exactly where the same run on one server that holds every adapter ends.

use super::*;

/// A fake as SkyRL's FSDP backend over `base`.
pub fn fsdp_on(base: &Path) -> Fake {
    let fake = serve_base(base, Reduction::Sum);
    let mut s = fake.state.lock().unwrap();
    (s.one_policy, s.live_samplers, s.base_sampling) = (true, true, false);
    drop(s);
    fake
}

#[test]
fn rto_trains_on_four_one_adapter_servers_exactly_as_on_one_server() {
    let base = base_of("dpo", "dpo");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/rto_tinker.rlx");
    let dir = scratch("rto-fsdp");
    let one = serve_base(&base, Reduction::Sum);
    ok(&small_remote_run(&recipe, &dir.join("one"), std::slice::from_ref(&one.url)));
    // On one FSDP server the reward model's adapter leaves no room for the DPO model's.
    let alone = fsdp_on(&base);
    let out = small_remote_run(&recipe, &dir.join("alone"), std::slice::from_ref(&alone.url));
    assert!(!out.status.success());
    let err = flat(&out);
    for part in ["create_model", "already has a 'policy' model", "--server dpo_model=URL"] {
        assert!(err.contains(part), "{part}: {err}");
    }
    let fakes: Vec<Fake> = (0..4).map(|_| fsdp_on(&base)).collect();
    let servers = [
        fakes[0].url.clone(),
        format!("rm={}", fakes[1].url),
        format!("dpo_model={}", fakes[2].url),
        format!("ref={}", fakes[3].url),
    ];
    ok(&small_remote_run(&recipe, &dir.join("four"), &servers));
    let (a, b) = (losses(&dir.join("one")), losses(&dir.join("four")));
    assert_eq!(a.len(), 6, "two steps of three stages: {a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "one server {a:?}, four {b:?}");
    }
    let held: Vec<usize> =
        fakes.iter().map(|f| f.state.lock().unwrap().engine.model_ids().len()).collect();
    // The policy and its critic; the reward model; the DPO model; `ref`'s reader.
    assert_eq!(held, [2, 1, 1, 1]);
}
