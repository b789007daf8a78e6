//! `mis`: masked importance sampling — keep the weight where it is plausible, drop the token
//! (or sequence) elsewhere. IcePop is its token-level form.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "mis",
    summary: "masked importance weight: the trainer/sampler ratio where it lies in [lo, hi], 0 elsewhere (IcePop: `level = token`)",
    source: "IcePop (Ring-1T, Ling team 2025); verl `rollout_is` with a `lo_hi` threshold, TRL `*_mask` (`C_max` 3), OpenRLHF `icepop` ([0.5, 5])",
    family: Family::Shaping,
    formula: "w as in `tis` without the cap;  out = w·[lo ≤ w ≤ hi] (token), or w_b·[lo ≤ w_b ≤ hi] on every token of b (sequence);  detached",
    inputs: &[
        detached(
            "old",
            Level::Token,
            "the trainer's log-probabilities at sampling time, `old.logp`",
        ),
        detached("rollout", Level::Token, "the sampler's own log-probabilities, `rollout.logp`"),
    ],
    params: &[
        num("lo", 0.5, Range::NonNegative, "smallest kept weight"),
        num("hi", 5.0, Range::Positive, "largest kept weight"),
        choice("level", &["token", "sequence"], "token", "mask tokens, or whole sequences"),
    ],
    output: OutputKind::Tensor(Level::Token),
    grad: OutputGrad::Never,
    validate: Some(crate::blocks::maths::lo_below_hi),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let w = super::weights(ctx)?;
    let keep = w.ge(ctx.num("lo")?)?.mul(&w.le(ctx.num("hi")?)?)?.to_dtype(w.dtype())?;
    Ok(Value::Tensor(w.mul(&keep)?.mul(ctx.out_mask()?)?))
}
