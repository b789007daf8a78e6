//! A data set read from a file (JSON lines, a JSON array or Parquet: `rows`), with configurable
//! field names: prompt + answer (GSM8K's `question`/`answer`, MATH's `\boxed{}` solutions),
//! prompt + demonstration, or prompt + chosen + rejected. A field may be nested, named by its
//! path (`extra_info.answer`, `reward_model.ground_truth` in verl's layout), and texts may be in
//! TRL's conversational form (`[{"role": "user", "content": …}]`, `messages` ending with the
//! assistant's reply). Every row must have its fields; an error names the file and row, and
//! nothing is skipped.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::answers::AnswerFormat;
use super::rows::Row;
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
    Solved { prompt: String, demonstration: String, answer: Option<String>, row: Value },
    Pair(Pair),
}

/// The value at a field name, or at a dotted path into nested objects when no field has the
/// whole name (`extra_info.answer`).
pub fn field_at<'v>(row: &'v Value, path: &str) -> Option<&'v Value> {
    row.get(path).or_else(|| {
        path.split('.').try_fold(row, |v, key| match v {
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => v.get(key),
        })
    })
}

/// Reads a file: held-out prompts are the last `eval` lines (at most a fifth of the file).
pub fn load(
    path: &Path,
    fields: &Fields,
    format: AnswerFormat,
    eval: usize,
) -> Result<Task, String> {
    let rows = super::rows::read(path)?;
    let mut records = Vec::new();
    let mut pairs_file: Option<bool> = None;
    for Row { at: row, value: v } in rows {
        let at = |msg: String| format!("{}:{row}: {msg}", path.display());
        // The first line decides the kind of the file: pairs when it has a `chosen` field.
        let pairs = *pairs_file.get_or_insert(field_at(&v, &fields.chosen).is_some());
        // Texts are strings, or TRL's conversational form (lists of `{role, content}`); an
        // answer may be a number (`"answer": 42`), read as its text.
        let field = |name: &str| -> Result<String, String> {
            match field_at(&v, name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) if name == fields.answer => Ok(n.to_string()),
                Some(Value::Array(messages)) if name != fields.prompt => {
                    assistant_turn(messages).map_err(|e| at(format!("field `{name}`: {e}")))
                }
                Some(other) => Err(at(format!("field `{name}` is {other}, expected a string"))),
                None => Err(at(format!("missing field `{name}` (the line has {})", keys(&v)))),
            }
        };
        // A conversational prompt may end with the assistant's reply (TRL's `messages`): that
        // reply is the demonstration unless the recipe names a demonstration field.
        let (prompt, reply) = match field_at(&v, &fields.prompt) {
            Some(Value::Array(messages)) => {
                conversation(messages).map_err(|e| at(format!("field `{}`: {e}", fields.prompt)))?
            }
            _ => (field(&fields.prompt)?, None),
        };
        records.push(if pairs {
            Record::Pair(Pair {
                prompt,
                chosen: field(&fields.chosen)?,
                rejected: field(&fields.rejected)?,
            })
        } else {
            let answer = field(&fields.answer).ok();
            let demonstration = match (&fields.demonstration, reply) {
                (Some(d), _) => field(d)?,
                (None, Some(reply)) => reply,
                (None, None) => field(&fields.answer)?,
            };
            Record::Solved {
                prompt,
                demonstration,
                answer: answer.map(|a| format.reference(&a)),
                row: v,
            }
        });
    }
    if records.is_empty() {
        return Err(format!("data file {} has no rows", path.display()));
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
        rows: HashMap::new(),
    };
    for (i, r) in records.into_iter().enumerate() {
        let (prompt, demonstration) = match r {
            Record::Solved { prompt, demonstration, answer, row } => {
                if let Some(a) = answer {
                    task.answers.insert(prompt.clone(), a);
                }
                task.rows.insert(prompt.clone(), row);
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

/// TRL's conversational prompt: one user message, optionally followed by the assistant's reply.
/// System messages and several turns are refused by name rather than flattened.
fn conversation(messages: &[Value]) -> Result<(String, Option<String>), String> {
    let turns = messages.iter().map(turn).collect::<Result<Vec<_>, _>>()?;
    match turns.as_slice() {
        [("user", u)] => Ok((u.to_string(), None)),
        [("user", u), ("assistant", a)] => Ok((u.to_string(), Some(a.to_string()))),
        _ => {
            let roles: Vec<&str> = turns.iter().map(|(r, _)| *r).collect();
            Err(format!(
                "a conversation of roles [{}]: rlx reads one user message, optionally followed by the assistant's reply (system messages and several turns are not supported yet)",
                roles.join(", ")
            ))
        }
    }
}

/// A completion in conversational form: one assistant message.
fn assistant_turn(messages: &[Value]) -> Result<String, String> {
    let turns = messages.iter().map(turn).collect::<Result<Vec<_>, _>>()?;
    match turns.as_slice() {
        [("assistant", a)] => Ok(a.to_string()),
        _ => Err("expected a string or one assistant message `[{\"role\": \"assistant\", \"content\": …}]`".into()),
    }
}

/// `{"role": …, "content": "…"}` as (role, content).
fn turn(m: &Value) -> Result<(&str, &str), String> {
    match (m.get("role").and_then(Value::as_str), m.get("content").and_then(Value::as_str)) {
        (Some(role), Some(content)) => Ok((role, content)),
        _ => Err(format!(
            "a message must be {{\"role\": \"…\", \"content\": \"…\"}} with string values, not {m}"
        )),
    }
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
                .contains(":1: field `question`: a message must be {\"role\"")
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

    #[test]
    fn nested_fields_by_path_and_whole_rows_kept_for_external_rewards() {
        let (_d, path) = write(&[
            r#"{"prompt": "q1", "reward_model": {"ground_truth": "7"}, "extra_info": {"split": "train", "steps": [1, 2]}}"#,
            r#"{"prompt": "q2", "reward_model": {"ground_truth": 8}, "extra_info": {"split": "train", "steps": [3]}}"#,
        ]);
        let f = Fields {
            prompt: "prompt".into(),
            answer: "reward_model.ground_truth".into(),
            demonstration: Some("extra_info.split".into()),
            chosen: "chosen".into(),
            rejected: "rejected".into(),
        };
        let t = load(&path, &f, AnswerFormat::Exact, 0).unwrap();
        assert_eq!(t.reference("q1").as_deref(), Some("7"));
        assert_eq!(t.reference("q2").as_deref(), Some("8"));
        assert_eq!(t.train[0].demonstration, "train");
        assert_eq!(t.rows["q1"]["extra_info"]["steps"][1], 2);
        let row: Value = serde_json::json!({"a.b": 1, "a": {"b": 2}, "l": [{"x": 3}]});
        assert_eq!(field_at(&row, "a.b"), Some(&serde_json::json!(1)), "a key with a dot wins");
        assert_eq!(field_at(&row, "l.0.x"), Some(&serde_json::json!(3)));
        assert_eq!(field_at(&row, "a.c"), None);
        let f = Fields { demonstration: Some("extra_info.demo".into()), ..f };
        let err = load(&path, &f, AnswerFormat::Exact, 0).err().unwrap();
        assert!(err.contains(":1: missing field `extra_info.demo`"), "{err}");
    }

    /// A line that never ends (`/dev/zero`, a binary file) is an error at the cap, not memory
    /// without bound; CRLF line ends are not part of the JSON.
    #[test]
    fn a_line_past_the_cap_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        let mut text = String::from("{\"question\": \"q\", \"answer\": \"a\"}\r\n");
        text.push_str(&"x".repeat(1 << 12));
        std::fs::write(&path, &text).unwrap();
        let err = super::super::rows::capped_lines(&path, 1 << 10).unwrap_err();
        assert!(
            err.ends_with("big.jsonl:2: a line longer than 1 KiB (the cap on one row; is this a JSON-lines file?)"),
            "{err}"
        );
        let lines = super::super::rows::capped_lines(&path, 1 << 13).unwrap();
        assert_eq!(lines[0], "{\"question\": \"q\", \"answer\": \"a\"}");
        #[cfg(unix)]
        {
            let err =
                load(Path::new("/dev/zero"), &fields(), AnswerFormat::Exact, 0).err().unwrap();
            assert!(err.contains("/dev/zero:1: a line longer than 16 MiB"), "{err}");
        }
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
