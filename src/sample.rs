//! Batched generation with a KV cache: temperature, top-p, a token budget, EOS and stop strings.
//! Continuations from intermediate prefixes (VinePPO) fork an existing cache instead of
//! recomputing the prefix.

use candle_core::{Device, Result, Tensor};

use crate::model::layout::positions_and_bias;
use crate::model::{KvCache, Transformer};
use crate::rng::Rng;
use crate::tokenizer::Tok;

/// How to pick tokens.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    /// EOS is not picked before this many tokens (HF's `min_new_tokens`; benchmarks use it so
    /// every row generates exactly `max_tokens`).
    pub min_tokens: usize,
    pub stop: Option<String>,
    /// Always the most likely token (greedy decoding).
    pub greedy: bool,
}

/// Generated responses, with the cache over `[left-padded prompt | response]` columns.
pub struct Generation {
    /// New tokens per row, EOS included where the row ended with it.
    pub tokens: Vec<Vec<u32>>,
    /// The sampler's log-probability of each new token, at the sampling temperature, before
    /// top-p and `min_tokens` (what inference engines return as logprobs).
    pub logps: Vec<Vec<f32>>,
    pub cache: KvCache,
    /// Columns of the left-padded prompts.
    pub prompt_cols: usize,
}

/// Samples one response per prompt.
pub fn generate(
    model: &Transformer,
    tok: &Tok,
    prompts: &[Vec<u32>],
    s: &Sampling,
    rng: &mut Rng,
    device: &Device,
) -> Result<Generation> {
    let b = prompts.len();
    let p = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = vec![tok.pad; b * p];
    let mut valid = vec![false; b * p];
    for (r, pr) in prompts.iter().enumerate() {
        let start = p - pr.len();
        ids[r * p + start..(r + 1) * p].copy_from_slice(pr);
        valid[r * p + start..(r + 1) * p].iter_mut().for_each(|v| *v = true);
    }
    let (positions, bias) = positions_and_bias(&valid, b, p);
    let mut cache = KvCache::new(model.cfg.layers, b);
    for r in 0..b {
        cache.valid[r] = valid[r * p..(r + 1) * p].to_vec();
        cache.next_pos[r] = prompts[r].len() as u32;
    }
    let logits = model.step(
        &Tensor::from_vec(ids, (b, p), device)?,
        &Tensor::from_vec(positions, (b, p), device)?,
        &Tensor::from_vec(bias, (b, 1, p, p), device)?,
        &mut cache,
    )?;
    let budgets = vec![s.max_tokens; b];
    let (tokens, logps) = decode(model, tok, &mut cache, logits, &budgets, s, rng, device)?;
    Ok(Generation { tokens, logps, cache, prompt_cols: p })
}

