//! `returns`: Monte-Carlo reward-to-go.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "returns",
    summary: "discounted reward-to-go over the response tokens",
    source: "REINFORCE (Williams 1992); torchrl `reward2go`, rlax `discounted_returns`",
    family: Family::Advantage,
    formula: "G_t = Σ_{k≥t} γ^{k−t} r_k over unmasked tokens (masked holes are skipped)",
    inputs: &[detached("rewards", Level::Token, "token rewards")],
    params: &[
        num("gamma", 1.0, Range::Probability, "discount"),
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
    let (gamma, skip) = (ctx.num("gamma")?, ctx.choice("holes")? == "skip");
    let out = returns(r, &host::flat(ctx.out_mask()?)?, gamma, skip)?;
    Ok(Value::Tensor(host::from_flat(out, r.dims(), r)?))
}

/// Reward-to-go of every response, flattened; holes as in `gae`.
pub(crate) fn returns(
    r: &candle_core::Tensor,
    mask: &[f64],
    gamma: f64,
    skip: bool,
) -> Result<Vec<f64>> {
    let cols = r.dim(1)?.max(1);
    let rs = host::flat(r)?;
    let mut out = vec![0.0f64; rs.len()];
    for ((out, r), m) in out.chunks_mut(cols).zip(rs.chunks(cols)).zip(mask.chunks(cols)) {
        let mut g = 0.0;
        for t in (0..r.len()).rev() {
            let real = m[t] != 0.0;
            if !real && skip {
                continue;
            }
            g = if real { r[t] } else { 0.0 } + gamma * g;
            if real {
                out[t] = g;
            }
        }
    }
    Ok(out)
}
