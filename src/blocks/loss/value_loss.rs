//! `value_loss`: the clipped critic regression loss.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "value_loss",
    summary: "critic regression loss per token, optionally clipped around the old values",
    source: "PPO (OpenAI baselines); verl `compute_value_loss`, TRL `cliprange_value`",
    family: Family::Loss,
    formula: "½·max((V − R)², (clamp(V, V_old − clip, V_old + clip) − R)²)",
    inputs: &[
        tensor("values", Level::Token, "current values, `policy.values`"),
        detached("old", Level::Token, "values at sampling time, `old.values`"),
        detached("returns", Level::Token, "regression targets, usually `adv + old.values`"),
    ],
    params: &[ParamSpec {
        name: "clip",
        ty: ParamTy::OptFloat,
        default: DefaultRule::Num(0.2),
        range: Range::Positive,
        doc: "value clip (TRL 0.2, verl 0.5); `none` disables it",
    }],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (v, old, target) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let mut err = v.sub(target)?.sqr()?;
    if let Some(c) = ctx.opt_num("clip") {
        let clipped = (old + v.sub(old)?.clamped(-c, c)?)?;
        err = err.max_with(&clipped.sub(target)?.sqr()?)?;
    }
    let loss = (err * 0.5)?;
    Ok(Value::Tensor(loss))
}
