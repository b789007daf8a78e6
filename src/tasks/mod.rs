//! The built-in tasks, generated deterministically from a seed with nothing to download:
//! `arith` (multi-step arithmetic with a verifier) and `reviews` (a review language with a hidden
//! gold score, preference pairs and demonstrations).

pub mod arith;
pub mod reviews;

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
}

/// Held-out prompts per task.
const EVAL_PROMPTS: usize = 128;

impl Task {
    /// Builds a data set from its resolved parameters (`seed`, sizes, …).
    pub fn build(name: &str, resolved: &[Resolved]) -> Option<Task> {
        let num = |n: &str, d: f64| params::get_num(resolved, n).unwrap_or(d);
        let seed = num("seed", 0.0) as u64;
        let mut rng = Rng::new(seed ^ 0x5EED);
        match name {
            "arith" => Some(arith::build(
                &mut rng,
                num("problems", 2000.0) as usize,
                EVAL_PROMPTS,
                num("min_ops", 2.0) as usize,
                num("max_ops", 4.0) as usize,
            )),
            "reviews" => Some(reviews::build(
                &mut rng,
                num("prompts", 2000.0) as usize,
                EVAL_PROMPTS,
                num("noise", 0.1),
            )),
            _ => None,
        }
    }

    /// A verifier's reward of a response (`arith.correct`).
    pub fn verify(&self, member: &str, prompt: &str, response: &str) -> f32 {
        match (self.kind, member) {
            (Kind::Arith, "correct") => arith::correct(prompt, response),
            _ => 0.0,
        }
    }

    /// Task metrics of responses to prompts: accuracy for `arith`; gold score, naturalness,
    /// distinct bigrams and length for `reviews`.
    pub fn metrics(&self, prompts: &[&str], responses: &[String]) -> Vec<(String, f64)> {
        match self.kind {
            Kind::Arith => arith::metrics(prompts, responses),
            Kind::Reviews => reviews::metrics(prompts, responses),
        }
    }

    /// The metric that says whether the task is being solved.
    pub fn headline(&self) -> &'static str {
        match self.kind {
            Kind::Arith => "accuracy",
            Kind::Reviews => "gold",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{Tok, UNK};

    #[test]
    fn every_task_text_round_trips_through_its_tokenizer_without_unknowns() {
        for name in ["arith", "reviews"] {
            let task = Task::build(name, &[]).unwrap();
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
