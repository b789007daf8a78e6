//! `dro`: Direct Reward Optimization's regularised policy gradient.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "dro",
    summary: "DRO: policy gradient with a squared log-ratio penalty towards the sampling policy",
    source: "Kimi k1.5 (2025) / DRO (Richemond et al. 2024); verl `dro` (`dro_beta` must be set)",
    family: Family::Loss,
    formula: "ℓ = −(logp·A − ½·beta·(logp − old)²)",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[ParamSpec {
        name: "beta",
        ty: ParamTy::Float,
        default: DefaultRule::Required,
        range: Range::Positive,
        doc: "weight of the squared log-ratio (no default: verl requires `dro_beta`)",
    }],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let penalty = (logp.sub(old)?.sqr()? * (0.5 * ctx.num("beta")?))?;
    Ok(Value::Tensor(penalty.sub(&logp.mul(adv)?)?))
}
