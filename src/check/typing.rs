//! Level, text and gradient inference over one stage's graph, in topological order.
//!
//! Levels never mix implicitly: a `seq` value meets a `token` input only through `at_end`,
//! `spread` or another explicit block. Scalars combine with anything.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use super::params::{self, Resolved, Value};
use super::{CheckedStage, StageCx, Ty};
use crate::blocks::spec::*;
use crate::diag::{Diagnostic, Span};
use crate::ir::builtins::MemberKind;
use crate::ir::graph::*;
use crate::syntax::ast::SourceKind;

pub(super) fn infer(cx: &StageCx, out: &mut CheckedStage, diags: &mut Vec<Diagnostic>) {
    let stage = cx.stage;
    let order = match petgraph::algo::toposort(&stage.graph, None) {
        Ok(order) => order,
        Err(_) => return, // Lowering rejects cycles; nothing sensible to infer.
    };
    let mut leaks_reported: HashSet<NodeIndex> = HashSet::new();
    for n in order {
        let node = &stage.graph[n];
        let wires = wires(&stage.graph, n);
        let ty = match &node.op {
            Op::Const(_) => {
                Ty::Tensor { level: Level::Scalar, text: None, grad: false, origin: None }
            }
            Op::Text(t) => {
                check_text_available(cx, t, node.span, diags);
                Ty::Text(t.to_string())
            }
            Op::Rewrite { model } => {
                check_model_ready(cx, model, node.span, diags);
                match wires.first().map(|(i, s)| (&out.types[i], *s)) {
                    Some((Ty::Text(t), _)) => {
                        Ty::Text(TextName::rewrite(model, TextName::parse(t)).to_string())
                    }
                    Some((other, s)) => {
                        diags.push(expected_text(other, s));
                        Ty::Unknown
                    }
                    None => Ty::Unknown,
                }
            }
            Op::Signal { model, signal } => signal_ty(cx, n, model, *signal, &wires, out, diags),
            Op::Score(scorer) => {
                let grad = match scorer {
                    ScorerRef::Model(m) => {
                        check_model_ready(cx, m, node.span, diags);
                        stage.trains(m)
                    }
                    ScorerRef::Verifier { .. } | ScorerRef::External { .. } => false,
                };
                match wires.first().map(|(i, s)| (&out.types[i], *s)) {
                    Some((Ty::Text(_), _)) => Ty::Tensor {
                        level: Level::Seq,
                        text: None,
                        grad,
                        origin: grad.then_some(n),
                    },
                    Some((other, s)) => {
                        diags.push(expected_text(other, s));
                        Ty::Unknown
                    }
                    None => Ty::Unknown,
                }
            }
            Op::Scorer(s) => {
                if let ScorerRef::Model(m) = s {
                    check_model_ready(cx, m, node.span, diags);
                }
                Ty::Scorer
            }
            Op::Block { spec, params: given } => {
                let given: Vec<(usize, Const, Span)> =
                    given.iter().map(|p| (p.param, p.value.clone(), p.span)).collect();
                let sampling = |key: &str| params::get(&out.sample, key).cloned();
                let owner = format!("`{}`", spec.name);
                let resolved =
                    params::resolve(spec.params, &given, &owner, node.span, &sampling, diags);
                if let Some(validate) = spec.validate {
                    let lookup = |name: &str| params::get_num(&resolved, name);
                    if let Some(msg) = validate(&lookup) {
                        diags.push(
                            Diagnostic::error(
                                "value-out-of-range",
                                format!("invalid parameters of `{}`: {msg}", spec.name),
                            )
                            .primary(node.span, "in this call")
                            .help(format!("see `rlx blocks {}`", spec.name)),
                        );
                    }
                }
                if spec.demand == Demand::Pairs
                    && stage.source_kind() != Some(SourceKind::Pairs)
                    && stage.source.is_some()
                {
                    diags.push(
                        Diagnostic::error(
                            "missing-preference-data",
                            format!("`{}` needs preference pairs", spec.name),
                        )
                        .primary(node.span, "in a stage without `pairs`")
                        .help("train it in a stage with `pairs DATA.preferences`"),
                    );
                }
                let ty = block_ty(cx, spec, &wires, out, &mut leaks_reported, diags);
                out.params.insert(n, resolved);
                ty
            }
        };
        out.types.insert(n, ty);
    }
}

fn expected_text(found: &Ty, span: Span) -> Diagnostic {
    Diagnostic::error("type-mismatch", format!("expected a text, found {}", found.describe()))
        .primary(span, "not a text")
        .help("texts are `response`, `demonstration`, `chosen`, `rejected`, `target`, `greedy` or a rewrite")
}

