//! Every recipe's final-stage objective written directly in candle, without the executor or the
//! block library: the baseline of the overhead benchmark, and an independent numeric check of
//! the executor (`tests/handwritten.rs`). The batch holds the same names `rlx eval` reads.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor};

pub type Batch = HashMap<String, Tensor>;

static FUSED: AtomicBool = AtomicBool::new(false);

/// Clamps and element-wise max/min through rlx's fused kernels (`rlx::blocks::fused`, the ones
/// the blocks use) instead of candle's composed ops: with it the benchmark compares the same
/// arithmetic and isolates the executor's own cost. Values are bit-identical either way.
pub fn use_fused_kernels(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Clamps and extrema, by candle's ops or by the fused kernels.
trait Kernels {
    fn clip(&self, lo: f64, hi: f64) -> Result<Tensor>;
    fn clip_lo(&self, lo: f64) -> Result<Tensor>;
    fn clip_hi(&self, hi: f64) -> Result<Tensor>;
    fn max_t(&self, other: &Tensor) -> Result<Tensor>;
    fn min_t(&self, other: &Tensor) -> Result<Tensor>;
}

impl Kernels for Tensor {
    fn clip(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if FUSED.load(Ordering::Relaxed) {
            return rlx::blocks::fused::clamp(self, Some(lo), Some(hi));
        }
        self.clamp(lo, hi)
    }
    fn clip_lo(&self, lo: f64) -> Result<Tensor> {
        if FUSED.load(Ordering::Relaxed) {
            return rlx::blocks::fused::clamp(self, Some(lo), None);
        }
        self.maximum(lo)
    }
    fn clip_hi(&self, hi: f64) -> Result<Tensor> {
        if FUSED.load(Ordering::Relaxed) {
            return rlx::blocks::fused::clamp(self, None, Some(hi));
        }
        self.minimum(hi)
    }
    fn max_t(&self, other: &Tensor) -> Result<Tensor> {
        if FUSED.load(Ordering::Relaxed) {
            return rlx::blocks::fused::maximum(self, other);
        }
        self.maximum(other)
    }
    fn min_t(&self, other: &Tensor) -> Result<Tensor> {
        if FUSED.load(Ordering::Relaxed) {
            return rlx::blocks::fused::minimum(self, other);
        }
        self.minimum(other)
    }
}

/// The objective of a recipe's last stage, by recipe file stem.
pub fn objective(recipe: &str, b: &Batch) -> Result<Tensor> {
    match recipe {
        "ppo" => ppo(b),
        "grpo" => grpo(b, "arith.correct(response)"),
        "gsm8k_grpo" => grpo(b, "gsm8k.correct(response)"),
        "rloo" => rloo(b),
        "reinforce" => reinforce(b),
        "remax" => remax(b),
        "dpo" => dpo(b),
        // The Yes/No head changes how `rm(...)` is computed, an input here; the objective is RCfD's.
        "rcfd" | "rcfd_yes_no" => rcfd(b),
        "rm_max" => rm_max(b, 0.0),
        "rm_max_kl" => rm_max(b, 0.05),
        "rm_max_kl_strong" => rm_max(b, 0.2),
        "ppo_reviews" => ppo_reviews(b),
        "a2c_reviews" => a2c_reviews(b),
        "ppo_critic" => ppo_critic(b),
        "ppo_rm" => ppo_rm(b),
        "rlmec_seq" => rlmec_seq(b),
        "rlmec_token_only" => rlmec_token_only(b),
        "vineppo" => vineppo(b),
        "rlmec" => rlmec(b),
        "sppo" => sppo(b),
        "sa2c" => sa2c(b),
        "rto" => rto(b),
        // The server forms: the reward model a Yes/No head (how `rm(...)` is computed, an input
        // here) and the value head a critic of its own, read as `critic.values`.
        "rto_tinker" | "sppo_tinker" | "sa2c_tinker" => {
            let mut b = b.clone();
            let values = b.get("critic.values").cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("{recipe}: no `critic.values` input"))
            })?;
            b.insert("policy.values".into(), values);
            objective(recipe.trim_end_matches("_tinker"), &b)
        }
        "dapo" => dapo(b),
        "dr_grpo" => dr_grpo(b),
        "gspo" => gspo(b),
        "gmpo" => gmpo(b),
        "cispo" => cispo(b),
        "sapo" => sapo(b),
        "opo" => opo(b),
        "gpg" => gpg(b),
        "grpo_passk" => grpo_passk(b),
        "kl_cov" => kl_cov(b),
        "clip_cov" => clip_cov(b),
        "dppo" => dppo(b),
        "grpo_tis" => grpo_tis(b),
        "gdpo" => gdpo(b),
        "opd" => opd(b),
        "grpo_otb" => grpo_otb(b),
        "grpo_verl" => grpo_verl(b),
        "grpo_trl" => grpo_trl(b),
        "grpo_openrlhf" => grpo_openrlhf(b),
        "grpo_nemorl" => grpo_nemorl(b),
        "ppo_verl" => ppo_verl(b),
        "ppo_trl" => ppo_trl(b),
        "ppo_openrlhf" => ppo_openrlhf(b),
        "dpo_trl" => dpo_variant(b, "sigmoid", 0.0),
        "dpo_cdpo" => dpo_variant(b, "sigmoid", 0.1),
        "dpo_robust" => dpo_variant(b, "robust", 0.1),
        "dpo_ipo" => dpo_variant(b, "ipo", 0.0),
        "dpo_hinge" => dpo_variant(b, "hinge", 0.0),
        "simpo" => simpo(b),
        "orpo" => orpo(b),
        "kto" => kto(b),
        other => candle_core::bail!("no hand-written objective for {other}"),
    }
}

fn g<'a>(b: &'a Batch, k: &str) -> &'a Tensor {
    &b[k]
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    t.to_dtype(DType::F32)?.to_vec2::<f32>()
}

fn vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.to_vec1::<f32>()
}

fn tensor2(v: Vec<Vec<f32>>, like: &Tensor) -> Result<Tensor> {
    Tensor::new(v, like.device())
}

fn masked_mean(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    x.mul(m)?.sum_all()?.div(&m.sum_all()?)
}

fn seq_mean_token_mean(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    x.mul(m)?.sum(1)?.div(&m.sum(1)?)?.mean_all()
}

