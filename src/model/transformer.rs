//! A causal transformer: a trunk — the built-in pre-norm GPT (token and learned position
//! embeddings, `layers` blocks of multi-head attention and a GELU MLP, a final layer norm) or a
//! Llama-family trunk (`llama.rs`) — and heads: the language model head, an optional value head
//! (one number per position) and an optional score head (one number per sequence, for reward
//! models).
//!
//! Training paths use only differentiable ops: candle's fused `layer_norm` and
//! `softmax_last_dim` have no backward and would silently cut the gradient, so training uses
//! rlx's own fused ops with backwards (`norm.rs`, `attention.rs`, `gelu.rs`). Inference
//! paths (`grad = false`) may use candle's.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Result, Tensor};

use super::config::{Family, ModelConfig};
use super::kv_cache::KvCache;
use super::layers::{EmbeddingRows, Linear};
use super::layout::Layout;
use super::llama::LlamaTrunk;
use super::params::{Init, Params};
use crate::rng::Rng;

/// Which heads a model has besides its trunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heads {
    pub lm: bool,
    pub value: bool,
    pub score: bool,
}

/// Creates the parameters of a fresh model.
pub fn init_params(
    cfg: &ModelConfig,
    heads: Heads,
    rng: &mut Rng,
    device: &Device,
) -> Result<Params> {
    let mut p = Params::new();
    let d = cfg.width;
    let std = 0.02;
    let resid = 0.02 / (2.0 * cfg.layers as f64).sqrt();
    p.init("tok.weight", &[cfg.vocab, d], Init::Normal(std), rng, device)?;
    p.init("pos.weight", &[cfg.context, d], Init::Normal(0.01), rng, device)?;
    for l in 0..cfg.layers {
        let n = |s: &str| format!("h.{l}.{s}");
        p.init(&n("ln1.weight"), &[d], Init::Ones, rng, device)?;
        p.init(&n("ln1.bias"), &[d], Init::Zeros, rng, device)?;
        p.init(&n("attn.qkv.weight"), &[d, 3 * d], Init::Normal(std), rng, device)?;
        p.init(&n("attn.qkv.bias"), &[3 * d], Init::Zeros, rng, device)?;
        p.init(&n("attn.out.weight"), &[d, d], Init::Normal(resid), rng, device)?;
        p.init(&n("attn.out.bias"), &[d], Init::Zeros, rng, device)?;
        p.init(&n("ln2.weight"), &[d], Init::Ones, rng, device)?;
        p.init(&n("ln2.bias"), &[d], Init::Zeros, rng, device)?;
        p.init(&n("mlp.up.weight"), &[d, 4 * d], Init::Normal(std), rng, device)?;
        p.init(&n("mlp.up.bias"), &[4 * d], Init::Zeros, rng, device)?;
        p.init(&n("mlp.down.weight"), &[4 * d, d], Init::Normal(resid), rng, device)?;
        p.init(&n("mlp.down.bias"), &[d], Init::Zeros, rng, device)?;
    }
    p.init("ln_f.weight", &[d], Init::Ones, rng, device)?;
    p.init("ln_f.bias", &[d], Init::Zeros, rng, device)?;
    if heads.lm {
        p.init("lm_head.weight", &[d, cfg.vocab], Init::Normal(std), rng, device)?;
    }
    if heads.value {
        add_value_head(&mut p, cfg, rng, device)?;
    }
    if heads.score {
        p.init("score.weight", &[d, 1], Init::Normal(std), rng, device)?;
        p.init("score.bias", &[1], Init::Zeros, rng, device)?;
    }
    Ok(p)
}

/// Adds a zero-initialised value head (values start at 0, so the first advantages are rewards).
pub fn add_value_head(
    p: &mut Params,
    cfg: &ModelConfig,
    rng: &mut Rng,
    device: &Device,
) -> Result<()> {
    if p.get("value.weight").is_none() {
        p.init("value.weight", &[cfg.width, 1], Init::Zeros, rng, device)?;
        p.init("value.bias", &[1], Init::Zeros, rng, device)?;
    }
    Ok(())
}

#[derive(Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        if !grad {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, 1e-5);
        }
        super::norm::layer_norm(x, &self.weight, &self.bias, 1e-5)
    }
}

