//! The tasks: built-in ones generated deterministically from a seed with nothing to download —
//! `arith` (multi-step arithmetic with a verifier) and `reviews` (a review language with a hidden
//! gold score, preference pairs and demonstrations) — and `jsonl`, the user's own file.

pub mod answers;
pub mod arith;
pub mod jsonl;
pub mod reviews;
pub mod rows;

use std::collections::HashMap;
use std::path::Path;

use answers::AnswerFormat;

use crate::check::params::{self, Resolved};
use crate::rng::Rng;

/// A prompt with its reference response.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub demonstration: String,
}

/// Two responses to one prompt, the first preferred.
#[derive(Debug, Clone)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// A wrong response and its minimal correction.
#[derive(Debug, Clone)]
pub struct Correction {
    pub prompt: String,
    pub wrong: String,
    pub fixed: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Arith,
    Reviews,
    /// A JSON-lines file whose answers are verified in this format.
    Jsonl(AnswerFormat),
}

/// A generated task: prompts (training and held out), texts for warm starts, pairs and
/// corrections, with its verifier and metrics.
#[derive(Debug, Clone)]
pub struct Task {
    pub kind: Kind,
    pub name: &'static str,
    /// The tokenizer's pieces for this task's language.
    pub pieces: Vec<String>,
    pub train: Vec<Prompt>,
    /// Held-out prompts for the before/after metric.
    pub eval: Vec<Prompt>,
    /// Whole texts (prompt and response) for warm starts.
    pub texts: Vec<String>,
    pub pairs: Vec<Pair>,
    pub corrections: Vec<Correction>,
    /// Reference final answers by prompt (file data sets; built-in verifiers compute theirs).
    pub answers: HashMap<String, String>,
    /// A file's whole row by prompt, every field of it, for external rewards.
    pub rows: HashMap<String, serde_json::Value>,
}

/// Held-out prompts per task.
const EVAL_PROMPTS: usize = 128;

impl Task {
    /// Builds a data set from its resolved parameters (`seed`, sizes, a file's path, …).
    pub fn build(name: &str, resolved: &[Resolved]) -> Result<Task, String> {
        let num = |n: &str| params::num(resolved, n);
        let text = |n: &str| params::text(resolved, n).to_string();
        // Generated sets have a seed; a file has none.
        let rng = || Rng::new(num("seed") as u64 ^ 0x5EED);
        match name {
            "jsonl" => {
                let format = text("format");
                let fields = jsonl::Fields {
                    prompt: text("prompt"),
                    answer: text("answer"),
                    demonstration: params::get(resolved, "demonstration")
                        .and_then(|v| v.str())
                        .map(str::to_string),
                    chosen: text("chosen"),
                    rejected: text("rejected"),
                };
                jsonl::load(
                    Path::new(&text("path")),
                    &fields,
                    AnswerFormat::parse(&format)
                        .ok_or_else(|| format!("unknown answer format `{format}`"))?,
                    num("eval") as usize,
                )
            }
            "arith" => Ok(arith::build(
                &mut rng(),
                num("problems") as usize,
                EVAL_PROMPTS,
                num("min_ops") as usize,
                num("max_ops") as usize,
            )),
            "reviews" => {
                Ok(reviews::build(&mut rng(), num("prompts") as usize, EVAL_PROMPTS, num("noise")))
            }
            _ => Err(format!("no data set `{name}`")),
        }
    }

    /// The final answer a response to `prompt` should state, if the task knows it.
    pub fn reference(&self, prompt: &str) -> Option<String> {
        match self.kind {
            Kind::Arith => arith::answer_of(prompt).map(|a| a.to_string()),
            Kind::Reviews => None,
            Kind::Jsonl(_) => self.answers.get(prompt).cloned(),
        }
    }

    /// Whether `prompt` is one of this task's.
    pub fn knows(&self, prompt: &str) -> bool {
        match self.kind {
            Kind::Arith => arith::answer_of(prompt).is_some(),
            Kind::Reviews => true,
            Kind::Jsonl(_) => self.rows.contains_key(prompt) || self.answers.contains_key(prompt),
        }
    }

    /// A verifier's reward of a response (`arith.correct`).
    pub fn verify(&self, member: &str, prompt: &str, response: &str) -> f32 {
        match (self.kind, member) {
            (Kind::Arith, "correct") => arith::correct(prompt, response),
            (Kind::Jsonl(format), "correct") => {
                self.answers.get(prompt).map_or(0.0, |a| format.score(a, response))
            }
            _ => 0.0,
        }
    }

    /// Task metrics of responses to prompts: accuracy for `arith`; gold score, naturalness,
    /// distinct bigrams and length for `reviews`.
    pub fn metrics(&self, prompts: &[&str], responses: &[String]) -> Vec<(String, f64)> {
        match self.kind {
            Kind::Arith => arith::metrics(prompts, responses),
            Kind::Reviews => reviews::metrics(prompts, responses),
            Kind::Jsonl(format) => {
                let n = responses.len().max(1) as f64;
                let mut out = Vec::new();
                if !self.answers.is_empty() {
                    let score = |(p, r): (&&str, &String)| self.verify("correct", p, r) as f64;
                    let acc = prompts.iter().zip(responses).map(score).sum::<f64>() / n;
                    let answered =
                        responses.iter().filter(|r| format.extract(r).is_some()).count() as f64;
                    out.push(("accuracy".into(), acc));
                    out.push(("answered".into(), answered / n));
                }
                let chars = responses.iter().map(|r| r.chars().count()).sum::<usize>() as f64;
                out.push(("length".into(), chars / n));
                out
            }
        }
    }