fn ppo_clip(logp: &Tensor, old: &Tensor, adv: &Tensor, eps: f64) -> Result<Tensor> {
    let ratio = logp.sub(old)?.clip(-20.0, 20.0)?.exp()?;
    let a = adv.mul(&ratio)?.neg()?;
    let b = adv.mul(&ratio.clip(1.0 - eps, 1.0 + eps)?)?.neg()?;
    a.max_t(&b)
}

/// k3 with the log-ratio clamped to ±20, as rlx's `kl` computes it (against exp overflow).
fn k3(logp: &Tensor, reference: &Tensor) -> Result<Tensor> {
    let x = logp.sub(reference)?.neg()?.clip(-20.0, 20.0)?;
    (x.exp()? - x)? - 1.0
}

fn value_loss(v: &Tensor, old: &Tensor, target: &Tensor, clip: Option<f64>) -> Result<Tensor> {
    let e = v.sub(target)?.sqr()?;
    let e = match clip {
        Some(c) => e.max_t(&(old + v.sub(old)?.clip(-c, c)?)?.sub(target)?.sqr()?)?,
        None => e,
    };
    e * 0.5
}

fn last_token(m: &Tensor, x: &Tensor) -> Result<Tensor> {
    let onehot: Vec<Vec<f32>> = rows(m)?
        .into_iter()
        .map(|r| {
            let last = r.iter().rposition(|v| *v != 0.0);
            (0..r.len()).map(|t| if Some(t) == last { 1.0 } else { 0.0 }).collect()
        })
        .collect();
    tensor2(onehot, m)?.broadcast_mul(&x.unsqueeze(1)?)
}

fn gae(r: &Tensor, v: &Tensor, m: &Tensor, gamma: f32, lambda: f32) -> Result<Tensor> {
    let (r, v, m2) = (rows(r)?, rows(v)?, rows(m)?);
    let mut out = vec![vec![0.0f32; r[0].len()]; r.len()];
    for b in 0..r.len() {
        let (mut next, mut acc) = (0.0, 0.0);
        for t in (0..r[b].len()).rev() {
            if m2[b][t] == 0.0 {
                continue;
            }
            acc = r[b][t] + gamma * next - v[b][t] + gamma * lambda * acc;
            next = v[b][t];
            out[b][t] = acc;
        }
    }
    tensor2(out, m)
}

fn whiten_tokens(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let n = m.sum_all()?.to_scalar::<f32>()? as f64;
    let mean = x.mul(m)?.sum_all()?.to_scalar::<f32>()? as f64 / n;
    let var = (x - mean)?.sqr()?.mul(m)?.sum_all()?.to_scalar::<f32>()? as f64 / (n - 1.0);
    ((x - mean)? / (var + 1e-8).sqrt())?.mul(m)
}

fn zscore_groups(r: &[f32], groups: &[i64], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; r.len()];
    let max = groups.iter().copied().max().unwrap_or(0);
    for grp in 0..=max {
        let idx: Vec<usize> = (0..r.len()).filter(|&i| groups[i] == grp).collect();
        if idx.len() < 2 {
            continue;
        }
        let n = idx.len() as f32;
        let mean = idx.iter().map(|&i| r[i]).sum::<f32>() / n;
        let std = (idx.iter().map(|&i| (r[i] - mean).powi(2)).sum::<f32>() / (n - 1.0)).sqrt();
        for &i in &idx {
            out[i] = if std + eps == 0.0 { 0.0 } else { (r[i] - mean) / (std + eps) };
        }
    }
    out
}

fn ppo(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.mul(m)?;
    let r = (last_token(m, g(b, "arith.correct(response)"))? - (kl * 0.05)?)?;
    let adv = gae(&r, g(b, "old.values"), m, 1.0, 0.95)?;
    let pg = masked_mean(
        &ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &whiten_tokens(&adv, m)?, 0.2)?,
        m,
    )?;
    let vl = masked_mean(
        &value_loss(
            g(b, "policy.values"),
            g(b, "old.values"),
            &(&adv + g(b, "old.values"))?,
            Some(0.2),
        )?,
        m,
    )?;
    pg + (vl * 0.5)?
}

/// GRPO with the verifier's reward under `reward`.
fn grpo(b: &Batch, reward: &str) -> Result<Tensor> {
    let m = g(b, "mask");
    let groups = g(b, "group").to_vec1::<i64>()?;
    let adv = zscore_groups(&vec(g(b, reward))?, &groups, 1e-6);
    let adv = Tensor::new(adv, m.device())?.unsqueeze(1)?.broadcast_mul(m)?;
    let per_token = (ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?
        + (k3(g(b, "policy.logp"), g(b, "ref.logp"))? * 0.04)?)?;
    seq_mean_token_mean(&per_token, m)
}

fn rloo(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let kl = vec(&g(b, "old.logp").sub(g(b, "ref.logp"))?.mul(m)?.sum(1)?)?;
    let r: Vec<f32> =
        vec(g(b, "arith.correct(response)"))?.iter().zip(&kl).map(|(c, k)| c - 0.05 * k).collect();
    let groups = g(b, "group").to_vec1::<i64>()?;
    let mut adv = vec![0.0f32; r.len()];
    for (i, gi) in groups.iter().enumerate() {
        let others: Vec<f32> =
            (0..r.len()).filter(|&j| j != i && groups[j] == *gi).map(|j| r[j]).collect();
        adv[i] = r[i] - others.iter().sum::<f32>() / others.len() as f32;
    }
    let adv = Tensor::new(adv, m.device())?.unsqueeze(1)?.broadcast_mul(m)?;
    masked_mean(&adv.mul(g(b, "policy.logp"))?.neg()?, m)
}

fn reinforce(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.mul(m)?;
    let r = rows(&(last_token(m, g(b, "arith.correct(response)"))? - (kl * 0.01)?)?)?;
    let mask = rows(m)?;
    let ret: Vec<Vec<f32>> = r
        .iter()
        .zip(&mask)
        .map(|(row, mr)| {
            let mut acc = 0.0;
            let mut out = vec![0.0; row.len()];
            for t in (0..row.len()).rev() {
                if mr[t] != 0.0 {
                    acc += row[t];
                    out[t] = acc;
                }
            }
            out
        })
        .collect();
    let adv = whiten_tokens(&tensor2(ret, m)?, m)?;
    masked_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?, m)
}

