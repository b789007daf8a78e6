//! Progress: a bar with the key metrics on a terminal, plain lines (about ten per phase)
//! otherwise, nothing when quiet.

use std::io::IsTerminal;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    quiet: bool,
}

impl Progress {
    pub fn new(label: &str, total: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>18} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b
        });
        Progress { bar, label: label.into(), total, done: 0, quiet }
    }

    pub fn set_position(&mut self, done: u64) {
        self.done = done;
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    pub fn tick(&mut self, message: &str) {
        self.done += 1;
        match &self.bar {
            Some(b) => {
                b.set_message(message.to_string());
                b.inc(1);
            }
            None if !self.quiet => {
                let every = (self.total / 10).max(1);
                if self.done.is_multiple_of(every) || self.done == self.total {
                    eprintln!("{} {}/{} {message}", self.label, self.done, self.total);
                }
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