fn check_text_available(cx: &StageCx, text: &str, span: Span, diags: &mut Vec<Diagnostic>) {
    let kind = cx.stage.source_kind();
    let (ok, needs) = match text {
        "response" | "greedy" => {
            (kind == Some(SourceKind::Prompts), "stages that sample (`prompts`)")
        }
        "demonstration" => {
            let has = matches!(
                cx.stage.source.as_ref().map(|(_, d)| d.kind),
                Some(MemberKind::Prompts { demonstrations: true })
            );
            (has, "stages whose prompts come with demonstrations")
        }
        "chosen" | "rejected" | "mismatched" => {
            (kind == Some(SourceKind::Pairs), "stages with preference `pairs`")
        }
        _ => (kind == Some(SourceKind::Data), "stages with `data`"),
    };
    if !ok && cx.stage.source.is_some() {
        diags.push(
            Diagnostic::error(
                "unavailable-signal",
                format!("`{text}` is not available in stage `{}`", cx.stage.name.name),
            )
            .primary(span, format!("exists only in {needs}"))
            .help("read the texts this stage's data provides"),
        );
    }
}

/// A model declared by `copy` or `reward_model` holds nothing useful until a stage trains it.
fn check_model_ready(cx: &StageCx, model: &str, span: Span, diags: &mut Vec<Diagnostic>) {
    if cx.stage.trains(model) {
        return;
    }
    let Some(decl) = cx.program.model(model) else { return };
    if matches!(
        decl.init,
        ModelInit::Builtin { .. } | ModelInit::Pretrained | ModelInit::PretrainedRewardModel
    ) {
        return;
    }
    // A Yes/No reward model's answers are defined before any training: read frozen it is a
    // zero-shot judge (or a trained one loaded with `pretrained`) — unless a later stage trains
    // it, when reading it first is an ordering mistake.
    let trained_later = cx.program.stages[cx.index + 1..].iter().any(|s| s.trains(model));
    if matches!(decl.init, ModelInit::YesNo(_)) && !trained_later {
        return;
    }
    let earlier = cx.program.stages[..cx.index].iter().any(|s| s.trains(model));
    if earlier {
        return;
    }
    let later = cx.program.stages[cx.index + 1..].iter().find(|s| s.trains(model));
    let what = if matches!(decl.init, ModelInit::RewardModel | ModelInit::YesNo(_)) {
        "reward model"
    } else {
        "copy"
    };
    let message =
        format!("`{model}` is read in stage `{}` before any stage trains it", cx.stage.name.name);
    if diags.iter().any(|d| d.message == message) {
        return; // One report per model and stage.
    }
    let mut d = Diagnostic::error("untrained-model", message)
        .primary(span, format!("an untrained {what}"))
        .secondary(decl.name.span, "declared here");
    d = match later {
        Some(s) => d
            .secondary(s.name.span, "trained by this later stage")
            .help(format!("move stage `{}` before stage `{}`", s.name.name, cx.stage.name.name)),
        None => d.help(format!("add a stage that trains `{model}` before this one")),
    };
    diags.push(d);
}

fn signal_ty(
    cx: &StageCx,
    n: NodeIndex,
    model: &ModelRef,
    signal: Signal,
    wires: &[(NodeIndex, Span)],
    out: &CheckedStage,
    diags: &mut Vec<Diagnostic>,
) -> Ty {
    let stage = cx.stage;
    let span = stage.graph[n].span;
    let text = match wires.first().map(|(i, s)| (&out.types[i], *s)) {
        Some((Ty::Text(t), _)) => t.clone(),
        Some((other, s)) => {
            diags.push(expected_text(other, s));
            return Ty::Unknown;
        }
        None => return Ty::Unknown,
    };
    let grad = match model {
        ModelRef::Named(m) => {
            check_model_ready(cx, m, span, diags);
            stage.trains(m)
        }
        ModelRef::Old => {
            if stage.source_kind() != Some(SourceKind::Prompts) && stage.source.is_some() {
                diags.push(
                    Diagnostic::error(
                        "unavailable-signal",
                        format!("`old` is not available in stage `{}`", stage.name.name),
                    )
                    .primary(span, "`old` is the model that sampled the batch")
                    .help("this stage does not sample; read the trained model or `ref` instead"),
                );
            }
            false
        }
        ModelRef::Ref => false,
        ModelRef::Rollout => {
            if stage.source_kind() != Some(SourceKind::Prompts) || text != "response" {
                diags.push(
                    Diagnostic::error(
                        "unavailable-signal",
                        "`rollout.logp` exists only for the sampled `response` of a stage with `prompts`",
                    )
                    .primary(span, "the sampler's own log-probabilities")
                    .help("read `old.logp` for other texts, or sample in this stage"),
                );
            }
            false
        }
    };
    if signal == Signal::Values {
        let owner = match model {
            ModelRef::Named(m) => Some(m.as_str()),
            _ => stage.value_owner(),
        };
        if let Some(owner) = owner
            && !stage.has_value_head(owner)
        {
            diags.push(
                Diagnostic::error(
                    "missing-value-head",
                    format!("`{}.values` needs a value head on `{owner}`", model.display()),
                )
                .primary(span, "no value head is trained in this stage")
                .help(format!("train one: `train {owner}, value_head({owner})`")),
            );
        }
    }
    Ty::Tensor { level: Level::Token, text: Some(text), grad, origin: grad.then_some(n) }
}

