//! `tis`: truncated importance sampling — correcting for a sampler that is not the trainer.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::fused::Fused;
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "tis",
    summary: "truncated importance weight of the trainer over the sampler (vLLM, bf16, stale weights), per token or per sequence",
    source: "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training (Yao et al. 2025); verl `rollout_is` (threshold 2), TRL `vllm_importance_sampling_mode = *_truncate`, OpenRLHF `tis`",
    family: Family::Shaping,
    formula: "Δ = old − rollout;  token: w = min(e^{clamp(Δ, ±20)}, cap);  sequence: w_b = min(e^{clamp(Σ_t Δ·m, ±20)}, cap) on every token;  detached",
    inputs: &[
        detached(
            "old",
            Level::Token,
            "the trainer's log-probabilities at sampling time, `old.logp`",
        ),
        detached("rollout", Level::Token, "the sampler's own log-probabilities, `rollout.logp`"),
    ],
    params: &[
        num("cap", 2.0, Range::Positive, "truncation of the weight (verl 2, TRL 3)"),
        choice(
            "level",
            &["token", "sequence"],
            "token",
            "one weight per token, or one per sequence",
        ),
    ],
    output: OutputKind::Tensor(Level::Token),
    grad: OutputGrad::Never,
    forward: Some(forward),
    peers: &[
        peer(
            "verl 0.9.1",
            "`cap = 2` (`algorithm.rollout_correction.rollout_is_threshold`; `rollout_is = token|sequence` is `level`)",
        ),
        peer(
            "TRL 1.16",
            "`cap = 3` (`vllm_importance_sampling_clip_max`) with `vllm_importance_sampling_mode = token_truncate` or `sequence_truncate`; TRL's own default mode is `sequence_mask` (use `rollout_reject`)",
        ),
    ],
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let w = super::weights(ctx)?;
    Ok(Value::Tensor(w.at_most(ctx.num("cap")?)?.mul(ctx.out_mask()?)?))
}
