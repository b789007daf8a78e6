//! `gae`: generalised advantage estimation over token rewards and a critic's values.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "gae",
    summary: "generalised advantage estimation from token rewards and critic values",
    source: "Schulman et al. 2016; verl `compute_gae_advantage_return`, OpenRLHF",
    family: Family::Advantage,
    formula: "δ_t = r_t + γ·V_{t+1} − V_t;  A_t = δ_t + γλ·A_{t+1}, over unmasked tokens, V past the end = 0",
    inputs: &[
        detached("rewards", Level::Token, "token rewards (place sequence rewards with `at_end`)"),
        detached("values", Level::Token, "critic values at sampling time, `old.values`"),
    ],
    params: &[
        num("gamma", 1.0, Range::Probability, "discount"),
        num(
            "lambda",
            0.95,
            Range::Probability,
            "bias-variance trade-off; 1 gives Monte-Carlo returns minus V",
        ),
        choice(
            "holes",
            &["skip", "zero"],
            "skip",
            "masked tokens inside a response: carried through (verl) or zeroed (OpenRLHF)",
        ),
    ],
    output: OutputKind::Tensor(Level::Token),
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let r = ctx.tensor(0)?;
    let cols = r.dim(1)?.max(1);
    // f64 host arithmetic: an f64 evaluation stays f64 (f32 inputs are widened exactly).
    let (rs, vs, ms) = (host::flat(r)?, host::flat(ctx.tensor(1)?)?, host::flat(ctx.out_mask()?)?);
    let (gamma, lambda) = (ctx.num("gamma")?, ctx.num("lambda")?);
    let skip = ctx.choice("holes")? == "skip";
    let mut out = vec![0.0f64; rs.len()];
    for (row, ((r, v), m)) in
        out.chunks_mut(cols).zip(rs.chunks(cols).zip(vs.chunks(cols)).zip(ms.chunks(cols)))
    {
        gae_row(r, v, m, gamma, lambda, skip, row);
    }
    Ok(Value::Tensor(host::from_flat(out, r.dims(), r)?))
}

/// GAE over one response, scanning backwards. With `skip`, masked tokens neither end the
/// recursion nor enter it (verl); otherwise they count as zero reward and zero value (OpenRLHF).
fn gae_row(r: &[f64], v: &[f64], m: &[f64], gamma: f64, lambda: f64, skip: bool, out: &mut [f64]) {
    let (mut next_v, mut g) = (0.0, 0.0);
    for t in (0..r.len()).rev() {
        let real = m[t] != 0.0;
        if !real && skip {
            continue;
        }
        let (rt, vt) = if real { (r[t], v[t]) } else { (0.0, 0.0) };
        g = rt + gamma * next_v - vt + gamma * lambda * g;
        next_v = vt;
        if real {
            out[t] = g;
        }
    }
}
