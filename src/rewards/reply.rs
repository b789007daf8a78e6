//! A reward's reply, checked: one finite number per response, either as one list
//! (`{"rewards": [1.0, 0.0]}`) or as several named lists (`{"rewards": {"format": [...],
//! "correct": [...]}}`, read in a recipe as `r.format(response)`). Python's `json` writes NaN
//! and infinities as the bare words `NaN` and `Infinity`, which are not JSON: they are read
//! anyway, so that the error can name the row that holds one instead of only saying "invalid".

use std::collections::BTreeMap;

use serde_json::Value;

/// The scores of one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Scores {
    One(Vec<f32>),
    Named(BTreeMap<String, Vec<f32>>),
}

impl Scores {
    /// The list a recipe reads: `part` is `None` for `r(response)`, the name for `r.NAME(response)`.
    pub fn part(&self, part: Option<&str>) -> Result<&[f32], String> {
        match (self, part) {
            (Scores::One(v), None) => Ok(v),
            (Scores::Named(m), Some(p)) => m
                .get(p)
                .map(Vec::as_slice)
                .ok_or_else(|| format!("the reply has no reward `{p}` (it has {})", names(m))),
            (Scores::One(_), Some(p)) => Err(format!(
                "the recipe reads the named reward `{p}`, but the reply is one list: reply `{{\"rewards\": {{\"{p}\": [...]}}}}`"
            )),
            (Scores::Named(m), None) => Err(format!(
                "the reply has named rewards ({}): read one of them, e.g. `NAME.{}(response)`",
                names(m),
                m.keys().next().map_or("x", String::as_str)
            )),
        }
    }
}