fn remax(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let adv = g(b, "arith.correct(response)")
        .sub(g(b, "arith.correct(greedy)"))?
        .unsqueeze(1)?
        .broadcast_mul(m)?;
    let t = (adv.mul(g(b, "policy.logp"))?.neg()?
        + (k3(g(b, "policy.logp"), g(b, "ref.logp"))? * 0.01)?)?;
    masked_mean(&t, m)
}

fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    // −softplus(−x) = −ln(1 + e^{−x}), from the side where the exponent is ≤ 0.
    let neg = x.lt(0.0)?;
    let pos_side = (x.clip_lo(0.0)?.neg()?.exp()? + 1.0)?.log()?.neg()?;
    let neg_side = x.clip_hi(0.0)?.sub(&(x.clip_hi(0.0)?.exp()? + 1.0)?.log()?)?;
    neg.where_cond(&neg_side, &pos_side)
}

fn dpo(b: &Batch) -> Result<Tensor> {
    let sum = |k: &str, m: &str| g(b, k).mul(g(b, m))?.sum(1);
    let logits = ((sum("policy.logp(chosen)", "mask(chosen)")?
        - sum("ref.logp(chosen)", "mask(chosen)")?)?
        - (sum("policy.logp(rejected)", "mask(rejected)")?
            - sum("ref.logp(rejected)", "mask(rejected)")?)?)?;
    log_sigmoid(&(logits * 0.1)?)?.neg()?.mean_all()
}

fn rcfd(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let r = g(b, "rm(response)").sub(g(b, "rm(demonstration)"))?.sqr()?.neg()?;
    let n = r.dims1()? as f64;
    let mean = r.mean_all()?.to_scalar::<f32>()? as f64;
    let var = (&r - mean)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / (n - 1.0);
    let adv = ((&r - mean)? / (var + 1e-8).sqrt())?.unsqueeze(1)?.broadcast_mul(m)?;
    masked_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.3)?, m)
}

/// rcfd.rlx with the learned reward (minus β × each response's summed k1 KL) maximised.
fn rm_max(b: &Batch, beta: f64) -> Result<Tensor> {
    let m = g(b, "mask");
    let r = if beta == 0.0 {
        g(b, "rm(response)").clone()
    } else {
        let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.mul(m)?.sum(1)?;
        (g(b, "rm(response)") - (kl * beta)?)?
    };
    let n = r.dims1()? as f64;
    let mean = r.mean_all()?.to_scalar::<f32>()? as f64;
    let var = (&r - mean)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / (n - 1.0);
    let adv = ((&r - mean)? / (var + 1e-8).sqrt())?.unsqueeze(1)?.broadcast_mul(m)?;
    masked_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.3)?, m)
}

fn vineppo(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let ids = g(b, "step_ids").to_vec2::<i64>()?;
    let v = rows(g(b, "vine_values"))?;
    let r = vec(g(b, "arith.correct(response)"))?;
    let mask = rows(m)?;
    let mut adv = vec![vec![0.0f32; ids[0].len()]; ids.len()];
    for row in 0..ids.len() {
        let steps = (ids[row].iter().copied().max().unwrap_or(-1) + 1) as usize;
        let step_adv: Vec<f32> = (0..steps)
            .map(|j| {
                let next = if j + 1 < steps { v[row][j + 1] } else { 0.0 };
                let reward = if j + 1 == steps { r[row] } else { 0.0 };
                reward + next - v[row][j]
            })
            .collect();
        for t in 0..ids[row].len() {
            if ids[row][t] >= 0 && mask[row][t] != 0.0 {
                adv[row][t] = step_adv[ids[row][t] as usize];
            }
        }
    }
    let adv = whiten_tokens(&tensor2(adv, m)?, m)?;
    let pg = masked_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?, m)?;
    let kl = k3(g(b, "policy.logp"), g(b, "ref.logp"))?.clip(0.0, 10.0)?.mul(m)?;
    let rows_with_tokens = m.sum(1)?.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?;
    pg + (kl.sum_all()?.div(&rows_with_tokens)? * 1e-4)?
}

/// vineppo.rlx with GAE (λ = γ = 1) on a learned critic in place of the Monte-Carlo values.
fn ppo_critic(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let r = last_token(m, g(b, "arith.correct(response)"))?;
    let adv = gae(&r, g(b, "old.values"), m, 1.0, 1.0)?;
    let pg = masked_mean(
        &ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &whiten_tokens(&adv, m)?, 0.2)?,
        m,
    )?;
    let kl = k3(g(b, "policy.logp"), g(b, "ref.logp"))?.clip(0.0, 10.0)?.mul(m)?;
    let rows_with_tokens = m.sum(1)?.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?;
    let vl = value_loss(
        g(b, "policy.values"),
        g(b, "old.values"),
        &(&adv + g(b, "old.values"))?,
        Some(0.2),
    )?;
    (pg + (kl.sum_all()?.div(&rows_with_tokens)? * 1e-4)?)? + (masked_mean(&vl, m)? * 0.5)?
}

/// RLMEC's token-reward policy gradient: the rewriter's clipped keep-probability rewards
/// through the ratio-to-π0 clip, summed and divided by the rewarded tokens.
fn rlmec_token_pg(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let keep = (g(b, "grm.keep_prob") - 0.5)?;
    let correct = g(b, "arith.correct(response)").ge(0.5)?.to_dtype(DType::F32)?.unsqueeze(1)?;
    let r = (keep.clip(0.0, 0.5)?.broadcast_mul(&correct)?
        + keep.clip(-0.1, 0.0)?.broadcast_mul(&correct.affine(-1.0, 1.0)?)?)?
    .mul(m)?;
    let logp = g(b, "policy.logp");
    let ratio = logp.sub(g(b, "ref.logp"))?.exp()?;
    let w = ratio.mul(&r)?.min_t(&ratio.clip(0.7, 1.3)?.mul(&r)?)?.detach();
    let nonzero = r.ne(0.0)?.to_dtype(DType::F32)?.mul(m)?.sum_all()?.clip_lo(1.0)?;
    w.mul(logp)?.neg()?.mul(m)?.sum_all()?.div(&nonzero)
}

fn rlmec_token_only(b: &Batch) -> Result<Tensor> {
    rlmec_token_pg(b)
}

