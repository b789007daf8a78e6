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
    let (rows, mask) = (host::rows(r)?, host::rows(ctx.out_mask()?)?);
    let (gamma, skip) = (ctx.num("gamma")?, ctx.choice("holes")? == "skip");
    let out: Vec<Vec<f64>> =
        rows.iter().zip(&mask).map(|(r, m)| returns_row(r, m, gamma, skip)).collect();
    Ok(Value::Tensor(host::from_rows(&out, r)?))
}

/// Reward-to-go over one response; holes as in `gae`.
pub(crate) fn returns_row(r: &[f64], m: &[f64], gamma: f64, skip: bool) -> Vec<f64> {
    let mut out = vec![0.0; r.len()];
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
    out
}