#[derive(Clone)]
struct Dense {
    /// `[in, out]`.
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// `[.., in] → [.., out]`, computed in the weight's dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.weight.dtype())?;
        if x.rank() == 2 {
            // Rows already: no reshapes (each is a node whose gradient is copied back).
            let y = super::gemv::matmul_nn(&x, &self.weight)?;
            return match &self.bias {
                Some(b) => super::bias::add_bias(&y, b),
                None => Ok(y),
            };
        }
        let dims = x.dims().to_vec();
        let (rows, inner) =
            (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let y = super::gemv::matmul_nn(&x.reshape((rows, inner))?, &self.weight)?;
        let y = match &self.bias {
            Some(b) => super::bias::add_bias(&y, b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("rank ≥ 1") = self.weight.dim(1)?;
        y.reshape(out)
    }
}

#[derive(Clone)]
struct Block {
    ln1: Norm,
    qkv: Dense,
    out: Dense,
    ln2: Norm,
    up: Dense,
    down: Dense,
}

/// The built-in GPT trunk.
#[derive(Clone)]
struct GptTrunk {
    tok: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
}

#[derive(Clone)]
enum Trunk {
    Gpt(GptTrunk),
    Llama(LlamaTrunk),
}

/// The language-model head: `[D, V]` (built-in) or HF's `[V, D]`, possibly the tied embedding.
#[derive(Clone)]
enum LmHead {
    InOut(Tensor),
    OutIn(Tensor),
}

/// A transformer over a set of weights: trainable (variables) or frozen (detached copies).
#[derive(Clone)]
pub struct Transformer {
    pub cfg: ModelConfig,
    trunk: Trunk,
    lm_head: Option<LmHead>,
    value: Option<Dense>,
    score: Option<Dense>,
}

impl Transformer {
    /// Whether the model carries a value head (`value_head(policy)` in a recipe).
    pub fn has_value_head(&self) -> bool {
        self.value.is_some()
    }

    /// Whether the model is a reward model (a scalar score head).
    pub fn has_score_head(&self) -> bool {
        self.score.is_some()
    }

    pub fn from_params(cfg: &ModelConfig, params: &Params) -> Result<Transformer> {
        let map: BTreeMap<String, Tensor> =
            params.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        Transformer::from_tensors(cfg, &map)
    }

    /// The same weights without gradient tracking (sampling, old/ref log-probs).
    pub fn frozen(cfg: &ModelConfig, params: &Params) -> Result<Transformer> {
        let map: BTreeMap<String, Tensor> =
            params.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
        Transformer::from_tensors(cfg, &map)
    }

    pub fn from_tensors(cfg: &ModelConfig, w: &BTreeMap<String, Tensor>) -> Result<Transformer> {
        let dense = |n: &str| -> Result<Option<Dense>> {
            let Some(weight) = w.get(&format!("{n}.weight")) else { return Ok(None) };
            Ok(Some(Dense { weight: weight.clone(), bias: w.get(&format!("{n}.bias")).cloned() }))
        };
        let (value, mut score) = (dense("value")?, dense("score")?);
        if let Family::Llama(spec) = &cfg.family {
            // A Hugging Face classifier's `score` is `[labels, hidden]` (out × in); rlx's own
            // heads are in × out.
            if spec.hf.classifier_labels().is_some()
                && let Some(head) = score.as_mut()
            {
                head.weight = head.weight.t()?;
            }
            let dtype = if spec.bf16 { DType::BF16 } else { DType::F32 };
            let scale = spec.lora.as_ref().map_or(1.0, |l| l.scale());
            let trunk = LlamaTrunk::new(&spec.hf, w, scale, dtype)?;
            let lm_head = match w.get("lm_head.weight") {
                Some(h) => Some(LmHead::OutIn(h.to_dtype(dtype)?)),
                // Tied embeddings (and reward models, which drop the LM head, keep none).
                None if spec.hf.tie_word_embeddings => Some(LmHead::OutIn(trunk.embed.clone())),
                None => None,
            };
            return Ok(Transformer {
                cfg: cfg.clone(),
                trunk: Trunk::Llama(trunk),
                lm_head,
                value,
                score,
            });
        }
        Self::gpt(cfg, w, value, score)
    }

    fn gpt(
        cfg: &ModelConfig,
        w: &BTreeMap<String, Tensor>,
        value: Option<Dense>,
        score: Option<Dense>,
    ) -> Result<Transformer> {
        let get = |n: &str| -> Result<Tensor> {
            w.get(n)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("missing weight `{n}`")))
        };
        let dense = |n: &str| -> Result<Dense> {
            Ok(Dense {
                weight: get(&format!("{n}.weight"))?,
                bias: w.get(&format!("{n}.bias")).cloned(),
            })
        };
        let norm = |n: &str| -> Result<Norm> {
            Ok(Norm { weight: get(&format!("{n}.weight"))?, bias: get(&format!("{n}.bias"))? })
        };
        let blocks = (0..cfg.layers)
            .map(|l| {
                Ok(Block {
                    ln1: norm(&format!("h.{l}.ln1"))?,
                    qkv: dense(&format!("h.{l}.attn.qkv"))?,
                    out: dense(&format!("h.{l}.attn.out"))?,
                    ln2: norm(&format!("h.{l}.ln2"))?,
                    up: dense(&format!("h.{l}.mlp.up"))?,
                    down: dense(&format!("h.{l}.mlp.down"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer {
            cfg: cfg.clone(),
            trunk: Trunk::Gpt(GptTrunk {
                tok: get("tok.weight")?,
                pos: get("pos.weight")?,
                blocks,
                ln_f: norm("ln_f")?,
            }),
            lm_head: w.get("lm_head.weight").cloned().map(LmHead::InOut),
            value,
            score,
        })
    }

    /// Hidden states `[B, Lq, D]` after the final norm. `bias` is `[B, 1, Lq, Lk]` where `Lk`
    /// counts cached columns plus the new ones; with a cache, the new keys and values are added.
    pub fn hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        bias: &Tensor,
        cache: Option<&mut KvCache>,
        grad: bool,
    ) -> Result<Tensor> {
        if positions.max_all()?.to_scalar::<u32>()? as usize >= self.cfg.context {
            candle_core::bail!("sequence longer than the model's context of {}", self.cfg.context)
        }
        match &self.trunk {
            Trunk::Gpt(t) => t.hidden(&self.cfg, ids, positions, bias, cache, grad),
            Trunk::Llama(t) => t.hidden(ids, positions, bias, cache, grad),
        }
    }

    /// Logits `[.., V]` (f32) of hidden states `[.., D]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = match &self.lm_head {
            Some(LmHead::InOut(w)) => Dense { weight: w.clone(), bias: None }.forward(hidden)?,
            Some(LmHead::OutIn(w)) => Linear { weight: w.clone(), bias: None, lora: None }
                .forward(&hidden.to_dtype(w.dtype())?)?,
            None => candle_core::bail!("the model has no language-model head"),
        };
        logits.to_dtype(DType::F32)
    }

    /// Hidden states `[B, L, D]` of a layout's rows. Rows with the same prompt (GRPO's n
    /// samples of each prompt) run it once: its keys and values, computed for one row, are
    /// selected for every row that shares it (their gradients summed back through the
    /// selection), and the texts run after them. The same values as one forward over every row
    /// (up to summation order), for a fraction of the work when prompts are long.
    pub fn hidden_of(&self, layout: &Layout, grad: bool) -> Result<Tensor> {
        match shared_prompts(layout)? {
            Some((firsts, of_row)) => self.hidden_shared(layout, &firsts, &of_row, grad),
            None => self.hidden(&layout.ids, &layout.positions, &layout.bias, None, grad),
        }
    }

    /// [`Transformer::hidden_of`] with the prompt part run for rows `firsts` only; row `b`
    /// reads the prompt of `firsts[of_row[b]]`.
    fn hidden_shared(
        &self,
        layout: &Layout,
        firsts: &[usize],
        of_row: &[usize],
        grad: bool,
    ) -> Result<Tensor> {
        let (p, t) = (layout.prompt_len, layout.text_len);
        let device = layout.ids.device();
        let index = |v: &[usize]| {
            Tensor::from_vec(v.iter().map(|&i| i as u32).collect::<Vec<_>>(), v.len(), device)
        };
        let (firsts_ix, of_row_ix) = (index(firsts)?, index(of_row)?);
        let prompt = |x: &Tensor| x.narrow(1, 0, p)?.contiguous()?.index_select(&firsts_ix, 0);
        let prompt_bias = layout
            .bias
            .narrow(2, 0, p)?
            .narrow(3, 0, p)?
            .contiguous()?
            .index_select(&firsts_ix, 0)?;
        let mut cache = KvCache::tracked(self.cfg.layers, firsts.len());
        let ids = prompt(&layout.ids)?;
        let positions = prompt(&layout.positions)?;
        let h_prompt = self.hidden(&ids, &positions, &prompt_bias, Some(&mut cache), grad)?;
        let mut cache = cache.fork(of_row, &vec![p; of_row.len()])?;
        let text = |x: &Tensor| x.narrow(1, p, t)?.contiguous();
        let text_bias = layout.bias.narrow(2, p, t)?.contiguous()?;
        let ids = text(&layout.ids)?;
        let positions = text(&layout.positions)?;
        let h_text = self.hidden(&ids, &positions, &text_bias, Some(&mut cache), grad)?;
        Tensor::cat(&[&h_prompt.index_select(&of_row_ix, 0)?, &h_text], 1)
    }

    /// The hidden states that predict each text token: `[B, T, D]`.
    pub fn text_states(hidden: &Tensor, layout: &Layout) -> Result<Tensor> {
        hidden.narrow(1, layout.prompt_len - 1, layout.text_len)
    }

    /// Log-probability `[B, T]` of each text token (0 on padding), logits divided by
    /// `temperature`. Computed as `logit[y] − logsumexp(logits)`, never materialising the
    /// log-softmax.
    pub fn token_logp(&self, hidden: &Tensor, layout: &Layout, temperature: f64) -> Result<Tensor> {
        let logits = self.text_logits(hidden, layout, temperature)?;
        super::token_logp::token_logp(&logits, &layout.targets)?.squeeze(2)?.mul(&layout.text_mask)
    }

    /// Logits `[B, T, V]` predicting each text token, divided by `temperature`.
    fn text_logits(&self, hidden: &Tensor, layout: &Layout, temperature: f64) -> Result<Tensor> {
        let logits = self.logits(&Self::text_states(hidden, layout)?)?;
        if temperature != 1.0 { logits / temperature } else { Ok(logits) }
    }

    /// Entropy `[B, T]` of the next-token distribution at each text token.
    pub fn token_entropy(
        &self,
        hidden: &Tensor,
        layout: &Layout,
        temperature: f64,
    ) -> Result<Tensor> {
        let logits = self.text_logits(hidden, layout, temperature)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let ent = (logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?;
        ent.mul(&layout.text_mask)
    }

    /// Σ_v π(v)² `[B, T]` of the next-token distribution at each text token (how peaked it is;
    /// the optimal token baseline's variance proxy).
    pub fn token_sum_p2(
        &self,
        hidden: &Tensor,
        layout: &Layout,
        temperature: f64,
    ) -> Result<Tensor> {
        let logits = self.text_logits(hidden, layout, temperature)?;
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
        p.sqr()?.sum(D::Minus1)?.mul(&layout.text_mask)
    }

    /// Value-head output `[B, T]` at each text token.
    pub fn token_values(&self, hidden: &Tensor, layout: &Layout) -> Result<Tensor> {
        let head = self
            .value
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("the model has no value head".into()))?;
        head.forward(&Self::text_states(hidden, layout)?)?.squeeze(2)?.mul(&layout.text_mask)
    }

    /// Score `[B]` of each row, read at its last real token — for a Hugging Face sequence
    /// classifier with a `pad_token_id`, at its last token that is not that id, as transformers
    /// finds it (a response ending in EOS is read before the EOS when pad = EOS).
    pub fn score(&self, hidden: &Tensor, layout: &Layout) -> Result<Tensor> {
        let head = self
            .score
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("the model has no score head".into()))?;
        let (b, l, d) = hidden.dims3()?;
        let at = match self.classifier_pad() {
            Some(pad) => last_not(layout, pad)?,
            None => layout.last.clone(),
        };
        let last = hidden.reshape((b * l, d))?.index_select(&at, 0)?;
        head.forward(&last.to_dtype(head.weight.dtype())?)?.to_dtype(DType::F32)?.squeeze(1)
    }

    /// The padding id a Hugging Face sequence classifier skips from the right.
    fn classifier_pad(&self) -> Option<u32> {
        match &self.cfg.family {
            Family::Llama(spec) if spec.hf.classifier_labels().is_some() => spec.hf.pad_token_id,
            Family::Llama(_) => None,
            Family::Gpt => self.cfg.classifier_pad,
        }
    }

    /// Next-token logits `[B, V]` at the last column of a forward over new columns.
    pub fn step(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        bias: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, positions, bias, Some(cache), false)?;
        let l = h.dim(1)?;
        self.logits(&h.narrow(1, l - 1, 1)?.squeeze(1)?)?.to_dtype(DType::F32)
    }
}

