//! `optimal_baseline`: the optimal token baseline — a per-position group baseline weighted by
//! each trajectory's accumulated variance proxy.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "optimal_baseline",
    summary: "optimal token baseline: reward-to-go minus a per-position group average weighted by accumulated 1 − 2π + Σπ²",
    source: "verl `optimal_token_baseline` (`compute_optimal_token_baseline_advantage`, verl/trainer/ppo/core_algos.py, 0.9.1: `handle_zero_tail` on, no rollout IS weights); peers.md B1.11",
    family: Family::Advantage,
    formula: "G = Σ_{t′≥t} r·m;  w_t = 1 − 2·e^{old_t} + Σπ²_t;  W_t = Σ_{t′≤t} w·m;  b_t = Σ_{j∈g} G_jt·W_jt·m_jt / (Σ_{j∈g} W_jt·m_jt + 1e-8);  the unique longest response's b_t = 0 from t = the second-longest length;  a group of one: b = 0;  A = (G − b)·m",
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
    peers: &[peer(
        "verl 0.9.1",
        "the block as is: `optimal_token_baseline` with `handle_zero_tail` on and no rollout IS weights; the exp of the old log-probability is capped at e^80 (never reached by log-probabilities ≤ 0)",
    )],
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
        let tail = zero_tail(&members, &lengths);
        for k in 0..t {
            // A group of one has no baseline: its advantage is the reward-to-go (verl skips it).
            let shared = if members.len() == 1 {
                0.0
            } else {
                let (num, den) = members.iter().fold((0.0, 0.0), |(n, d), &j| {
                    (n + g[j][k] * w[j][k] * m[j][k], d + w[j][k] * m[j][k])
                });
                num / (den + 1e-8)
            };
            for &i in &members {
                if m[i][k] != 0.0 {
                    let baseline = match tail {
                        Some((longest, from)) if i == longest && k >= from => 0.0,
                        _ => shared,
                    };
                    out[i][k] = g[i][k] - baseline;
                }
            }
        }
    }
    Ok(Value::Tensor(host::from_rows(&out, ctx.tensor(0)?)?))
}

/// verl's `handle_zero_tail` (on in 0.9.1): when one member is strictly the group's longest
/// (counting its real tokens), its baseline is 0 from the position equal to the second-longest
/// length on, where it has no company. Only that member's: a shorter member with holes in its
/// mask may still have real tokens there, and keeps the group baseline. Returns the member and
/// the first position.
fn zero_tail(members: &[usize], lengths: &[usize]) -> Option<(usize, usize)> {
    let mut sorted: Vec<usize> = members.iter().map(|&i| lengths[i]).collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    match sorted.as_slice() {
        [first, second, ..] if first > second => {
            members.iter().find(|&&i| lengths[i] == *first).map(|&i| (i, *second))
        }
        _ => None,
    }
}
