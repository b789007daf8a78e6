//! `optimal_baseline`: the optimal token baseline — a per-position group baseline weighted by
//! each trajectory's accumulated variance proxy.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "optimal_baseline",
    summary: "optimal token baseline: reward-to-go minus a per-position group average weighted by accumulated 1 − 2π + Σπ²",
    source: "verl `optimal_token_baseline` (optimal baseline for policy-gradient variance, per token); peers.md B1.11",
    family: Family::Advantage,
    formula: "G = Σ_{t′≥t} r·m;  w_t = 1 − 2·e^{old_t} + Σπ²_t;  W_t = Σ_{t′≤t} w·m;  b_t = Σ_{j∈g} G_jt·W_jt·m_jt / (Σ_{j∈g} W_jt·m_jt + 1e-8) (0 where only a unique longest response is left);  A = (G − b)·m",
    inputs: &[
        detached("rewards", Level::Token, "token rewards, e.g. `at_end(arith.correct(response))`"),
        detached("old", Level::Token, "log-probabilities at sampling time, `old.logp`"),
        detached("sum_p2", Level::Token, "Σ_v π(v)² at each token, `old.sum_p2`"),
    ],
    params: &[],
    output: OutputKind::Tensor(Level::Token),
    demand: Demand::Groups,
    grad: OutputGrad::Never,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let mask = ctx.out_mask()?;
    let (r, old, p2, m) = (
        host::rows(ctx.tensor(0)?)?,
        host::rows(ctx.tensor(1)?)?,
        host::rows(ctx.tensor(2)?)?,
        host::rows(mask)?,
    );
    let (b, t) = (m.len(), m.first().map_or(0, Vec::len));
    let mut g = vec![vec![0.0; t]; b];
    let mut w = vec![vec![0.0; t]; b];
    for i in 0..b {
        let mut acc = 0.0;
        for k in (0..t).rev() {
            if m[i][k] != 0.0 {
                acc += r[i][k];
                g[i][k] = acc;
            }
        }
        let mut cum = 0.0;
        for k in 0..t {
            if m[i][k] != 0.0 {
                cum += 1.0 - 2.0 * old[i][k].min(80.0).exp() + p2[i][k];
                w[i][k] = cum;
            }
        }
    }
    let lengths: Vec<usize> =
        m.iter().map(|row| row.iter().filter(|x| **x != 0.0).count()).collect();
    let mut out = vec![vec![0.0; t]; b];
    for members in host::group_members(&ctx.group_ids()?) {
        let mut sorted: Vec<usize> = members.iter().map(|&i| lengths[i]).collect();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // A unique longest response has no company past the second-longest length.
        let alone_after = match sorted.as_slice() {
            [first, second, ..] if first > second => Some(*second),
            _ => None,
        };
        for k in 0..t {
            let (num, den) = members.iter().fold((0.0, 0.0), |(n, d), &j| {
                (n + g[j][k] * w[j][k] * m[j][k], d + w[j][k] * m[j][k])
            });
            let baseline = match alone_after {
                Some(s) if k >= s => 0.0,
                _ => num / (den + 1e-8),
            };
            for &i in &members {
                if m[i][k] != 0.0 {
                    out[i][k] = g[i][k] - baseline;
                }
            }
        }
    }
    Ok(Value::Tensor(host::from_rows(&out, ctx.tensor(0)?)?))
}
