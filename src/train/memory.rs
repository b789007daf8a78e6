//! Memory before work: a rough upper estimate of what a stage's largest step allocates, checked
//! against the memory the machine has free, so a batch that cannot fit is refused with a
//! message that says what fits instead of an allocation failure an hour in.

use crate::model::{Family, ModelConfig};

/// Bytes the machine can still give (`MemAvailable`), or `None` where unknown (not Linux).
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// f32 values kept per token for a forward pass, and for its backward (the activations autograd
/// holds): per layer the norms, projections, attention scores over `len` keys and the MLP; the
/// logits and their log-softmax over the vocabulary.
fn per_token(cfg: &ModelConfig, len: usize, training: bool) -> u128 {
    let (d, h, v) = (cfg.width as u128, cfg.heads as u128, cfg.vocab as u128);
    let len = len as u128;
    let layer = match &cfg.family {
        Family::Gpt => 16 * d + 2 * h * len,
        Family::Llama(spec) => {
            let hf = &spec.hf;
            let kv = (hf.kv_heads() * hf.head_dim()) as u128;
            let ff = hf.intermediate_size as u128;
            6 * d + 2 * kv + 4 * ff + 2 * h * len
        }
    };
    // Training keeps every layer's activations; inference one layer's at a time.
    let layers = if training { cfg.layers as u128 } else { 1 };
    layers * layer + 3 * v
}

/// Estimated bytes of one step over `rows` sequences of `len` tokens (saturating: absurd sizes
/// read as `u64::MAX`, never overflow).
pub fn step_bytes(cfg: &ModelConfig, rows: usize, len: usize, training: bool) -> u64 {
    let bytes = 4 * rows as u128 * len as u128 * per_token(cfg, len, training);
    bytes.min(u64::MAX as u128) as u64
}

/// How many rows of `len` tokens fit in `budget` bytes.
pub fn rows_that_fit(cfg: &ModelConfig, len: usize, training: bool, budget: u64) -> usize {
    let one = step_bytes(cfg, 1, len, training).max(1);
    (budget / one) as usize
}

/// Parameters of a built-in model (the GPT trunk, LM head, a score or value head).
pub fn builtin_parameters(cfg: &ModelConfig) -> u64 {
    let (d, v, l, c) =
        (cfg.width as u128, cfg.vocab as u128, cfg.layers as u128, cfg.context as u128);
    let n = 2 * v * d + c * d + l * (12 * d * d + 13 * d) + 2 * d + d + 1;
    n.min(u64::MAX as u128) as u64
}

/// Refuses a model whose weights, gradients and AdamW moments (16 bytes a parameter) cannot
/// fit in the free memory, before any of it is allocated.
pub fn check_parameters(name: &str, parameters: u64) -> Result<(), String> {
    let Some(free) = available() else { return Ok(()) };
    let need = parameters.saturating_mul(16);
    if need > free / 10 * 9 {
        return Err(format!(
            "model `{name}` has {parameters} parameters: training it needs about {} (weights, gradients, AdamW moments); {} is free — use a smaller `width`/`layers`",
            gib(need),
            gib(free)
        ));
    }
    Ok(())
}

/// `12.3 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_grow_with_the_batch_and_fit_inverts_them() {
        let cfg = ModelConfig::preset("tiny", 512).unwrap();
        let one = step_bytes(&cfg, 1, 64, true);
        assert_eq!(step_bytes(&cfg, 8, 64, true), 8 * one);
        assert!(step_bytes(&cfg, 1, 64, false) < one);
        assert_eq!(rows_that_fit(&cfg, 64, true, 10 * one + 1), 10);
    }
}
