//! TensorBoard event files beside `metrics.jsonl`, so TensorBoard (`tensorboard --logdir runs`)
//! and W&B (`wandb sync --sync-tensorboard`) show rlx runs next to other experiments. Every
//! number of a metrics line becomes a scalar `STAGE/NAME` at the line's step (evaluation lines:
//! `STAGE/eval/NAME`, at step 0 before and at the last step after).
//!
//! The file is TensorFlow's record format written here, not with a crate: the only Rust
//! TensorBoard writer on crates.io is unmaintained and pulls its own protobuf runtime, while the
//! format is small and rlx already has prost. Each record is `u64 length`, `u32 masked CRC-32C
//! of the length`, the bytes of an `Event` protobuf, `u32 masked CRC-32C of the bytes`; the first
//! event names the file version (`brain.Event:2`), each later one holds a `Summary` of
//! `simple_value` scalars (tensorflow/core/util/event.proto, tensorboard/compat/proto/
//! summary.proto; the record framing of tensorflow/core/lib/io/record_writer.cc).
//!
//! The event file is derived from `metrics.jsonl`: a resumed run rewrites it from the lines
//! the log keeps, so the two never disagree about which steps happened.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// An open event file.
pub struct EventFile {
    file: std::fs::File,
    path: PathBuf,
}

impl EventFile {
    /// A new event file in `dir` (earlier ones of this run are removed: the metrics log they
    /// were derived from is being rewritten), then an event per entry of `events`.
    pub fn create(dir: &Path, events: &[Scalars]) -> std::io::Result<EventFile> {
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
                std::fs::remove_file(entry.path())?;
            }
        }
        let now = wall_time();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "rlx".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}", now as u64));
        let mut out = EventFile { file: std::fs::File::create(&path)?, path };
        let version = Event {
            wall_time: now,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        };
        out.append(&version)?;
        for e in events {
            out.write(e)?;
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event of scalars at a step; none writes nothing.
    pub fn write(&mut self, scalars: &Scalars) -> std::io::Result<()> {
        if scalars.values.is_empty() {
            return Ok(());
        }
        let value = scalars
            .values
            .iter()
            .map(|(tag, x)| SummaryValue { tag: tag.clone(), simple_value: Some(*x) })
            .collect();
        let event = Event {
            wall_time: wall_time(),
            step: scalars.step,
            file_version: None,
            summary: Some(Summary { value }),
        };
        self.append(&event)
    }

    fn append(&mut self, event: &Event) -> std::io::Result<()> {
        self.file.write_all(&record(&event.encode_to_vec()))?;
        self.file.flush()
    }
}

/// Scalars logged at one step: `(tag, value)`.
#[derive(Debug, Clone, Default)]
pub struct Scalars {
    pub step: i64,
    pub values: Vec<(String, f32)>,
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A TFRecord: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TensorFlow's masked CRC: rotated and offset, so a CRC stored in data is not itself a CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise: the records are small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_the_published_values() {
        // The CRC-32C check value (RFC 3720, B.4) and TensorFlow's mask of it.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(
            masked_crc(b"123456789"),
            0xC78A_B0E5,
            "((c >> 15) | (c << 17)) + 0xa282ead8, computed apart"
        );
    }

    #[test]
    fn scalars_become_framed_events_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let scalars =
            Scalars { step: 3, values: vec![("rl/loss".into(), -1.25), ("rl/reward".into(), 0.5)] };
        let f = EventFile::create(dir.path(), &[scalars, Scalars::default()]).unwrap();
        let bytes = std::fs::read(f.path()).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(data));
            events.push(Event::decode(data).unwrap());
            at += 16 + len;
        }
        assert_eq!(events.len(), 2, "an empty set of scalars writes nothing");
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].step, 3);
        let values = &events[1].summary.as_ref().unwrap().value;
        let tags: Vec<(&str, f32)> =
            values.iter().map(|v| (v.tag.as_str(), v.simple_value.unwrap())).collect();
        assert_eq!(tags, [("rl/loss", -1.25), ("rl/reward", 0.5)]);
        // A second file replaces the first: the run's log was rewritten.
        let again = EventFile::create(dir.path(), &[]).unwrap();
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "{}", again.path().display());
    }
}
