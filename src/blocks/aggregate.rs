//! Aggregations: the explicit reductions from tokens or sequences to a scalar, and from tokens to
//! sequences. Every token-level reduction honours the response mask unless told `mask = none`.

use candle_core::{Result, Tensor};

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

const AGG: BlockSpec = BlockSpec {
    family: Family::Aggregate,
    inputs: &[tensor("x", Level::Token, "per-token values")],
    params: &[MASK],
    output: OutputKind::Tensor(Level::Scalar),
    ..BASE
};

pub static TOKEN_MEAN: BlockSpec = BlockSpec {
    name: "token_mean",
    summary: "mean over every unmasked token of the batch",
    source: "verl `token-mean` (default), TRL `dapo`, OpenRLHF default",
    formula: "Σ_{b,t} x·m / Σ_{b,t} m",
    forward: Some(token_mean),
    ..AGG
};

pub static TOKEN_SUM: BlockSpec = BlockSpec {
    name: "token_sum",
    summary: "sum over every unmasked token of the batch",
    source: "verl `token-sum`",
    formula: "Σ_{b,t} x·m",
    forward: Some(token_sum),
    ..AGG
};

pub static SEQ_MEAN_TOKEN_SUM: BlockSpec = BlockSpec {
    name: "seq_mean_token_sum",
    summary: "sum over each sequence's tokens, then mean over sequences",
    source: "verl `seq-mean-token-sum`; VinePPO's KL term",
    formula: "(1/B) Σ_b Σ_t x·m",
    forward: Some(seq_mean_token_sum),
    ..AGG
};

pub static SEQ_MEAN_TOKEN_MEAN: BlockSpec = BlockSpec {
    name: "seq_mean_token_mean",
    summary: "mean over each sequence's tokens, then mean over sequences",
    source: "original GRPO; verl `seq-mean-token-mean`, TRL `grpo`; RTO",
    formula: "(1/B) Σ_b (Σ_t x·m / Σ_t m)",
    forward: Some(seq_mean_token_mean),
    ..AGG
};

pub static SEQ_MEAN_TOKEN_SUM_NORM: BlockSpec = BlockSpec {
    name: "seq_mean_token_sum_norm",
    summary: "sum over each sequence's tokens divided by a constant, then mean over sequences",
    source: "Dr.GRPO (Liu et al. 2025); verl `seq-mean-token-sum-norm`, TRL `dr_grpo`",
    formula: "(1/B) Σ_b Σ_t x·m / norm",
    params: &[
        ParamSpec {
            name: "norm",
            ty: ParamTy::Float,
            default: DefaultRule::FromSampling("max_tokens"),
            range: Range::Positive,
            doc: "the constant (TRL: `max_completion_length`)",
        },
        MASK,
    ],
    forward: Some(seq_mean_token_sum_norm),
    ..AGG
};

pub static SUM_TOKENS: BlockSpec = BlockSpec {
    name: "sum_tokens",
    summary: "sum over each sequence's tokens, one value per sequence",
    source: "sequence log-probability, summed KL per sequence (TRL RLOO)",
    formula: "out[b] = Σ_t x·m",
    output: OutputKind::Tensor(Level::Seq),
    forward: Some(sum_tokens),
    ..AGG
};

pub static MEAN_TOKENS: BlockSpec = BlockSpec {
    name: "mean_tokens",
    summary: "mean over each sequence's tokens, one value per sequence",
    source: "length-normalised sequence scores (RCfD use case 1)",
    formula: "out[b] = Σ_t x·m / Σ_t m",
    output: OutputKind::Tensor(Level::Seq),
    forward: Some(mean_tokens),
    ..AGG
};

pub static SEQ_MEAN: BlockSpec = BlockSpec {
    name: "seq_mean",
    summary: "mean over sequences",
    source: "sequence-level losses (DPO, reward models)",
    formula: "(1/B) Σ_b x",
    inputs: &[tensor("x", Level::Seq, "per-sequence values")],
    params: &[],
    forward: Some(seq_mean),
    ..AGG
};

pub static SUM: BlockSpec = BlockSpec {
    name: "sum",
    summary: "sum of all unmasked entries, at any level",
    source: "RLMEC's loss numerator",
    formula: "Σ x·m",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Any, GradRule::Any),
        doc: "any value",
    }],
    forward: Some(sum),
    ..AGG
};

pub static MEAN: BlockSpec = BlockSpec {
    name: "mean",
    summary: "mean of all unmasked entries, at any level",
    source: "general",
    formula: "Σ x·m / Σ m",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Any, GradRule::Any),
        doc: "any value",
    }],
    forward: Some(mean),
    ..AGG
};