fn block_ty(
    cx: &StageCx,
    spec: &'static BlockSpec,
    wires: &[(NodeIndex, Span)],
    out: &CheckedStage,
    leaks_reported: &mut HashSet<NodeIndex>,
    diags: &mut Vec<Diagnostic>,
) -> Ty {
    let mut ok = true;
    let mut generic: Option<(Level, Option<String>, Span)> = None;
    let mut grad = false;
    let mut origin = None;
    let mut texts: HashMap<usize, String> = HashMap::new();
    for (i, (input, wspan)) in wires.iter().enumerate() {
        let Some(ispec) = spec.inputs.get(i) else { continue };
        let ity = &out.types[input];
        if matches!(ity, Ty::Unknown) {
            ok = false;
            continue;
        }
        match ispec.kind {
            InputKind::Tensor(rule, grad_rule) => {
                let Ty::Tensor { level, text, grad: g, origin: o } = ity else {
                    diags.push(
                        Diagnostic::error(
                            "type-mismatch",
                            format!(
                                "`{}` of `{}` expects a value, found {}",
                                ispec.name,
                                spec.name,
                                ity.describe()
                            ),
                        )
                        .primary(*wspan, format!("{} here", ity.describe()))
                        .help(hint_for(ity)),
                    );
                    ok = false;
                    continue;
                };
                if let Some(t) = text {
                    texts.insert(i, t.clone());
                }
                match rule {
                    LevelRule::Exact(want) if *level != want && *level != Level::Scalar => {
                        diags.push(
                            Diagnostic::error(
                                "level-mismatch",
                                format!(
                                    "`{}` of `{}` expects a {want} value, found {level}",
                                    ispec.name, spec.name
                                ),
                            )
                            .primary(*wspan, format!("a {level} value"))
                            .help(conversion_help(*level, want)),
                        );
                        ok = false;
                    }
                    LevelRule::Generic if *level != Level::Scalar => match &generic {
                        None => generic = Some((*level, text.clone(), *wspan)),
                        Some((l, _, first)) if l != level => {
                            diags.push(
                                Diagnostic::error(
                                    "level-mismatch",
                                    format!(
                                        "`{}` cannot combine {l} and {level} values",
                                        spec.name
                                    ),
                                )
                                .primary(*wspan, format!("a {level} value"))
                                .secondary(*first, format!("a {l} value"))
                                .help(conversion_help(lower_of(*l, *level), higher_of(*l, *level))),
                            );
                            ok = false;
                        }
                        Some((_, Some(t0), first)) if text.as_ref().is_some_and(|t| t != t0) => {
                            let t = text.clone().unwrap_or_default();
                            diags.push(
                                Diagnostic::error("text-mismatch", format!("`{}` cannot combine tokens of `{t0}` with tokens of `{t}`", spec.name))
                                    .primary(*wspan, format!("tokens of `{t}`"))
                                    .secondary(*first, format!("tokens of `{t0}`"))
                                    .help("per-token values of different texts do not line up; reduce each to `seq` first (`sum_tokens`)"),
                            );
                            ok = false;
                        }
                        _ => {}
                    },
                    _ => {}
                }
                if *g {
                    if grad_rule == GradRule::Detached {
                        let source = o.unwrap_or(*input);
                        if leaks_reported.insert(source) {
                            let from = cx.stage.graph[source].op.label();
                            diags.push(
                                Diagnostic::warning(
                                    "advantage-carries-gradient",
                                    format!("`{}` of `{}` carries gradient from `{from}`", ispec.name, spec.name),
                                )
                                .primary(*wspan, "gradient flows back through this value")
                                .help("rewards, advantages and targets should be constants: wrap them in `stopgrad(...)`"),
                            );
                        }
                    }
                    grad = true;
                    origin = origin.or(*o);
                }
            }
            InputKind::Text => match ity {
                Ty::Text(t) => {
                    texts.insert(i, t.clone());
                }
                _ => {
                    diags.push(expected_text(ity, *wspan));
                    ok = false;
                }
            },
            InputKind::Steps => match ity {
                Ty::Steps(t) => {
                    texts.insert(i, t.clone());
                }
                _ => {
                    diags.push(
                        Diagnostic::error(
                            "type-mismatch",
                            format!(
                                "`{}` of `{}` expects steps, found {}",
                                ispec.name,
                                spec.name,
                                ity.describe()
                            ),
                        )
                        .primary(*wspan, "not steps")
                        .help("segment a text first: `split_steps(response)`"),
                    );
                    ok = false;
                }
            },
            InputKind::Scorer => {
                if !matches!(ity, Ty::Scorer) {
                    diags.push(
                        Diagnostic::error("type-mismatch", format!("`{}` of `{}` expects a reward function, found {}", ispec.name, spec.name, ity.describe()))
                            .primary(*wspan, "not a reward function")
                            .help("pass the function itself, without calling it: `reward = arith.correct`"),
                    );
                    ok = false;
                }
            }
        }
    }
    if !ok {
        return Ty::Unknown;
    }
    let level = match spec.output {
        OutputKind::Tensor(l) => l,
        OutputKind::Generic => generic.as_ref().map_or(Level::Scalar, |g| g.0),
        OutputKind::Steps => {
            let t = spec
                .axis_from
                .and_then(|i| texts.get(&i).cloned())
                .unwrap_or_else(|| "response".into());
            return Ty::Steps(t);
        }
    };
    let text = match level {
        Level::Token | Level::Step => Some(
            spec.axis_from
                .and_then(|i| texts.get(&i).cloned())
                .or_else(|| generic.and_then(|g| g.1))
                .or_else(|| texts.values().next().cloned())
                .unwrap_or_else(|| cx.primary_text().to_string()),
        ),
        _ => None,
    };
    if spec.grad == OutputGrad::Never {
        grad = false;
        origin = None;
    }
    Ty::Tensor { level, text, grad, origin }
}

