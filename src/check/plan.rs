//! The plan: what the runtime must compute for a stage, derived from what its loss reads.
//! Sources are demanded, not configured: no `ref.logp` in the loss's graph, no reference model.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::Direction;

use super::params::{self, Value};
use super::{CheckedStage, StageCx};
use crate::blocks::spec::{Demand, format_number};
use crate::ir::graph::*;

/// Ordered facts about a stage's runtime work, as `(topic, detail)` pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub items: Vec<(String, String)>,
}

impl Plan {
    pub fn get(&self, topic: &str) -> Option<&str> {
        self.items.iter().find(|(t, _)| t == topic).map(|(_, d)| d.as_str())
    }
}

pub(super) fn plan(cx: &StageCx, out: &CheckedStage) -> Plan {
    let stage = cx.stage;
    let g = &stage.graph;
    let mut items = Vec::new();
    let trains: Vec<String> = stage
        .train
        .iter()
        .map(|t| {
            if t.value_head {
                format!("value head of {}", t.model.name)
            } else {
                t.model.name.clone()
            }
        })
        .collect();
    items.push(("trains".to_string(), trains.join(", ")));
    if let Some((kind, d)) = &stage.source {
        items.push(("data".into(), format!("{} {}.{}", kind.keyword(), d.data, d.member)));
    }
    if !out.sample.is_empty() {
        let get = |k: &str| params::get(&out.sample, k).map(Value::display).unwrap_or_default();
        let mut s = format!(
            "{} per prompt, up to {} tokens, temperature {}, top-p {}",
            get("n"),
            get("max_tokens"),
            get("temperature"),
            get("top_p")
        );
        if get("from") != "old" {
            s.push_str(&format!(", from {}", get("from")));
        }
        items.push(("sampling".into(), s));
    }

    // Only what the loss reads is computed.
    let mut demanded = BTreeSet::new();
    if let Some(loss) = stage.loss {
        let mut stack = vec![loss];
        while let Some(n) = stack.pop() {
            if demanded.insert(n) {
                stack.extend(g.neighbors_directed(n, Direction::Incoming));
            }
        }
    }
    let mut forward: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut scorers = BTreeSet::new();
    let mut texts = BTreeSet::new();
    let mut rollouts = None;
    let mut groups = false;
    for &n in &demanded {
        match &g[n].op {
            Op::Signal { model, signal } => {
                let who = match model {
                    ModelRef::Named(m) => m.clone(),
                    ModelRef::Old => {
                        format!("{} at sampling time (stored)", stage.trained().unwrap_or("policy"))
                    }
                    ModelRef::Ref => {
                        format!("ref (frozen copy of {})", stage.trained().unwrap_or("policy"))
                    }
                    ModelRef::Rollout => "the sampler (recorded while sampling)".into(),
                };
                let grad = out.types.get(&n).is_some_and(|t| t.has_grad());
                let text =
                    match g.neighbors_directed(n, Direction::Incoming).next().map(|t| &g[t].op) {
                        Some(Op::Text(t)) if *t != "response" && *t != "target" => format!("({t})"),
                        _ => String::new(),
                    };
                let what =
                    format!("{}{text}{}", signal.name(), if grad { " with gradient" } else { "" });
                forward.entry(who).or_default().insert(what);
            }
            Op::Rewrite { model } => {
                forward.entry(model.clone()).or_default().insert("rewrite (generation)".into());
            }
            Op::Score(s) | Op::Scorer(s) => {
                scorers.insert(match s {
                    ScorerRef::Model(m) => format!("{m} (reward model)"),
                    ScorerRef::Verifier { .. } => format!("{} (verifier)", s.display()),
                    ScorerRef::External { .. } => format!("{} (external reward)", s.display()),
                });
            }
            Op::Text(t) => {
                texts.insert(t.to_string());
            }
            Op::Block { spec, .. } => match spec.demand {
                Demand::StepRollouts { count_param } => {
                    rollouts = out.params.get(&n).and_then(|p| params::get_num(p, count_param));
                }
                Demand::Groups => groups = true,
                _ => {}
            },
            Op::Const(_) => {}
        }
    }
    for (model, what) in forward {
        items.push((format!("forward {model}"), what.into_iter().collect::<Vec<_>>().join(", ")));
    }
    if !scorers.is_empty() {
        items.push(("rewards".into(), scorers.into_iter().collect::<Vec<_>>().join(", ")));
    }
    if !texts.is_empty() {
        items.push(("texts".into(), texts.into_iter().collect::<Vec<_>>().join(", ")));
    }
    if let Some(k) = rollouts {
        items.push((
            "extra rollouts".into(),
            format!("{} per step start, forked from the prefix's KV cache", format_number(k)),
        ));
    }
    if groups {
        items.push(("groups".into(), "samples of one prompt are normalised together".into()));
    }
    let opt = |k: &str| params::get(&out.optim, k).map(Value::display).unwrap_or_default();
    items.push((
        "optimiser".into(),
        format!(
            "AdamW lr {}, {} steps, batch {}, minibatch {}, {} epoch(s), grad clip {}",
            opt("lr"),
            opt("steps"),
            opt("batch"),
            opt("minibatch"),
            opt("epochs"),
            opt("clip_grad")
        ),
    ));
    Plan { items }
}