pub static COUNT_NONZERO: BlockSpec = BlockSpec {
    name: "count_nonzero",
    summary: "number of unmasked non-zero entries, at any level (at least 1)",
    source: "RLMEC: the loss is normalised by the count of tokens with non-zero reward",
    formula: "max(1, Σ m·[x ≠ 0])",
    inputs: &[InputSpec {
        name: "x",
        kind: InputKind::Tensor(LevelRule::Any, GradRule::Any),
        doc: "any value",
    }],
    grad: OutputGrad::Never,
    forward: Some(count_nonzero),
    ..AGG
};

/// `x` with padding replaced by 0, and the mask that counts entries: the response mask, or
/// with `mask = none` every position, padding included (torchrl's `_kl_to_ref`, TRL `bnpo`-style
/// denominators). Padding is *replaced*, not multiplied by 0, as verl's `masked_mean` does: a
/// non-finite value there (the log of a padded probability) must not turn the sum into NaN
/// (inf · 0), and its gradient is an exact 0.
fn masked(ctx: &Ctx) -> Result<(Tensor, Tensor)> {
    let x = ctx.tensor(0)?;
    let m = ctx.input_mask(0)?.to_dtype(x.dtype())?;
    let counted = if ctx.params.iter().any(|p| p.name == "mask") && ctx.choice("mask")? == "none" {
        m.ones_like()?
    } else {
        m.clone()
    };
    let kept = x.kept(&m)?;
    Ok((kept, counted))
}

/// Rows with at least one token, at least 1 (empty rows do not count, as in verl).
fn n_seq(m: &Tensor) -> Result<Tensor> {
    n_seq_of(&m.sum(1)?)
}

/// [`n_seq`] from the rows' token counts.
fn n_seq_of(lengths: &Tensor) -> Result<Tensor> {
    lengths.gt(0.0)?.to_dtype(lengths.dtype())?.sum_all()?.maximum(1.0)
}

fn token_mean(ctx: &Ctx) -> Result<Value> {
    let (x, m) = masked(ctx)?;
    Ok(Value::Tensor(x.sum_all()?.div(&m.sum_all()?.maximum(1.0)?)?))
}

fn token_sum(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(masked(ctx)?.0.sum_all()?))
}

fn seq_mean_token_sum(ctx: &Ctx) -> Result<Value> {
    let (x, m) = masked(ctx)?;
    Ok(Value::Tensor(x.sum_all()?.div(&n_seq(&m)?)?))
}

fn seq_mean_token_mean(ctx: &Ctx) -> Result<Value> {
    let (x, m) = masked(ctx)?;
    let lengths = m.sum(1)?;
    let per_seq = x.sum(1)?.div(&lengths.maximum(1.0)?)?;
    Ok(Value::Tensor(per_seq.sum_all()?.div(&n_seq_of(&lengths)?)?))
}

fn seq_mean_token_sum_norm(ctx: &Ctx) -> Result<Value> {
    let (x, m) = masked(ctx)?;
    Ok(Value::Tensor((x.sum_all()?.div(&n_seq(&m)?)? / ctx.num("norm")?)?))
}

fn sum_tokens(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(masked(ctx)?.0.sum(1)?))
}

fn mean_tokens(ctx: &Ctx) -> Result<Value> {
    let (x, m) = masked(ctx)?;
    Ok(Value::Tensor(x.sum(1)?.div(&m.sum(1)?.maximum(1.0)?)?))
}

fn seq_mean(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(ctx.tensor(0)?.mean_all()?))
}

/// The entries that count at any level: masked for tokens and steps, all for sequences.
fn entries(ctx: &Ctx) -> Result<(Tensor, Tensor)> {
    match ctx.input_level(0) {
        Some(Level::Token | Level::Step) => masked(ctx),
        _ => {
            let x = ctx.tensor(0)?;
            Ok((x.clone(), x.ones_like()?))
        }
    }
}

fn sum(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(entries(ctx)?.0.sum_all()?))
}

fn mean(ctx: &Ctx) -> Result<Value> {
    let (x, m) = entries(ctx)?;
    Ok(Value::Tensor(x.sum_all()?.div(&m.sum_all()?.maximum(1.0)?)?))
}

fn count_nonzero(ctx: &Ctx) -> Result<Value> {
    let (x, m) = entries(ctx)?;
    let nonzero = x.ne(0.0)?.to_dtype(m.dtype())?.mul(&m)?;
    Ok(Value::Tensor(nonzero.sum_all()?.maximum(1.0)?.detach()))
}
