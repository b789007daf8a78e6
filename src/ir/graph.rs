//! The lowered recipe: declarations, and one dataflow graph per stage. Every node keeps its span.

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;

use super::builtins::{DataSetSpec, MemberKind};
use crate::blocks::spec::BlockSpec;
use crate::diag::Span;
use crate::syntax::ast::{Ident, SourceKind};

/// A stage's dataflow graph.
pub type Graph = StableDiGraph<Node, Wire>;

/// An edge: which input of the target it feeds, and the argument that wrote it.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    pub port: usize,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    /// The first place in the recipe that computes this node (identical expressions share a node).
    pub span: Span,
    /// `let` names bound to this node, in order of appearance.
    pub names: Vec<String>,
}

/// The model a signal is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelRef {
    Named(String),
    /// The trained model as it was when the batch was sampled.
    Old,
    /// A frozen copy of the trained model as the stage starts.
    Ref,
    /// The sampler itself: the log-probabilities it computed while generating the response
    /// (an inference engine's, where they differ from the trainer's: bf16, stale weights).
    Rollout,
}

impl ModelRef {
    /// The model a reserved name denotes: `old`, `ref` or `rollout`.
    pub fn pseudo(name: &str) -> Option<ModelRef> {
        match name {
            "old" => Some(ModelRef::Old),
            "ref" => Some(ModelRef::Ref),
            "rollout" => Some(ModelRef::Rollout),
            _ => None,
        }
    }

    /// The members a recipe may read from this model (`policy.logp`, `grm.rewrite(...)`).
    pub fn members(&self) -> &'static [&'static str] {
        match self {
            ModelRef::Named(_) => &["logp", "values", "entropy", "sum_p2", "keep_prob", "rewrite"],
            ModelRef::Old => &["logp", "values", "entropy", "sum_p2"],
            ModelRef::Ref => &["logp", "entropy", "sum_p2"],
            ModelRef::Rollout => &["logp"],
        }
    }

    pub fn display(&self) -> &str {
        match self {
            ModelRef::Named(n) => n,
            ModelRef::Old => "old",
            ModelRef::Ref => "ref",
            ModelRef::Rollout => "rollout",
        }
    }
}

/// A reward function.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScorerRef {
    /// A reward model declared with `reward_model(...)`.
    Model(String),
    /// A data set's verifier, e.g. `arith.correct`.
    Verifier { data: String, member: String },
    /// A reward computed outside rlx (`reward r = command(...)` or `http(...)`): `part` names
    /// one of several named scores it replies with (`r.format(response)`).
    External { reward: String, part: Option<String> },
}

impl ScorerRef {
    pub fn display(&self) -> String {
        match self {
            ScorerRef::Model(m) => m.clone(),
            ScorerRef::Verifier { data, member } => format!("{data}.{member}"),
            ScorerRef::External { reward, part: None } => reward.clone(),
            ScorerRef::External { reward, part: Some(p) } => format!("{reward}.{p}"),
        }
    }
}

/// The name of a text a stage reads: one of its own (`response`, `chosen`, `demonstration`, …)
/// or a model's rewrite of another text (`grm.rewrite(response)`, nested as deep as written).
/// Batch inputs are named by its display (`mask(grm.rewrite(response))`); this type is the one
/// place that writes that form and reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TextName {
    Own(String),
    Rewrite { model: String, of: Box<TextName> },
}

impl TextName {
    pub fn rewrite(model: &str, of: TextName) -> TextName {
        TextName::Rewrite { model: model.to_string(), of: Box::new(of) }
    }

    /// Reads a name back from its display.
    pub fn parse(name: &str) -> TextName {
        let rewrite = name.strip_suffix(')').and_then(|rest| rest.split_once(".rewrite("));
        match rewrite {
            Some((model, of))
                if !model.is_empty() && model.chars().all(|c| c.is_alphanumeric() || c == '_') =>
            {
                TextName::rewrite(model, TextName::parse(of))
            }
            _ => TextName::Own(name.to_string()),
        }
    }
}

impl std::fmt::Display for TextName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextName::Own(name) => f.write_str(name),
            TextName::Rewrite { model, of } => write!(f, "{model}.rewrite({of})"),
        }
    }
}

/// A per-token signal of a language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Log-probability of each token.
    Logp,
    /// Value-head output at each token.
    Values,
    /// Entropy of the next-token distribution at each token.
    Entropy,
    /// Probability that the model, asked to rewrite the text, keeps each token (RLMEC).
    KeepProb,
    /// Σ_v π(v)² of the next-token distribution at each token (the optimal token baseline).
    SumP2,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Logp => "logp",
            Signal::Values => "values",
            Signal::Entropy => "entropy",
            Signal::KeepProb => "keep_prob",
            Signal::SumP2 => "sum_p2",
        }
    }
}

/// A parameter given at a call site, before the checker validates it and fills defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamArg {
    pub param: usize,
    pub value: Const,
    pub span: Span,
}

