//! Nodes of a stage's graph as Python statements over `rlx_blocks` (the torch form of each
//! block): one statement per block use, named after its `let` where it has one.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use crate::check::params::Value;
use crate::check::{Checked, CheckedStage};
use crate::diag::{Diagnostic, Span};
use crate::ir::graph::*;

/// One generated statement: the recipe text it comes from, and the Python.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub span: Span,
    pub code: String,
}

/// A reward component the reward function computes (a verifier of a data set).
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// The batch name `rlx eval` reads, e.g. `arith.correct(response)`.
    pub name: String,
    pub data: String,
    pub member: String,
}

/// The blocks with a torch form in `rlx_blocks.py`: (name, reads the mask, reads the groups).
pub const BLOCKS: &[(&str, bool, bool)] = &[
    ("abs", false, false),
    ("add", false, false),
    ("at_end", true, false),
    ("cispo", false, false),
    ("clamp", false, false),
    ("div", false, false),
    ("exp", false, false),
    ("gpg", false, true),
    ("group_zscore", false, true),
    ("grpo_passk", false, true),
    ("gspo", true, false),
    ("kl", false, false),
    ("log", false, false),
    ("max", false, false),
    ("mean_tokens", true, false),
    ("min", false, false),
    ("mul", false, false),
    ("neg", false, false),
    ("opo", true, true),
    ("pg", false, false),
    ("pow", false, false),
    ("ppo_clip", false, false),
    ("reinforce_pp", true, false),
    ("reinforce_pp_baseline", true, true),
    ("returns", true, false),
    ("reward_clip", false, false),
    ("rloo", false, true),
    ("sapo", false, false),
    ("spread", true, false),
    ("sqrt", false, false),
    ("square", false, false),
    ("stopgrad", false, false),
    ("sub", false, false),
    ("sum_tokens", true, false),
    ("where", false, false),
    ("whiten", true, false),
];

/// Names the generated functions use for their own arguments and helpers.
const RESERVED: &[&str] = &[
    "B",
    "torch",
    "mask",
    "group",
    "reward",
    "log_prob",
    "old_log_prob",
    "advantages",
    "config",
    "index",
    "token_level_rewards",
    "response_mask",
    "loss_agg_mode",
    "loss_mat",
    "pg_loss",
    "c",
    "metrics",
    "returns",
    "kwargs",
    "rollout_is_weights",
];

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

pub struct Emitter<'a> {
    checked: &'a Checked,
    stage: &'a StageIr,
    cs: &'a CheckedStage,
    /// The trained model whose `logp` is verl's `log_prob` (and `old.logp` its `old_log_prob`).
    pub leaf_policy_logp: Option<String>,
    leaves: HashMap<NodeIndex, String>,
    memo: HashMap<NodeIndex, String>,
    used: HashSet<String>,
    pub lines: Vec<Line>,
    /// Signals the function does not receive.
    pub stray_signals: Vec<NodeIndex>,
    pub uses_groups: bool,
    /// Inline expressions over reward components `c[NAME]` instead of statements.
    pub score_mode: bool,
    pub components: Vec<Component>,
    pub model_scores: Vec<(String, Span)>,
    pub unverifiable: Vec<(String, Span)>,
}

/// `c · x` as Python, without `1.0 *`.
pub fn scaled(c: f64, x: &str) -> String {
    if c == 1.0 {
        x.to_string()
    } else if c == -1.0 {
        format!("-{x}")
    } else {
        format!("{} * {x}", float(c))
    }
}

/// A float literal Python reads back exactly.
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "float('nan')".into()
    } else if v.is_infinite() {
        if v > 0.0 { "float('inf')".into() } else { "-float('inf')".into() }
    } else {
        format!("{v:?}")
    }
}

