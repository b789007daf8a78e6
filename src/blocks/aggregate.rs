//! Aggregations: the explicit reductions from tokens or sequences to a scalar, and from tokens to
//! sequences. Every token-level reduction honours the response mask unless told `mask = none`.

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
    ..AGG
};

pub static TOKEN_SUM: BlockSpec = BlockSpec {
    name: "token_sum",
    summary: "sum over every unmasked token of the batch",
    source: "verl `token-sum`",
    formula: "Σ_{b,t} x·m",
    ..AGG
};

pub static SEQ_MEAN_TOKEN_SUM: BlockSpec = BlockSpec {
    name: "seq_mean_token_sum",
    summary: "sum over each sequence's tokens, then mean over sequences",
    source: "verl `seq-mean-token-sum`; VinePPO's KL term",
    formula: "(1/B) Σ_b Σ_t x·m",
    ..AGG
};

pub static SEQ_MEAN_TOKEN_MEAN: BlockSpec = BlockSpec {
    name: "seq_mean_token_mean",
    summary: "mean over each sequence's tokens, then mean over sequences",
    source: "original GRPO; verl `seq-mean-token-mean`, TRL `grpo`; RTO",
    formula: "(1/B) Σ_b (Σ_t x·m / Σ_t m)",
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
    ..AGG
};

pub static SUM_TOKENS: BlockSpec = BlockSpec {
    name: "sum_tokens",
    summary: "sum over each sequence's tokens, one value per sequence",
    source: "sequence log-probability, summed KL per sequence (TRL RLOO)",
    formula: "out[b] = Σ_t x·m",
    output: OutputKind::Tensor(Level::Seq),
    ..AGG
};

pub static MEAN_TOKENS: BlockSpec = BlockSpec {
    name: "mean_tokens",
    summary: "mean over each sequence's tokens, one value per sequence",
    source: "length-normalised sequence scores (RCfD use case 1)",
    formula: "out[b] = Σ_t x·m / Σ_t m",
    output: OutputKind::Tensor(Level::Seq),
    ..AGG
};

pub static SEQ_MEAN: BlockSpec = BlockSpec {
    name: "seq_mean",
    summary: "mean over sequences",
    source: "sequence-level losses (DPO, reward models)",
    formula: "(1/B) Σ_b x",
    inputs: &[tensor("x", Level::Seq, "per-sequence values")],
    params: &[],
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
    ..AGG
};