    /// Metrics of `k` responses per prompt (each prompt's next to each other): every metric's
    /// mean over prompts of its per-prompt value, with its standard error across prompts as
    /// `NAME_se`; for tasks with a verifier, `pass@k` — the share of prompts with at least one
    /// correct response among their k — and its standard error.
    pub fn held_out_metrics(
        &self,
        prompts: &[&str],
        responses: &[String],
        k: usize,
    ) -> Vec<(String, f64)> {
        let per_prompt: Vec<Vec<(String, f64)>> = prompts
            .iter()
            .zip(responses.chunks(k.max(1)))
            .map(|(p, rs)| {
                let mut m = self.metrics(&vec![*p; rs.len()], rs);
                if self.has_verifier() {
                    let solved = rs.iter().any(|r| self.verify("correct", p, r) == 1.0);
                    m.push((format!("pass@{k}"), f64::from(u8::from(solved))));
                }
                m
            })
            .collect();
        let Some(first) = per_prompt.first() else { return Vec::new() };
        let n = per_prompt.len() as f64;
        let mut out = Vec::new();
        for (i, (name, _)) in first.iter().enumerate() {
            let xs: Vec<f64> = per_prompt.iter().map(|m| m[i].1).collect();
            let mean = xs.iter().sum::<f64>() / n;
            let var = if n > 1.0 {
                xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            out.push((name.clone(), mean));
            out.push((format!("{name}_se"), (var / n).sqrt()));
        }
        out
    }

    /// The held-out demonstrations' own headline score, as `demo_NAME`: the level a method that
    /// learns from them (RCfD) is measured against. Only `reviews`, whose demonstrations are
    /// written to score better than the warm start.
    pub fn demonstration_metrics(&self, n: usize) -> Vec<(String, f64)> {
        if !matches!(self.kind, Kind::Reviews) || n == 0 {
            return Vec::new();
        }
        let eval = &self.eval[..n.min(self.eval.len())];
        let gold: f64 = eval.iter().map(|p| reviews::gold(&p.text, &p.demonstration)).sum();
        vec![("demo_gold".into(), gold / eval.len().max(1) as f64)]
    }

    /// Whether responses can be checked (`DATA.correct`).
    pub fn has_verifier(&self) -> bool {
        matches!(self.kind, Kind::Arith) || !self.answers.is_empty()
    }

    /// The metric that says whether the task is being solved.
    pub fn headline(&self) -> &'static str {
        match self.kind {
            Kind::Arith => "accuracy",
            Kind::Reviews => "gold",
            Kind::Jsonl(_) if !self.answers.is_empty() => "accuracy",
            Kind::Jsonl(_) => "length",
        }
    }
}

/// Word-level pieces covering texts, for the built-in tokenizer on a file's data: the same
/// split as the tokenizer's pre-tokenizer (a word, a digit or another character, each with an
/// optional leading space; whitespace alone).
pub fn word_pieces<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    for text in texts {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let start = i;
            if chars[i] == ' ' && i + 1 < chars.len() && !chars[i + 1].is_whitespace() {
                i += 1;
            }
            let c = chars[i];
            if c.is_ascii_alphabetic() {
                while i < chars.len() && chars[i].is_ascii_alphabetic() {
                    i += 1;
                }
            } else {
                i += 1;
            }
            seen.insert(chars[start..i].iter().collect::<String>());
        }
    }
    seen.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{Tok, UNK};

    #[test]
    fn every_task_text_round_trips_through_its_tokenizer_without_unknowns() {
        for name in ["arith", "reviews"] {
            let spec = crate::ir::builtins::data_set(name).unwrap();
            let task = Task::build(name, &params::defaults(spec.params)).unwrap();
            let tok = Tok::from_json(&Tok::json(&task.pieces)).unwrap();
            for text in task.texts.iter().take(300) {
                let ids = tok.encode(text);
                assert!(!ids.contains(&UNK), "{name}: unknown piece in {text:?}");
                assert_eq!(tok.decode(&ids), *text);
                assert_eq!(tok.concat(&ids), *text);
            }
        }
    }
}

#[cfg(test)]
mod piece_tests {
    use super::*;
    use crate::tokenizer::{Tok, UNK};

    #[test]
    fn word_pieces_cover_any_text_for_the_builtin_tokenizer() {
        let texts = vec![
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72".to_string(),
            "  two  spaces, tabs\tand ünïcode — too".to_string(),
        ];
        let tok = Tok::from_json(&Tok::json(&word_pieces(&texts))).unwrap();
        for t in &texts {
            let ids = tok.encode(t);
            assert!(!ids.contains(&UNK), "{t:?} → {ids:?}");
            assert_eq!(tok.decode(&ids), *t);
        }
    }
}