fn rlmec(b: &Batch) -> Result<Tensor> {
    let pg = rlmec_token_pg(b)?;
    let m = g(b, "mask");
    // Imitation: weights from the token Levenshtein alignment of the response into the rewrite.
    let fix_mask = g(b, "mask(grm.rewrite(response))");
    let (a, f) =
        (g(b, "tokens").to_vec2::<i64>()?, g(b, "tokens(grm.rewrite(response))").to_vec2::<i64>()?);
    let (ma, mf) = (rows(m)?, rows(fix_mask)?);
    let mut weights = vec![vec![0.0f32; f[0].len()]; f.len()];
    for row in 0..f.len() {
        let xs: Vec<i64> =
            (0..a[row].len()).filter(|&t| ma[row][t] != 0.0).map(|t| a[row][t]).collect();
        let pos: Vec<usize> = (0..f[row].len()).filter(|&t| mf[row][t] != 0.0).collect();
        let ys: Vec<i64> = pos.iter().map(|&t| f[row][t]).collect();
        let changed = levenshtein_changed(&xs, &ys);
        for (j, &t) in pos.iter().enumerate() {
            weights[row][t] = if changed[j] { 1.0 } else { 0.5 };
        }
    }
    let w = tensor2(weights, fix_mask)?;
    // Only rewrites the verifier accepts, as a token mean over them.
    let ok = g(b, "arith.correct(grm.rewrite(response))");
    let nll = w.mul(g(b, "policy.logp(grm.rewrite(response))"))?.neg()?.mul(fix_mask)?.sum(1)?;
    let tokens = fix_mask.sum(1)?.mul(ok)?.sum_all()?.clip(1.0, 1e9)?;
    let imitation = nll.mul(ok)?.sum_all()?.div(&tokens)?;
    pg + imitation
}

/// rlmec.rlx's policy gradient on a leave-one-out sequence advantage; no rewriter.
fn rlmec_seq(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let r = vec(g(b, "arith.correct(response)"))?;
    let groups = g(b, "group").to_vec1::<i64>()?;
    let adv: Vec<f32> = (0..r.len())
        .map(|i| {
            let others: Vec<f32> =
                (0..r.len()).filter(|&j| j != i && groups[j] == groups[i]).map(|j| r[j]).collect();
            if others.is_empty() {
                0.0
            } else {
                r[i] - others.iter().sum::<f32>() / others.len() as f32
            }
        })
        .collect();
    let adv = Tensor::new(adv, m.device())?.unsqueeze(1)?.broadcast_mul(m)?;
    let logp = g(b, "policy.logp");
    let ratio = logp.sub(g(b, "ref.logp"))?.exp()?;
    let w = ratio.mul(&adv)?.min_t(&ratio.clip(0.7, 1.3)?.mul(&adv)?)?.detach();
    masked_mean(&w.mul(logp)?.neg()?, m)
}

