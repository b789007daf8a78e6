//! The leaf every layer reads: the level of a value (scalar, sequence, step, token), and a
//! parameter's validated value, as a block (or the trainer) reads it. `check::params`
//! produces these from the recipe; blocks only read them, so they live here, below both.

use std::fmt;

use crate::diag::Span;

/// The level of a tensor value. Values of different levels never mix implicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// One number for the whole batch. Scalars combine with any level.
    Scalar,
    /// One number per sequence, `[batch]`.
    Seq,
    /// One number per reasoning step, `[batch, steps]`, ragged with its own mask.
    Step,
    /// One number per response token, `[batch, time]`, masked by the response mask.
    Token,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Seq => "seq",
            Level::Step => "step",
            Level::Token => "token",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parameter value after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Num(f64),
    Str(String),
    Bool(bool),
    /// `none`: the feature is off.
    Off,
}

impl Value {
    pub fn display(&self) -> String {
        match self {
            Value::Num(v) => format_number(*v),
            Value::Str(s)
                if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.is_empty() =>
            {
                s.clone()
            }
            Value::Str(s) => format!("{s:?}"),
            Value::Bool(b) => b.to_string(),
            Value::Off => "none".into(),
        }
    }

    pub fn num(&self) -> Option<f64> {
        match self {
            Value::Num(v) => Some(*v),
            _ => None,
        }
    }

    pub fn str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One parameter with its final value, and whether the recipe wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub name: &'static str,
    pub value: Value,
    pub explicit: bool,
    /// Where the recipe wrote it, for diagnostics.
    pub span: Option<Span>,
}

pub fn get<'a>(resolved: &'a [Resolved], name: &str) -> Option<&'a Value> {
    resolved.iter().find(|r| r.name == name).map(|r| &r.value)
}

pub fn get_num(resolved: &[Resolved], name: &str) -> Option<f64> {
    get(resolved, name).and_then(Value::num)
}

/// A numeric setting with a default. The checker resolves every setting of a spec, filling in
/// defaults, so the value is always there; readers never restate a default. A missing value is
/// a defect of rlx (reading a setting of another spec), not of the recipe.
pub fn num(resolved: &[Resolved], name: &str) -> f64 {
    get_num(resolved, name).unwrap_or_else(|| panic!("internal: setting `{name}` was not resolved"))
}

/// A text setting with a default; see [`num`].
pub fn text<'a>(resolved: &'a [Resolved], name: &str) -> &'a str {
    get(resolved, name)
        .and_then(Value::str)
        .unwrap_or_else(|| panic!("internal: setting `{name}` was not resolved"))
}

/// Shortest faithful rendering of a number: `0.2`, `1e-6`, `64`.
pub fn format_number(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let plain = format!("{v}");
    let sci = format!("{v:e}");
    if sci.len() < plain.len() { sci } else { plain }
}
