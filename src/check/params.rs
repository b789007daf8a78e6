//! Parameters and settings: types, ranges, defaults. The same rules serve block parameters,
//! `sample { }`, `optim { }`, data sets and models, so every knob is validated the same way.

use crate::blocks::spec::{DefaultRule, ParamSpec, ParamTy, format_number};
use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::ir::graph::Const;

// The validated values live with the blocks that read them; checking produces them.
pub use crate::blocks::param::{Resolved, Value, get, get_num, num, text};

/// Validates the given values of `specs` and fills in defaults.
///
/// `owner` names the call in messages (e.g. "`ppo_clip`"); `sampling` answers `FromSampling`.
pub fn resolve(
    specs: &'static [ParamSpec],
    given: &[(usize, Const, Span)],
    owner: &str,
    call: Span,
    sampling: &dyn Fn(&str) -> Option<Value>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Resolved> {
    let mut out: Vec<Resolved> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let written = given.iter().find(|(p, _, _)| *p == i);
        let value = match written {
            Some((_, c, span)) => match convert(spec, c, owner, *span, diags) {
                Some(v) => v,
                None => fallback(spec, &out, sampling),
            },
            None => match spec.default {
                DefaultRule::Required => {
                    diags.push(
                        Diagnostic::error(
                            "missing-argument",
                            format!("{owner} needs `{}`", spec.name),
                        )
                        .primary(call, "missing")
                        .help(format!("give it: `{} = ...` ({})", spec.name, spec.doc)),
                    );
                    Value::Off
                }
                _ => fallback(spec, &out, sampling),
            },
        };
        out.push(Resolved {
            name: spec.name,
            value,
            explicit: written.is_some(),
            span: written.map(|w| w.2),
        });
    }
    out
}

fn fallback(
    spec: &ParamSpec,
    done: &[Resolved],
    sampling: &dyn Fn(&str) -> Option<Value>,
) -> Value {
    match spec.default {
        DefaultRule::Num(v) => Value::Num(v),
        DefaultRule::Bool(b) => Value::Bool(b),
        DefaultRule::Str(s) => Value::Str(s.to_string()),
        DefaultRule::Off | DefaultRule::Required => Value::Off,
        DefaultRule::SameAs(other) => get(done, other).cloned().unwrap_or(Value::Off),
        DefaultRule::FromSampling(key) => sampling(key).unwrap_or(Value::Off),
    }
}

fn convert(
    spec: &ParamSpec,
    c: &Const,
    owner: &str,
    span: Span,
    diags: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let off_allowed = spec.default == DefaultRule::Off || spec.ty == ParamTy::OptFloat;
    let value = match (spec.ty, c) {
        (_, Const::Word(w)) if w == "none" && off_allowed => return Some(Value::Off),
        (ParamTy::Float | ParamTy::OptFloat, Const::Num(v)) => Value::Num(*v),
        (ParamTy::Int, Const::Num(v)) if v.fract() == 0.0 => Value::Num(*v),
        (ParamTy::Bool, Const::Bool(b)) => Value::Bool(*b),
        (ParamTy::Str, Const::Str(s) | Const::Word(s)) => Value::Str(s.clone()),
        (ParamTy::Choice(options), Const::Str(s) | Const::Word(s)) => {
            if options.contains(&s.as_str()) {
                Value::Str(s.clone())
            } else {
                let mut d = Diagnostic::error(
                    "invalid-parameter",
                    format!("`{s}` is not a valid `{}` for {owner}", spec.name),
                )
                .primary(span, format!("expected {}", spec.ty.describe()));
                d = match did_you_mean(s, options.iter().copied()) {
                    Some(m) => d.help(format!("did you mean `{m}`?")),
                    None => d.help(format!("`{}` is {}", spec.name, spec.ty.describe())),
                };
                diags.push(d);
                return None;
            }
        }
        _ => {
            let expected = if off_allowed && spec.ty != ParamTy::OptFloat {
                format!("{} or `none`", spec.ty.describe())
            } else {
                spec.ty.describe()
            };
            diags.push(
                Diagnostic::error(
                    "invalid-parameter",
                    format!("`{}` of {owner} expects {expected}, found {}", spec.name, c.display()),
                )
                .primary(span, format!("not {expected}"))
                .help(format!("`{}`: {}", spec.name, spec.doc)),
            );
            return None;
        }
    };
    if let Value::Num(v) = value
        && !v.is_finite()
    {
        diags.push(
            Diagnostic::error(
                "value-out-of-range",
                format!("`{}` of {owner} must be a finite number, found {v}", spec.name),
            )
            .primary(span, "not a finite number")
            .help(format!("`{}`: {}", spec.name, spec.doc)),
        );
        return None;
    }
    if let Value::Num(v) = value
        && !spec.range.contains(v)
    {
        let default = match spec.default {
            DefaultRule::Num(d) => format!("; the default is {}", format_number(d)),
            _ => String::new(),
        };
        diags.push(
            Diagnostic::error(
                "value-out-of-range",
                format!(
                    "`{}` of {owner} must be {}, found {}",
                    spec.name,
                    spec.range.describe(),
                    format_number(v)
                ),
            )
            .primary(span, format!("must be {}", spec.range.describe()))
            .help(format!("`{}`: {}{default}", spec.name, spec.doc)),
        );
        return None;
    }
    Some(value)
}

/// Resolves `{ key = value }` settings against a schema, reporting unknown keys.
pub fn resolve_settings(
    specs: &'static [ParamSpec],
    entries: &[crate::ir::graph::SettingIr],
    owner: &str,
    call: Span,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Resolved> {
    let mut given = Vec::new();
    for e in entries {
        match specs.iter().position(|s| s.name == e.key.name) {
            Some(i) => given.push((i, e.value.clone(), e.span)),
            None => {
                let mut d = Diagnostic::error(
                    "unknown-setting",
                    format!("{owner} has no setting `{}`", e.key.name),
                )
                .primary(e.key.span, "unknown setting");
                d = match did_you_mean(&e.key.name, specs.iter().map(|s| s.name)) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => {
                        let names: Vec<String> =
                            specs.iter().map(|s| format!("`{}`", s.name)).collect();
                        d.help(format!("the settings are {}", names.join(", ")))
                    }
                };
                diags.push(d);
            }
        }
    }
    resolve(specs, &given, owner, call, &|_| None, diags)
}

/// Every setting of `specs` at its default: what a stage without the block (`sample { }` of a
/// stage that does not sample, read for its held-out evaluation) resolves to.
pub fn defaults(specs: &'static [ParamSpec]) -> Vec<Resolved> {
    resolve_settings(specs, &[], "", Span::new(0, 0), &mut Vec::new())
}