impl GptTrunk {
    fn hidden(
        &self,
        cfg: &ModelConfig,
        ids: &Tensor,
        positions: &Tensor,
        bias: &Tensor,
        mut cache: Option<&mut KvCache>,
        grad: bool,
    ) -> Result<Tensor> {
        if cache.is_none() {
            return self.hidden_rows(cfg, ids, positions, bias, grad);
        }
        let (b, l) = ids.dims2()?;
        let (d, h, dh) = (cfg.width, cfg.heads, cfg.head_dim());
        let tok = self.tok.embedding_rows(ids)?;
        let pos = self.pos.embedding_rows(positions)?;
        let mut x = (tok + pos)?;
        let scale = 1.0 / (dh as f64).sqrt();
        for (li, blk) in self.blocks.iter().enumerate() {
            let a = blk.ln1.forward(&x, grad)?;
            let qkv = blk.qkv.forward(&a)?;
            let split = |i: usize| -> Result<Tensor> {
                qkv.narrow(2, i * d, d)?.reshape((b, l, h, dh))?.transpose(1, 2)?.contiguous()
            };
            let (q, mut k, mut v) = (split(0)?, split(1)?, split(2)?);
            if let Some(c) = cache.as_deref_mut() {
                (k, v) = c.append(li, k, v)?;
            }
            let y = super::attention::attend(&q, &k, &v, bias, scale, grad)?
                .transpose(1, 2)?
                .reshape((b, l, d))?;
            x = (x + blk.out.forward(&y)?)?;
            let m = blk.ln2.forward(&x, grad)?;
            let m = blk.down.forward(&super::gelu::gelu(&blk.up.forward(&m)?)?)?;
            x = (x + m)?;
        }
        self.ln_f.forward(&x, grad)
    }

