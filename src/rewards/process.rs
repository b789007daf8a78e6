//! A reward function in a child process, started once per run and reused for every batch:
//! one JSON line in on its stdin (the batch), one JSON line out on its stdout (the scores).
//! Its stderr is the user's log: the last lines are kept for error messages and every line is
//! appended to a log file in the run directory. A process that cannot start, exits, hangs past
//! the timeout, or writes a line longer than the cap is an error naming the reward, the
//! command and the last lines of its stderr; it is then stopped, so nothing waits on it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines of stderr kept for an error message.
const STDERR_TAIL: usize = 20;
/// Longest stderr line kept in the tail (the log file keeps whole lines).
const STDERR_LINE: usize = 2000;

/// A reward command and, once started, its process.
pub struct Process {
    argv: Vec<String>,
    timeout: Duration,
    max_line: usize,
    log: Option<PathBuf>,
    running: Option<Running>,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Line>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

enum Line {
    Text(String),
    TooLong,
    Closed,
    Failed(String),
}

impl Process {
    pub fn new(
        argv: Vec<String>,
        timeout: Duration,
        max_line: usize,
        log: Option<PathBuf>,
    ) -> Self {
        Process { argv, timeout, max_line, log, running: None }
    }

    /// `message` with the last lines of the process's stderr, for a reply that was read but is
    /// wrong (the script may have said why).
    pub fn with_stderr(&self, message: String) -> String {
        match &self.running {
            Some(run) => {
                // The stderr thread may still be reading what was printed just before.
                std::thread::sleep(Duration::from_millis(50));
                run.with_stderr(message)
            }
            None => message,
        }
    }

    /// The command as a user would type it, for messages.
    pub fn display(&self) -> String {
        self.argv.join(" ")
    }

    /// Sends one request line and returns the reply line. On any failure the process is
    /// stopped and the error carries the tail of its stderr.
    pub fn call(&mut self, request: &str) -> Result<String, String> {
        if self.running.is_none() {
            self.running = Some(self.start()?);
        }
        let result = self.exchange(request);
        if result.is_err() {
            self.stop();
        }
        result
    }

    fn exchange(&mut self, request: &str) -> Result<String, String> {
        let timeout = self.timeout;
        let max_line = self.max_line;
        let run = self.running.as_mut().expect("started above");
        let sent = run
            .stdin
            .write_all(request.as_bytes())
            .and_then(|()| run.stdin.write_all(b"\n"))
            .and_then(|()| run.stdin.flush());
        if let Err(e) = sent {
            return Err(run.exited(&format!("could not be sent the batch ({e})")));
        }
        match run.lines.recv_timeout(timeout) {
            Ok(Line::Text(line)) => Ok(line),
            Ok(Line::TooLong) => Err(run.with_settled_stderr(format!(
                "wrote a reply line longer than {} (the cap on a reply)",
                super::reply::size(max_line)
            ))),
            Ok(Line::Closed) | Err(RecvTimeoutError::Disconnected) => {
                Err(run.exited("closed its stdout before replying"))
            }
            Ok(Line::Failed(e)) => Err(run.with_settled_stderr(format!("could not be read: {e}"))),
            Err(RecvTimeoutError::Timeout) => Err(run.with_settled_stderr(format!(
                "did not reply within {} s (the reward's `timeout`)",
                timeout.as_secs_f64()
            ))),
        }
    }

    fn start(&self) -> Result<Running, String> {
        let (program, args) = self.argv.split_first().ok_or("the command is empty")?;
        let mut child = Command::new(program)
            .args(args)
            // Python buffers a piped stdout; a script that forgets to flush would otherwise
            // look hung.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{program}`: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr_pipe = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        let max_line = self.max_line;
        std::thread::spawn(move || read_lines(stdout, max_line, &tx));
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr);
        let log = self.log.clone();
        std::thread::spawn(move || keep_stderr(stderr_pipe, &tail, log));
        Ok(Running { child, stdin, lines, stderr })
    }

