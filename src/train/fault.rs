//! Fault injection for the crash-safety tests: with `RLX_FAULT_AT=N` the process aborts (no
//! destructors, no flushing — as a `kill -9` would leave it) at the N-th fault point it passes;
//! with `RLX_FAULT_COUNT=FILE` it writes how many points a run passed. Fault points mark the
//! instants where a crash is most likely to corrupt a run: between the steps of a checkpoint
//! write and after each metrics line. Without the variables a point costs one atomic add.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static PASSED: AtomicU64 = AtomicU64::new(0);

fn abort_at() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var("RLX_FAULT_AT").ok().and_then(|v| v.parse().ok()))
}

/// A point where the process may be made to crash.
pub fn point() {
    let n = PASSED.fetch_add(1, Ordering::Relaxed) + 1;
    if abort_at() == Some(n) {
        std::process::abort();
    }
}

/// Records how many points the run passed, where `RLX_FAULT_COUNT` asks for it.
pub fn report() {
    if let Ok(path) = std::env::var("RLX_FAULT_COUNT") {
        let _ = std::fs::write(path, PASSED.load(Ordering::Relaxed).to_string());
    }
}
