//! VinePPO's Monte-Carlo values: `k` rollouts from the start of every reasoning step, each
//! continuing the sampled response's KV cache (forked, not recomputed). Identical prefixes — all
//! samples of a prompt share the empty prefix — are estimated once and shared.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::signals::step_starts;
use crate::model::Transformer;
use crate::rng::Rng;
use crate::sample::{Generation, Sampling, continue_from};
use crate::tasks::Task;
use crate::tokenizer::Tok;

/// Rollouts per forked batch (bounds memory).
const CHUNK: usize = 512;

/// `[B, S]` values of the state before each step of each response, and the rollouts run.
#[allow(clippy::too_many_arguments)]
pub fn values(
    model: &Transformer,
    tok: &Tok,
    generation: &Generation,
    prompts: &[Vec<u32>],
    prompt_texts: &[String],
    responses: &[Vec<u32>],
    task: &Task,
    member: &str,
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
    let starts: Vec<Vec<usize>> =
        responses.iter().map(|r| step_starts(r, tok, delimiter)).collect();
    let width = starts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    // Unique prefixes (prompt + response so far) → (representative row, cut).
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
                jobs.push((row, p + o));
                jobs.len() - 1
            });
            slot_of[row][s] = Some(id);
        }
    }
    let budget = sampling.max_tokens;
    let mut estimates = vec![0f32; jobs.len()];
    let all: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, _)| (0..k).map(move |i| (j, i))).collect();
    for chunk in all.chunks(CHUNK) {
        let rws: Vec<usize> = chunk.iter().map(|(j, _)| jobs[*j].0).collect();
        let cuts: Vec<usize> = chunk.iter().map(|(j, _)| jobs[*j].1).collect();
        let budgets: Vec<usize> =
            cuts.iter().map(|c| budget.saturating_sub(c - p).max(1)).collect();
        let outs = continue_from(
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
        for ((j, _), out) in chunk.iter().zip(outs) {
            let (row, cut) = jobs[*j];
            let prefix = &responses[row][..cut - p];
            let text = tok.decode(&[prefix, out.as_slice()].concat());
            estimates[*j] += task.verify(member, &prompt_texts[row], &text) / k as f32;
        }
    }
    let flat: Vec<f32> =
        slot_of.iter().flat_map(|r| r.iter().map(|s| s.map_or(0.0, |id| estimates[id]))).collect();
    let t = Tensor::from_vec(flat, (responses.len(), width), device).map_err(|e| e.to_string())?;
    Ok((t, all.len()))
}