fn literal(v: &Value) -> String {
    match v {
        Value::Num(x) => float(*x),
        Value::Str(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Bool(b) => {
            if *b {
                "True".into()
            } else {
                "False".into()
            }
        }
        Value::Off => "None".into(),
    }
}

impl<'a> Emitter<'a> {
    pub fn new(checked: &'a Checked, stage: &'a StageIr, cs: &'a CheckedStage) -> Emitter<'a> {
        Emitter {
            checked,
            stage,
            cs,
            leaf_policy_logp: None,
            leaves: HashMap::new(),
            memo: HashMap::new(),
            used: HashSet::new(),
            lines: vec![],
            stray_signals: vec![],
            uses_groups: false,
            score_mode: false,
            components: vec![],
            model_scores: vec![],
            unverifiable: vec![],
        }
    }

    /// `n` is given to the function under this name.
    pub fn leaf(&mut self, n: NodeIndex, name: &str) {
        self.leaves.insert(n, name.to_string());
        self.used.insert(name.to_string());
    }

    /// A statement `NAME = expr` for the text at `span`; returns NAME.
    pub fn bind(&mut self, span: Span, expr: String) -> String {
        let name = self.fresh("loss_mat");
        self.lines.push(Line { span, code: format!("{name} = {expr}") });
        name
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut base: String = base
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect();
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
            base = format!("v_{base}");
        }
        if RESERVED.contains(&base.as_str()) && base != "loss_mat"
            || KEYWORDS.contains(&base.as_str())
        {
            base.push('_');
        }
        let mut name = base.clone();
        let mut k = 2;
        while !self.used.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// The Python expression of node `n`: a name bound by a statement, a leaf, or a literal.
    pub fn emit(&mut self, n: NodeIndex, diags: &mut Vec<Diagnostic>) -> String {
        if let Some(name) = self.leaves.get(&n) {
            return name.clone();
        }
        if let Some(name) = self.memo.get(&n) {
            return name.clone();
        }
        let g = &self.stage.graph;
        let node = &g[n];
        let text = || match inputs(g, n).first().map(|t| &g[*t].op) {
            Some(Op::Text(t)) => t.to_string(),
            _ => String::new(),
        };
        let expr = match &node.op {
            Op::Const(v) => return float(*v),
            Op::Signal { model, signal: Signal::Logp } if text() == "response" => {
                match (model, &self.leaf_policy_logp) {
                    (ModelRef::Named(m), Some(p)) if m == p => return "log_prob".into(),
                    (ModelRef::Old, Some(_)) => return "old_log_prob".into(),
                    _ => {
                        self.stray_signals.push(n);
                        return "None".into();
                    }
                }
            }
            Op::Signal { .. } | Op::Text(_) | Op::Rewrite { .. } | Op::Scorer(_) => {
                self.stray_signals.push(n);
                return "None".into();
            }
            Op::Score(scorer) => {
                if !self.score_mode || text() != "response" {
                    self.stray_signals.push(n);
                    return "None".into();
                }
                match scorer {
                    ScorerRef::Model(m) => {
                        self.model_scores.push((m.clone(), node.span));
                        return "None".into();
                    }
                    ScorerRef::Verifier { data, member } => {
                        let name = format!("{}(response)", scorer.display());
                        if !self.verifier_ported(data, member) {
                            self.unverifiable.push((scorer.display(), node.span));
                        }
                        if !self.components.iter().any(|c| c.name == name) {
                            self.components.push(Component {
                                name: name.clone(),
                                data: data.clone(),
                                member: member.clone(),
                            });
                        }
                        return format!("c[{}]", serde_json::to_string(&name).unwrap_or_default());
                    }
                    ScorerRef::External { .. } => {
                        self.unverifiable.push((scorer.display(), node.span));
                        return "None".into();
                    }
                }
            }
            Op::Block { spec, .. } => {
                let args: Vec<String> =
                    inputs(g, n).into_iter().map(|i| self.emit(i, diags)).collect();
                let Some(&(_, reads_mask, reads_groups)) =
                    BLOCKS.iter().find(|(b, _, _)| *b == spec.name)
                else {
                    diags.push(
                        Diagnostic::error(
                            "verl-unsupported-block",
                            format!("`{}` has no verl export yet", spec.name),
                        )
                        .primary(node.span, "no torch form in the export")
                        .help(format!(
                            "the exported blocks are: {}",
                            BLOCKS.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                        )),
                    );
                    return "None".into();
                };
                if let Some(infix) = self.infix(spec.name, &args) {
                    infix
                } else {
                    self.call(n, spec.name, args, reads_mask, reads_groups, diags)
                }
            }
        };
        if self.score_mode {
            self.memo.insert(n, format!("({expr})"));
            return format!("({expr})");
        }
        // Its `let` name, else its block's (`ppo_clip`, `mul`): fresh() makes it unique.
        let base = node.names.last().cloned().unwrap_or_else(|| node.op.label());
        let name = self.fresh(&base);
        self.lines.push(Line { span: node.span, code: format!("{name} = {expr}") });
        self.memo.insert(n, name.clone());
        name
    }

    fn infix(&self, block: &str, args: &[String]) -> Option<String> {
        let op = match block {
            "add" => "+",
            "sub" => "-",
            "mul" => "*",
            "div" => "/",
            "neg" => return Some(format!("-{}", args[0])),
            _ => return None,
        };
        Some(format!("{} {op} {}", args[0], args[1]))
    }

    fn call(
        &mut self,
        n: NodeIndex,
        block: &str,
        mut args: Vec<String>,
        reads_mask: bool,
        reads_groups: bool,
        diags: &mut Vec<Diagnostic>,
    ) -> String {
        let params = self.cs.params.get(&n).cloned().unwrap_or_default();
        for p in &params {
            let mut value = p.value.clone();
            let key = match p.name {
                // The block's `mask` setting is a choice; the tensor is `mask`.
                "mask" => {
                    args.push(format!(
                        "masked={}",
                        if value.display() == "response" { "True" } else { "False" }
                    ));
                    continue;
                }
                "scope" if block == "whiten" && value.display() == "minibatch" => {
                    // verl computes advantages on the whole batch at once.
                    let get = |k| crate::check::params::get_num(&self.cs.optim, k);
                    if get("minibatch") == get("batch") {
                        value = Value::Str("batch".into());
                    } else {
                        diags.push(
                            Diagnostic::error(
                                "verl-advantage",
                                "verl computes advantages once over the whole batch; `scope = minibatch` with minibatches smaller than the batch has no counterpart",
                            )
                            .primary(p.span.unwrap_or(self.stage.graph[n].span), "minibatch statistics")
                            .help("whiten over the batch, or set `minibatch` equal to `batch`"),
                        );
                    }
                    "scope"
                }
                name => name,
            };
            if key == "scope" && value.display() == "group" {
                self.uses_groups = true;
                args.push("group=group".into());
            }
            args.push(format!("{key}={}", literal(&value)));
        }
        if reads_mask {
            args.push("mask=mask".into());
        }
        if reads_groups {
            self.uses_groups = true;
            args.push("group=group".into());
        }
        format!("B.{block}({})", args.join(", "))
    }

    /// Whether `reward.py` has this verifier in Python.
    fn verifier_ported(&self, data: &str, member: &str) -> bool {
        let Some(decl) = self.checked.program.data_decl(data) else { return false };
        member == "correct" && matches!(decl.spec.name, "arith" | "jsonl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back_exactly_in_python() {
        assert_eq!(float(0.2), "0.2");
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(1e-6), "1e-6");
        assert_eq!(float(-3.0), "-3.0");
        assert_eq!(float(f64::INFINITY), "float('inf')");
        assert_eq!(float(f64::NAN), "float('nan')");
        assert_eq!(scaled(1.0, "x"), "x");
        assert_eq!(scaled(-1.0, "x"), "-x");
        assert_eq!(scaled(0.04, "kl"), "0.04 * kl");
    }

    #[test]
    fn every_exported_block_has_a_torch_function_and_exists_in_rlx() {
        let py = include_str!("rlx_blocks.py");
        for (name, _, _) in BLOCKS {
            assert!(py.contains(&format!("\ndef {name}(")), "rlx_blocks.py has no `{name}`");
            assert!(crate::blocks::ALL.iter().any(|b| b.name == *name), "no rlx block `{name}`");
        }
    }

    #[test]
    fn generated_names_avoid_arguments_keywords_and_each_other() {
        let checked = crate::check::Checked {
            program: Default::default(),
            stages: vec![],
            decl_params: Default::default(),
        };
        let stage = crate::ir::graph::StageIr {
            name: crate::syntax::ast::Ident { name: "rl".into(), span: Span::default() },
            span: Span::default(),
            train: vec![],
            source: None,
            source_keyword: None,
            sample: None,
            optim: None,
            graph: Default::default(),
            loss: None,
            loss_span: Span::default(),
            bindings: vec![],
        };
        let cs = CheckedStage::default();
        let mut em = Emitter::new(&checked, &stage, &cs);
        assert_eq!(em.fresh("adv"), "adv");
        assert_eq!(em.fresh("adv"), "adv_2");
        assert_eq!(em.fresh("mask"), "mask_");
        assert_eq!(em.fresh("lambda"), "lambda_");
        assert_eq!(em.fresh("2x"), "v_2x");
        assert_eq!(em.fresh("loss_mat"), "loss_mat");
    }
}
