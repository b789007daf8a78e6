//! The checker: settings and parameters, levels and gradient flow, stage references, and lints.
//! It accumulates every diagnostic it finds; nothing here creates a tensor.

mod files;
pub mod lints;
pub mod params;
pub mod plan;
mod typing;

use std::collections::HashMap;

use petgraph::stable_graph::NodeIndex;

use crate::blocks::spec::Level;
use crate::diag::Diagnostic;
use crate::ir::builtins::{self, MemberKind};
use crate::ir::graph::*;
use crate::syntax::ast::SourceKind;
use params::Resolved;

/// The type of a node's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Tensor {
        level: Level,
        /// For token and step values: the text whose tokens they follow.
        text: Option<String>,
        /// Whether gradient flows back from this value to trained parameters.
        grad: bool,
        /// The signal the gradient comes from.
        origin: Option<NodeIndex>,
    },
    Text(String),
    Steps(String),
    Scorer,
    /// An error was already reported upstream.
    Unknown,
}

impl Ty {
    /// `token[response]`, `seq`, `text`, ….
    pub fn describe(&self) -> String {
        match self {
            Ty::Tensor { level, text: Some(t), .. }
                if *level == Level::Token || *level == Level::Step =>
            {
                format!("{level}[{t}]")
            }
            Ty::Tensor { level, .. } => level.to_string(),
            Ty::Text(t) => format!("text `{t}`"),
            Ty::Steps(t) => format!("steps of `{t}`"),
            Ty::Scorer => "a reward function".into(),
            Ty::Unknown => "?".into(),
        }
    }

    pub fn has_grad(&self) -> bool {
        matches!(self, Ty::Tensor { grad: true, .. })
    }
}

/// A stage after checking.
#[derive(Debug, Clone, Default)]
pub struct CheckedStage {
    pub types: HashMap<NodeIndex, Ty>,
    /// Every block parameter, defaults filled in, in the block's declared order.
    pub params: HashMap<NodeIndex, Vec<Resolved>>,
    /// `sample { }` with defaults (empty for stages that do not sample).
    pub sample: Vec<Resolved>,
    pub optim: Vec<Resolved>,
    pub plan: plan::Plan,
}

/// A recipe after checking; the stages line up with `program.stages`.
#[derive(Debug, Clone)]
pub struct Checked {
    pub program: Program,
    pub stages: Vec<CheckedStage>,
    /// Resolved parameters of each data set and model declaration, by name.
    pub decl_params: HashMap<String, Vec<Resolved>>,
}

pub(crate) struct StageCx<'a> {
    pub program: &'a Program,
    pub stage: &'a StageIr,
    pub index: usize,
}

impl StageCx<'_> {
    /// The text that `policy.logp` means when no text is given.
    pub fn primary_text(&self) -> &'static str {
        match self.stage.source_kind() {
            Some(SourceKind::Data) => "target",
            _ => "response",
        }
    }
}

/// Checks a lowered program. Lint diagnostics come out at their default levels; apply a
/// `LintConfig` and suppression comments with `lints::configure`.
pub fn check(program: Program) -> (Checked, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut decl_params = HashMap::new();
    for d in &program.data {
        let given: Vec<_> = d
            .params
            .iter()
            .filter_map(|(k, v, s)| match d.spec.params.iter().position(|p| p.name == k.name) {
                Some(i) => Some((i, v.clone(), *s)),
                None => {
                    diags.push(unknown_decl_param(&k.name, k.span, d.spec.name, d.spec.params));
                    None
                }
            })
            .collect();
        let owner = format!("data set `{}`", d.spec.name);
        decl_params.insert(
            d.name.name.clone(),
            params::resolve(d.spec.params, &given, &owner, d.span, &|_| None, &mut diags),
        );
    }
    for m in &program.models {
        let (specs, callee) = match m.init {
            ModelInit::Pretrained | ModelInit::PretrainedRewardModel => {
                (builtins::PRETRAINED_PARAMS, "pretrained")
            }
            ModelInit::YesNo(_) => (builtins::YES_NO_PARAMS, "yes_no"),
            _ => (builtins::MODEL_PARAMS, "builtin"),
        };
        let given: Vec<_> = m
            .params
            .iter()
            .filter_map(|(k, v, s)| match specs.iter().position(|p| p.name == k.name) {
                Some(i) => Some((i, v.clone(), *s)),
                None => {
                    diags.push(unknown_decl_param(&k.name, k.span, callee, specs));
                    None
                }
            })
            .collect();
        if let ModelInit::Builtin { warm_start: Some(ws) } = &m.init
            && ws.kind != MemberKind::Texts
        {
            diags.push(
                Diagnostic::error(
                    "wrong-data-kind",
                    format!("`warm_start` needs a text set, found {}", ws.kind.describe()),
                )
                .primary(ws.span, ws.kind.describe())
                .help("warm-start on texts, e.g. `arith.solutions` or `reviews.texts`"),
            );
        }
        let owner = format!("model `{}`", m.name.name);
        let resolved = match &m.init {
            ModelInit::Copy(_) => Vec::new(),
            _ => params::resolve(specs, &given, &owner, m.span, &|_| None, &mut diags),
        };
        decl_params.insert(m.name.name.clone(), resolved);
    }
    if program.stages.is_empty() {
        let span = program.name.as_ref().map(|n| n.span).unwrap_or_default();
        diags.push(
            Diagnostic::error("missing-stage", "the recipe has no stages")
                .primary(span, "nothing to train")
                .help("add a stage: `stage rl { train policy ... loss = ... }`"),
        );
    }
    let mut stages = Vec::new();
    for (index, stage) in program.stages.iter().enumerate() {
        let cx = StageCx { program: &program, stage, index };
        let mut out = CheckedStage::default();
        check_structure(&cx, &mut out, &mut diags);
        typing::infer(&cx, &mut out, &mut diags);
        check_loss(&cx, &out, &mut diags);
        lints::stage_lints(&cx, &out, &mut diags);
        out.plan = plan::plan(&cx, &out);
        stages.push(out);
    }
    let checked = Checked { program, stages, decl_params };
    lints::program_lints(&checked, &mut diags);
    files::check_models(&checked, &mut diags);
    files::check_reward_programs(&checked, &mut diags);
    (checked, diags)
}

