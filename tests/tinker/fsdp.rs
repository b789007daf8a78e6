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
    let held = |f: &Fake| {
        let s = f.state.lock().unwrap();
        (s.most_held, s.engine.model_ids().len())
    };
    // The policy and its critic; the reward model; the DPO model; `ref`'s reader — and, the
    // run over, nothing.
    assert_eq!(fakes.iter().map(held).collect::<Vec<_>>(), [(2, 0), (1, 0), (1, 0), (1, 0)]);
}

/// RTO on four one-adapter servers, interrupted in its last stage and resumed: the servers
/// where the dead process's adapters are still loaded get them unloaded first (the run
/// directory's `adapters.json`), those that restarted meanwhile have lost them, and the
/// frozen reward and DPO models are made again from the checkpoint — the run ends exactly
/// where the uninterrupted one ends.
#[test]
fn rto_on_four_one_adapter_servers_resumes_exactly_after_a_crash() {
    let base = base_of("dpo", "dpo");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/rto_tinker.rlx");
    let dir = scratch("rto-fsdp-resume");
    let four = || {
        let fakes: Vec<Fake> = (0..4).map(|_| fsdp_on(&base)).collect();
        let servers = vec![
            fakes[0].url.clone(),
            format!("rm={}", fakes[1].url),
            format!("dpo_model={}", fakes[2].url),
            format!("ref={}", fakes[3].url),
        ];
        (fakes, servers)
    };
    let (_fakes, servers) = four();
    ok(&small_remote_run(&recipe, &dir.join("whole"), &servers));
    let (fakes, servers) = four();
    let run = dir.join("resumed");
    // Killed in the last stage's second step, once its first step's checkpoint saved the
    // policy and its critic on the default server: a process that unloads nothing.
    let mut child = small_remote_command(&recipe, &run, &servers)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let saves =
            fakes[0].state.lock().unwrap().calls.iter().filter(|c| *c == "save_weights").count();
        if saves >= 2 {
            child.kill().unwrap();
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its last stage's checkpoint"
        );
    }
    assert!(child.wait().unwrap().code().is_none(), "killed, not finished");
    // The reward model's and `ref`'s servers restart; the other two still hold the dead
    // process's adapters (SkyRL unloads them 300 s after its last heartbeat).
    for f in [&fakes[1], &fakes[3]] {
        f.state.lock().unwrap().restart();
    }
    let stale: Vec<usize> =
        fakes.iter().map(|f| f.state.lock().unwrap().engine.model_ids().len()).collect();
    assert_eq!(stale, [2, 0, 1, 0]);
    let resumed = rlx().args(["run", "--resume"]).arg(&run).output().unwrap();
    ok(&resumed);
    let said = flat(&resumed);
    for part in
        ["2 unloaded, 0 gone already", "1 unloaded, 0 gone already", "0 unloaded, 1 gone already"]
    {
        assert!(said.contains(part), "{part}: {said}");
    }
    let (a, b) = (losses(&dir.join("whole")), losses(&run));
    assert_eq!(a.len(), 6, "two steps of three stages: {a:?}");
    assert_eq!(b.len(), 6, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "uninterrupted {a:?}, resumed {b:?}");
    }
    // The run over, its servers hold nothing, and its directory records nothing.
    for f in &fakes {
        assert!(f.state.lock().unwrap().engine.model_ids().is_empty(), "{}", f.url);
    }
    let ledger = std::fs::read_to_string(run.join("adapters.json")).unwrap();
    assert_eq!(ledger.trim(), "{}", "{ledger}");
}