fn levenshtein_changed(xs: &[i64], ys: &[i64]) -> Vec<bool> {
    let (n, m) = (xs.len(), ys.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    (0..=n).for_each(|i| d[i][0] = i);
    (0..=m).for_each(|j| d[0][j] = j);
    for i in 1..=n {
        for j in 1..=m {
            d[i][j] = (d[i - 1][j - 1] + usize::from(xs[i - 1] != ys[j - 1]))
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
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

/// The reviews actor-critics' advantage: the RM score at the last token minus 0.001 × k1 KL,
/// through GAE (γ 0.99, λ 0.95).
fn reviews_advantage(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.mul(m)?;
    let r = (last_token(m, g(b, "rm(response)"))? - (kl * 0.001)?)?;
    gae(&r, g(b, "old.values"), m, 0.99, 0.95)
}

/// A token-mean policy loss plus half the token-mean value loss (clipped for the PPO variants).
fn with_value_loss(b: &Batch, policy: &Tensor, adv: &Tensor, clip: Option<f64>) -> Result<Tensor> {
    let m = g(b, "mask");
    let target = (adv + g(b, "old.values"))?;
    let vl = value_loss(g(b, "policy.values"), g(b, "old.values"), &target, clip)?;
    masked_mean(policy, m)? + (masked_mean(&vl, m)? * 0.5)?
}

fn symmetric(b: &Batch, reverse_ppo: bool) -> Result<Tensor> {
    let m = g(b, "mask");
    let adv = reviews_advantage(b)?;
    let logp = g(b, "policy.logp");
    let omega = (1.0 - logp.exp()?)?;
    let policy = if reverse_ppo {
        let a = whiten_tokens(&adv, m)?;
        let old = g(b, "old.logp");
        let ratio = logp.sub(old)?.exp()?.detach();
        let inside =
            ratio.ge(0.8)?.to_dtype(DType::F32)?.mul(&ratio.le(1.2)?.to_dtype(DType::F32)?)?;
        let unclipped = ratio.mul(&a)?.le(&ratio.clip(0.8, 1.2)?.mul(&a)?)?.to_dtype(DType::F32)?;
        let f = inside.max_t(&unclipped)?;
        let rce = f.mul(&a)?.mul(&omega)?.div(&old.exp()?)?;
        ((ppo_clip(logp, old, &a, 0.2)? * 0.5)? + (rce * 0.4)?)?
    } else {
        ((adv.mul(logp)?.neg()? * 0.5)? + (adv.mul(&omega)? * 0.4)?)?
    };
    with_value_loss(b, &policy, &adv, reverse_ppo.then_some(0.2))
}

/// sppo.rlx and sa2c.rlx without the reverse-cross-entropy term.
fn reviews_actor_critic(b: &Batch, ppo: bool) -> Result<Tensor> {
    let m = g(b, "mask");
    let adv = reviews_advantage(b)?;
    let logp = g(b, "policy.logp");
    let policy = if ppo {
        ppo_clip(logp, g(b, "old.logp"), &whiten_tokens(&adv, m)?, 0.2)?
    } else {
        adv.mul(logp)?.neg()?
    };
    with_value_loss(b, &policy, &adv, ppo.then_some(0.2))
}

fn ppo_reviews(b: &Batch) -> Result<Tensor> {
    reviews_actor_critic(b, true)
}

fn a2c_reviews(b: &Batch) -> Result<Tensor> {
    reviews_actor_critic(b, false)
}

fn sppo(b: &Batch) -> Result<Tensor> {
    symmetric(b, true)
}

fn sa2c(b: &Batch) -> Result<Tensor> {
    symmetric(b, false)
}

fn rto(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let dense =
        (g(b, "dpo_model.logp").sub(g(b, "ref.logp"))? * 0.05)?.clip(-0.05, 0.05)?.mul(m)?;
    rto_like(b, Some(dense))
}

/// rto.rlx without the DPO token reward.
fn ppo_rm(b: &Batch) -> Result<Tensor> {
    rto_like(b, None)
}

fn rto_like(b: &Batch, dense: Option<Tensor>) -> Result<Tensor> {
    let m = g(b, "mask");
    let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.mul(m)?;
    let rm = g(b, "rm(response)").clip(-10.0, 10.0)?;
    let r = (last_token(m, &rm)? - (kl * 0.01)?)?;
    let r = match dense {
        Some(d) => (d + r)?,
        None => r,
    };
    let adv = gae(&r, g(b, "old.values"), m, 1.0, 0.95)?;
    let pg = seq_mean_token_mean(
        &ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &whiten_tokens(&adv, m)?, 0.2)?,
        m,
    )?;
    let vl = seq_mean_token_mean(
        &value_loss(
            g(b, "policy.values"),
            g(b, "old.values"),
            &(&adv + g(b, "old.values"))?,
            Some(0.2),
        )?,
        m,
    )?;
    pg + (vl * 0.5)?
}

fn ppo_clip2(logp: &Tensor, old: &Tensor, adv: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let ratio = logp.sub(old)?.clip(-20.0, 20.0)?.exp()?;
    adv.mul(&ratio)?.neg()?.max_t(&adv.mul(&ratio.clip(1.0 - lo, 1.0 + hi)?)?.neg()?)
}

/// Sequence values on every response token.
fn spread(x: Vec<f32>, m: &Tensor) -> Result<Tensor> {
    Tensor::new(x, m.device())?.unsqueeze(1)?.broadcast_mul(m)
}

fn correct(b: &Batch) -> Result<Vec<f32>> {
    vec(g(b, "arith.correct(response)"))
}

fn groups(b: &Batch) -> Result<Vec<i64>> {
    g(b, "group").to_vec1::<i64>()
}

/// GRPO's advantage on every token.
fn grpo_adv(b: &Batch) -> Result<Tensor> {
    spread(zscore_groups(&correct(b)?, &groups(b)?, 1e-6), g(b, "mask"))
}

fn dapo(b: &Batch) -> Result<Tensor> {
    let l = ppo_clip2(g(b, "policy.logp"), g(b, "old.logp"), &grpo_adv(b)?, 0.2, 0.28)?;
    masked_mean(&l, g(b, "mask"))
}

fn dr_grpo(b: &Batch) -> Result<Tensor> {
    let (m, r, grp) = (g(b, "mask"), correct(b)?, groups(b)?);
    let centred: Vec<f32> = (0..r.len())
        .map(|i| {
            let same: Vec<f32> = (0..r.len()).filter(|&j| grp[j] == grp[i]).map(|j| r[j]).collect();
            if same.len() < 2 { 0.0 } else { r[i] - same.iter().sum::<f32>() / same.len() as f32 }
        })
        .collect();
    let l = ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &spread(centred, m)?, 0.2)?;
    let rows_with_tokens = m.sum(1)?.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?;
    l.mul(m)?.sum_all()?.div(&rows_with_tokens)? / 64.0
}

fn gspo(b: &Batch) -> Result<Tensor> {
    let (m, logp, old) = (g(b, "mask"), g(b, "policy.logp"), g(b, "old.logp"));
    let s = logp.sub(old)?.mul(m)?.sum(1)?.div(&m.sum(1)?)?.detach();
    let lambda = logp.sub(&logp.detach())?.broadcast_add(&s.unsqueeze(1)?)?.clip_hi(10.0)?;
    let ratio = lambda.exp()?;
    let adv = grpo_adv(b)?;
    let l =
        adv.mul(&ratio)?.neg()?.max_t(&adv.mul(&ratio.clip(1.0 - 3e-4, 1.0 + 4e-4)?)?.neg()?)?;
    seq_mean_token_mean(&l, m)
}

fn gmpo(b: &Batch) -> Result<Tensor> {
    let (m, logp, old) = (g(b, "mask"), g(b, "policy.logp"), g(b, "old.logp"));
    let adv = grpo_adv(b)?;
    let d = logp.sub(old)?.mul(m)?;
    // σ·min(σΔ, σ·clip(Δ)): a cap above for A > 0, below for A < 0, nothing at A = 0.
    let capped_above = d.min_t(&d.clip(-0.4, 0.4)?)?;
    let capped_below = d.max_t(&d.clip(-0.4, 0.4)?)?;
    let nonzero = adv.ne(0.0)?.to_dtype(d.dtype())?;
    let star = adv.gt(0.0)?.where_cond(&capped_above, &capped_below)?.mul(m)?.mul(&nonzero)?;
    let len = (m.sum(1)? + 1e-8)?;
    let ratio = star.sum(1)?.div(&len)?.exp()?;
    let mean_adv = adv.mul(m)?.sum(1)?.div(&len)?;
    ratio.mul(&mean_adv)?.neg()?.mean_all()
}

fn cispo(b: &Batch) -> Result<Tensor> {
    let (logp, old) = (g(b, "policy.logp"), g(b, "old.logp"));
    let w = logp.sub(old)?.exp()?.clip(0.8, 1.28)?.detach();
    masked_mean(&w.mul(&grpo_adv(b)?)?.mul(logp)?.neg()?, g(b, "mask"))
}

fn sapo(b: &Batch) -> Result<Tensor> {
    let (logp, old) = (g(b, "policy.logp"), g(b, "old.logp"));
    let ratio = logp.sub(old)?.exp()?;
    let adv = grpo_adv(b)?;
    let gate = |tau: f64| -> Result<Tensor> {
        let x = ((&ratio - 1.0)? * tau)?;
        // σ(x) = 1 / (1 + e^{−x})
        ((x.neg()?.exp()? + 1.0)?.recip()? * (4.0 / tau))?.mul(&adv)?.neg()
    };
    let l = adv.gt(0.0)?.where_cond(&gate(1.0)?, &gate(1.05)?)?;
    seq_mean_token_mean(&l, g(b, "mask"))
}

fn opo(b: &Batch) -> Result<Tensor> {
    let (m, r, grp) = (g(b, "mask"), correct(b)?, groups(b)?);
    let len = vec(&m.sum(1)?)?;
    let adv: Vec<f32> = (0..r.len())
        .map(|i| {
            let same: Vec<usize> = (0..r.len()).filter(|&j| grp[j] == grp[i]).collect();
            let total: f32 = same.iter().map(|&j| len[j]).sum();
            if same.len() < 2 || total == 0.0 {
                return r[i];
            }
            r[i] - same.iter().map(|&j| len[j] * r[j]).sum::<f32>() / total
        })
        .collect();
    masked_mean(&spread(adv, m)?.mul(g(b, "policy.logp"))?.neg()?, m)
}

fn gpg(b: &Batch) -> Result<Tensor> {
    let (m, r, grp) = (g(b, "mask"), correct(b)?, groups(b)?);
    let alpha = r.len() as f32 / r.iter().filter(|x| **x != 0.0).count().max(1) as f32;
    let adv: Vec<f32> = (0..r.len())
        .map(|i| {
            let same: Vec<f32> = (0..r.len()).filter(|&j| grp[j] == grp[i]).map(|j| r[j]).collect();
            let mean =
                if same.len() < 2 { 0.0 } else { same.iter().sum::<f32>() / same.len() as f32 };
            alpha * (r[i] - mean)
        })
        .collect();
    masked_mean(&spread(adv, m)?.mul(g(b, "policy.logp"))?.neg()?, m)
}

fn grpo_passk(b: &Batch) -> Result<Tensor> {
    let (m, r, grp) = (g(b, "mask"), correct(b)?, groups(b)?);
    let mut adv = vec![0.0f32; r.len()];
    for gi in grp.iter().copied().collect::<std::collections::BTreeSet<_>>() {
        let idx: Vec<usize> = (0..r.len()).filter(|&j| grp[j] == gi).collect();
        let mut best = idx[0];
        for &j in &idx {
            if r[j] > r[best] {
                best = j;
            }
        }
        let second = idx.iter().filter(|&&j| j != best).map(|&j| r[j]).fold(f32::MIN, f32::max);
        let n = idx.len() as f32;
        let mean = idx.iter().map(|&j| r[j]).sum::<f32>() / n;
        let std = (idx.iter().map(|&j| (r[j] - mean).powi(2)).sum::<f32>() / (n - 1.0)).sqrt();
        adv[best] = (r[best] - second) / (std + 1e-6);
    }
    seq_mean_token_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &spread(adv, m)?, 0.2)?, m)
}

