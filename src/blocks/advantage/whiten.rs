//! `whiten`: normalise to zero mean and unit variance over an explicit scope.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "whiten",
    summary: "normalise to zero mean and unit variance over a batch, group or minibatch",
    source: "PPO practice; scopes per VinePPO (minibatch), RTO (buffer = batch), RCfD (batch)",
    family: Family::Advantage,
    formula: "(x − μ) / sqrt(σ² + eps), statistics over the unmasked entries of the scope",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Generic, GradRule::Detached),
        doc: "advantages or rewards",
    }],
    params: &[
        choice(
            "scope",
            &["batch", "group", "minibatch"],
            "batch",
            "which samples share the statistics",
        ),
        choice("var", &["unbiased", "biased"], "unbiased", "variance convention"),
        num("eps", 1e-8, Range::NonNegative, "added to the variance"),
        ParamSpec {
            name: "shift_mean",
            ty: ParamTy::Bool,
            default: DefaultRule::Bool(true),
            range: Range::Any,
            doc: "`false` only scales (keeps the sign of every entry)",
        },
        MASK,
    ],
    output: OutputKind::Generic,
    ..BASE
};
