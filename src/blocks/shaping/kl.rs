//! `kl`: per-token KL estimators between the policy and a reference.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "kl",
    summary: "per-token KL estimate between two log-probabilities of the same tokens",
    source: "Schulman 2020 (k1, k2, k3); verl `kl_penalty`, TRL, OpenRLHF",
    family: Family::Shaping,
    formula: "d = logp − ref;  k1 = d,  k2 = mse = d²/2,  k3 = e^{x} − x − 1 with x = clamp(−d, ±20),  abs = |d|;  gradient = k2: k2 − sg(k2) + sg(k)",
    inputs: &[
        tensor(
            "logp",
            Level::Token,
            "`policy.logp` (gradient: KL as a loss) or `old.logp` (KL in the reward)",
        ),
        detached("ref", Level::Token, "the reference log-probabilities, `ref.logp`"),
    ],
    params: &[
        choice("estimator", &["k1", "k2", "k3", "abs", "mse"], "k1", "which estimator"),
        ParamSpec {
            name: "clamp",
            ty: ParamTy::OptFloat,
            default: DefaultRule::Off,
            range: Range::Positive,
            doc: "clamp the estimate into [-clamp, clamp] (verl, OpenRLHF: 10); `none` as in TRL",
        },
        choice(
            "gradient",
            &["estimator", "k2"],
            "estimator",
            "the gradient in a loss: the estimator's own, or k2's with the estimator's value (verl's straight-through `k1+`, `k3+`: unbiased on-policy)",
        ),
    ],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let d = ctx.tensor(0)?.sub(ctx.tensor(1)?)?;
    let k = match ctx.choice("estimator")? {
        "k1" => d,
        "k2" | "mse" => (d.sqr()? * 0.5)?,
        // k3 = (r − 1) − log r with r = π_ref/π = e^{−d}: e^{−d} + d − 1 ≥ 0. The log-ratio is
        // clamped to ±20 before exp, as verl does: e^{−d} overflows f32 below d ≈ −88, and the
        // estimate's own clamp would then multiply a zero gradient by inf (NaN), even at padding.
        "k3" => {
            let x = d.neg()?.clamped(-20.0, 20.0)?;
            ((x.exp()? - x)? - 1.0)?
        }
        _ => d.abs()?,
    };
    let k = match ctx.opt_num("clamp") {
        Some(c) => k.clamped(-c, c)?,
        None => k,
    };
    if ctx.choice("gradient")? == "k2" {
        // The value of k, the gradient of k2 = d²/2 (d·∇logp: unbiased for ∇KL on-policy).
        let d = ctx.tensor(0)?.sub(ctx.tensor(1)?)?;
        let k2 = (d.sqr()? * 0.5)?;
        return Ok(Value::Tensor((k2.sub(&k2.detach())? + k.detach())?));
    }
    Ok(Value::Tensor(k))
}
