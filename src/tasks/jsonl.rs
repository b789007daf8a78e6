//! A data set read from a JSON-lines file, with configurable field names: prompt + answer
//! (GSM8K's `question`/`answer`, MATH's `\boxed{}` solutions), prompt + demonstration, or
//! prompt + chosen + rejected. Every line must parse and have its fields; an error names the
//! file and line, and nothing is skipped.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::answers::AnswerFormat;
use super::{Kind, Pair, Prompt, Task};

/// Which JSON keys hold what.
#[derive(Debug, Clone)]
pub struct Fields {
    pub prompt: String,
    pub answer: String,
    /// The reference response; the answer field when not given (GSM8K's answers are worked
    /// solutions ending in `#### N`).
    pub demonstration: Option<String>,
    pub chosen: String,
    pub rejected: String,
}

/// One line's content.
enum Record {
    Solved { prompt: String, demonstration: String, answer: Option<String> },
    Pair(Pair),
}

/// Reads a file: held-out prompts are the last `eval` lines (at most a fifth of the file).
pub fn load(
    path: &Path,
    fields: &Fields,
    format: AnswerFormat,
    eval: usize,
) -> Result<Task, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read data file {}: {e}", path.display()))?;
    // Editors on Windows save UTF-8 with a byte-order mark; it is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut records = Vec::new();
    let mut pairs_file: Option<bool> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |msg: String| format!("{}:{}: {msg}", path.display(), i + 1);
        if line.trim().is_empty() {
            return Err(at("empty line (JSON-lines files have one object per line)".into()));
        }
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(at("expected a JSON object".into()));
        }
        // The first line decides the kind of the file: pairs when it has a `chosen` field.
        let pairs = *pairs_file.get_or_insert(v.get(&fields.chosen).is_some());
        // Texts must be strings; an answer may be a number (`"answer": 42`), read as its text.
        let field = |name: &str| -> Result<String, String> {
            match v.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) if name == fields.answer => Ok(n.to_string()),
                Some(other) => Err(at(format!("field `{name}` is {other}, expected a string"))),
                None => Err(at(format!("missing field `{name}` (the line has {})", keys(&v)))),
            }
        };
        let prompt = field(&fields.prompt)?;
        records.push(if pairs {
            Record::Pair(Pair {
                prompt,
                chosen: field(&fields.chosen)?,
                rejected: field(&fields.rejected)?,
            })
        } else {
            let answer = field(&fields.answer).ok();
            let demonstration = match &fields.demonstration {
                Some(d) => field(d)?,
                None => field(&fields.answer)?,
            };
            Record::Solved { prompt, demonstration, answer: answer.map(|a| format.reference(&a)) }
        });
    }
    if records.is_empty() {
        return Err(format!("data file {} has no lines", path.display()));
    }
    let held_out = eval.min(records.len() / 5);
    let split = records.len() - held_out;
    let mut task = Task {
        kind: Kind::Jsonl(format),
        name: "jsonl",
        pieces: Vec::new(),
        train: Vec::new(),
        eval: Vec::new(),
        texts: Vec::new(),
        pairs: Vec::new(),
        corrections: Vec::new(),
        answers: HashMap::new(),
    };
    for (i, r) in records.into_iter().enumerate() {
        let (prompt, demonstration) = match r {
            Record::Solved { prompt, demonstration, answer } => {
                if let Some(a) = answer {
                    task.answers.insert(prompt.clone(), a);
                }
                (prompt, demonstration)
            }
            Record::Pair(p) => {
                let out = (p.prompt.clone(), p.chosen.clone());
                if i < split {
                    task.pairs.push(p);
                }
                out
            }
        };
        let joined = join(&prompt, &demonstration);
        let p = Prompt { text: prompt, demonstration };
        if i < split {
            task.texts.push(joined);
            task.train.push(p);
        } else {
            task.eval.push(p);
        }
    }
    task.pieces = super::word_pieces(task.texts.iter().chain(task.eval.iter().map(|p| &p.text)));
    Ok(task)
}

/// Prompt and response as one text for supervised training: a newline between them unless the
/// prompt already ends in whitespace, as sampled responses then start the same way.
pub fn join(prompt: &str, response: &str) -> String {
    if prompt.is_empty() || prompt.ends_with(char::is_whitespace) {
        format!("{prompt}{response}")
    } else {
        format!("{prompt}\n{response}")
    }
}

