//! `simpo`: Simple Preference Optimization — length-normalised, reference-free, with a margin.

use candle_core::{D, Result};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "simpo",
    summary: "SimPO: the sigmoid preference loss on per-token average log-probabilities, with a target margin and no reference model",
    source: "SimPO (Meng et al. 2024, arXiv 2405.14734; its configs: β 2–2.5, γ/β 0.5); TRL CPOTrainer `loss_type = simpo` (`simpo_gamma` is γ; defaults β 0.1, γ 0.5)",
    family: Family::Preference,
    formula: "h = β·(mean_t logp_c − mean_t logp_r) − γ;  ℓ = −(1−s)·logσ(h) − s·logσ(−h)",
    inputs: &[
        tensor(
            "chosen",
            Level::Token,
            "log-probabilities of the chosen response, `policy.logp(chosen)`",
        ),
        tensor("rejected", Level::Token, "log-probabilities of the rejected response"),
    ],
    params: &[
        num("beta", 2.0, Range::Positive, "scale of the length-normalised reward"),
        num("gamma", 1.0, Range::NonNegative, "target reward margin γ"),
        num("label_smoothing", 0.0, Range::Probability, "assumed label-flip rate s"),
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Pairs,
    forward: Some(forward),
    ..BASE
};

/// Mean log-probability over each row's real tokens.
pub(crate) fn average(ctx: &Ctx, i: usize) -> Result<candle_core::Tensor> {
    let (x, keep) = (ctx.tensor(i)?, ctx.input_mask(i)?.ne(0.0)?);
    let n = keep.to_dtype(x.dtype())?.sum(D::Minus1)?.maximum(1.0)?;
    x.kept(&keep)?.sum(D::Minus1)?.div(&n)
}

fn forward(ctx: &Ctx) -> Result<Value> {
    let h = ((average(ctx, 0)?.sub(&average(ctx, 1)?)? * ctx.num("beta")?)? - ctx.num("gamma")?)?;
    let s = ctx.num("label_smoothing")?;
    let ls = super::dpo::log_sigmoid;
    Ok(Value::Tensor(((ls(&h)? * -(1.0 - s))? - (ls(&h.neg()?)? * s)?)?))
}
