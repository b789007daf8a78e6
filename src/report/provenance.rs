//! What produced a report's numbers: the command, the rlx version and commit, the date, and the
//! machine (CPU model, the instruction sets rlx's and candle's kernels dispatched to, threads).
//! A number without these cannot be reproduced or compared: AVX2 and AVX-512 machines differ,
//! and a change to a block's arithmetic changes every trajectory after it.

use serde_json::{Value, json};

use crate::bench::{Cpu, cpu};

#[derive(Debug, Clone)]
pub struct Provenance {
    pub command: String,
    pub version: String,
    /// The git commit the binary was built from (`-dirty` with uncommitted changes, `unknown`
    /// outside a checkout).
    pub commit: String,
    /// UTC, `YYYY-MM-DD`.
    pub date: String,
    pub cpu: Cpu,
    /// Threads each run computes with (`RAYON_NUM_THREADS`, else every core the process has).
    pub threads: usize,
    /// The commits that made the runs the numbers come from, with how many runs each made
    /// (reused runs may be older than this binary); empty when not known.
    pub run_commits: std::collections::BTreeMap<String, usize>,
}

impl Provenance {
    /// This process's machine, now; `commit` is the binary's (the library does not know it).
    pub fn now(command: String, commit: &str) -> Provenance {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Provenance {
            command,
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: commit.to_string(),
            date: utc_date(secs),
            cpu: cpu(),
            threads,
            run_commits: Default::default(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = self.table();
        let others = self.run_commits.keys().any(|c| *c != self.commit);
        if others {
            let parts: Vec<String> = self
                .run_commits
                .iter()
                .map(|(c, n)| format!("`{c}` ({n} run{})", if *n == 1 { "" } else { "s" }))
                .collect();
            md.push_str(&format!(
                "| runs made by | {} (finished runs are reused, whatever rlx made them) |\n",
                parts.join(", ")
            ));
        }
        md
    }

    fn table(&self) -> String {
        let dirty = if self.commit.ends_with("-dirty") {
            " (built with uncommitted changes: the numbers may not reproduce from the commit alone)"
        } else {
            ""
        };
        format!(
            "| | |\n|---|---|\n\
             | rlx | {} at commit `{}`{dirty} |\n\
             | date | {} (UTC) |\n\
             | CPU | {} |\n\
             | instruction sets | {} (rlx's kernels: {}; matmuls: {}) |\n\
             | threads | {} |\n",
            self.version,
            self.commit,
            self.date,
            self.cpu.model,
            if self.cpu.features.is_empty() { "–".into() } else { self.cpu.features.join(", ") },
            self.cpu.kernels,
            self.cpu.matmuls,
            self.threads,
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "command": self.command,
            "version": self.version,
            "commit": self.commit,
            "date": self.date,
            "cpu": self.cpu,
            "threads": self.threads,
            "run_commits": self.run_commits,
        })
    }
}

/// `YYYY-MM-DD` of a Unix time (the proleptic Gregorian calendar, days from 1970-01-01; Howard
/// Hinnant's `civil_from_days`).
pub fn utc_date(unix_seconds: u64) -> String {
    let z = (unix_seconds / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_796_601_599), "2026-12-06");
        assert_eq!(utc_date(1_796_601_600), "2026-12-07");
    }
}