/// Continues rows of an existing cache: row `i` extends `rows[i]` after its first `cuts[i]`
/// columns (cut ≥ 1) by up to `budgets[i]` tokens. The last prefix token is fed again to get
/// the next-token distribution; everything before it is read from the cache.
#[allow(clippy::too_many_arguments)]
pub fn continue_from(
    model: &Transformer,
    tok: &Tok,
    cache: &KvCache,
    column_ids: &[Vec<u32>],
    rows: &[usize],
    cuts: &[usize],
    budgets: &[usize],
    s: &Sampling,
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<Vec<u32>>> {
    let before: Vec<usize> = cuts.iter().map(|c| c - 1).collect();
    let mut fork = cache.fork(rows, &before)?;
    let first: Vec<u32> = rows.iter().zip(cuts).map(|(&r, &c)| column_ids[r][c - 1]).collect();
    let active = vec![true; rows.len()];
    let logits = feed(model, &mut fork, &first, &active, device)?;
    Ok(decode(model, tok, &mut fork, logits, budgets, s, rng, device)?.0)
}

/// Feeds one token per row (inactive rows feed padding nobody reads) and returns the logits.
fn feed(
    model: &Transformer,
    cache: &mut KvCache,
    tokens: &[u32],
    active: &[bool],
    device: &Device,
) -> Result<Tensor> {
    let b = tokens.len();
    let lk = cache.columns() + 1;
    let mut bias = vec![-1e9f32; b * lk];
    let mut positions = Vec::with_capacity(b);
    for r in 0..b {
        for (j, &v) in cache.valid[r].iter().enumerate() {
            if v {
                bias[r * lk + j] = 0.0;
            }
        }
        bias[r * lk + lk - 1] = 0.0;
        positions.push(cache.next_pos[r].min(model.cfg.context as u32 - 1));
        cache.valid[r].push(active[r]);
        if active[r] {
            cache.next_pos[r] += 1;
        }
    }
    model.step(
        &Tensor::from_vec(tokens.to_vec(), (b, 1), device)?,
        &Tensor::from_vec(positions, (b, 1), device)?,
        &Tensor::from_vec(bias, (b, 1, 1, lk), device)?,
        cache,
    )
}

/// Per row, the log-probability of each new token.
type LogProbs = Vec<Vec<f32>>;

/// The decode loop: pick, append, stop, feed. Returns the tokens and their log-probabilities.
#[allow(clippy::too_many_arguments)]
fn decode(
    model: &Transformer,
    tok: &Tok,
    cache: &mut KvCache,
    mut logits: Tensor,
    budgets: &[usize],
    s: &Sampling,
    rng: &mut Rng,
    device: &Device,
) -> Result<(Vec<Vec<u32>>, LogProbs)> {
    let b = budgets.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut logps: Vec<Vec<f32>> = vec![Vec::new(); b];
    let mut done: Vec<bool> = budgets.iter().map(|&n| n == 0).collect();
    // Never run past the model's context.
    let room = model
        .cfg
        .context
        .saturating_sub(cache.next_pos.iter().copied().max().unwrap_or(0) as usize + 1);
    while done.iter().any(|d| !d) {
        let mut rows = logits.to_vec2::<f32>()?;
        let mut next = vec![tok.pad; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let norm = Normaliser::of(&rows[r], s.temperature);
            if out[r].len() < s.min_tokens {
                for &e in &tok.stops {
                    if let Some(l) = rows[r].get_mut(e as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let t = pick(&rows[r], s, rng, tok.eos);
            next[r] = t;
            out[r].push(t);
            // The picked token's logit is never one `min_tokens` masked.
            logps[r].push(norm.log_prob(rows[r][t as usize]));
            // Decoded whole: byte-level tokens need their neighbours to form text.
            let stopped =
                s.stop.as_ref().is_some_and(|st| tok.decode(&out[r]).ends_with(st.as_str()));
            if tok.is_stop(t) || stopped || out[r].len() >= budgets[r] || out[r].len() >= room {
                done[r] = true;
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        let active: Vec<bool> = done.iter().map(|d| !d).collect();
        logits = feed(model, cache, &next, &active, device)?;
    }
    Ok((out, logps))
}

/// The normaliser of `log softmax(logits / temperature)` over one row of raw logits.
struct Normaliser {
    max: f32,
    t: f32,
    log_z: f32,
}

impl Normaliser {
    fn of(logits: &[f32], temperature: f64) -> Normaliser {
        let t = temperature.max(1e-6) as f32;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = logits.iter().map(|&l| ((l - max) / t).exp()).sum();
        Normaliser { max, t, log_z: z.ln() }
    }

    fn log_prob(&self, logit: f32) -> f32 {
        (logit - self.max) / self.t - self.log_z
    }
}

/// One token from logits: greedy, or temperature + nucleus sampling.
pub fn pick(logits: &[f32], s: &Sampling, rng: &mut Rng, fallback: u32) -> u32 {
    if s.greedy {
        return argmax(logits);
    }
    let t = s.temperature.max(1e-6) as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / t).exp())).collect();
    let z: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    if s.top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p.1;
            if acc >= s.top_p as f32 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() as f32 * total;
    for &(i, p) in &probs {
        if u < p {
            return i;
        }
        u -= p;
    }
    probs.last().map_or(fallback, |p| p.0)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::{Heads, init_params};
    use crate::model::{Layout, ModelConfig};
    use crate::tokenizer::{BOS, EOS};

    /// A random model with weights scaled by `scale` (larger than the initial 0.02, so logits
    /// are far from ties), and the built-in tokenizer.
    fn test_model(seed: u64, scale: f64) -> (Transformer, Tok) {
        let cfg = ModelConfig {
            vocab: 24,
            layers: 2,
            width: 16,
            heads: 2,
            context: 32,
            family: Default::default(),
        };
        let heads = Heads { lm: true, ..Default::default() };
        let params = init_params(&cfg, heads, &mut Rng::new(seed), &Device::Cpu).unwrap();
        for (_, v) in params.iter() {
            v.set(&(v.as_tensor() * scale).unwrap()).unwrap();
        }
        let model = Transformer::frozen(&cfg, &params).unwrap();
        (model, Tok::from_json(&Tok::json(&[])).unwrap())
    }

    /// Greedy decoding with the KV cache picks, at every step, the argmax of a full forward
    /// over `[prompt | tokens so far]`: the cache, positions and padding masks agree with the
    /// trainer's layout, so samples are on-policy for the log-probs the loss reads.
    #[test]
    fn cached_greedy_decoding_matches_the_full_forward() {
        let dev = Device::Cpu;
        let (model, tok) = test_model(3, 20.0);
        let prompts = vec![vec![BOS, 7, 9, 11], vec![BOS, 8], vec![BOS, 13, 6]];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 6,
            min_tokens: 6,
            stop: None,
            greedy: true,
        };
        let g = generate(&model, &tok, &prompts, &s, &mut Rng::new(0), &dev).unwrap();
        assert!(g.tokens.iter().all(|t| t.len() == 6));
        let ctx: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let texts: Vec<&[u32]> = g.tokens.iter().map(Vec::as_slice).collect();
        let layout = Layout::new(&ctx, &texts, &dev).unwrap();
        let hidden = model.hidden_of(&layout, false).unwrap();
        let logits = model.logits(&Transformer::text_states(&hidden, &layout).unwrap()).unwrap();
        let rows = logits.to_vec3::<f32>().unwrap();
        for (r, toks) in g.tokens.iter().enumerate() {
            for (i, &t) in toks.iter().enumerate() {
                let mut l = rows[r][i].clone();
                l[EOS as usize] = f32::NEG_INFINITY; // masked by min_tokens while sampling
                assert_eq!(argmax(&l), t, "row {r}, token {i}");
            }
        }
        // The training path (differentiable ops) gives the same log-probs as inference.
        let a = model.token_logp(&hidden, &layout, 1.0).unwrap();
        let h2 = model.hidden_of(&layout, true).unwrap();
        let b = model.token_logp(&h2, &layout, 1.0).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }

    /// The log-probabilities the sampler records are the trainer's `old.logp` of the same
    /// tokens at the same temperature (up to KV-cache float order): `rollout.logp` ≈ `old.logp`
    /// when the sampler is the trainer.
    #[test]
    fn recorded_log_probs_match_the_full_forward() {
        let dev = Device::Cpu;
        let (model, tok) = test_model(5, 10.0);
        let prompts = vec![vec![BOS, 7, 9], vec![BOS, 8]];
        let s = Sampling {
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 6,
            min_tokens: 2,
            stop: None,
            greedy: false,
        };
        let g = generate(&model, &tok, &prompts, &s, &mut Rng::new(1), &dev).unwrap();
        let ctx: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let texts: Vec<&[u32]> = g.tokens.iter().map(Vec::as_slice).collect();
        let layout = Layout::new(&ctx, &texts, &dev).unwrap();
        let hidden = model.hidden_of(&layout, false).unwrap();
        let full = model.token_logp(&hidden, &layout, 0.7).unwrap().to_vec2::<f32>().unwrap();
        for (r, lps) in g.logps.iter().enumerate() {
            assert_eq!(lps.len(), g.tokens[r].len());
            for (t, lp) in lps.iter().enumerate() {
                assert!(
                    (lp - full[r][t]).abs() < 1e-4,
                    "row {r} token {t}: {lp} vs {}",
                    full[r][t]
                );
            }
        }
    }
}
