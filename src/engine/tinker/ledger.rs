//! The adapters a run holds on its servers, written to its run directory as they are created
//! and unloaded (`adapters.json`), so that the next process on that directory — a `--resume`
//! after a crash or a killed run — unloads what the dead one left before it creates its own.
//!
//! Without this, a server that holds one adapter (SkyRL's FSDP backend) refuses the resumed
//! run's adapters, self-test included, until its stale-session cleanup unloads the dead
//! session's (300 s without a heartbeat, checked every 60 s: `skyrl/tinker/config.py`), and
//! any server keeps their memory that long. SkyRL's `unload_model` takes any model id, whatever
//! session made it (`skyrl/tinker/api.py`); an id it no longer knows is answered 404.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file, under the run directory.
pub const FILE: &str = "adapters.json";

/// One process's servers share the file: one read-modify-write at a time.
static WRITING: Mutex<()> = Mutex::new(());

/// Model ids by server (as the run names it: its URL, no API key).
type Held = BTreeMap<String, BTreeSet<String>>;

/// One server's entries in a run directory's `adapters.json`.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
    server: String,
}

impl Ledger {
    pub fn new(run_dir: &Path, server: &str) -> Ledger {
        Ledger { path: run_dir.join(FILE), server: server.to_string() }
    }

    /// The ids recorded for this server (by this process or an earlier one).
    pub fn held(&self) -> Result<Vec<String>, String> {
        let _guard = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.read()?.remove(&self.server).map(|s| s.into_iter().collect()).unwrap_or_default())
    }

    pub fn add(&self, id: &str) -> Result<(), String> {
        self.update(|ids| {
            ids.insert(id.to_string());
        })
    }

    pub fn remove(&self, id: &str) -> Result<(), String> {
        self.update(|ids| {
            ids.remove(id);
        })
    }

    fn update(&self, change: impl FnOnce(&mut BTreeSet<String>)) -> Result<(), String> {
        let _guard = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = self.read()?;
        change(held.entry(self.server.clone()).or_default());
        held.retain(|_, ids| !ids.is_empty());
        let text = serde_json::to_string_pretty(&held).expect("strings serialise");
        // Written whole and renamed over: a crash leaves the old file or the new one.
        let tmp = self.path.with_extension("json.tmp");
        let fail = |e: std::io::Error| format!("{}: {e}", self.path.display());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        std::fs::write(&tmp, text + "\n").map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }

    fn read(&self) -> Result<Held, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a record of adapters ({e})", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Held::new()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Servers keep their own entries; an emptied server leaves the file; a second ledger on the
    /// directory (the next process) reads what the first wrote.
    #[test]
    fn records_ids_per_server_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Ledger::new(dir.path(), "http://a"), Ledger::new(dir.path(), "http://b"));
        assert!(a.held().unwrap().is_empty());
        a.add("m1").unwrap();
        a.add("m2").unwrap();
        b.add("m1").unwrap();
        a.remove("m1").unwrap();
        let again = Ledger::new(dir.path(), "http://a");
        assert_eq!(again.held().unwrap(), ["m2"]);
        assert_eq!(b.held().unwrap(), ["m1"]);
        b.remove("m1").unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains("http://b"), "{text}");
        std::fs::write(dir.path().join(FILE), "not json").unwrap();
        assert!(a.held().unwrap_err().contains("not a record of adapters"));
    }
}
