//! `edit_weights`: per-token weights of a rewrite from the minimum-edit alignment.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value, host};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "edit_weights",
    summary: "weight each token of a rewrite by whether the minimum edit from the original changed it",
    source: "RLMEC (Chen et al. 2024): token Levenshtein alignment, 1.0 edited, 0.5 kept",
    family: Family::Loss,
    formula: "w_j = edited if rewrite token j is inserted or substituted on the alignment path, else kept",
    inputs: &[
        text("original", "the text that was rewritten, usually `response`"),
        text("rewrite", "the rewrite, e.g. `grm.rewrite(response)`"),
    ],
    params: &[
        num("edited", 1.0, Range::NonNegative, "weight of changed tokens"),
        num("kept", 0.5, Range::NonNegative, "weight of kept tokens"),
    ],
    output: OutputKind::Tensor(Level::Token),
    grad: OutputGrad::Never,
    axis_from: Some(1),
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let (original, rewrite) = (ctx.text(0)?, ctx.text(1)?);
    let (Some(a), Some(b)) = (&original.tokens, &rewrite.tokens) else {
        candle_core::bail!(
            "`edit_weights` needs the token ids of `{}` and `{}`",
            original.name,
            rewrite.name
        )
    };
    let (edited, kept) = (ctx.num("edited")?, ctx.num("kept")?);
    let (a, b) = (a.to_vec2::<i64>()?, b.to_vec2::<i64>()?);
    let (ma, mb) = (host::rows(&original.mask)?, host::rows(&rewrite.mask)?);
    let mut out = Vec::with_capacity(b.len());
    for row in 0..b.len() {
        let xs: Vec<i64> =
            a[row].iter().zip(&ma[row]).filter(|(_, m)| **m != 0.0).map(|(t, _)| *t).collect();
        let positions: Vec<usize> = (0..b[row].len()).filter(|&t| mb[row][t] != 0.0).collect();
        let ys: Vec<i64> = positions.iter().map(|&t| b[row][t]).collect();
        let changed = changed_in_target(&xs, &ys);
        let mut w = vec![0.0; b[row].len()];
        for (j, &t) in positions.iter().enumerate() {
            w[t] = if changed[j] { edited } else { kept };
        }
        out.push(w);
    }
    Ok(Value::Tensor(host::from_rows(&out, &rewrite.mask)?))
}

/// Token Levenshtein alignment of `xs` into `ys` (unit costs); marks every token of `ys` that the
/// backtrace inserts or substitutes.
pub(crate) fn changed_in_target(xs: &[i64], ys: &[i64]) -> Vec<bool> {
    let (n, m) = (xs.len(), ys.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let sub = d[i - 1][j - 1] + usize::from(xs[i - 1] != ys[j - 1]);
            d[i][j] = sub.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
        }
    }
    let mut changed = vec![false; m];
    let (mut i, mut j) = (n, m);
    while i > 0 || j > 0 {
        if i > 0 && j > 0 && d[i][j] == d[i - 1][j - 1] + usize::from(xs[i - 1] != ys[j - 1]) {
            changed[j - 1] = xs[i - 1] != ys[j - 1];
            i -= 1;
            j -= 1;
        } else if j > 0 && d[i][j] == d[i][j - 1] + 1 {
            changed[j - 1] = true;
            j -= 1;
        } else {
            i -= 1;
        }
    }
    changed
}