fn names(m: &BTreeMap<String, Vec<f32>>) -> String {
    m.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

/// Non-finite numbers as Python writes them, rewritten outside strings to a marker string
/// (as JSON text, and as the string it reads back as).
const NON_FINITE_JSON: &str = "\\u0000rlx-non-finite:";
const NON_FINITE: &str = "\u{0}rlx-non-finite:";

/// Reads one reply (a line of the process or an HTTP body) for a batch of `n` responses;
/// `key` is the field that holds the scores (`rewards`). The error says what is wrong and,
/// for a bad value, at which row of the batch.
pub fn parse(text: &str, key: &str, n: usize) -> Result<Scores, String> {
    parse_with_logs(text, key, n).map(|(scores, _)| scores)
}

/// [`parse`], and the reply's `extra_logs` from the same parse.
pub fn parse_with_logs(
    text: &str,
    key: &str,
    n: usize,
) -> Result<(Scores, BTreeMap<String, f64>), String> {
    let value: Value = serde_json::from_str(text)
        .or_else(|_| serde_json::from_str(&mark_non_finite(text)))
        .map_err(|e| format!("the reply is not JSON ({e}): {}", excerpt(text)))?;
    let scores = scores_of(&value, text, key, n)?;
    Ok((scores, extra_logs(&value)))
}

fn scores_of(value: &Value, text: &str, key: &str, n: usize) -> Result<Scores, String> {
    let Some(scores) = value.get(key) else {
        let has = match value {
            Value::Object(o) => o.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
            _ => "no fields".into(),
        };
        return Err(format!("the reply has no `{key}` field (it has {has}): {}", excerpt(text)));
    };
    match scores {
        Value::Array(values) => Ok(Scores::One(list(values, n, None)?)),
        Value::Object(named) if !named.is_empty() => {
            let mut out = BTreeMap::new();
            for (name, v) in named {
                let Value::Array(values) = v else {
                    return Err(format!(
                        "`{key}.{name}` is {}, expected a list of numbers",
                        kind(v)
                    ));
                };
                out.insert(name.clone(), list(values, n, Some(name))?);
            }
            Ok(Scores::Named(out))
        }
        other => Err(format!(
            "`{key}` is {}, expected a list of numbers (one per response) or an object of named lists",
            kind(other)
        )),
    }
}

/// A reply's `extra_logs` (OpenRLHF's name for what a reward wants logged): each number, or the
/// mean of each list's finite numbers, by key. Anything else in it is not a metric and is left.
fn extra_logs(value: &Value) -> BTreeMap<String, f64> {
    let Some(logs) = value.get("extra_logs").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    logs.iter()
        .filter_map(|(k, v)| {
            let xs: Vec<f64> = match v {
                Value::Number(x) => x.as_f64().into_iter().collect(),
                Value::Array(items) => items.iter().filter_map(Value::as_f64).collect(),
                _ => Vec::new(),
            };
            let xs: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
            (!xs.is_empty()).then(|| (k.clone(), xs.iter().sum::<f64>() / xs.len() as f64))
        })
        .collect()
}

fn list(values: &[Value], n: usize, name: Option<&str>) -> Result<Vec<f32>, String> {
    let what = name.map_or(String::new(), |n| format!(" `{n}`"));
    if values.len() != n {
        return Err(format!(
            "the reply has {} scores{what} for a batch of {n} responses",
            values.len()
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(row, v)| {
            let x = match v {
                Value::Number(x) => x.as_f64().unwrap_or(f64::NAN),
                Value::Bool(b) => f64::from(u8::from(*b)),
                Value::String(s) if s.starts_with(NON_FINITE) => {
                    return Err(format!(
                        "row {row}: the score{what} is {}, not a finite number",
                        &s[NON_FINITE.len()..]
                    ));
                }
                other => {
                    return Err(format!(
                        "row {row}: the score{what} is {}, not a number",
                        kind(other)
                    ));
                }
            };
            let y = x as f32;
            if !y.is_finite() {
                return Err(format!(
                    "row {row}: the score{what} {x} is not a finite 32-bit number"
                ));
            }
            Ok(y)
        })
        .collect()
}

/// `NaN`, `Infinity` and `-Infinity` outside strings become marker strings.
fn mark_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) =
            ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w))
        {
            out.push_str(&format!("\"{NON_FINITE_JSON}{word}\""));
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A byte count for messages: `16 MiB`, `1 KiB`, `100 bytes`.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// The start of a long text, for messages.
pub fn excerpt(text: &str) -> String {
    let t: String = text.chars().take(200).collect();
    if t.len() < text.len() { format!("{t}…") } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_list_named_lists_and_booleans_read_as_scores() {
        assert_eq!(
            parse(r#"{"rewards": [1, 0.5, true]}"#, "rewards", 3).unwrap(),
            Scores::One(vec![1.0, 0.5, 1.0])
        );
        let named =
            parse(r#"{"rewards": {"a": [1], "b": [2]}, "extra": 1}"#, "rewards", 1).unwrap();
        assert_eq!(named.part(Some("b")).unwrap(), &[2.0]);
        assert!(named.part(None).unwrap_err().contains("`a`, `b`"));
        assert!(named.part(Some("c")).unwrap_err().contains("no reward `c`"));
        assert!(Scores::One(vec![]).part(Some("x")).unwrap_err().contains("one list"));
        let (_, logs) = parse_with_logs(
            r#"{"rewards": [1], "extra_logs": {"len": [2, 4, NaN], "n": 3, "s": "x", "e": []}}"#,
            "rewards",
            1,
        )
        .unwrap();
        assert_eq!(
            logs.into_iter().collect::<Vec<_>>(),
            [("len".to_string(), 3.0), ("n".to_string(), 3.0)]
        );
    }

    #[test]
    fn each_bad_reply_says_what_and_which_row() {
        let e = |t: &str| parse(t, "rewards", 2).unwrap_err();
        assert!(e("hello").contains("not JSON"), "{}", e("hello"));
        assert!(e(r#"{"score": [1, 2]}"#).contains("no `rewards` field (it has `score`)"));
        assert!(e(r#"{"rewards": [1]}"#).contains("1 scores for a batch of 2"));
        assert!(
            e(r#"{"rewards": [1, NaN]}"#).starts_with("row 1: the score is NaN"),
            "{}",
            e(r#"{"rewards": [1, NaN]}"#)
        );
        assert!(e(r#"{"rewards": [-Infinity, 1]}"#).starts_with("row 0: the score is -Infinity"));
        assert!(e(r#"{"rewards": [1, null]}"#).starts_with("row 1: the score is null"));
        assert!(e(r#"{"rewards": [1, 1e300]}"#).contains("not a finite 32-bit"));
        assert!(
            e(r#"{"rewards": {"f": [1, "x"]}}"#).starts_with("row 1: the score `f` is a string")
        );
        assert!(e(r#"{"rewards": 3}"#).contains("is a number, expected a list"));
        // The words inside strings are left alone.
        assert_eq!(
            parse(r#"{"note": "NaN Infinity", "rewards": [0, 1]}"#, "rewards", 2).unwrap(),
            Scores::One(vec![0.0, 1.0])
        );
    }
}
