//! A data file's rows as JSON objects, whatever the file: JSON lines (`.jsonl`, and `.json`
//! files that are not one array — what `datasets`' `to_json` writes), a JSON array (`.json`
//! starting with `[`), or Parquet (`.parquet`, as the Hub stores data sets; nested columns and
//! lists of structs such as chat `messages` become nested JSON). Every row is numbered from 1 for
//! `FILE:ROW: …` errors; nothing is skipped. Sizes are capped so a file that is not what its name
//! says cannot fill the memory: a line or row at [`MAX_ROW`], a Parquet row group at
//! [`MAX_ROW_GROUP`] (uncompressed), a JSON array file at [`MAX_JSON_FILE`].

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use crate::rewards::reply::size;

/// Largest line (JSON lines) or row (Parquet, as JSON) read.
pub const MAX_ROW: usize = 16 << 20;
/// Largest Parquet row group read (its uncompressed size).
pub const MAX_ROW_GROUP: usize = 1 << 30;
/// Largest `.json` array file read (it is parsed whole).
pub const MAX_JSON_FILE: usize = 1 << 30;

/// One row and its number in the file (a line number for JSON lines).
#[derive(Debug, Clone)]
pub struct Row {
    pub at: usize,
    pub value: Value,
}

/// Every row of a data file, chosen by extension (and for `.json`, by its first character).
pub fn read(path: &Path) -> Result<Vec<Row>, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "parquet" | "pq" => parquet_rows(path),
        "json" if starts_with_bracket(path)? => json_array(path),
        _ => json_lines(path),
    }
}

fn starts_with_bracket(path: &Path) -> Result<bool, String> {
    let mut head = [0u8; 4096];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("cannot read data file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&head[..n]);
    Ok(text.trim_start_matches('\u{feff}').trim_start().starts_with('['))
}

fn json_lines(path: &Path) -> Result<Vec<Row>, String> {
    let mut lines = capped_lines(path, MAX_ROW)?;
    // Editors on Windows save UTF-8 with a byte-order mark; it is not part of the first line.
    if let Some(first) = lines.first_mut()
        && let Some(rest) = first.strip_prefix('\u{feff}')
    {
        *first = rest.to_string();
    }
    let mut rows = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let at = |msg: String| format!("{}:{}: {msg}", path.display(), i + 1);
        if line.trim().is_empty() {
            return Err(at("empty line (JSON-lines files have one object per line)".into()));
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(at("expected a JSON object".into()));
        }
        rows.push(Row { at: i + 1, value });
    }
    Ok(rows)
}

fn json_array(path: &Path) -> Result<Vec<Row>, String> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len > MAX_JSON_FILE as u64 {
        return Err(format!(
            "{}: a JSON array file larger than {} (the cap on a file read whole; write JSON lines instead)",
            path.display(),
            size(MAX_JSON_FILE)
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read data file {}: {e}", path.display()))?;
    let text = text.trim_start_matches('\u{feff}');
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
    let Value::Array(items) = value else { unreachable!("the file starts with `[`") };
    items
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            if value.is_object() {
                Ok(Row { at: i + 1, value })
            } else {
                Err(format!("{}:{}: expected a JSON object", path.display(), i + 1))
            }
        })
        .collect()
}

fn parquet_rows(path: &Path) -> Result<Vec<Row>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let fail = |e: parquet::errors::ParquetError| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read data file {}: {e}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| format!("{}: not a Parquet file rlx can read ({e})", path.display()))?;
    let mut rows = Vec::new();
    for g in 0..reader.num_row_groups() {
        let bytes = reader.metadata().row_group(g).total_byte_size().max(0) as usize;
        if bytes > MAX_ROW_GROUP {
            return Err(format!(
                "{}: row group {} holds {} uncompressed, more than {} (the cap on one row group; rewrite the file with smaller row groups)",
                path.display(),
                g + 1,
                size(bytes),
                size(MAX_ROW_GROUP)
            ));
        }
        let group = reader.get_row_group(g).map_err(fail)?;
        for row in group.get_row_iter(None).map_err(fail)? {
            let at = rows.len() + 1;
            let row = row.map_err(|e| format!("{}:{at}: {e}", path.display()))?;
            let value = row.to_json_value();
            let bytes = serde_json::to_string(&value).map_or(0, |s| s.len());
            if bytes > MAX_ROW {
                return Err(format!(
                    "{}:{at}: a row longer than {} as JSON (the cap on one row)",
                    path.display(),
                    size(MAX_ROW)
                ));
            }
            rows.push(Row { at, value });
        }
    }
    Ok(rows)
}

/// The lines of a file, each at most `max` bytes; an error names the file and line.
pub fn capped_lines(path: &Path, max: usize) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read data file {}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    loop {
        let mut buf = Vec::new();
        let n = (&mut reader)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("cannot read data file {}: {e}", path.display()))?;
        if n == 0 {
            return Ok(lines);
        }
        let at = lines.len() + 1;
        if buf.last() != Some(&b'\n') && buf.len() > max {
            return Err(format!(
                "{}:{at}: a line longer than {} (the cap on one row; is this a JSON-lines file?)",
                path.display(),
                size(max)
            ));
        }
        let text = String::from_utf8(buf)
            .map_err(|_| format!("{}:{at}: the line is not UTF-8", path.display()))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        lines.push(text.strip_suffix('\r').unwrap_or(text).to_string());
    }
}
