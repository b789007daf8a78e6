//! Batched generation with a KV cache: temperature, top-p, a token budget, EOS and stop strings.
//! Continuations from intermediate prefixes (VinePPO) fork an existing cache instead of
//! recomputing the prefix.

use candle_core::{Device, Result, Tensor};

use crate::model::fastmath::{Kernel, dispatch, exp, max, sum};
use crate::model::layout::{distinct, positions_and_bias};
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
    // Rows that share a prompt (GRPO's n samples per prompt) share its prefill: the prompt is
    // run once and its cache rows copied, as inference engines' prefix caches do.
    let (firsts, row_of) = distinct(prompts.iter().map(Vec::as_slice));
    let unique: Vec<&[u32]> = firsts.iter().map(|&r| prompts[r].as_slice()).collect();
    let u = unique.len();
    let mut ids = vec![tok.pad; u * p];
    let mut valid = vec![false; u * p];
    for (r, pr) in unique.iter().enumerate() {
        let start = p - pr.len();
        ids[r * p + start..(r + 1) * p].copy_from_slice(pr);
        valid[r * p + start..(r + 1) * p].iter_mut().for_each(|v| *v = true);
    }
    let (positions, bias) = positions_and_bias(&valid, u, p);
    // Room for every column the decode can write (it never runs past the context).
    let reserve = (p + s.max_tokens).min(model.cfg.context.max(p));
    let mut cache = KvCache::new(model.cfg.layers, u, reserve);
    for r in 0..u {
        cache.valid[r] = valid[r * p..(r + 1) * p].to_vec();
        cache.next_pos[r] = unique[r].len() as u32;
    }
    let mut logits = model.step(
        &Tensor::from_vec(ids, (u, p), device)?,
        &Tensor::from_vec(positions, (u, p), device)?,
        &Tensor::from_vec(bias, (u, 1, p, p), device)?,
        &mut cache,
    )?;
    if u < b {
        cache = cache.fork(&row_of, &vec![p; b])?;
        let index = row_of.iter().map(|&r| r as u32).collect::<Vec<_>>();
        logits = logits.index_select(&Tensor::from_vec(index, b, device)?, 0)?;
    }
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
    let mut dist = Distribution::default();
    while done.iter().any(|d| !d) {
        let mut rows = logits.to_vec2::<f32>()?;
        let mut next = vec![tok.pad; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let row = &mut rows[r];
            dist.fill(row, s.temperature);
            if out[r].len() < s.min_tokens {
                for &e in &tok.stops {
                    if let Some(l) = row.get_mut(e as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                dist.forbid(&tok.stops);
            }
            let t = if s.greedy { argmax(row) } else { dist.pick(s.top_p, rng, tok.eos) };
            next[r] = t;
            out[r].push(t);
            // The picked token's logit is never one `min_tokens` masked.
            logps[r].push(dist.log_prob(row[t as usize]));
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

/// One row's next-token distribution at the sampling temperature, unnormalised: weights
/// `exp((logit − max) / t)` (a buffer reused across rows and steps).
#[derive(Default)]
struct Distribution {
    weights: Vec<f32>,
    max: f32,
    t: f32,
    /// `log Σ weights` before any token is forbidden (the policy's own normaliser).
    log_z: f32,
    /// `Σ weights` of the tokens that may be drawn.
    z: f32,
}

/// `exp((logit − max) / t)` per token, compiled per instruction set.
struct Weights<'a> {
    out: &'a mut [f32],
    logits: &'a [f32],
    max: f32,
    inv_t: f32,
}

impl Kernel for Weights<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let (max, inv_t) = (self.max, self.inv_t);
        // A masked logit (−∞) weighs exactly 0 (the vectorised `exp` of −∞ is tiny, not 0).
        for (w, &l) in self.out.iter_mut().zip(self.logits) {
            *w = if l == f32::NEG_INFINITY { 0.0 } else { exp((l - max) * inv_t) };
        }
    }
}

/// Weights per partial sum when scanning for the sampled token.
const SCAN_BLOCK: usize = 256;

impl Distribution {
    fn fill(&mut self, logits: &[f32], temperature: f64) {
        self.t = temperature.max(1e-6) as f32;
        self.max = max(logits);
        let (max, inv_t) = (self.max, 1.0 / self.t);
        self.weights.resize(logits.len(), 0.0);
        dispatch(Weights { out: &mut self.weights, logits, max, inv_t });
        self.z = sum(&self.weights);
        self.log_z = self.z.ln();
    }

    /// Excludes tokens from the draw (`min_tokens`' stop tokens); log-probabilities stay
    /// those of the whole distribution. The sum is taken again rather than decreased, which
    /// would cancel when a forbidden token held nearly all the mass.
    fn forbid(&mut self, tokens: &[u32]) {
        let mut any = false;
        for &t in tokens {
            if let Some(w) = self.weights.get_mut(t as usize) {
                *w = 0.0;
                any = true;
            }
        }
        if any {
            self.z = sum(&self.weights);
        }
    }

    /// `log softmax(logits / t)` at one raw logit.
    fn log_prob(&self, logit: f32) -> f32 {
        (logit - self.max) / self.t - self.log_z
    }

    /// A token drawn from the weights, restricted to the nucleus of mass `top_p` (the most
    /// likely tokens, ties in token order, until their mass reaches `top_p`).
    fn pick(&self, top_p: f64, rng: &mut Rng, fallback: u32) -> u32 {
        let (w, z) = (&self.weights, self.z);
        if top_p >= 1.0 {
            // Partial sums per block, then a scan inside the block the draw falls in.
            let mut u = rng.uniform() as f32 * z;
            for (bi, block) in w.chunks(SCAN_BLOCK).enumerate() {
                let mass = sum(block);
                if u < mass {
                    let mut v = u;
                    for (j, &p) in block.iter().enumerate() {
                        if v < p {
                            return (bi * SCAN_BLOCK + j) as u32;
                        }
                        v -= p;
                    }
                    // Rounding put the draw past the block's last weight: that token.
                    return last_positive(block).map_or(fallback, |j| (bi * SCAN_BLOCK + j) as u32);
                }
                u -= mass;
            }
            return last_positive(w).map_or(fallback, |i| i as u32);
        }
        let probs = self.nucleus(top_p, z);
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

    /// The most likely tokens (ties in token order) until their weight reaches `top_p · z`,
    /// with their weights, most likely first.
    fn nucleus(&self, top_p: f64, z: f32) -> Vec<(u32, f32)> {
        let target = top_p as f32 * z;
        // Tokens below z·(1 − top_p)/V hold at most z·(1 − top_p) together, so the nucleus
        // lies among the rest: sort only those (the same order as sorting all of them). Only
        // where rounding keeps their sum below the target are all tokens sorted.
        let floor = z * (1.0 - top_p as f32) / self.weights.len().max(1) as f32;
        let mut probs = self.sorted_from(floor);
        if reach(&probs, target).is_none() && floor > 0.0 {
            probs = self.sorted_from(0.0);
        }
        if let Some(i) = reach(&probs, target) {
            probs.truncate(i + 1);
        }
        probs
    }

    /// Tokens of positive weight at least `floor`, most likely first (ties in token order).
    fn sorted_from(&self, floor: f32) -> Vec<(u32, f32)> {
        let mut probs: Vec<(u32, f32)> = (self.weights.iter().enumerate())
            .filter(|(_, p)| **p >= floor && **p > 0.0)
            .map(|(i, &p)| (i as u32, p))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        probs
    }
}

/// The first index at which the running sum of the weights reaches `target`.
fn reach(probs: &[(u32, f32)], target: f32) -> Option<usize> {
    let mut acc = 0.0;
    probs.iter().position(|p| {
        acc += p.1;
        acc >= target
    })
}

fn last_positive(w: &[f32]) -> Option<usize> {
    w.iter().rposition(|&p| p > 0.0)
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
            classifier_pad: None,
        };
        let heads = Heads { lm: true, ..Default::default() };
        let params = init_params(&cfg, heads, &mut Rng::new(seed), &Device::Cpu).unwrap();
        for (_, v) in params.iter() {
            v.set(&(v.as_tensor() * scale).unwrap()).unwrap();
        }
        let model = Transformer::frozen(&cfg, &params).unwrap();
        (model, Tok::from_json(&Tok::json(&[])).unwrap())
    }

    fn random_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| 3.0 * rng.normal() as f32).collect()
    }

    /// The nucleus from the pre-filtered sort is the one a sort of the whole vocabulary gives.
    #[test]
    fn nucleus_equals_the_full_sort() {
        for (seed, top_p) in [(1, 0.9), (2, 0.5), (3, 0.99), (4, 0.1), (5, 0.999_999)] {
            let logits = random_logits(5000, seed);
            let mut dist = Distribution::default();
            dist.fill(&logits, 0.8);
            let z = sum(&dist.weights);
            let mut all: Vec<(u32, f32)> = (dist.weights.iter().enumerate())
                .filter(|(_, p)| **p > 0.0)
                .map(|(i, &p)| (i as u32, p))
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut acc = 0.0;
            let keep = all
                .iter()
                .position(|p| {
                    acc += p.1;
                    acc >= top_p as f32 * z
                })
                .map_or(all.len(), |i| i + 1);
            all.truncate(keep);
            assert_eq!(dist.nucleus(top_p, z), all, "seed {seed} top_p {top_p}");
        }
    }

    /// Draws follow softmax(logits / t): frequencies within 4 standard errors, masked tokens
    /// never drawn, and nothing outside the nucleus.
    #[test]
    fn draws_follow_the_distribution() {
        let mut logits = random_logits(600, 7);
        logits[3] = f32::NEG_INFINITY;
        let t = 1.3;
        let s = |top_p| Sampling {
            temperature: t,
            top_p,
            max_tokens: 1,
            min_tokens: 0,
            stop: None,
            greedy: false,
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let w: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / t).exp()).collect();
        let z: f64 = w.iter().sum();
        let n = 40_000;
        let mut rng = Rng::new(11);
        let mut dist = Distribution::default();
        dist.fill(&logits, t);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[dist.pick(s(1.0).top_p, &mut rng, 0) as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for (i, &c) in counts.iter().enumerate() {
            let p = w[i] / z;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (c as f64 / n as f64 - p).abs() <= 4.0 * se + 1e-4,
                "token {i}: {c} of {n}, p {p}"
            );
        }
        let nucleus: Vec<u32> = dist.nucleus(0.6, sum(&dist.weights)).iter().map(|p| p.0).collect();
        for _ in 0..2000 {
            assert!(nucleus.contains(&dist.pick(0.6, &mut rng, 0)));
        }
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

    /// Rows sharing a prompt share one prefill; greedy decoding then gives each row what it
    /// gives alone, with the same log-probabilities, mixed with distinct prompts of other lengths.
    #[test]
    fn shared_prompts_share_one_prefill_with_the_same_results() {
        let dev = Device::Cpu;
        let (model, tok) = test_model(9, 10.0);
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 5,
            min_tokens: 5,
            stop: None,
            greedy: true,
        };
        let a = vec![BOS, 7, 9, 11];
        let c = vec![BOS, 13];
        let prompts = vec![a.clone(), a.clone(), c.clone(), a.clone(), c.clone()];
        assert_eq!(distinct(prompts.iter()).1, vec![0, 0, 1, 0, 1]);
        let together = generate(&model, &tok, &prompts, &s, &mut Rng::new(0), &dev).unwrap();
        for (r, pr) in prompts.iter().enumerate() {
            // Alone, padded to the same width as in the batch.
            let alone =
                generate(&model, &tok, &[pr.clone(), a.clone()], &s, &mut Rng::new(0), &dev)
                    .unwrap();
            assert_eq!(together.tokens[r], alone.tokens[0], "row {r}");
            for (x, y) in together.logps[r].iter().zip(&alone.logps[0]) {
                assert!((x - y).abs() < 1e-5, "row {r}: {x} vs {y}");
            }
        }
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
