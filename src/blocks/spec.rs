//! What a block is, as data: inputs with levels and gradient expectations, parameters with types,
//! defaults and ranges, and the output. The checker, `rlx blocks` and the executor all read this.

// Levels are what block parameters and values are typed by; they live in the leaf `param`.
pub use super::param::Level;

/// Which levels a tensor input accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelRule {
    Exact(Level),
    /// The block's level variable `L`: every `Generic` input shares one level (scalars fit any).
    Generic,
    Any,
}

/// What gradient an input expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradRule {
    /// Gradient may or may not flow.
    Any,
    /// An advantage, reward or target: gradient flowing in here is a leak (lint
    /// `advantage-carries-gradient`).
    Detached,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Tensor(LevelRule, GradRule),
    /// A response-like text: `response`, `demonstration`, `chosen`, a rewrite, …
    Text,
    /// A segmentation of a text into reasoning steps (from `split_steps`).
    Steps,
    /// A reward function: a reward model or a data set's verifier, such as `arith.correct`.
    Scorer,
}

#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub name: &'static str,
    pub kind: InputKind,
    pub doc: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamTy {
    Float,
    Int,
    Bool,
    Str,
    Choice(&'static [&'static str]),
    /// A number, or `none` to turn the feature off.
    OptFloat,
}

impl ParamTy {
    pub fn describe(self) -> String {
        match self {
            ParamTy::Float => "a number".into(),
            ParamTy::Int => "an integer".into(),
            ParamTy::Bool => "`true` or `false`".into(),
            ParamTy::Str => "a string".into(),
            ParamTy::OptFloat => "a number or `none`".into(),
            ParamTy::Choice(cs) => {
                let names: Vec<String> = cs.iter().map(|c| format!("`{c}`")).collect();
                format!("one of {}", names.join(", "))
            }
        }
    }
}

/// A parameter's default. Every default is documented and printed by `rlx graph --resolved`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultRule {
    /// The parameter must be given.
    Required,
    Num(f64),
    Bool(bool),
    Str(&'static str),
    /// `none`: the feature is off (e.g. no dual clip).
    Off,
    /// The value of another parameter of the same call (e.g. `eps_high` defaults to `eps`).
    SameAs(&'static str),
    /// A sampling setting of the stage (e.g. Dr.GRPO's constant is `max_tokens`).
    FromSampling(&'static str),
}

/// The valid values of a numeric parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    Any,
    /// `> 0`.
    Positive,
    /// `≥ 0`.
    NonNegative,
    /// `< 0`.
    Negative,
    /// `[0, 1]`, a probability.
    Probability,
    /// `(0, 1)`, e.g. a clip epsilon.
    OpenUnit,
    /// `(0, 1]`, e.g. top-p.
    UnitExclusiveZero,
    /// `> x`.
    Above(f64),
    /// `≥ 1`, for integer counts, at most a billion (beyond, casts to machine integers
    /// saturate and a setting is a typo, not a plan).
    Count,
    /// `1 ≤ v ≤ max`: counts whose size bounds memory (batch sizes, samples per prompt).
    CountAtMost(f64),
}

/// The largest `Range::Count`.
pub const MAX_COUNT: f64 = 1e9;

impl Range {
    pub fn contains(self, v: f64) -> bool {
        match self {
            Range::Any => true,
            Range::Positive => v > 0.0,
            Range::NonNegative => v >= 0.0,
            Range::Negative => v < 0.0,
            Range::Probability => (0.0..=1.0).contains(&v),
            Range::OpenUnit => v > 0.0 && v < 1.0,
            Range::UnitExclusiveZero => v > 0.0 && v <= 1.0,
            Range::Above(x) => v > x,
            Range::Count => (1.0..=MAX_COUNT).contains(&v),
            Range::CountAtMost(max) => (1.0..=max).contains(&v),
        }
    }

    /// How the range reads in a diagnostic or in `rlx blocks`.
    pub fn describe(self) -> String {
        match self {
            Range::Any => "any value".into(),
            Range::Positive => "> 0".into(),
            Range::NonNegative => "≥ 0".into(),
            Range::Negative => "< 0".into(),
            Range::Probability => "in [0, 1]".into(),
            Range::OpenUnit => "in (0, 1)".into(),
            Range::UnitExclusiveZero => "in (0, 1]".into(),
            Range::Above(x) => format!("> {x}"),
            Range::Count => "an integer in [1, 1e9]".into(),
            Range::CountAtMost(max) => format!("an integer in [1, {}]", format_number(max)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamTy,
    pub default: DefaultRule,
    pub range: Range,
    pub doc: &'static str,
}

/// The level of a block's tensor output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Tensor(Level),
    /// The unified level of the `Generic` inputs.
    Generic,
    Steps,
}

/// Whether the output carries gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputGrad {
    /// If any tensor input carries gradient.
    Propagate,
    /// Never (e.g. `stopgrad`, `count_nonzero`).
    Never,
}

/// Where a block sits in an objective; used by lints and by `rlx blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Advantage,
    Steps,
    Shaping,
    Loss,
    Preference,
    Aggregate,
    Maths,
}

impl Family {
    pub fn title(self) -> &'static str {
        match self {
            Family::Advantage => "advantages and returns",
            Family::Steps => "reasoning steps",
            Family::Shaping => "reward shaping",
            Family::Loss => "policy and value losses",
            Family::Preference => "preference losses",
            Family::Aggregate => "aggregation",
            Family::Maths => "maths",
        }
    }
}