/// Flat positions of response tokens, by descending (A − mean A)(logp − mean logp).
fn by_covariance(logp: &Tensor, adv: &Tensor, m: &Tensor) -> Result<(Vec<f32>, Vec<usize>)> {
    let (lp, a, mm) = (
        logp.flatten_all()?.to_vec1::<f32>()?,
        adv.flatten_all()?.to_vec1::<f32>()?,
        m.flatten_all()?.to_vec1::<f32>()?,
    );
    let real: Vec<usize> = (0..mm.len()).filter(|&i| mm[i] != 0.0).collect();
    let n = real.len() as f32;
    let (ma, ml) =
        (real.iter().map(|&i| a[i]).sum::<f32>() / n, real.iter().map(|&i| lp[i]).sum::<f32>() / n);
    let mut cov = vec![0.0; mm.len()];
    for &i in &real {
        cov[i] = (a[i] - ma) * (lp[i] - ml);
    }
    Ok((cov, real))
}

/// Highest covariance first, ties in token order.
fn desc(cov: &[f32]) -> impl Fn(&usize, &usize) -> std::cmp::Ordering + '_ {
    |&x, &y| cov[y].total_cmp(&cov[x]).then(x.cmp(&y))
}

fn kl_cov(b: &Batch) -> Result<Tensor> {
    let (m, logp, old) = (g(b, "mask"), g(b, "policy.logp"), g(b, "old.logp"));
    let adv = grpo_adv(b)?;
    // The k highest-covariance tokens, selected without sorting them all (as the block does).
    let (cov, mut real) = by_covariance(logp, &adv, m)?;
    let k = ((2e-3 * real.len() as f64).floor() as usize).max(1);
    real.select_nth_unstable_by(k - 1, desc(&cov));
    let mut pick = vec![0.0f32; logp.elem_count()];
    real[..k].iter().for_each(|&i| pick[i] = 1.0);
    let pick = Tensor::from_vec(pick, logp.shape(), logp.device())?;
    let d = logp.sub(old)?;
    masked_mean(&(d.exp()?.mul(&adv)?.neg()? + d.abs()?.mul(&pick)?)?, m)
}

fn clip_cov(b: &Batch) -> Result<Tensor> {
    let (m, logp, old) = (g(b, "mask"), g(b, "policy.logp"), g(b, "old.logp"));
    let adv = grpo_adv(b)?;
    let ratio = logp.sub(old)?.exp()?;
    let (l1, l2) = (adv.mul(&ratio)?.neg()?, adv.mul(&ratio.clip(0.8, 1.2)?)?.neg()?);
    let clipped = l2.gt(&l1)?.flatten_all()?.to_vec1::<u8>()?;
    // Candidates filtered, then sorted (as the block does).
    let (cov, real) = by_covariance(logp, &adv, m)?;
    let mut pool: Vec<usize> =
        real.iter().copied().filter(|&i| clipped[i] == 0 && cov[i] > 1.0 && cov[i] < 5.0).collect();
    pool.sort_unstable_by(desc(&cov));
    let k = ((2e-4 * real.len() as f64).floor() as usize).max(1).min(pool.len());
    // rlx draws with its own generator, seeded by the response tokens' advantages.
    let mm = m.flatten_all()?.to_vec1::<f32>()?;
    let advs = adv.flatten_all()?.to_vec1::<f32>()?;
    let bits = advs.iter().zip(&mm).filter(|(_, m)| **m != 0.0).fold(0u64, |h, (a, _)| {
        (h ^ (*a as f64 * 1e4).round() as i64 as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = rlx::rng::Rng::new(bits);
    let mut keep = vec![1.0f32; logp.elem_count()];
    for _ in 0..k {
        let j = rng.below(pool.len());
        keep[pool.swap_remove(j)] = 0.0;
    }
    let keep = Tensor::from_vec(keep, logp.shape(), logp.device())?;
    masked_mean(&l1.max_t(&l2)?.mul(&keep)?, m)
}

fn dppo(b: &Batch) -> Result<Tensor> {
    let (logp, old) = (g(b, "policy.logp"), g(b, "old.logp"));
    let adv = grpo_adv(b)?;
    let diff = logp.exp()?.sub(&old.exp()?)?;
    let valid = adv.gt(0.0)?.where_cond(&diff.le(0.2)?, &diff.ge(-0.2)?)?.to_dtype(DType::F32)?;
    let r = logp.sub(old)?.exp()?.clip_hi(3.0)?;
    let w = adv.mul(&r)?.mul(&valid)?.detach();
    masked_mean(&w.mul(logp)?.neg()?, g(b, "mask"))
}

fn grpo_tis(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let w = g(b, "old.logp").sub(g(b, "rollout.logp"))?.exp()?.clip_hi(2.0)?.mul(m)?;
    let l = ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &grpo_adv(b)?, 0.2)?;
    seq_mean_token_mean(&w.mul(&l)?, m)
}

fn gdpo(b: &Batch) -> Result<Tensor> {
    let (m, grp) = (g(b, "mask"), groups(b)?);
    let correct = zscore_groups(&correct(b)?, &grp, 1e-6);
    let neg_len: Vec<f32> = vec(&m.sum(1)?)?.iter().map(|l| -l).collect();
    let short = zscore_groups(&neg_len, &grp, 1e-6);
    let total: Vec<f32> = correct.iter().zip(&short).map(|(c, s)| c + 0.5 * s).collect();
    let adv = whiten_tokens(&spread(total, m)?, m)?;
    seq_mean_token_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?, m)
}

fn opd(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let adv = g(b, "teacher.logp").sub(g(b, "old.logp"))?.mul(m)?;
    masked_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?, m)
}