    /// [`GptTrunk::hidden`] without a cache (a training or scoring forward): the activations
    /// kept as `[B·L, D]` rows from the embeddings to the last norm and attention reading the
    /// packed projections in place ([`super::attention::attend_packed`]). The same values as
    /// the per-head path the cache needs, without its splits, transposes and reshapes — each a
    /// copy forward and a zero-filled gradient added back backward.
    fn hidden_rows(
        &self,
        cfg: &ModelConfig,
        ids: &Tensor,
        positions: &Tensor,
        bias: &Tensor,
        grad: bool,
    ) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let (d, h, dh) = (cfg.width, cfg.heads, cfg.head_dim());
        let tok = self.tok.index_select(&ids.flatten_all()?, 0)?;
        let pos = self.pos.index_select(&positions.flatten_all()?, 0)?;
        let mut x = (tok + pos)?;
        let scale = 1.0 / (dh as f64).sqrt();
        for blk in &self.blocks {
            let a = blk.ln1.forward(&x, grad)?;
            let qkv = blk.qkv.forward(&a)?;
            let y = super::attention::attend_packed(&qkv, bias, (h, h), scale, grad)?;
            x = (x + blk.out.forward(&y)?)?;
            let m = blk.ln2.forward(&x, grad)?;
            let m = blk.down.forward(&super::gelu::gelu(&blk.up.forward(&m)?)?)?;
            x = (x + m)?;
        }
        self.ln_f.forward(&x, grad)?.reshape((b, l, d))
    }
}

