//! `arith`: a start value and `min_ops`–`max_ops` operations applied left to right; the
//! solution writes one step per line and ends with `answer: N`. The verifier reads the final
//! answer only, so credit assignment across steps matters. Wrong solutions with a known minimal
//! correction come from corrupting one step's result and recomputing what follows.

use super::{Correction, Kind, Prompt, Task};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
enum Op {
    Add(i64),
    Sub(i64),
    Mul(i64),
}

impl Op {
    fn apply(self, x: i64) -> i64 {
        match self {
            Op::Add(b) => x + b,
            Op::Sub(b) => x - b,
            Op::Mul(b) => x * b,
        }
    }

    fn text(self) -> String {
        match self {
            Op::Add(b) => format!("+ {b}"),
            Op::Sub(b) => format!("- {b}"),
            Op::Mul(b) => format!("* {b}"),
        }
    }
}

/// Small operands keep each step learnable by the built-in tiny model in a few minutes: a
/// two-digit value plus, minus or times a one-digit number (results stay non-negative and
/// under a few hundred).
fn random_problem(rng: &mut Rng, min_ops: usize, max_ops: usize) -> (i64, Vec<Op>) {
    let start = 2 + rng.below(19) as i64;
    let n = min_ops + rng.below(max_ops.saturating_sub(min_ops) + 1);
    let mut x = start;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let op = match rng.below(3) {
            1 if x > 1 => Op::Sub(1 + rng.below((x - 1).min(9) as usize) as i64),
            2 if x <= 40 => Op::Mul(2 + rng.below(2) as i64),
            _ => Op::Add(1 + rng.below(9) as i64),
        };
        x = op.apply(x);
        ops.push(op);
    }
    (start, ops)
}

fn problem_text(start: i64, ops: &[Op]) -> String {
    let mut s = start.to_string();
    for op in ops {
        s.push(' ');
        s.push_str(&op.text());
    }
    s.push('\n');
    s
}

/// The solution, with the result of step `corrupt.0` replaced by `corrupt.1`.
fn solution_text(start: i64, ops: &[Op], corrupt: Option<(usize, i64)>) -> String {
    let mut x = start;
    let mut s = String::new();
    for (i, op) in ops.iter().enumerate() {
        let mut y = op.apply(x);
        if let Some((k, v)) = corrupt
            && k == i
        {
            y = v;
        }
        s.push_str(&format!("{x} {} = {y}\n", op.text()));
        x = y;
    }
    s.push_str(&format!("answer: {x}"));
    s
}

pub fn build(rng: &mut Rng, problems: usize, eval: usize, min_ops: usize, max_ops: usize) -> Task {
    let mut all = Vec::new();
    let mut corrections = Vec::new();
    for i in 0..problems + eval {
        let (start, ops) = random_problem(rng, min_ops.max(1), max_ops.max(min_ops.max(1)));
        let prompt = problem_text(start, &ops);
        let solution = solution_text(start, &ops, None);
        if i < problems {
            // Corrupt one step by a small amount; the steps after it follow the wrong value.
            let k = rng.below(ops.len());
            let mut x = start;
            for op in &ops[..k] {
                x = op.apply(x);
            }
            let right = ops[k].apply(x);
            let delta = (1 + rng.below(9)) as i64 * if rng.below(2) == 0 { 1 } else { -1 };
            let wrong_value = if right + delta < 0 { right - delta } else { right + delta };
            corrections.push(Correction {
                prompt: prompt.clone(),
                wrong: solution_text(start, &ops, Some((k, wrong_value))),
                fixed: solution.clone(),
            });
        }
        all.push(Prompt { text: prompt, demonstration: solution });
    }
    let eval_set = all.split_off(problems);
    let texts = warm_start_texts(rng, problems, &all, &eval_set, min_ops, max_ops);
    let mut words: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    words.extend(["+", "-", "*", "=", ":", "answer"].map(String::from));
    Task {
        kind: Kind::Arith,
        name: "arith",
        pieces: crate::tokenizer::pieces_of(words.iter().map(String::as_str)),
        train: all,
        eval: eval_set,
        texts,
        pairs: vec![],
        corrections,
        answers: Default::default(),
        rows: Default::default(),
    }
}

