//! JSON-RPC framing over a byte stream (`Content-Length: N\r\n\r\n` + body). Written here rather
//! than taken from `lsp-server`, whose reader treats a malformed body as a fatal I/O error: a
//! language server must answer a bad message with an error response and keep serving.

use std::io::{self, BufRead, Write};

use serde_json::Value;

/// Bodies larger than this are refused (and skipped) rather than buffered.
const MAX_BODY: usize = 64 << 20;

/// What one read produced.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed JSON value.
    Message(Value),
    /// A frame whose body is not JSON (or is too large): answer with a parse error.
    Malformed(String),
    /// End of input.
    Eof,
}

/// Reads one framed message.
pub fn read(input: &mut impl BufRead) -> io::Result<Incoming> {
    let mut length: Option<usize> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(Incoming::Eof);
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            if length.is_some() {
                break;
            }
            continue; // stray blank lines between frames
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
            if length.is_none() {
                return Ok(Incoming::Malformed(format!("bad Content-Length `{}`", value.trim())));
            }
        }
    }
    let n = length.unwrap_or(0);
    if n > MAX_BODY {
        io::copy(&mut io::Read::take(&mut *input, n as u64), &mut io::sink())?;
        return Ok(Incoming::Malformed(format!("a {n}-byte message is too large")));
    }
    let mut body = vec![0; n];
    input.read_exact(&mut body)?;
    Ok(match serde_json::from_slice(&body) {
        Ok(v) => Incoming::Message(v),
        Err(e) => Incoming::Malformed(e.to_string()),
    })
}

/// Writes one framed message.
pub fn write(output: &mut impl Write, message: &Value) -> io::Result<()> {
    let body = serde_json::to_string(message)?;
    write!(output, "Content-Length: {}\r\n\r\n{body}", body.len())?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_bodies_are_reported_not_fatal() {
        let mut buf = Vec::new();
        write(&mut buf, &serde_json::json!({"a": "é"})).unwrap();
        buf.extend_from_slice(b"Content-Length: 5\r\n\r\n{oops");
        buf.extend_from_slice(b"Content-Length: x\r\n\r\n");
        write(&mut buf, &serde_json::json!(1)).unwrap();
        let mut r = io::BufReader::new(&buf[..]);
        assert!(matches!(read(&mut r).unwrap(), Incoming::Message(v) if v["a"] == "é"));
        assert!(matches!(read(&mut r).unwrap(), Incoming::Malformed(_)));
        assert!(matches!(read(&mut r).unwrap(), Incoming::Malformed(_)));
        assert!(matches!(read(&mut r).unwrap(), Incoming::Message(v) if v == 1));
        assert!(matches!(read(&mut r).unwrap(), Incoming::Eof));
    }
}
