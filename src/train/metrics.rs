//! `metrics.jsonl`: one JSON object per line, flushed as written, so a killed run keeps every
//! line it finished.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

pub struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    pub fn create(dir: &Path) -> std::io::Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::File::create(&path)?;
        Ok(MetricsLog { file })
    }

    /// Reopens a log for a resumed run, dropping lines past the checkpoint (`stage`, `step`):
    /// they will be written again.
    pub fn resume(dir: &Path, stage: usize, step: usize) -> std::io::Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let Ok(v) = serde_json::from_str::<Value>(l) else { return false };
                let s = v.get("stage_index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let t = v.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
                s < stage || (s == stage && t <= step)
            })
            .collect();
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        std::fs::write(&path, body)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(MetricsLog { file })
    }

    pub fn write(&mut self, record: &Map<String, Value>) -> std::io::Result<()> {
        let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        writeln!(self.file, "{line}")?;
        self.file.flush()
    }
}