/// PPO's clipped loss with verl's dual clip for negative advantages.
fn dual_clipped(logp: &Tensor, old: &Tensor, adv: &Tensor, c: f64) -> Result<Tensor> {
    let l = ppo_clip(logp, old, adv, 0.2)?;
    adv.lt(0.0)?.where_cond(&l.min_t(&(adv * -c)?)?, &l)
}

/// verl's `low_var_kl`: k3 of the clamped log-ratio, itself clamped to ±10.
fn low_var_kl(logp: &Tensor, reference: &Tensor) -> Result<Tensor> {
    let x = reference.sub(logp)?.clip(-20.0, 20.0)?;
    ((x.exp()? - &x)? - 1.0)?.clip(-10.0, 10.0)
}

fn grpo_verl(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let pg = dual_clipped(g(b, "policy.logp"), g(b, "old.logp"), &grpo_adv(b)?, 3.0)?;
    masked_mean(&pg, m)?
        + (masked_mean(&low_var_kl(g(b, "policy.logp"), g(b, "ref.logp"))?, m)? * 0.001)?
}

fn grpo_trl(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let adv = spread(zscore_groups(&correct(b)?, &groups(b)?, 1e-4), m)?;
    masked_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?, m)
}

/// Σ_{t' ≥ t} x over each row's response tokens.
fn reverse_cumsum(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let (rows_x, rows_m) = (rows(x)?, rows(m)?);
    let out: Vec<Vec<f32>> = rows_x
        .iter()
        .zip(&rows_m)
        .map(|(r, mr)| {
            let mut acc = 0.0;
            let mut o = vec![0.0; r.len()];
            for t in (0..r.len()).rev() {
                if mr[t] != 0.0 {
                    acc += r[t];
                    o[t] = acc;
                }
            }
            o
        })
        .collect();
    tensor2(out, m)
}

fn grpo_openrlhf(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let a: Vec<f32> = zscore_groups(&correct(b)?, &groups(b)?, 1e-9)
        .iter()
        .map(|x| x.clamp(-10.0, 10.0))
        .collect();
    let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.clip(-10.0, 10.0)?.mul(m)?;
    let a = Tensor::new(a, m.device())?;
    let r = (last_token(m, &a)? - (kl * 0.01)?)?;
    let adv = reverse_cumsum(&r, m)?;
    masked_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?, m)
}

fn grpo_nemorl(b: &Batch) -> Result<Tensor> {
    let (m, r, grp) = (g(b, "mask"), correct(b)?, groups(b)?);
    let adv: Vec<f32> = (0..r.len())
        .map(|i| {
            let others: Vec<f32> =
                (0..r.len()).filter(|&j| j != i && grp[j] == grp[i]).map(|j| r[j]).collect();
            // The others' mean; their unbiased std + 1e-6 where that std is positive.
            let n = others.len() as f32;
            let mean = others.iter().sum::<f32>() / n;
            let ss = others.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>();
            let std = if n > 1.0 { (ss / (n - 1.0)).sqrt() } else { 0.0 };
            if std > 0.0 { (r[i] - mean) / (std + 1e-6) } else { r[i] - mean }
        })
        .collect();
    let pg = ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &spread(adv, m)?, 0.2)?;
    masked_mean(&pg, m)? + (masked_mean(&k3(g(b, "policy.logp"), g(b, "ref.logp"))?, m)? * 0.01)?
}

fn value_term(b: &Batch, adv: &Tensor, clip: f64) -> Result<Tensor> {
    let target = (adv + g(b, "old.values"))?;
    masked_mean(
        &value_loss(g(b, "policy.values"), g(b, "old.values"), &target, Some(clip))?,
        g(b, "mask"),
    )
}

/// Whitening over the response tokens: biased variance and max(v, 1e-8)^-½ (OpenRLHF).
fn whiten_tokens_biased(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let n = m.sum_all()?.to_scalar::<f32>()? as f64;
    let mean = x.mul(m)?.sum_all()?.to_scalar::<f32>()? as f64 / n;
    let var = (x - mean)?.sqr()?.mul(m)?.sum_all()?.to_scalar::<f32>()? as f64 / n;
    ((x - mean)? / var.max(1e-8).sqrt())?.mul(m)
}

fn ppo_verl(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let r = last_token(m, g(b, "arith.correct(response)"))?;
    let adv = gae(&r, g(b, "old.values"), m, 1.0, 1.0)?;
    let pg = dual_clipped(g(b, "policy.logp"), g(b, "old.logp"), &whiten_tokens(&adv, m)?, 3.0)?;
    masked_mean(&pg, m)? + value_term(b, &adv, 0.5)?
}

fn ppo_trl(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.mul(m)?;
    let r = (last_token(m, g(b, "arith.correct(response)"))? - (kl * 0.05)?)?;
    let adv = gae(&r, g(b, "old.values"), m, 1.0, 0.95)?;
    let pg = ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &whiten_tokens(&adv, m)?, 0.2)?;
    masked_mean(&pg, m)? + (value_term(b, &adv, 0.2)? * 0.1)?
}