/// For a layout whose rows repeat prompts: the first row of each distinct prompt, and for
/// every row the index of its prompt among them. `None` when sharing would not save at least a
/// third of the tokens the forward runs: two passes, the cache's concatenations and the
/// re-assembly cost more than they save on short prompts (built-in GRPO on `arith`, ~17 % of
/// the tokens saved: update 0.063 → 0.070 s), and far less than they save on long ones
/// (~140-token prompts, 48-token completions, 8 per prompt: 65 % saved, 1.7 → 0.85 s).
fn shared_prompts(layout: &Layout) -> Result<Option<(Vec<usize>, Vec<usize>)>> {
    let p = layout.prompt_len;
    if layout.batch < 2 || layout.text_len == 0 || p == 0 {
        return Ok(None);
    }
    // Ids and positions: a real token with the pad's id differs from padding in its position.
    let ids = layout.ids.narrow(1, 0, p)?.to_vec2::<u32>()?;
    let positions = layout.positions.narrow(1, 0, p)?.to_vec2::<u32>()?;
    let (firsts, of_row) = super::layout::distinct(ids.iter().zip(&positions));
    let (b, t) = (layout.batch, layout.text_len);
    let worth = 3 * (firsts.len() * p + b * t) <= 2 * b * (p + t);
    Ok(worth.then_some((firsts, of_row)))
}

