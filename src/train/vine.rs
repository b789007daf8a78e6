//! VinePPO's Monte-Carlo values: `k` rollouts from the start of every reasoning step, each
//! continuing the sampled response's KV cache (forked, not recomputed). Identical prefixes — all
//! samples of a prompt share the empty prefix — are estimated once and shared.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::signals::step_starts;
use crate::ir::graph::ScorerRef;
use crate::model::Transformer;
use crate::rng::Rng;
use crate::sample::{Generation, Sampling, continue_from};
use crate::tokenizer::Tok;
use crate::train::scoring::HostScorers;

/// Rollouts per forked batch (bounds memory).
const CHUNK: usize = 512;

/// The distinct step starts of a batch of responses, and which one each step of each row is.
pub struct Prefixes {
    /// (representative row, token offset in its response) of each distinct prefix.
    pub prefixes: Vec<(usize, usize)>,
    /// Per row and step: the prefix whose rollouts estimate the value before that step.
    slot_of: Vec<Vec<Option<usize>>>,
}

/// Step starts of every response (`max_steps` at most per row); identical prefixes (prompt and
/// response so far) — all samples of a prompt share the empty one — are estimated once.
pub fn prefixes(
    prompts: &[Vec<u32>],
    responses: &[Vec<u32>],
    tok: &Tok,
    max_steps: Option<usize>,
    delimiter: &str,
) -> Prefixes {
    let starts: Vec<Vec<usize>> =
        responses.iter().map(|r| step_starts(r, tok, delimiter)).collect();
    let width = starts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut unique: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    let mut slot_of: Vec<Vec<Option<usize>>> = vec![vec![None; width]; responses.len()];
    for (row, st) in starts.iter().enumerate() {
        for (s, &o) in st.iter().enumerate() {
            if max_steps.is_some_and(|m| s >= m) {
                continue;
            }
            let key = [prompts[row].as_slice(), &responses[row][..o]].concat();
            let id = *unique.entry(key).or_insert_with(|| {
                jobs.push((row, o));
                jobs.len() - 1
            });
            slot_of[row][s] = Some(id);
        }
    }
    Prefixes { prefixes: jobs, slot_of }
}

impl Prefixes {
    /// `[B, S]` values from the continuations of each prefix (`outs[j]`: prefix j's rollouts):
    /// the mean reward of prefix ⊕ continuation, every continuation scored in one batch.
    #[allow(clippy::too_many_arguments)]
    pub fn values(
        &self,
        outs: &[Vec<Vec<u32>>],
        responses: &[Vec<u32>],
        prompt_texts: &[String],
        tok: &Tok,
        scorers: HostScorers<'_>,
        reward: &ScorerRef,
        device: &Device,
    ) -> Result<Tensor, String> {
        let mut prompts = Vec::new();
        let mut texts = Vec::new();
        for (j, rollouts) in outs.iter().enumerate() {
            let (row, cut) = self.prefixes[j];
            let prefix = &responses[row][..cut];
            for out in rollouts {
                prompts.push(prompt_texts[row].as_str());
                texts.push(tok.decode(&[prefix, out.as_slice()].concat()));
            }
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let scores = scorers.score(reward, &prompts, &texts)?;
        let mut estimates = vec![0f32; self.prefixes.len()];
        let mut next = scores.into_iter();
        for (j, rollouts) in outs.iter().enumerate() {
            for _ in rollouts {
                estimates[j] += next.next().unwrap_or(0.0) / rollouts.len() as f32;
            }
        }
        let width = self.slot_of.first().map_or(1, Vec::len);
        let flat: Vec<f32> = self
            .slot_of
            .iter()
            .flat_map(|r| r.iter().map(|s| s.map_or(0.0, |id| estimates[id])))
            .collect();
        Tensor::from_vec(flat, (responses.len(), width), device).map_err(|e| e.to_string())
    }
}

/// `[B, S]` values of the state before each step of each response, and the rollouts run.
#[allow(clippy::too_many_arguments)]
pub fn values(
    model: &Transformer,
    tok: &Tok,
    generation: &Generation,
    prompts: &[Vec<u32>],
    prompt_texts: &[String],
    responses: &[Vec<u32>],
    scorers: HostScorers<'_>,
    reward: &ScorerRef,
    k: usize,
    max_steps: Option<usize>,
    delimiter: &str,
    sampling: &Sampling,
    rng: &mut Rng,
    device: &Device,
) -> Result<(Tensor, usize), String> {
    let p = generation.prompt_cols;
    // Column ids of the sampler's cache rows: left-padded prompt, then the response.
    let columns: Vec<Vec<u32>> = prompts
        .iter()
        .zip(responses)
        .map(|(pr, r)| {
            let mut c = vec![0u32; p - pr.len()];
            c.extend(pr);
            c.extend(r);
            c
        })
        .collect();
    let plan = prefixes(prompts, responses, tok, max_steps, delimiter);
    let budget = sampling.max_tokens;
    let mut outs: Vec<Vec<Vec<u32>>> = vec![Vec::with_capacity(k); plan.prefixes.len()];
    let all: Vec<(usize, usize)> =
        (0..plan.prefixes.len()).flat_map(|j| (0..k).map(move |i| (j, i))).collect();
    for chunk in all.chunks(CHUNK) {
        let rws: Vec<usize> = chunk.iter().map(|(j, _)| plan.prefixes[*j].0).collect();
        let cuts: Vec<usize> = chunk.iter().map(|(j, _)| p + plan.prefixes[*j].1).collect();
        let budgets: Vec<usize> =
            cuts.iter().map(|c| budget.saturating_sub(c - p).max(1)).collect();
        let continued = continue_from(
            model,
            tok,
            &generation.cache,
            &columns,
            &rws,
            &cuts,
            &budgets,
            sampling,
            rng,
            device,
        )
        .map_err(|e| e.to_string())?;
        for ((j, _), out) in chunk.iter().zip(continued) {
            outs[*j].push(out);
        }
    }
    let t = plan.values(&outs, responses, prompt_texts, tok, scorers, reward, device)?;
    Ok((t, all.len()))
}
