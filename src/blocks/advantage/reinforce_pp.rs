//! `reinforce_pp`: REINFORCE++, returns whitened over the whole batch.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "reinforce_pp",
    summary: "REINFORCE++: discounted returns whitened over the batch",
    source: "REINFORCE++ (Hu 2025); verl `reinforce_plus_plus`, OpenRLHF `reinforce`",
    family: Family::Advantage,
    formula: "A = whiten_batch(G), G_t = Σ_{k≥t} γ^{k−t} r_k",
    inputs: &[detached("rewards", Level::Token, "token rewards (KL usually folded in)")],
    params: &[
        num("gamma", 1.0, Range::Probability, "discount"),
        num("eps", 1e-8, Range::NonNegative, "added to the variance"),
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
    let mask = host::flat(ctx.out_mask()?)?;
    let (gamma, skip) = (ctx.num("gamma")?, ctx.choice("holes")? == "skip");
    let ret = super::returns::returns(r, &mask, gamma, skip)?;
    // verl: masked whitening over the batch, unbiased variance, (v + eps)^-1/2, then × mask.
    let (mean, var, _) = host::mean_var(&ret, &mask, true);
    let scale = host::inverse_std(var, ctx.num("eps")?, false);
    let out: Vec<f64> = ret.iter().zip(&mask).map(|(x, m)| (x - mean) * scale * m).collect();
    Ok(Value::Tensor(host::from_flat(out, r.dims(), r)?))
}
