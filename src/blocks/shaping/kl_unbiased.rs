//! `kl_unbiased`: a KL estimate weighted by the importance ratio to the sampling policy, so its
//! gradient is unbiased off-policy too.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "kl_unbiased",
    summary: "KL estimate times the importance ratio π/π_old, with gradient through both (an unbiased KL gradient off-policy)",
    source: "TRL GRPO `use_bias_correction_kl`; k3 (Schulman 2020)",
    family: Family::Shaping,
    formula: "d = logp − ref;  k as in `kl` (k3 = e^{x} − x − 1, x = clamp(−d, ±20));  ℓ = e^{clamp(logp − old, ±20)}·k",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp` (gradient)"),
        detached("ref", Level::Token, "the reference log-probabilities, `ref.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
    ],
    params: &[choice("estimator", &["k1", "k2", "k3"], "k3", "which estimator is weighted")],
    output: OutputKind::Tensor(Level::Token),
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, reference, old) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let d = logp.sub(reference)?;
    let k = match ctx.choice("estimator")? {
        "k1" => d,
        "k2" => (d.sqr()? * 0.5)?,
        _ => {
            let x = d.neg()?.clamped(-20.0, 20.0)?;
            ((x.exp()? - x)? - 1.0)?
        }
    };
    let ratio = logp.sub(old)?.clamped(-20.0, 20.0)?.exp()?;
    Ok(Value::Tensor(ratio.mul(&k)?))
}