/// `[B]` flat index of each row's last real token that is not `pad` (the first real token when
/// every one is `pad`, as transformers' argmax over an all-false mask gives position 0). A row's
/// real tokens are contiguous and end at `layout.last`; its position counts those before it.
fn last_not(layout: &Layout, pad: u32) -> Result<Tensor> {
    let ids = layout.ids.flatten_all()?.to_vec1::<u32>()?;
    let positions = layout.positions.flatten_all()?.to_vec1::<u32>()?;
    let at: Vec<u32> = layout
        .last
        .to_vec1::<u32>()?
        .into_iter()
        .map(|last| {
            let first = last - positions[last as usize];
            (first..=last).rev().find(|&i| ids[i as usize] != pad).unwrap_or(first)
        })
        .collect();
    Tensor::from_vec(at, layout.batch, layout.last.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvCache;
    use crate::rng::Rng;

    /// The built-in GPT's forward without a cache (rows, packed attention) and through a
    /// tracked cache (the per-head path sampling and shared prompts take): the same hidden
    /// states and the same gradient of every parameter, to the bit (a gradient's zero may
    /// differ in sign only), on padded rows of two lengths.
    #[test]
    fn row_and_per_head_forwards_agree_to_the_bit() {
        let cfg = ModelConfig {
            vocab: 50,
            layers: 2,
            width: 24,
            heads: 3,
            context: 32,
            family: Default::default(),
            classifier_pad: None,
        };
        let heads = Heads { lm: true, ..Default::default() };
        let params = init_params(&cfg, heads, &mut Rng::new(3), &Device::Cpu).unwrap();
        // Larger weights than a fresh model's, so attention is far from uniform.
        for (_, v) in params.iter() {
            v.set(&(v.as_tensor() * 8.0).unwrap()).unwrap();
        }
        let model = Transformer::from_params(&cfg, &params).unwrap();
        let prompts: [&[u32]; 2] = [&[5, 9, 11], &[7]];
        let texts: [&[u32]; 2] = [&[12, 13, 14, 30], &[40, 41]];
        let layout = Layout::new(&prompts, &texts, &Device::Cpu).unwrap();
        let run = |cached: bool| {
            let mut cache = KvCache::tracked(cfg.layers, 2);
            let cache = cached.then_some(&mut cache);
            let h =
                model.hidden(&layout.ids, &layout.positions, &layout.bias, cache, true).unwrap();
            let loss = model.token_logp(&h, &layout, 1.0).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g: Vec<Vec<f32>> =
                params.iter().map(|(_, v)| flat(grads.get(v.as_tensor()).unwrap())).collect();
            (flat(&h), g)
        };
        let ((h_rows, g_rows), (h_heads, g_heads)) = (run(false), run(true));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&h_rows), bits(&h_heads));
        for ((name, _), (a, b)) in params.iter().zip(g_rows.iter().zip(&g_heads)) {
            assert!(a.iter().any(|x| *x != 0.0), "{name}: no gradient");
            assert_eq!(a, b, "{name}");
        }
    }
}