fn lower_of(a: Level, b: Level) -> Level {
    a.min(b)
}

fn higher_of(a: Level, b: Level) -> Level {
    a.max(b)
}

fn hint_for(ty: &Ty) -> &'static str {
    match ty {
        Ty::Text(_) => {
            "a text is not a number; score it (`rm(response)`) or read a signal (`policy.logp(response)`)"
        }
        Ty::Steps(_) => {
            "steps are a segmentation; compute values over them with `vine_values` or map with `to_tokens`"
        }
        Ty::Scorer => "call the reward function on a text: `arith.correct(response)`",
        _ => "see `rlx blocks` for what each block takes",
    }
}

/// The explicit conversions from one level to another.
fn conversion_help(from: Level, to: Level) -> String {
    match (from, to) {
        (Level::Seq, Level::Token) => {
            "place the sequence value on tokens explicitly: `at_end(x)` (last token) or `spread(x)` (every token)".into()
        }
        (Level::Token, Level::Seq) => "reduce over tokens explicitly: `sum_tokens(x)` or `mean_tokens(x)`".into(),
        (Level::Step, Level::Token) => "map steps to tokens: `to_tokens(x, steps)` or `at_step_ends(x, steps)`".into(),
        (Level::Token, Level::Step) => "per-step values come from `vine_values` or `step_advantage`".into(),
        (Level::Seq, Level::Step) | (Level::Step, Level::Seq) => {
            "steps and sequences do not convert implicitly; `step_advantage(reward, values)` combines them".into()
        }
        (_, Level::Scalar) => "reduce it explicitly, e.g. `token_mean(x)` or `seq_mean(x)`".into(),
        _ => format!("convert the {from} value to {to} with an explicit block"),
    }
}

pub(super) fn loss_help(level: Level) -> &'static str {
    match level {
        Level::Token => {
            "aggregate it explicitly: `token_mean(x)`, `seq_mean_token_mean(x)` or `seq_mean_token_sum(x)`"
        }
        Level::Seq => "aggregate it explicitly: `seq_mean(x)`",
        Level::Step => "map steps to tokens (`to_tokens`) and aggregate them (`token_mean`)",
        Level::Scalar => "",
    }
}

/// Whether a resolved parameter is `value`.
pub(super) fn param_is(resolved: &[Resolved], name: &str, value: &str) -> bool {
    matches!(params::get(resolved, name), Some(Value::Str(s)) if s == value)
}
