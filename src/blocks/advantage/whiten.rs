//! `whiten`: normalise to zero mean and unit variance over an explicit scope.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "whiten",
    summary: "normalise to zero mean and unit variance over a batch, group or minibatch",
    source: "PPO practice; scopes per VinePPO (minibatch), RTO (buffer = batch), RCfD (batch)",
    family: Family::Advantage,
    formula: "(x − μ) / sqrt(σ² + eps), statistics over the unmasked entries of the scope",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Generic, GradRule::Detached),
        doc: "advantages or rewards",
    }],
    params: &[
        choice(
            "scope",
            &["batch", "group", "minibatch"],
            "batch",
            "which samples share the statistics",
        ),
        choice("var", &["unbiased", "biased"], "unbiased", "variance convention"),
        num("eps", 1e-8, Range::NonNegative, "added to the variance"),
        ParamSpec {
            name: "shift_mean",
            ty: ParamTy::Bool,
            default: DefaultRule::Bool(true),
            range: Range::Any,
            doc: "`false` only scales (keeps the sign of every entry)",
        },
        MASK,
        choice(
            "floor",
            &["add", "max"],
            "add",
            "`add`: (v + eps)^-½ (verl, TRL); `max`: max(v, eps)^-½ (OpenRLHF)",
        ),
    ],
    output: OutputKind::Generic,
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let x = ctx.tensor(0)?;
    let level = ctx.input_level(0).unwrap_or(Level::Scalar);
    if level == Level::Scalar {
        return Ok(Value::Tensor(x.detach()));
    }
    let masked = ctx.choice("mask")? == "response";
    let (unbiased, eps, shift) =
        (ctx.choice("var")? == "unbiased", ctx.num("eps")?, ctx.flag("shift_mean")?);
    let floor_max = ctx.choice("floor")? == "max";
    let two_d = x.rank() == 2;
    let rows: Vec<Vec<f64>> =
        if two_d { host::rows(x)? } else { host::vec(x)?.into_iter().map(|v| vec![v]).collect() };
    let mask: Vec<Vec<f64>> = match (two_d, masked) {
        (true, true) => host::rows(ctx.out_mask()?)?,
        _ => rows.iter().map(|r| vec![1.0; r.len()]).collect(),
    };
    // Which rows share statistics: all of them, or each group.
    let parts: Vec<Vec<usize>> = if ctx.choice("scope")? == "group" {
        host::group_members(&ctx.group_ids()?)
    } else {
        vec![(0..rows.len()).collect()]
    };
    let mut out: Vec<Vec<f64>> = rows.iter().map(|r| vec![0.0; r.len()]).collect();
    for part in parts {
        let xs: Vec<f64> = part.iter().flat_map(|&i| rows[i].iter().copied()).collect();
        let ws: Vec<f64> = part.iter().flat_map(|&i| mask[i].iter().copied()).collect();
        let (mean, var, _) = host::mean_var(&xs, &ws, unbiased);
        let scale = host::inverse_std(var, eps, floor_max);
        for &i in &part {
            for (t, v) in rows[i].iter().enumerate() {
                let w = (v - mean) * scale + if shift { 0.0 } else { mean };
                out[i][t] = if masked { w * mask[i][t] } else { w };
            }
        }
    }
    let t = if two_d {
        host::from_rows(&out, x)?
    } else {
        host::from_vec(out.into_iter().map(|r| r[0]).collect(), x)?
    };
    Ok(Value::Tensor(t))
}
