//! `dpo_token_reward`: RTO's dense reward from a DPO model.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "dpo_token_reward",
    summary: "dense token reward from a DPO model's log-ratio to the reference (RTO)",
    source: "RTO (Zhong et al. 2024), Eq. 4.7; `dpo_reward_scale`, `dpo_reward_clip`",
    family: Family::Shaping,
    formula: "clamp(β·(logp_dpo − logp_ref), −clip, clip): scale first, then clip",
    inputs: &[
        detached("logp", Level::Token, "the DPO model's log-probabilities of the response"),
        detached("ref", Level::Token, "the reference's log-probabilities, `ref.logp`"),
    ],
    params: &[
        num("beta", 0.05, Range::NonNegative, "scale of the log-ratio"),
        ParamSpec {
            name: "clip",
            ty: ParamTy::OptFloat,
            default: DefaultRule::Num(0.05),
            range: Range::Positive,
            doc: "symmetric clip applied after scaling; `none` disables it",
        },
    ],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let scaled = (ctx.tensor(0)?.sub(ctx.tensor(1)?)? * ctx.num("beta")?)?;
    let r = match ctx.opt_num("clip") {
        Some(c) => scaled.clamped(-c, c)?,
        None => scaled,
    };
    Ok(Value::Tensor(r))
}
