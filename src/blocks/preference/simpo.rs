//! `simpo`: Simple Preference Optimization — length-normalised, reference-free, with a margin.

use candle_core::{D, DType, Result, Tensor};

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
pub(crate) fn average(ctx: &Ctx, i: usize) -> Result<Tensor> {
    let (sums, counts) = row_sums(ctx, i)?;
    sums.div(&counts.maximum(1.0)?)
}

/// Each row's sum of log-probabilities over its real tokens, and how many there are.
fn row_sums(ctx: &Ctx, i: usize) -> Result<(Tensor, Tensor)> {
    let (x, keep) = (ctx.tensor(i)?, ctx.input_mask(i)?.ne(0.0)?);
    Ok((x.kept(&keep)?.sum(D::Minus1)?, keep.to_dtype(x.dtype())?.sum(D::Minus1)?))
}

fn forward(ctx: &Ctx) -> Result<Value> {
    let (chosen, counts) = row_sums(ctx, 0)?;
    let h = ((chosen.div(&counts.maximum(1.0)?)?.sub(&average(ctx, 1)?)? * ctx.num("beta")?)?
        - ctx.num("gamma")?)?;
    let s = ctx.num("label_smoothing")?;
    let ls = super::dpo::log_sigmoid;
    let loss = ((ls(&h)? * -(1.0 - s))? - (ls(&h.neg()?)? * s)?)?;
    let alpha = ctx.num("alpha")?;
    if alpha == 0.0 {
        return Ok(Value::Tensor(loss));
    }
    // TRL's CPO/SimPO NLL is one cross-entropy over every chosen token of the batch; row b's
    // share of it, −Σ_t logp_c,bt · B / N_c, makes the mean over rows equal that token mean.
    let rows = chosen.dim(0)? as f64;
    let tokens = counts.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?.max(1.0);
    Ok(Value::Tensor((loss + (chosen.neg()? * (alpha * rows / tokens))?)?))
}
