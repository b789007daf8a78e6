//! `cispo`: Clipped IS-weight Policy Optimization — every token keeps its gradient.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "cispo",
    summary: "CISPO: REINFORCE weighted by a clipped, detached importance ratio, so clipped tokens keep their gradient",
    source: "MiniMax-M1 (2025, arXiv 2506.13585); verl `cispo` (relative bounds), TRL `cispo` (`epsilon_high` an absolute cap, recommended 5)",
    family: Family::Loss,
    formula: "ρ = e^{clamp(logp − old, ±20)};  w = clamp(ρ, 1 − eps, 1 + eps_high) (relative) or min(ρ, eps_high) (absolute);  ℓ = −sg(w)·A·logp",
    inputs: &[
        tensor("logp", Level::Token, "current log-probabilities, `policy.logp`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("adv", Level::Token, "advantages"),
    ],
    params: &[
        choice(
            "bound",
            &["relative", "absolute"],
            "relative",
            "`relative`: w ∈ [1 − eps, 1 + eps_high] (verl); `absolute`: w ≤ eps_high, no lower bound (TRL)",
        ),
        num("eps", 0.2, Range::OpenUnit, "lower relative bound (ignored with `absolute`)"),
        ParamSpec {
            name: "eps_high",
            ty: ParamTy::Float,
            default: DefaultRule::SameAs("eps"),
            range: Range::Positive,
            doc: "upper relative bound, or with `absolute` the cap itself (TRL recommends 5)",
        },
    ],
    output: OutputKind::Tensor(Level::Token),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (logp, old, adv) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    let ratio = logp.sub(old)?.clamped(-20.0, 20.0)?.exp()?.detach();
    let hi = ctx.num("eps_high")?;
    let weight = match ctx.choice("bound")? {
        "absolute" => ratio.at_most(hi)?,
        _ => ratio.clamped(1.0 - ctx.num("eps")?, 1.0 + hi)?,
    };
    Ok(Value::Tensor(weight.mul(adv)?.mul(logp)?.neg()?))
}
