//! `simpo`: Simple Preference Optimization — length-normalised, reference-free, with a margin.

use candle_core::{D, Result};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "simpo",
    summary: "SimPO: the sigmoid preference loss on per-token average log-probabilities, with a target margin and no reference model",
    source: "SimPO (Meng et al. 2024, arXiv 2405.14734; its configs: β 2–2.5, γ/β 0.5); TRL CPOTrainer `loss_type = simpo` (trl/experimental/cpo/cpo_trainer.py 1.16: `simpo_gamma` is γ, `cpo_alpha` is α)",
    family: Family::Preference,
    formula: "h = β·(mean_t logp_c − mean_t logp_r) − γ;  ℓ_b = −(1−s)·logσ(h) − s·logσ(−h) + α·(−Σ_t logp_c,bt)·B/N_c  (N_c: the batch's chosen tokens, so `seq_mean` adds α × TRL's token-mean NLL)",
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
        num(
            "alpha",
            0.0,
            Range::NonNegative,
            "weight of the chosen responses' NLL (TRL `cpo_alpha`, default 1.0 there; 0 is the paper's pure SimPO)",
        ),
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Pairs,
    forward: Some(forward),
    peers: &[peer(
        "TRL 1.16",
        "CPOConfig's defaults are `beta = 0.1, gamma = 0.5, alpha = 1.0`: `loss_type = simpo` alone is CPO-SimPO (the chosen responses' NLL added at weight 1); TRL's docs make SimPO `cpo_alpha = 0` (rlx's default), as does `loss_type = alphapo`",
    )],
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
    let loss = ((ls(&h)? * -(1.0 - s))? - (ls(&h.neg()?)? * s)?)?;
    let alpha = ctx.num("alpha")?;
    if alpha == 0.0 {
        return Ok(Value::Tensor(loss));
    }
    Ok(Value::Tensor((loss + (chosen_nll_share(ctx)? * alpha)?)?))
}

/// TRL's CPO/SimPO NLL is one cross-entropy over every chosen token of the batch; row b's share
/// of it, −Σ_t logp_c,bt · B / N_c, makes the mean over rows equal that token mean exactly.
fn chosen_nll_share(ctx: &Ctx) -> Result<candle_core::Tensor> {
    let (x, keep) = (ctx.tensor(0)?, ctx.input_mask(0)?.ne(0.0)?);
    let rows = x.dim(0)? as f64;
    let tokens = keep.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?.max(1.0);
    x.kept(&keep)?.sum(D::Minus1)?.neg()? * (rows / tokens)
}