/// Worked solutions for warm starts, of `n` problems disjoint from the RL prompts and the
/// held-out ones: a warm start on the very problems RL then samples lets a method "gain" by
/// re-fitting memorised items (measured: accuracy on them was the held-out accuracy + 0.07).
/// Drawn after the prompts, so the prompts and held-out set are those of earlier versions.
fn warm_start_texts(
    rng: &mut Rng,
    n: usize,
    train: &[Prompt],
    eval: &[Prompt],
    min_ops: usize,
    max_ops: usize,
) -> Vec<String> {
    let taken: std::collections::HashSet<&str> =
        train.iter().chain(eval).map(|p| p.text.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut texts = Vec::with_capacity(n);
    // A small problem space (few operations) may hold fewer than `n` unseen problems: stop
    // after a bounded number of draws rather than loop.
    for _ in 0..n.saturating_mul(20) {
        if texts.len() == n {
            break;
        }
        let (start, ops) = random_problem(rng, min_ops.max(1), max_ops.max(min_ops.max(1)));
        let prompt = problem_text(start, &ops);
        if taken.contains(prompt.as_str()) || !seen.insert(prompt.clone()) {
            continue;
        }
        texts.push(format!("{prompt}{}", solution_text(start, &ops, None)));
    }
    texts
}

/// The true answer of a problem line.
pub fn answer_of(prompt: &str) -> Option<i64> {
    let mut parts = prompt.split_whitespace();
    let mut x: i64 = parts.next()?.parse().ok()?;
    while let (Some(op), Some(b)) = (parts.next(), parts.next()) {
        let b: i64 = b.parse().ok()?;
        x = match op {
            "+" => x + b,
            "-" => x - b,
            "*" => x * b,
            _ => return None,
        };
    }
    Some(x)
}

/// The final answer a response states: the number after the last `answer:`.
pub fn stated_answer(response: &str) -> Option<i64> {
    let at = response.rfind("answer:")?;
    let rest = response[at + "answer:".len()..].trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
    digits.parse().ok()
}

/// 1 if the stated final answer is right, else 0.
pub fn correct(prompt: &str, response: &str) -> f32 {
    match (answer_of(prompt), stated_answer(response)) {
        (Some(a), Some(b)) if a == b => 1.0,
        _ => 0.0,
    }
}

pub fn metrics(prompts: &[&str], responses: &[String]) -> Vec<(String, f64)> {
    let n = responses.len().max(1) as f64;
    let acc = prompts.iter().zip(responses).map(|(p, r)| correct(p, r) as f64).sum::<f64>() / n;
    let answered = responses.iter().filter(|r| stated_answer(r).is_some()).count() as f64 / n;
    vec![("accuracy".into(), acc), ("answered".into(), answered)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warm start's solutions are of other problems than RL samples and evaluates on (they
    /// were the RL prompts' own), and correct.
    #[test]
    fn warm_start_solutions_are_of_other_problems() {
        let t = build(&mut Rng::new(3), 400, 100, 2, 4);
        assert_eq!(t.texts.len(), 400);
        let prompts: std::collections::HashSet<&str> =
            t.train.iter().chain(&t.eval).map(|p| p.text.as_str()).collect();
        for text in &t.texts {
            let prompt = text.lines().next().unwrap();
            let line = format!("{prompt}\n");
            assert!(!prompts.contains(line.as_str()), "{prompt} is also an RL or held-out prompt");
            assert_eq!(correct(&line, &text[line.len()..]), 1.0, "{text}");
        }
    }

    #[test]
    fn solutions_verify_and_corruptions_do_not() {
        let t = build(&mut Rng::new(1), 50, 10, 2, 4);
        for p in &t.train {
            assert_eq!(correct(&p.text, &p.demonstration), 1.0, "{p:?}");
        }
        for c in &t.corrections {
            assert_eq!(correct(&c.prompt, &c.fixed), 1.0);
            assert_eq!(correct(&c.prompt, &c.wrong), 0.0, "{c:?}");
        }
        assert_eq!(answer_of("17 + 25 * 3 - 9\n"), Some(117));
        assert_eq!(stated_answer("17 + 25 = 42\nanswer: 42"), Some(42));
    }
}
