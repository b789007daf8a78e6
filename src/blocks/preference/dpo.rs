//! `dpo`: direct preference optimisation losses on chosen/rejected pairs.

use candle_core::{Result, Tensor};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "dpo",
    summary: "direct preference optimisation loss per pair (sigmoid, conservative, robust, IPO or hinge)",
    source: "DPO (Rafailov et al. 2023); cDPO (label smoothing); robust DPO (Chowdhury et al. 2024); IPO (Azar et al. 2023); SLiC hinge (Zhao et al. 2023); TRL `loss_type`",
    family: Family::Preference,
    formula: "h = β·((Σ logp_c − Σ ref_c) − (Σ logp_r − Σ ref_r));  sigmoid: −(1−s)·logσ(h) − s·logσ(−h);  \
              robust: (−(1−s)·logσ(h) + s·logσ(−h)) / (1 − 2s);  ipo: (h/β − 1/(2β))²;  hinge: max(0, 1 − h)",
    inputs: &[
        tensor(
            "chosen",
            Level::Token,
            "log-probabilities of the chosen response, `policy.logp(chosen)`",
        ),
        tensor("rejected", Level::Token, "log-probabilities of the rejected response"),
        detached("ref_chosen", Level::Token, "reference log-probabilities of the chosen response"),
        detached(
            "ref_rejected",
            Level::Token,
            "reference log-probabilities of the rejected response",
        ),
    ],
    params: &[
        num("beta", 0.1, Range::Positive, "inverse temperature of the implicit reward"),
        choice("loss", &["sigmoid", "robust", "ipo", "hinge"], "sigmoid", "the preference loss"),
        num(
            "label_smoothing",
            0.0,
            Range::Probability,
            "assumed label-flip rate s: conservative DPO with `sigmoid`, robust DPO (s < 0.5) with `robust`",
        ),
        ParamSpec {
            name: "length_norm",
            ty: ParamTy::Bool,
            default: DefaultRule::Bool(false),
            range: Range::Any,
            doc: "IPO on per-token averages (TRL DPOTrainer) instead of sums (OpenRLHF)",
        },
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Pairs,
    regularizer: true,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let mask = |i: usize| ctx.input_mask(i)?.to_dtype(ctx.tensor(i)?.dtype());
    let sum = |i: usize| ctx.tensor(i)?.mul(&mask(i)?)?.sum(1);
    // Per-response lengths, read only by length-normalised IPO.
    let len = |i: usize| mask(i)?.sum(1)?.maximum(1.0);
    let (rho_c, rho_r) = (sum(0)?.sub(&sum(2)?)?, sum(1)?.sub(&sum(3)?)?);
    let beta = ctx.num("beta")?;
    let loss = match ctx.choice("loss")? {
        "ipo" => {
            let logits = if ctx.flag("length_norm")? {
                rho_c.div(&len(0)?)?.sub(&rho_r.div(&len(1)?)?)?
            } else {
                rho_c.sub(&rho_r)?
            };
            (logits - 1.0 / (2.0 * beta))?.sqr()?
        }
        "hinge" => (1.0 - (rho_c.sub(&rho_r)? * beta)?)?.relu()?,
        "robust" => {
            let h = (rho_c.sub(&rho_r)? * beta)?;
            let s = ctx.num("label_smoothing")?;
            if s >= 0.5 {
                candle_core::bail!("robust DPO needs label_smoothing below 0.5, found {s}");
            }
            (((log_sigmoid(&h)? * -(1.0 - s))? + (log_sigmoid(&h.neg()?)? * s)?)?
                / (1.0 - 2.0 * s))?
        }
        _ => {
            let h = (rho_c.sub(&rho_r)? * beta)?;
            match ctx.num("label_smoothing")? {
                // The same value as below with s = 0, in a third of the ops.
                0.0 => log_sigmoid(&h)?.neg()?,
                s => ((log_sigmoid(&h)? * -(1.0 - s))? - (log_sigmoid(&h.neg()?)? * s)?)?,
            }
        }
    };
    Ok(Value::Tensor(loss))
}

/// log σ(x) = (x − |x|)/2 − ln(1 + e^{−|x|}), stable for large |x|.
///
/// `(x − |x|)/2` is `min(x, 0)` exactly, but its gradient at x = 0 is right: with `min(x, 0)`
/// candle's subgradients (1 for the tie, 0 for |x|′) gave d/dx = 1 at 0 instead of σ(0) = ½,
/// doubling the gradient of every pair with h = 0 — every pair of a DPO run's first step, where
/// the policy is the reference. Here |x|′ appears in both terms and cancels for any choice of it.
pub(crate) fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    (x.sub(&abs)? * 0.5)?.sub(&(abs.neg()?.exp()? + 1.0)?.log()?)
}