fn keys(v: &Value) -> String {
    let names: Vec<String> =
        v.as_object().map(|o| o.keys().map(|k| format!("`{k}`")).collect()).unwrap_or_default();
    if names.is_empty() { "no fields".into() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields {
            prompt: "question".into(),
            answer: "answer".into(),
            demonstration: None,
            chosen: "chosen".into(),
            rejected: "rejected".into(),
        }
    }

    fn write(lines: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        (dir, path)
    }

    #[test]
    fn gsm8k_lines_give_prompts_demonstrations_answers_and_a_held_out_tail() {
        let line = |q: usize| {
            format!(
                r#"{{"question": "What is {q}+1?", "answer": "{q}+1=<<{q}+1={a}>>{a}\n#### {a}"}}"#,
                a = q + 1
            )
        };
        let lines: Vec<String> = (0..10).map(line).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (_d, path) = write(&refs);
        let t = load(&path, &fields(), AnswerFormat::Gsm8k, 64).unwrap();
        assert_eq!((t.train.len(), t.eval.len()), (8, 2));
        assert_eq!(t.train[3].text, "What is 3+1?");
        assert!(t.train[3].demonstration.ends_with("#### 4"));
        assert_eq!(t.texts[0], "What is 0+1?\n0+1=<<0+1=1>>1\n#### 1");
        assert_eq!(t.verify("correct", "What is 9+1?", "9+1 is 10\n#### 10"), 1.0);
        assert_eq!(t.verify("correct", "What is 9+1?", "#### 11"), 0.0);
    }

    #[test]
    fn pair_files_and_a_malformed_line_with_its_number() {
        let (_d, path) = write(&[
            r#"{"question": "q1", "chosen": "good", "rejected": "bad"}"#,
            r#"{"question": "q2", "chosen": "good"}"#,
        ]);
        let err = load(&path, &fields(), AnswerFormat::Exact, 0).err().unwrap();
        assert!(
            err.ends_with(":2: missing field `rejected` (the line has `chosen`, `question`)"),
            "{err}"
        );
        let (_d, path) = write(&[r#"{"question": "q1", "answer": "a"}"#, "{not json"]);
        let err = load(&path, &fields(), AnswerFormat::Exact, 0).err().unwrap();
        assert!(err.contains("data.jsonl:2: invalid JSON"), "{err}");
        let (_d, path) = write(&[
            r#"{"question": "q1", "answer": "a"}"#,
            "",
            r#"{"question": "q1", "answer": "a"}"#,
        ]);
        assert!(
            load(&path, &fields(), AnswerFormat::Exact, 0)
                .err()
                .unwrap()
                .contains(":2: empty line")
        );
        let (_d, path) = write(&[r#"{"question": ["q1"], "answer": "a"}"#]);
        assert!(
            load(&path, &fields(), AnswerFormat::Exact, 0)
                .err()
                .unwrap()
                .contains(":1: field `question` is [\"q1\"]")
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_only_answers_may_be_numbers() {
        let (_d, path) = write(&["\u{feff}{\"question\": \"q1\", \"answer\": 42}"]);
        let t = load(&path, &fields(), AnswerFormat::Exact, 0).unwrap();
        assert_eq!(t.train[0].text, "q1");
        assert_eq!(t.train[0].demonstration, "42");
        let (_d, path) = write(&[r#"{"question": 42, "answer": "a"}"#]);
        let err = load(&path, &fields(), AnswerFormat::Exact, 0).err().unwrap();
        assert!(err.ends_with(":1: field `question` is 42, expected a string"), "{err}");
    }

    proptest::proptest! {
        /// Any bytes: an error naming the file, or a task; never a panic.
        #[test]
        fn arbitrary_files_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("data.jsonl");
            std::fs::write(&path, &bytes).unwrap();
            if let Err(e) = load(&path, &fields(), AnswerFormat::Gsm8k, 4) {
                proptest::prop_assert!(e.contains("data.jsonl"), "{}", e);
            }
        }

        /// Lines made of JSON-ish pieces reach the field checks.
        #[test]
        fn json_like_lines_never_panic(lines in proptest::collection::vec(
            proptest::sample::select(vec![
                "{\"question\": \"q\", \"answer\": \"#### 1\"}", "{\"question\": \"q\"}",
                "{\"question\": 1, \"answer\": 2}",
                "{\"question\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}",
                "[]", "null", "{", "\u{feff}{}", "{\"question\": {\"a\": 1}, \"answer\": [1]}", "",
            ]),
            0..12,
        )) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("data.jsonl");
            std::fs::write(&path, lines.join("\n")).unwrap();
            let _ = load(&path, &fields(), AnswerFormat::Gsm8k, 4);
        }
    }
}
