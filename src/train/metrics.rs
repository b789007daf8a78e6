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

    /// Reopens a log for a resumed run, dropping every line the resumed run writes again: steps
    /// past the checkpoint (`stage`, `step`), the current stage's `after` evaluation, and its
    /// `before` evaluation when the stage restarts from step 0. No line is lost or duplicated,
    /// wherever the run was killed.
    pub fn resume(dir: &Path, stage: usize, step: usize) -> std::io::Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let Ok(v) = serde_json::from_str::<Value>(l) else { return false };
                let s = v.get("stage_index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let t = v.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
                match v.get("eval").and_then(Value::as_str) {
                    _ if s != stage => s < stage,
                    Some("after") => false,
                    Some(_) => step > 0,
                    None => t <= step,
                }
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
        self.file.flush()?;
        super::fault::point();
        Ok(())
    }
}

/// The `before` and `after` evaluations a log holds for a stage, as `eval/NAME` values.
pub fn evals(dir: &Path, stage: usize) -> (Map<String, Value>, Map<String, Value>) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let (mut before, mut after) = (Map::new(), Map::new());
    for v in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if v.get("stage_index").and_then(Value::as_u64) != Some(stage as u64) {
            continue;
        }
        let into = match v.get("eval").and_then(Value::as_str) {
            Some("before") => &mut before,
            Some("after") => &mut after,
            _ => continue,
        };
        if let Some(o) = v.as_object() {
            for (k, x) in o.iter().filter(|(k, _)| k.starts_with("eval/")) {
                into.insert(k.clone(), x.clone());
            }
        }
    }
    (before, after)
}