/// Something the runtime must produce because this block is in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    None,
    /// Extra rollouts from every step start; the count is the named integer parameter.
    StepRollouts {
        count_param: &'static str,
    },
    /// Samples of one prompt form groups; the block is meaningless with one sample per prompt.
    Groups,
    /// A preference data set (chosen and rejected responses).
    Pairs,
}

/// A check across parameters: given a lookup of numeric values, the message of a violation.
pub type Validate = fn(&dyn Fn(&str) -> Option<f64>) -> Option<String>;

/// Everything about a block, in one place.
#[derive(Debug)]
pub struct BlockSpec {
    pub name: &'static str,
    /// Lowercase, no final period.
    pub summary: &'static str,
    /// The paper or system it comes from.
    pub source: &'static str,
    pub family: Family,
    /// The formula, in one or two lines.
    pub formula: &'static str,
    pub inputs: &'static [InputSpec],
    pub params: &'static [ParamSpec],
    pub output: OutputKind,
    pub grad: OutputGrad,
    /// The output's tokens follow the text of this input (e.g. `edit_weights` follows the rewrite).
    pub axis_from: Option<usize>,
    pub demand: Demand,
    /// Restrains the policy (KL, calibration, a trust region or imitation): silences the
    /// `unregularized-reward` lint.
    pub regularizer: bool,
    /// Checks across parameters (e.g. `lo ≤ hi`); returns the message of a violation.
    pub validate: Option<Validate>,
    /// The computation on candle tensors.
    pub forward: Option<super::ctx::Forward>,
    /// What a peer's user actually gets where it differs from this block's defaults or
    /// conventions (shown by `rlx blocks NAME`), so no default surprises silently.
    pub peers: &'static [PeerNote],
}

/// One peer's effective setting for a block: the peer (with its version) and what differs.
#[derive(Debug)]
pub struct PeerNote {
    pub peer: &'static str,
    pub note: &'static str,
}

/// A [`PeerNote`].
pub const fn peer(peer: &'static str, note: &'static str) -> PeerNote {
    PeerNote { peer, note }
}

