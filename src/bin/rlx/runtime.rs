//! The process's runtime settings for the tensor commands, set by re-executing once.

/// Runtime settings measured to matter on CPU: candle asks for the thread count on every matmul,
/// reading /proc/cpuinfo each time unless `RAYON_NUM_THREADS` is set; and mimalloc returning
/// freed tensor buffers to the OS costs a page fault per page on the next step
/// (`MIMALLOC_PURGE_DELAY=-1`: a 40-step warm start 10.9 s → 8.4 s, same resident set); and
/// candle's element-wise thread pool spins 25 000 times after every op before sleeping, taking a
/// core from the matmuls and rlx's kernels on the other pool (`CANDLE_BARRIER_POOL_SPIN_LIMIT=1000`
/// on 2 cores: tiny training step 27.6 → 20.8 ms, 6 L × 384 392 → 332 ms, GRPO small step
/// 1.45 → 1.36 s). On two threads, candle's element-wise pool runs on the calling thread alone
/// (`CANDLE_NUM_THREADS=1`): its worker and rayon's two (matmuls, rlx's kernels) are three
/// threads on two cores, and whichever is descheduled stalls the others — the tiny training
/// step took 35–72 ms, median ~50, from one run to the next on an AMD EPYC (2026-12-07), and
/// 37–40 ms without the worker; 6 L × 384 and 4 L × 1024 training 2–5 % faster, sampling
/// unchanged. Larger machines keep candle's default (not measured there). All are read from the
/// environment at start-up, so the process re-executes itself once with them set (values the
/// user set are kept).
#[cfg(unix)]
pub fn tune() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("RLX_TUNED").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env("RLX_TUNED", "1");
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(n);
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() && threads <= 2 {
        cmd.env("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        cmd.env("MIMALLOC_PURGE_DELAY", "-1");
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        cmd.env("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
    // `exec` returns only on failure; then run untuned.
    let _ = cmd.exec();
}

#[cfg(not(unix))]
pub fn tune() {}