fn unknown_decl_param(
    name: &str,
    span: crate::diag::Span,
    owner: &str,
    specs: &[crate::blocks::spec::ParamSpec],
) -> Diagnostic {
    let d = Diagnostic::error("unknown-argument", format!("`{owner}` has no parameter `{name}`"))
        .primary(span, "unknown parameter");
    match crate::diag::did_you_mean(name, specs.iter().map(|p| p.name)) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => {
            let names: Vec<String> = specs.iter().map(|p| format!("`{}`", p.name)).collect();
            d.help(format!("its parameters are {}", names.join(", ")))
        }
    }
}

/// What a stage must have: something to train, data of the right kind, sampling only where it
/// makes sense, and consistent batch sizes.
fn check_structure(cx: &StageCx, out: &mut CheckedStage, diags: &mut Vec<Diagnostic>) {
    let stage = cx.stage;
    let name = &stage.name.name;
    if stage.train.is_empty() {
        diags.push(
            Diagnostic::error("stage-trains-nothing", format!("stage `{name}` trains nothing"))
                .primary(stage.name.span, "no `train` statement")
                .help("name the model it trains: `train policy`"),
        );
    }
    for t in &stage.train {
        if t.value_head && cx.program.is_reward_model(&t.model.name) {
            diags.push(
                Diagnostic::error(
                    "invalid-train-target",
                    format!("`{}` is a reward model and has no value head", t.model.name),
                )
                .primary(t.span, "value head on a reward model")
                .help(format!("train it as `train {}`", t.model.name)),
            );
        }
    }
    match &stage.source {
        None if stage.source_keyword.is_some() => {}
        None => diags.push(
            Diagnostic::error("missing-data", format!("stage `{name}` has no data"))
                .primary(stage.name.span, "no `prompts`, `pairs` or `data` statement")
                .help("add one, e.g. `prompts arith.problems`"),
        ),
        Some((kind, data)) => {
            let fits = matches!(
                (kind, data.kind),
                (SourceKind::Prompts, MemberKind::Prompts { .. })
                    | (SourceKind::Pairs, MemberKind::Pairs)
                    | (SourceKind::Data, MemberKind::Texts | MemberKind::Corrections)
            );
            if !fits {
                let wanted = match kind {
                    SourceKind::Prompts => "a prompt set",
                    SourceKind::Pairs => "a preference-pair set",
                    SourceKind::Data => "a text or correction set",
                };
                diags.push(
                    Diagnostic::error(
                        "wrong-data-kind",
                        format!(
                            "`{}` expects {wanted}, found {}",
                            kind.keyword(),
                            data.kind.describe()
                        ),
                    )
                    .primary(data.span, data.kind.describe())
                    .help(match data.kind {
                        MemberKind::Prompts { .. } => {
                            format!("write `prompts {}.{}`", data.data, data.member)
                        }
                        MemberKind::Pairs => format!("write `pairs {}.{}`", data.data, data.member),
                        MemberKind::Verifier => {
                            "a verifier scores responses: call it in the objective".into()
                        }
                        _ => format!("write `data {}.{}`", data.data, data.member),
                    }),
                );
            }
        }
    }
    let samples = stage.source_kind() == Some(SourceKind::Prompts);
    match &stage.sample {
        Some(s) if !samples && stage.source.is_some() => diags.push(
            Diagnostic::error("unexpected-sampling", format!("stage `{name}` does not sample"))
                .primary(s.span, "sampling settings without prompts")
                .help("only stages with `prompts` sample; remove `sample { .. }`"),
        ),
        _ => {}
    }
    if samples {
        let entries = stage.sample.as_ref().map(|s| s.entries.as_slice()).unwrap_or(&[]);
        let span = stage.sample.as_ref().map_or(stage.name.span, |s| s.span);
        out.sample = params::resolve_settings(builtins::SAMPLE, entries, "`sample`", span, diags);
        if let Some(from) = params::get(&out.sample, "from").and_then(|v| v.str()) {
            let ok = from == "old"
                || from == "ref"
                || (cx.program.model(from).is_some() && !cx.program.is_reward_model(from));
            if !ok {
                let span = out
                    .sample
                    .iter()
                    .find(|r| r.name == "from")
                    .and_then(|r| r.span)
                    .unwrap_or(span);
                diags.push(
                    Diagnostic::error(
                        "unknown-name",
                        format!("`from = {from}` names no language model"),
                    )
                    .primary(span, "not `old`, `ref` or a declared model")
                    .help(
                        "sample from `old` (the trained model) or `ref` (its frozen initial copy)",
                    ),
                );
            }
        }
    }
    let entries = stage.optim.as_ref().map(|s| s.entries.as_slice()).unwrap_or(&[]);
    let span = stage.optim.as_ref().map_or(stage.name.span, |s| s.span);
    out.optim = params::resolve_settings(builtins::OPTIM, entries, "`optim`", span, diags);
    let setting_span =
        |set: &[Resolved], key: &str| set.iter().find(|r| r.name == key).and_then(|r| r.span);
    let batch = params::get_num(&out.optim, "batch");
    let minibatch = params::get_num(&out.optim, "minibatch");
    if let (Some(b), Some(mb)) = (batch, minibatch)
        && (mb > b || b % mb != 0.0)
    {
        diags.push(
            Diagnostic::error(
                "minibatch-mismatch",
                format!("`minibatch = {mb}` does not divide `batch = {b}`"),
            )
            .primary(
                setting_span(&out.optim, "minibatch").unwrap_or(span),
                "not a divisor of the batch",
            )
            .help("each rollout batch splits into equal minibatches; pick a divisor of `batch`"),
        );
    }
    if let (Some(b), Some(n)) = (batch, params::get_num(&out.sample, "n"))
        && b % n != 0.0
    {
        diags.push(
            Diagnostic::error(
                "batch-not-multiple-of-group",
                format!("`batch = {b}` is not a multiple of `n = {n}`"),
            )
            .primary(setting_span(&out.optim, "batch").unwrap_or(span), "splits a group")
            .secondary(setting_span(&out.sample, "n").unwrap_or(span), "samples per prompt")
            .help("a batch holds whole groups; make `batch` a multiple of `n`"),
        );
    }
}