fn ppo_openrlhf(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let kl = g(b, "old.logp").sub(g(b, "ref.logp"))?.clip(-10.0, 10.0)?.mul(m)?;
    let score = g(b, "arith.correct(response)").clip(-10.0, 10.0)?;
    let r = (last_token(m, &score)? - (kl * 0.01)?)?;
    let adv = gae(&r, g(b, "old.values"), m, 1.0, 1.0)?;
    let pg = ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &whiten_tokens_biased(&adv, m)?, 0.2)?;
    masked_mean(&pg, m)? + value_term(b, &adv, 0.5)?
}

/// Σ and mean of a text's per-token values over its mask.
fn seq_sum(b: &Batch, k: &str, mask: &str) -> Result<Tensor> {
    g(b, k).mul(g(b, mask))?.sum(1)
}

fn seq_avg(b: &Batch, k: &str, mask: &str) -> Result<Tensor> {
    seq_sum(b, k, mask)?.div(&g(b, mask).sum(1)?)
}

fn dpo_variant(b: &Batch, loss: &str, s: f64) -> Result<Tensor> {
    let rho = |text: &str| -> Result<Tensor> {
        let mask = format!("mask({text})");
        seq_sum(b, &format!("policy.logp({text})"), &mask)?.sub(&seq_sum(
            b,
            &format!("ref.logp({text})"),
            &mask,
        )?)
    };
    let (rc, rr) = (rho("chosen")?, rho("rejected")?);
    let h = (rc.sub(&rr)? * 0.1)?;
    let per_pair = match loss {
        "robust" => {
            (((log_sigmoid(&h)? * -(1.0 - s))? + (log_sigmoid(&h.neg()?)? * s)?)?
                / (1.0 - 2.0 * s))?
        }
        "hinge" => (1.0 - h)?.relu()?,
        "ipo" => {
            let avg = |text: &str| -> Result<Tensor> {
                let len = g(b, &format!("mask({text})")).sum(1)?;
                let r = if text == "chosen" { &rc } else { &rr };
                r.div(&len)
            };
            (avg("chosen")?.sub(&avg("rejected")?)? - 1.0 / (2.0 * 0.1))?.sqr()?
        }
        _ => ((log_sigmoid(&h)? * -(1.0 - s))? - (log_sigmoid(&h.neg()?)? * s)?)?,
    };
    per_pair.mean_all()
}

fn simpo(b: &Batch) -> Result<Tensor> {
    let c = seq_avg(b, "policy.logp(chosen)", "mask(chosen)")?;
    let r = seq_avg(b, "policy.logp(rejected)", "mask(rejected)")?;
    let h = ((c.sub(&r)? * 2.0)? - 1.0)?;
    log_sigmoid(&h)?.neg()?.mean_all()
}

fn orpo(b: &Batch) -> Result<Tensor> {
    let c = seq_avg(b, "policy.logp(chosen)", "mask(chosen)")?;
    let r = seq_avg(b, "policy.logp(rejected)", "mask(rejected)")?;
    // ln(1 − e^x), for the synthetic batch's averages well below 0.
    let l1m = |x: &Tensor| -> Result<Tensor> { (1.0 - x.exp()?)?.log() };
    let odds = c.sub(&r)?.sub(&l1m(&c)?.sub(&l1m(&r)?)?)?;
    let nll = masked_mean(&g(b, "policy.logp(chosen)").neg()?, g(b, "mask(chosen)"))?;
    nll + (log_sigmoid(&odds)?.neg()? * 0.1)?.mean_all()?
}

fn kto(b: &Batch) -> Result<Tensor> {
    let rho = |text: &str| -> Result<Tensor> {
        let mask = format!("mask({text})");
        seq_sum(b, &format!("policy.logp({text})"), &mask)?.sub(&seq_sum(
            b,
            &format!("ref.logp({text})"),
            &mask,
        )?)
    };
    let z = rho("mismatched")?.mean_all()?.clip_lo(0.0)?.detach();
    let sig = |x: &Tensor| -> Result<Tensor> { (x.neg()?.exp()? + 1.0)?.recip() };
    let d = (1.0 - sig(&(rho("chosen")?.broadcast_sub(&z)? * 0.1)?)?)?;
    let u = (1.0 - sig(&(rho("rejected")?.broadcast_sub(&z)?.neg()? * 0.1)?)?)?;
    ((d + u)? * 0.5)?.mean_all()
}

fn grpo_otb(b: &Batch) -> Result<Tensor> {
    let m = g(b, "mask");
    let r = last_token(m, g(b, "arith.correct(response)"))?;
    let (gt, mm) = (rows(&reverse_cumsum(&r, m)?)?, rows(m)?);
    let (old, p2) = (rows(g(b, "old.logp"))?, rows(g(b, "old.sum_p2"))?);
    let grp = groups(b)?;
    let (nb, nt) = (mm.len(), mm[0].len());
    let w: Vec<Vec<f32>> = (0..nb)
        .map(|i| {
            let mut cum = 0.0;
            (0..nt)
                .map(|k| {
                    if mm[i][k] != 0.0 {
                        cum += 1.0 - 2.0 * old[i][k].exp() + p2[i][k];
                        cum
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let len: Vec<usize> = mm.iter().map(|r| r.iter().filter(|x| **x != 0.0).count()).collect();
    let mut adv = vec![vec![0.0f32; nt]; nb];
    for i in 0..nb {
        let same: Vec<usize> = (0..nb).filter(|&j| grp[j] == grp[i]).collect();
        let mut ls: Vec<usize> = same.iter().map(|&j| len[j]).collect();
        ls.sort_unstable_by(|a, c| c.cmp(a));
        // Only the unique longest response's tail has no baseline; a group of one has none.
        let tail = (ls.len() > 1 && ls[0] > ls[1] && len[i] == ls[0]).then_some(ls[1]);
        for k in 0..nt {
            if mm[i][k] == 0.0 {
                continue;
            }
            let num: f32 = same.iter().map(|&j| gt[j][k] * w[j][k] * mm[j][k]).sum();
            let den: f32 = same.iter().map(|&j| w[j][k] * mm[j][k]).sum();
            let base = if same.len() == 1 || tail.is_some_and(|s| k >= s) {
                0.0
            } else {
                num / (den + 1e-8)
            };
            adv[i][k] = gt[i][k] - base;
        }
    }
    let adv = tensor2(adv, m)?;
    seq_mean_token_mean(&ppo_clip(g(b, "policy.logp"), g(b, "old.logp"), &adv, 0.2)?, m)
}
