//! `step_advantage`: VinePPO's step advantages from Monte-Carlo step values.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "step_advantage",
    summary: "advantage of each reasoning step from the values of the states around it",
    source: "VinePPO (Kazemnejad et al. 2024)",
    family: Family::Advantage,
    formula: "A_i = r_i + V(s_i) − V(s_{i−1}), r only on the last step, V(terminal) = 0",
    inputs: &[
        detached("reward", Level::Seq, "outcome reward of each response"),
        detached("values", Level::Step, "value of the state before each step, from `vine_values`"),
    ],
    output: OutputKind::Tensor(Level::Step),
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let values = ctx.tensor(1)?;
    let reward = host::vec(ctx.tensor(0)?)?;
    let (v, mask) = (host::rows(values)?, host::rows(ctx.input_mask(1)?)?);
    let out: Vec<Vec<f64>> = v
        .iter()
        .zip(&mask)
        .zip(&reward)
        .map(|((v, m), r)| {
            let steps = m.iter().filter(|x| **x != 0.0).count();
            (0..v.len())
                .map(|j| match j.cmp(&steps) {
                    std::cmp::Ordering::Less => {
                        // A_j = r_j + V(s_{j+1}) − V(s_j); the outcome lands on the last step, V(terminal) = 0.
                        let next = if j + 1 < steps { v[j + 1] } else { 0.0 };
                        let r_j = if j + 1 == steps { *r } else { 0.0 };
                        r_j + next - v[j]
                    }
                    _ => 0.0,
                })
                .collect()
        })
        .collect();
    Ok(Value::Tensor(host::from_rows(&out, values)?))
}