impl BlockSpec {
    pub fn input(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name == name)
    }

    pub fn param(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }

    /// `name(inputs; params) -> output`, as printed by `rlx blocks`.
    pub fn signature(&self) -> String {
        let inputs: Vec<String> =
            self.inputs.iter().map(|i| format!("{}: {}", i.name, input_kind(i.kind))).collect();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| format!("{} = {}", p.name, default_text(p.default)))
            .collect();
        let out = match self.output {
            OutputKind::Tensor(l) => l.name().to_string(),
            OutputKind::Generic => "L".into(),
            OutputKind::Steps => "steps".into(),
        };
        let params =
            if params.is_empty() { String::new() } else { format!("; {}", params.join(", ")) };
        format!("{}({}{}) -> {}", self.name, inputs.join(", "), params, out)
    }
}

pub fn input_kind(kind: InputKind) -> String {
    match kind {
        InputKind::Tensor(rule, grad) => {
            let l = match rule {
                LevelRule::Exact(l) => l.name(),
                LevelRule::Generic => "L",
                LevelRule::Any => "any",
            };
            if grad == GradRule::Detached { format!("detached {l}") } else { l.to_string() }
        }
        InputKind::Text => "text".into(),
        InputKind::Steps => "steps".into(),
        InputKind::Scorer => "scorer".into(),
    }
}

pub fn default_text(d: DefaultRule) -> String {
    match d {
        DefaultRule::Required => "required".into(),
        DefaultRule::Num(v) => format_number(v),
        DefaultRule::Bool(b) => b.to_string(),
        DefaultRule::Str(s) => s.to_string(),
        DefaultRule::Off => "none".into(),
        DefaultRule::SameAs(p) => format!("<{p}>"),
        DefaultRule::FromSampling(s) => format!("<sample.{s}>"),
    }
}

// Where a parameter is shown, so is a number; the rendering lives with the values.
pub use super::param::format_number;

// Short constructors keep the block files readable.

pub const fn tensor(name: &'static str, level: Level, doc: &'static str) -> InputSpec {
    InputSpec { name, kind: InputKind::Tensor(LevelRule::Exact(level), GradRule::Any), doc }
}

pub const fn detached(name: &'static str, level: Level, doc: &'static str) -> InputSpec {
    InputSpec { name, kind: InputKind::Tensor(LevelRule::Exact(level), GradRule::Detached), doc }
}

pub const fn generic(name: &'static str, doc: &'static str) -> InputSpec {
    InputSpec { name, kind: InputKind::Tensor(LevelRule::Generic, GradRule::Any), doc }
}

pub const fn text(name: &'static str, doc: &'static str) -> InputSpec {
    InputSpec { name, kind: InputKind::Text, doc }
}

pub const fn num(name: &'static str, default: f64, range: Range, doc: &'static str) -> ParamSpec {
    ParamSpec { name, ty: ParamTy::Float, default: DefaultRule::Num(default), range, doc }
}

/// An integer count at most `max`.
pub const fn int_at_most(
    name: &'static str,
    default: f64,
    max: f64,
    doc: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        ty: ParamTy::Int,
        default: DefaultRule::Num(default),
        range: Range::CountAtMost(max),
        doc,
    }
}

pub const fn int(name: &'static str, default: f64, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty: ParamTy::Int,
        default: DefaultRule::Num(default),
        range: Range::Count,
        doc,
    }
}

pub const fn choice(
    name: &'static str,
    options: &'static [&'static str],
    default: &'static str,
    doc: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        ty: ParamTy::Choice(options),
        default: DefaultRule::Str(default),
        range: Range::Any,
        doc,
    }
}

/// The `mask` parameter of reductions: `response` (default) or `none`, which also averages
/// padding (lint `unmasked-loss`).
pub const MASK: ParamSpec = choice(
    "mask",
    &["response", "none"],
    "response",
    "`none` counts padding positions (as zeros) in the denominator, as some peers do",
);

/// A block with the common fields filled; each block file overrides what it needs.
pub const BASE: BlockSpec = BlockSpec {
    name: "",
    summary: "",
    source: "",
    family: Family::Maths,
    formula: "",
    inputs: &[],
    params: &[],
    output: OutputKind::Generic,
    grad: OutputGrad::Propagate,
    axis_from: None,
    demand: Demand::None,
    regularizer: false,
    validate: None,
    forward: None,
    peers: &[],
};
