//! `orpo`: Odds-Ratio Preference Optimization's preference term (add the chosen NLL).

use candle_core::{Result, Tensor};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "orpo",
    summary: "ORPO's odds-ratio term on per-token average log-probabilities; ORPO's loss adds the chosen response's NLL",
    source: "ORPO (Hong et al. 2024, arXiv 2403.07691); TRL ORPOTrainer (β 0.1)",
    family: Family::Preference,
    formula: "p̄ = mean_t logp;  log odds = (p̄_c − p̄_r) − (ln(1 − e^{p̄_c}) − ln(1 − e^{p̄_r}));  ℓ = −β·logσ(log odds)",
    inputs: &[
        tensor(
            "chosen",
            Level::Token,
            "log-probabilities of the chosen response, `policy.logp(chosen)`",
        ),
        tensor("rejected", Level::Token, "log-probabilities of the rejected response"),
    ],
    params: &[num("beta", 0.1, Range::Positive, "weight of the odds-ratio term (λ in the paper)")],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Pairs,
    forward: Some(forward),
    ..BASE
};

/// ln(1 − e^x) for x < 0, stable at both ends: ln(−expm1(x)) near 0, ln1p(−e^x) far below.
fn log_one_minus_exp(x: &Tensor) -> Result<Tensor> {
    // Average log-probabilities are ≤ 0; at exactly 0 the odds are infinite, so keep a margin.
    let x = x.minimum(-1e-6)?;
    let near = x.exp()?.neg()?.affine(1.0, 1.0)?.log()?;
    // e^x − 1 loses precision for x → 0⁻: use −x(1 + x/2 + x²/6) there.
    let poly = (((&x * 0.5)? + (x.sqr()? / 6.0)?)? + 1.0)?;
    let series = x.neg()?.mul(&poly)?.log()?;
    x.gt(-1e-3)?.where_cond(&series, &near)
}

fn forward(ctx: &Ctx) -> Result<Value> {
    let (c, r) = (super::simpo::average(ctx, 0)?, super::simpo::average(ctx, 1)?);
    let log_odds = c.sub(&r)?.sub(&log_one_minus_exp(&c)?.sub(&log_one_minus_exp(&r)?)?)?;
    Ok(Value::Tensor((super::dpo::log_sigmoid(&log_odds)? * -ctx.num("beta")?)?))
}
