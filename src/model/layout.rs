//! The batch layout shared by the sampler and the trainer: each row is a left-padded prompt
//! followed by a text and right padding, `[pad… prompt | text … pad]`. Prompts start with BOS,
//! so the token before the first text token always exists, and the text's log-probabilities
//! are one contiguous slice of the logits.

use std::collections::HashMap;
use std::hash::Hash;

use candle_core::{Device, Result, Tensor};

/// Rows by key in first-seen order: the first row of each distinct key, and for every row the
/// index of its key among them (rows that share a prompt, for the sampler's prefill and the
/// training forward).
pub fn distinct<K: Hash + Eq>(keys: impl IntoIterator<Item = K>) -> (Vec<usize>, Vec<usize>) {
    let mut firsts = Vec::new();
    let mut seen: HashMap<K, usize> = HashMap::new();
    let of_row = keys
        .into_iter()
        .enumerate()
        .map(|(row, key)| {
            *seen.entry(key).or_insert_with(|| {
                firsts.push(row);
                firsts.len() - 1
            })
        })
        .collect();
    (firsts, of_row)
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub batch: usize,
    /// Columns of the (left-padded) prompt part.
    pub prompt_len: usize,
    /// Columns of the text part.
    pub text_len: usize,
    /// `[B, L]` u32 token ids (pad = 0).
    pub ids: Tensor,
    /// `[B, L]` u32 position of each token in its row (pads 0).
    pub positions: Tensor,
    /// `[B, 1, L, L]` additive attention bias: 0 where a query may read a key, −1e9 elsewhere.
    pub bias: Tensor,
    /// `[B, T]` f32, 1 on real text tokens.
    pub text_mask: Tensor,
    /// `[B, T]` u32 text token ids (pad = 0).
    pub targets: Tensor,
    /// `[B]` u32 flat index `b·L + l` of each row's last real token.
    pub last: Tensor,
    pub text_lens: Vec<usize>,
}

impl Layout {
    pub fn new(prompts: &[&[u32]], texts: &[&[u32]], device: &Device) -> Result<Layout> {
        Layout::with_text_len(prompts, texts, 1, device)
    }

    /// A layout whose text part is at least `min_text` columns wide (minibatches keep the
    /// rollout batch's width, so their tensors line up with the batch's).
    pub fn with_text_len(
        prompts: &[&[u32]],
        texts: &[&[u32]],
        min_text: usize,
        device: &Device,
    ) -> Result<Layout> {
        let b = prompts.len();
        assert_eq!(b, texts.len(), "one text per prompt");
        let p = prompts.iter().map(|x| x.len()).max().unwrap_or(1).max(1);
        let t = texts.iter().map(|x| x.len()).max().unwrap_or(0).max(min_text).max(1);
        let l = p + t;
        let mut ids = vec![0u32; b * l];
        let mut valid = vec![false; b * l];
        let mut targets = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        let mut last = vec![0u32; b];
        for (row, (pr, tx)) in prompts.iter().zip(texts).enumerate() {
            let start = p - pr.len();
            for (i, &tok) in pr.iter().enumerate() {
                ids[row * l + start + i] = tok;
                valid[row * l + start + i] = true;
            }
            for (i, &tok) in tx.iter().enumerate() {
                ids[row * l + p + i] = tok;
                valid[row * l + p + i] = true;
                targets[row * t + i] = tok;
                mask[row * t + i] = 1.0;
            }
            last[row] = (row * l + p + tx.len().max(1) - 1) as u32;
        }
        let (positions, bias) = positions_and_bias(&valid, b, l);
        Ok(Layout {
            batch: b,
            prompt_len: p,
            text_len: t,
            ids: Tensor::from_vec(ids, (b, l), device)?,
            positions: Tensor::from_vec(positions, (b, l), device)?,
            bias: Tensor::from_vec(bias, (b, 1, l, l), device)?,
            text_mask: Tensor::from_vec(mask, (b, t), device)?,
            targets: Tensor::from_vec(targets, (b, t), device)?,
            last: Tensor::from_vec(last, b, device)?,
            text_lens: texts.iter().map(|x| x.len()).collect(),
        })
    }

    /// Real text tokens in the batch.
    pub fn text_tokens(&self) -> usize {
        self.text_lens.iter().sum()
    }
}

/// Per-row positions (count of real tokens before each column) and the causal, padding-aware
/// attention bias. A query with no readable key (a pad before the prompt) reads itself, so no
/// softmax row is empty.
pub fn positions_and_bias(valid: &[bool], b: usize, l: usize) -> (Vec<u32>, Vec<f32>) {
    let mut positions = vec![0u32; b * l];
    let mut bias = vec![-1e9f32; b * l * l];
    for row in 0..b {
        let mut seen = 0u32;
        for i in 0..l {
            positions[row * l + i] = seen;
            if valid[row * l + i] {
                seen += 1;
            }
            let q = &mut bias[(row * l + i) * l..(row * l + i + 1) * l];
            for j in 0..=i {
                if valid[row * l + j] || j == i {
                    q[j] = 0.0;
                }
            }
        }
    }
    (positions, bias)
}
