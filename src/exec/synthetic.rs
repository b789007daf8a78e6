//! Deterministic synthetic batches with every input a stage reads: plausible log-probabilities
//! (old and reference close to the policy), ragged masks, groups from the sampling settings,
//! reasoning steps, token ids with small rewrites. For tests, benchmarks and `rlx eval --synthetic`.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};

use super::inputs::{Dim, Kind, requirements};
use crate::check::Checked;
use crate::check::params;
use crate::ir::graph::TextName;

pub use crate::rng::Rng;

/// A batch of `b` sequences (rounded up to whole groups) of up to `t` tokens for stage `index`.
pub fn batch(
    checked: &Checked,
    index: usize,
    b: usize,
    t: usize,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let reqs = requirements(checked, index);
    // A stage that does not sample has no groups: each sequence is its own (`n = 1`).
    let n = params::get_num(&checked.stages[index].sample, "n").map_or(1, |n| n.max(1.0) as usize);
    let b = b.div_ceil(n).max(1) * n;
    let t = t.max(2);
    let mut rng = Rng::new(seed);
    let mut out: HashMap<String, Tensor> = HashMap::new();
    // Lengths per text, then masks: right-padded, at least half full.
    let mut lengths: HashMap<String, Vec<usize>> = HashMap::new();
    let mut length_of = |text: &str, rng: &mut Rng| -> Vec<usize> {
        lengths
            .entry(text.to_string())
            .or_insert_with(|| (0..b).map(|_| t / 2 + rng.below(t - t / 2 + 1)).collect())
            .clone()
    };
    let tokens_dim = |r: &super::Requirement| match r.shape.get(1) {
        Some(Dim::Tokens(x)) | Some(Dim::Steps(x)) => x.clone(),
        _ => "response".into(),
    };
    // Per text: a base log-probability, so that policy, old and ref stay close.
    let mut base: HashMap<String, Vec<f64>> = HashMap::new();
    let mut steps: HashMap<String, Vec<Vec<i64>>> = HashMap::new();
    let mut tokens: HashMap<String, Vec<Vec<i64>>> = HashMap::new();
    for r in &reqs {
        let text = tokens_dim(r);
        let lens = length_of(&text, &mut rng);
        let mask: Vec<f64> =
            lens.iter().flat_map(|&l| (0..t).map(move |i| if i < l { 1.0 } else { 0.0 })).collect();
        let values: Vec<f64> = match (r.kind, r.shape.len()) {
            (_, _) if r.name.starts_with("mask") => mask.clone(),
            (Kind::Int, 1) => (0..b).map(|i| (i / n) as f64).collect(),
            (Kind::Int, _) if r.name.starts_with("step_ids") => {
                let ids = steps
                    .entry(text.clone())
                    .or_insert_with(|| step_ids(&lens, t, &mut rng))
                    .clone();
                ids.into_iter().flatten().map(|x| x as f64).collect()
            }
            (Kind::Int, _) => {
                let ids = token_ids(&text, &lens, t, &mut tokens, &mut rng);
                ids.into_iter().flatten().map(|x| x as f64).collect()
            }
            (Kind::Float, 1)
                if r.name.contains("correct") || r.name.contains('.') && !r.name.contains("rm") =>
            {
                (0..b).map(|_| if rng.uniform() < 0.5 { 1.0 } else { 0.0 }).collect()
            }
            (Kind::Float, 1) => (0..b).map(|_| rng.normal()).collect(),
            (Kind::Float, _) if r.name.starts_with("vine_values") => {
                let ids = steps
                    .entry(text.clone())
                    .or_insert_with(|| step_ids(&lens, t, &mut rng))
                    .clone();
                let width = ids.iter().flatten().copied().max().unwrap_or(0).max(0) as usize + 1;
                return_steps(&mut out, r, b, width, &mut rng, device)?;
                continue;
            }
            (Kind::Float, _) => {
                let logp = base
                    .entry(text.clone())
                    .or_insert_with(|| (0..b * t).map(|_| -0.05 - 2.5 * rng.uniform()).collect())
                    .clone();
                let noise = |rng: &mut Rng, s: f64| rng.normal() * s;
                let name = r.name.as_str();
                logp.iter()
                    .zip(&mask)
                    .map(|(lp, m)| {
                        let v = if name.contains(".values") {
                            noise(&mut rng, 1.0)
                        } else if name.contains(".entropy") {
                            3.0 * rng.uniform()
                        } else if name.contains(".keep_prob") || name.contains(".sum_p2") {
                            rng.uniform()
                        } else if name.starts_with("old.") {
                            lp + noise(&mut rng, 0.1)
                        } else if name.starts_with("rollout.") {
                            lp + noise(&mut rng, 0.15)
                        } else if name.starts_with("ref.") {
                            lp + noise(&mut rng, 0.2)
                        } else if name.starts_with("policy.") {
                            *lp
                        } else {
                            lp + noise(&mut rng, 0.3)
                        };
                        v * m
                    })
                    .collect()
            }
        };
        let shape: Vec<usize> = if r.shape.len() == 1 { vec![b] } else { vec![b, t] };
        let tensor = Tensor::from_vec(values, shape, device)?;
        let tensor = match r.kind {
            Kind::Float => tensor.to_dtype(candle_core::DType::F32)?,
            Kind::Int => tensor.to_dtype(candle_core::DType::I64)?,
        };
        out.insert(r.name.clone(), tensor);
    }
    Ok(out)
}

fn return_steps(
    out: &mut HashMap<String, Tensor>,
    r: &super::Requirement,
    b: usize,
    width: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<()> {
    let v: Vec<f32> = (0..b * width).map(|_| rng.uniform() as f32).collect();
    out.insert(r.name.clone(), Tensor::from_vec(v, (b, width), device)?);
    Ok(())
}

/// Each response split into 1–4 contiguous steps; −1 on padding.
fn step_ids(lens: &[usize], t: usize, rng: &mut Rng) -> Vec<Vec<i64>> {
    lens.iter()
        .map(|&l| {
            let k = 1 + rng.below(4.min(l.max(1)));
            (0..t).map(|i| if i < l { (i * k / l.max(1)) as i64 } else { -1 }).collect()
        })
        .collect()
}

/// Random token ids; a rewrite reuses its original's ids with a few edits.
fn token_ids(
    text: &str,
    lens: &[usize],
    t: usize,
    known: &mut HashMap<String, Vec<Vec<i64>>>,
    rng: &mut Rng,
) -> Vec<Vec<i64>> {
    if let Some(ids) = known.get(text) {
        return ids.clone();
    }
    let original = match TextName::parse(text) {
        TextName::Rewrite { of, .. } => Some(of.to_string()),
        TextName::Own(_) => None,
    };
    let ids: Vec<Vec<i64>> = match original.and_then(|o| known.get(&o).cloned()) {
        Some(orig) => orig
            .iter()
            .zip(lens)
            .map(|(row, &l)| {
                (0..t)
                    .map(|i| {
                        if i < l {
                            if rng.uniform() < 0.15 {
                                100 + rng.below(50) as i64
                            } else {
                                row[i.min(row.len() - 1)]
                            }
                        } else {
                            0
                        }
                    })
                    .collect()
            })
            .collect(),
        None => lens
            .iter()
            .map(|&l| (0..t).map(|i| if i < l { rng.below(50) as i64 } else { 0 }).collect())
            .collect(),
    };
    known.insert(text.to_string(), ids.clone());
    ids
}
