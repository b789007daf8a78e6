//! `whiten`: normalise to zero mean and unit variance over an explicit scope.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "whiten",
    summary: "normalise to zero mean and unit variance over a batch, group or minibatch",
    source: "PPO practice; scopes per VinePPO (minibatch), RTO (buffer = batch), RCfD (batch)",
    family: Family::Advantage,
    formula: "(x − μ) / sqrt(σ² + eps), statistics over the unmasked entries of the scope (`mask = none`: over every position, padding read as 0)",
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
    if ctx.input_level(0).unwrap_or(Level::Scalar) == Level::Scalar {
        return Ok(Value::Tensor(x.detach()));
    }
    let masked = ctx.choice("mask")? == "response";
    let (unbiased, eps, shift) =
        (ctx.choice("var")? == "unbiased", ctx.num("eps")?, ctx.flag("shift_mean")?);
    let floor_max = ctx.choice("floor")? == "max";
    let cols = if x.rank() == 2 { x.dim(1)?.max(1) } else { 1 };
    let mut xs = host::flat(x)?;
    let mut ms = vec![1.0; xs.len()];
    if x.rank() == 2 {
        let response = host::flat(ctx.out_mask()?)?;
        if masked {
            ms = response;
        } else {
            // `mask = none`: every position counts, padding as a zero (whatever it holds), as
            // when a peer whitens a zero-padded tensor without its mask.
            for (x, m) in xs.iter_mut().zip(&response) {
                if *m == 0.0 {
                    *x = 0.0;
                }
            }
        }
    }
    let n_rows = xs.len() / cols;
    // Which rows share statistics: all of them, or each group.
    let parts: Vec<Vec<usize>> = if ctx.choice("scope")? == "group" {
        host::group_members(&ctx.group_ids()?)
    } else {
        vec![(0..n_rows).collect()]
    };
    let mut out = vec![0.0f64; xs.len()];
    for part in parts {
        // f32 storage, f64 accumulation, row by row in independent lanes.
        let rows =
            || part.iter().map(|&r| (&xs[r * cols..(r + 1) * cols], &ms[r * cols..(r + 1) * cols]));
        let n: f64 = rows().map(|(_, m)| host::lane_sum(m, m, |_, m| m)).sum();
        let sx: f64 = rows().map(|(x, m)| host::lane_sum(x, m, |x, m| x * m)).sum();
        let mean = if n > 0.0 { sx / n } else { 0.0 };
        let ss: f64 =
            rows().map(|(x, m)| host::lane_sum(x, m, |x, m| m * (x - mean) * (x - mean))).sum();
        let var = match (unbiased, n) {
            (true, n) if n > 1.0 => ss / (n - 1.0),
            (true, _) => 0.0,
            (false, n) if n > 0.0 => ss / n,
            _ => 0.0,
        };
        let scale = host::inverse_std(var, eps, floor_max);
        let back = if shift { 0.0 } else { mean };
        for &r in &part {
            let span = r * cols..(r + 1) * cols;
            let (x, m) = (&xs[span.clone()], &ms[span.clone()]);
            for ((o, &x), &m) in out[span].iter_mut().zip(x).zip(m) {
                let w = (x - mean) * scale + back;
                *o = if masked { w * m } else { w };
            }
        }
    }
    Ok(Value::Tensor(host::from_flat(out, x.dims(), x)?))
}
