//! `kto`: Kahneman–Tversky Optimization on preference pairs (chosen as desirable, rejected as
//! undesirable), with the KL reference point from mismatched pairs.

use candle_core::{D, Result, Tensor};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "kto",
    summary: "KTO: prospect-theoretic loss around a KL reference point estimated on mismatched prompt/response pairs",
    source: "KTO (Ethayarajh et al. 2024, arXiv 2402.01306); TRL KTOTrainer (β 0.1, weights 1, z from completions shifted by one within the batch, detached, ≥ 0)",
    family: Family::Preference,
    formula: "ρ = Σ logp − Σ ref;  z = max(0, mean_b ρ(mismatched)) (detached);  ℓ = ½·(w_D·(1 − σ(β(ρ_c − z))) + w_U·(1 − σ(β(z − ρ_r))))",
    inputs: &[
        tensor("chosen", Level::Token, "log-probabilities of the desirable (chosen) response"),
        tensor(
            "rejected",
            Level::Token,
            "log-probabilities of the undesirable (rejected) response",
        ),
        detached("ref_chosen", Level::Token, "reference log-probabilities of the chosen response"),
        detached(
            "ref_rejected",
            Level::Token,
            "reference log-probabilities of the rejected response",
        ),
        detached(
            "mismatched",
            Level::Token,
            "log-probabilities of another pair's chosen response after this prompt, `policy.logp(mismatched)`",
        ),
        detached(
            "ref_mismatched",
            Level::Token,
            "their reference log-probabilities, `ref.logp(mismatched)`",
        ),
    ],
    params: &[
        num("beta", 0.1, Range::Positive, "inverse temperature"),
        num("desirable_weight", 1.0, Range::NonNegative, "λ_D"),
        num("undesirable_weight", 1.0, Range::NonNegative, "λ_U"),
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Pairs,
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let sum = |i: usize| -> Result<Tensor> {
        let (x, keep) = (ctx.tensor(i)?, ctx.input_mask(i)?.ne(0.0)?);
        x.kept(&keep)?.sum(D::Minus1)
    };
    let (rho_c, rho_r) = (sum(0)?.sub(&sum(2)?)?, sum(1)?.sub(&sum(3)?)?);
    let z = sum(4)?.sub(&sum(5)?)?.mean_all()?.maximum(0.0)?.detach();
    let beta = ctx.num("beta")?;
    let sigmoid = candle_nn::ops::sigmoid;
    let desirable = (1.0 - sigmoid(&(rho_c.broadcast_sub(&z)? * beta)?)?)?;
    let undesirable = (1.0 - sigmoid(&(rho_r.broadcast_sub(&z)?.neg()? * beta)?)?)?;
    let total = ((desirable * ctx.num("desirable_weight")?)?
        + (undesirable * ctx.num("undesirable_weight")?)?)?;
    Ok(Value::Tensor((total * 0.5)?))
}