    fn stop(&mut self) {
        if let Some(mut run) = self.running.take() {
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Running {
    /// The message for a process that went away, with its exit status when it has one.
    fn exited(&mut self, what: &str) -> String {
        // The stderr thread may still be reading the last lines a crashing script printed.
        let mut status = None;
        for _ in 0..50 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let how = status.map_or(String::new(), |s| format!(": the process exited ({s})"));
        self.with_stderr(format!("{what}{how}"))
    }

    /// `with_stderr` after a moment for the stderr thread to read what the process printed
    /// just before failing (under load it can lag the stdout thread that saw the failure).
    fn with_settled_stderr(&self, message: String) -> String {
        std::thread::sleep(Duration::from_millis(100));
        self.with_stderr(message)
    }

    fn with_stderr(&self, message: String) -> String {
        let tail =
            self.stderr.lock().map(|t| t.iter().cloned().collect::<Vec<_>>()).unwrap_or_default();
        if tail.is_empty() {
            format!("{message} (its stderr is empty)")
        } else {
            format!("{message}; the last lines of its stderr:\n  {}", tail.join("\n  "))
        }
    }
}

fn read_lines(stdout: impl Read, max_line: usize, tx: &mpsc::Sender<Line>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut buf = Vec::new();
        let read = (&mut reader).take(max_line as u64 + 1).read_until(b'\n', &mut buf);
        let line = match read {
            Ok(0) => Line::Closed,
            Ok(_) if buf.last() != Some(&b'\n') && buf.len() > max_line => Line::TooLong,
            Ok(_) => match String::from_utf8(buf) {
                Ok(s) => Line::Text(s.trim_end_matches(['\n', '\r']).to_string()),
                Err(_) => Line::Failed("the reply is not UTF-8".into()),
            },
            Err(e) => Line::Failed(e.to_string()),
        };
        let last = !matches!(line, Line::Text(_));
        if tx.send(line).is_err() || last {
            return;
        }
    }
}

fn keep_stderr(stderr: impl Read, tail: &Mutex<VecDeque<String>>, log: Option<PathBuf>) {
    let mut file =
        log.and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    // A line without an end is read in pieces, so a runaway print cannot grow memory.
    while (&mut reader).take(1 << 20).read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(&buf);
        }
        let line = String::from_utf8_lossy(&buf);
        let line: String = line.trim_end().chars().take(STDERR_LINE).collect();
        if let Ok(mut t) = tail.lock() {
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(code: &str, timeout_ms: u64, max_line: usize) -> Process {
        let argv = vec!["python3".into(), "-c".into(), code.into()];
        Process::new(argv, Duration::from_millis(timeout_ms), max_line, None)
    }

    #[test]
    fn one_process_answers_every_request_in_order() {
        let mut p = python(
            "import sys\nfor l in sys.stdin: print(len(l.strip()), flush=True)",
            5000,
            1 << 10,
        );
        assert_eq!(p.call("abc").unwrap(), "3");
        assert_eq!(p.call("abcdef").unwrap(), "6");
    }

    #[test]
    fn a_reply_past_the_cap_a_hang_and_an_exit_are_errors_with_stderr() {
        let mut p = python(
            "import sys\nsys.stderr.write('big\\n'); sys.stderr.flush()\nsys.stdout.write('x' * 5000); sys.stdout.flush()\nimport time; time.sleep(5)",
            5000,
            1 << 10,
        );
        let e = p.call("go").unwrap_err();
        assert!(e.starts_with("wrote a reply line longer than 1 KiB"), "{e}");
        assert!(e.contains("big"), "{e}");
        let mut p = python("import time; time.sleep(5)", 200, 1 << 10);
        let e = p.call("go").unwrap_err();
        assert!(e.starts_with("did not reply within 0.2 s"), "{e}");
        let mut p = python("import sys\nprint('bye', file=sys.stderr)\nsys.exit(4)", 5000, 1 << 10);
        let e = p.call("go").unwrap_err();
        assert!(e.contains("the process exited (exit status: 4)") && e.contains("bye"), "{e}");
        let mut p =
            Process::new(vec!["/no/such/program".into()], Duration::from_secs(1), 1 << 10, None);
        assert!(p.call("go").unwrap_err().starts_with("cannot start `/no/such/program`"));
    }
}