/// A compile-time value.
#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    Num(f64),
    Str(String),
    Bool(bool),
    /// A bare word: a choice such as `k3`, `none`, or a model name.
    Word(String),
    /// Not a constant expression.
    Dynamic,
}

impl Const {
    pub fn display(&self) -> String {
        match self {
            Const::Num(v) => crate::blocks::spec::format_number(*v),
            Const::Str(s) => format!("{s:?}"),
            Const::Bool(b) => b.to_string(),
            Const::Word(w) => w.clone(),
            Const::Dynamic => "<expression>".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Const(f64),
    /// A text of the stage: `response`, `demonstration`, `chosen`, …
    Text(&'static str),
    /// Input 0: a text. Output: the model's rewrite of it.
    Rewrite {
        model: String,
    },
    /// Input 0: a text. Output: the signal at each of its tokens.
    Signal {
        model: ModelRef,
        signal: Signal,
    },
    /// Input 0: a text. Output: one reward per sequence.
    Score(ScorerRef),
    /// A reward function passed to a block (e.g. `vine_values(..., reward = arith.correct)`).
    Scorer(ScorerRef),
    Block {
        spec: &'static BlockSpec,
        params: Vec<ParamArg>,
    },
}

impl Op {
    /// A short name: the block name, or the signal it reads.
    pub fn label(&self) -> String {
        match self {
            Op::Const(v) => crate::blocks::spec::format_number(*v),
            Op::Text(t) => (*t).to_string(),
            Op::Rewrite { model } => format!("{model}.rewrite"),
            Op::Signal { model, signal } => format!("{}.{}", model.display(), signal.name()),
            Op::Score(s) => s.display(),
            Op::Scorer(s) => s.display(),
            Op::Block { spec, .. } => spec.name.to_string(),
        }
    }
}

/// The inputs of a node, in position order.
pub fn inputs(graph: &Graph, node: NodeIndex) -> Vec<NodeIndex> {
    wires(graph, node).into_iter().map(|(n, _)| n).collect()
}

/// The inputs of a node with the spans of the arguments that wrote them, in position order.
pub fn wires(graph: &Graph, node: NodeIndex) -> Vec<(NodeIndex, Span)> {
    let mut edges: Vec<(usize, NodeIndex, Span)> = graph
        .edges_directed(node, petgraph::Direction::Incoming)
        .map(|e| (e.weight().port, e.source(), e.weight().span))
        .collect();
    edges.sort_by_key(|(p, _, _)| *p);
    edges.into_iter().map(|(_, n, s)| (n, s)).collect()
}

/// How a model starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInit {
    /// The built-in transformer, optionally warm-started by supervised training on a text set.
    Builtin { warm_start: Option<DataRef> },
    /// A copy of another model as it is before the first stage.
    Copy(Ident),
    /// A reward model (a transformer with a scalar head), untrained until a stage trains it.
    RewardModel,
    /// A reward model read as a language model's answer: a copy of another model's initial
    /// weights, scored `log p(yes) − log p(no)` after a question (`yes_no(MODEL, ...)`).
    YesNo(Ident),
    /// A Hugging Face checkpoint directory (`path` among the params).
    Pretrained,
    /// A Hugging Face `*ForSequenceClassification` checkpoint with one label, a reward model
    /// ready to score (`reward_model(pretrained("DIR", ...))`; `path` among the params).
    PretrainedRewardModel,
}

impl ModelInit {
    /// Read from a Hugging Face checkpoint directory.
    pub fn is_pretrained(&self) -> bool {
        matches!(self, ModelInit::Pretrained | ModelInit::PretrainedRewardModel)
    }
}

#[derive(Debug, Clone)]
pub struct ModelDecl {
    pub name: Ident,
    pub init: ModelInit,
    pub params: Vec<(Ident, Const, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct DataDecl {
    pub name: Ident,
    pub spec: &'static DataSetSpec,
    pub params: Vec<(Ident, Const, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct RewardDecl {
    pub name: Ident,
    pub scorer: ScorerRef,
    /// How an external reward is reached (`command(...)`, `http(...)`).
    pub external: Option<ExternalSpec>,
    pub span: Span,
}

/// An external reward as declared: `command("…")` or `http("…")`, with its timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalSpec {
    pub kind: ExternalKind,
    /// Seconds one batch may take.
    pub timeout_s: f64,
    /// The command line's or URL's string in the recipe.
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExternalKind {
    /// An argument vector; the first word is the program.
    Command(Vec<String>),
    /// An OpenRLHF-style reward server's URL.
    Http(String),
}

impl ExternalSpec {
    pub fn display(&self) -> String {
        match &self.kind {
            ExternalKind::Command(argv) => format!("command `{}`", argv.join(" ")),
            ExternalKind::Http(url) => format!("server {url}"),
        }
    }
}

/// `arith.problems`.
#[derive(Debug, Clone, PartialEq)]
pub struct DataRef {
    pub data: String,
    pub member: String,
    pub kind: MemberKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct TrainTarget {
    pub model: Ident,
    pub value_head: bool,
    pub span: Span,
}

/// `sample { }` or `optim { }` as written.
#[derive(Debug, Clone, Default)]
pub struct SettingsIr {
    pub entries: Vec<SettingIr>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct SettingIr {
    pub key: Ident,
    pub value: Const,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub name: Ident,
    pub node: Option<NodeIndex>,
    pub uses: usize,
    /// The `let` statement's span (for suppression comments).
    pub stmt: Span,
}

#[derive(Debug, Clone)]
pub struct StageIr {
    pub name: Ident,
    pub span: Span,
    pub train: Vec<TrainTarget>,
    pub source: Option<(SourceKind, DataRef)>,
    /// The data keyword as written, even where the data did not resolve.
    pub source_keyword: Option<SourceKind>,
    pub sample: Option<SettingsIr>,
    pub optim: Option<SettingsIr>,
    pub graph: Graph,
    pub loss: Option<NodeIndex>,
    /// The span of the loss expression.
    pub loss_span: Span,
    pub bindings: Vec<Binding>,
}

impl StageIr {
    /// The model this stage trains first, which `old` and `ref` refer to.
    pub fn trained(&self) -> Option<&str> {
        self.train.first().map(|t| t.model.name.as_str())
    }

    pub fn trains(&self, model: &str) -> bool {
        self.train.iter().any(|t| t.model.name == model)
    }

    pub fn has_value_head(&self, model: &str) -> bool {
        self.train.iter().any(|t| t.model.name == model && t.value_head)
    }

    /// The model whose value head `old.values` reads: the trained model's own head, or else
    /// the stage's critic (`train policy, value_head(critic)`: a network of its own).
    pub fn value_owner(&self) -> Option<&str> {
        let trained = self.trained()?;
        if self.has_value_head(trained) {
            return Some(trained);
        }
        self.train.iter().find(|t| t.value_head).map(|t| t.model.name.as_str()).or(Some(trained))
    }

    /// Whether `model` is trained here only as a critic (`value_head(model)` of a model that is
    /// not the trained one).
    pub fn is_critic_only(&self, model: &str) -> bool {
        let mut entries = self.train.iter().filter(|t| t.model.name == model).peekable();
        Some(model) != self.trained() && entries.peek().is_some() && entries.all(|t| t.value_head)
    }

    pub fn source_kind(&self) -> Option<SourceKind> {
        self.source.as_ref().map(|(k, _)| *k)
    }
}

/// A lowered recipe.
#[derive(Debug, Clone, Default)]
pub struct Program {
    pub name: Option<Ident>,
    pub title: Option<String>,
    pub data: Vec<DataDecl>,
    pub models: Vec<ModelDecl>,
    pub rewards: Vec<RewardDecl>,
    pub stages: Vec<StageIr>,
}

impl Program {
    pub fn model(&self, name: &str) -> Option<&ModelDecl> {
        self.models.iter().find(|m| m.name.name == name)
    }

    pub fn data_decl(&self, name: &str) -> Option<&DataDecl> {
        self.data.iter().find(|d| d.name.name == name)
    }

    /// Whether `name` is a reward model (possibly through copies).
    pub fn is_reward_model(&self, name: &str) -> bool {
        let mut seen = 0;
        let mut cur = name;
        while let Some(m) = self.model(cur) {
            match &m.init {
                ModelInit::RewardModel | ModelInit::PretrainedRewardModel => return true,
                ModelInit::YesNo(_) => return true,
                ModelInit::Copy(of) if seen < self.models.len() => {
                    cur = &of.name;
                    seen += 1;
                }
                _ => return false,
            }
        }
        false
    }

    /// The `yes_no(...)` declaration `name` is (possibly through copies): whose head scores it.
    pub fn yes_no_decl(&self, name: &str) -> Option<&ModelDecl> {
        let mut cur = name;
        for _ in 0..=self.models.len() {
            let m = self.model(cur)?;
            match &m.init {
                ModelInit::YesNo(_) => return Some(m),
                ModelInit::Copy(of) => cur = &of.name,
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::TextName;

    #[test]
    fn text_names_round_trip_nested_rewrites_included() {
        for name in
            ["response", "chosen", "grm.rewrite(response)", "a.rewrite(b.rewrite(response))"]
        {
            assert_eq!(TextName::parse(name).to_string(), name);
        }
        // The rewrite of a rewrite: the inner name keeps its own closing parenthesis (reading
        // it back by trimming every trailing `)` lost it).
        let nested = TextName::parse("a.rewrite(b.rewrite(response))");
        let TextName::Rewrite { model, of } = &nested else { panic!("{nested:?}") };
        assert_eq!((model.as_str(), of.to_string().as_str()), ("a", "b.rewrite(response)"));
        assert_eq!(TextName::parse("mask(response)"), TextName::Own("mask(response)".into()));
    }
}
