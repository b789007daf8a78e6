//! `grm_token_reward`: RLMEC's token reward from a rewriter's keep probabilities.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "grm_token_reward",
    summary: "token reward from a rewriter's probability of keeping each token (RLMEC)",
    source: "RLMEC (Chen et al. 2024), `gen_rlmec_data`",
    family: Family::Shaping,
    formula: "correct: clamp(p − center, 0, pos_max);  wrong: clamp(p − center, neg_min, 0)",
    inputs: &[
        detached("keep_prob", Level::Token, "the rewriter's probability of each response token"),
        detached("correct", Level::Seq, "1 where the response is correct, else 0"),
    ],
    params: &[
        num("center", 0.5, Range::Probability, "probability that earns zero reward"),
        num("pos_max", 0.5, Range::NonNegative, "largest reward on a correct response"),
        num("neg_min", -0.1, Range::Any, "most negative reward on a wrong response (≤ 0)"),
    ],
    output: OutputKind::Tensor(Level::Token),
    validate: Some(|p| match p("neg_min") {
        Some(v) if v > 0.0 => Some(format!("`neg_min` must be ≤ 0, found {v}")),
        _ => None,
    }),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let shifted = (ctx.tensor(0)? - ctx.num("center")?)?;
    let correct = ctx.tensor(1)?.ge(0.5)?.to_dtype(shifted.dtype())?.unsqueeze(1)?;
    let pos = shifted.clamped(0.0, ctx.num("pos_max")?)?;
    let neg = shifted.clamped(ctx.num("neg_min")?, 0.0)?;
    let r = (pos.broadcast_mul(&correct)? + neg.broadcast_mul(&correct.affine(-1.0, 1.0)?)?)?;
    Ok(Value::Tensor(r))
}