fn check_loss(cx: &StageCx, out: &CheckedStage, diags: &mut Vec<Diagnostic>) {
    let stage = cx.stage;
    let Some(loss) = stage.loss else {
        // A loss that failed to lower has already been reported.
        if stage.loss_span == stage.name.span {
            diags.push(
                Diagnostic::error(
                    "missing-loss",
                    format!("stage `{}` has no loss", stage.name.name),
                )
                .primary(stage.name.span, "no `loss = ...` statement")
                .help("add the objective to minimise: `loss = token_mean(...)`"),
            );
        }
        return;
    };
    match out.types.get(&loss) {
        Some(Ty::Tensor { level, grad, .. }) => {
            if *level != Level::Scalar {
                diags.push(
                    Diagnostic::error(
                        "loss-not-scalar",
                        format!("the loss is a {level} value, not a scalar"),
                    )
                    .primary(stage.loss_span, format!("a {level} value"))
                    .help(typing::loss_help(*level)),
                );
            } else if !*grad && !stage.train.is_empty() {
                diags.push(
                    Diagnostic::error("loss-without-gradient", "the loss has no path to trainable parameters")
                        .primary(stage.loss_span, "constant with respect to every trained model")
                        .help(format!(
                            "read a signal of a trained model, e.g. `{}.logp`; `old`, `ref` and rewards carry no gradient",
                            stage.trained().unwrap_or("policy")
                        )),
                );
            }
        }
        Some(Ty::Unknown) | None => {}
        Some(other) => diags.push(
            Diagnostic::error(
                "type-mismatch",
                format!("the loss must be a value, found {}", other.describe()),
            )
            .primary(stage.loss_span, "not a value")
            .help("the loss is a scalar computed from signals, e.g. `token_mean(ppo_clip(...))`"),
        ),
    }
}
