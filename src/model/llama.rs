//! The Llama-family trunk (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM): token embeddings,
//! pre-norm blocks of grouped-query attention with rotary positions and a SwiGLU MLP, a final
//! RMS norm. Weights keep their Hugging Face names and `[out, in]` layout, so a checkpoint loads
//! and saves without renaming. Optional parts follow the weights present: q/k/v biases (Qwen2),
//! per-head q/k RMS norms (Qwen3), and LoRA adapters on any linear layer.
//!
//! The training path composes RMS norm from differentiable ops (candle's fused kernels have no
//! backward); inference (`grad = false`) uses the fused ones. Attention is `attention::attend`.
//! Norms and attention scores are computed in f32 whatever the weights' dtype, as in HF.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor};

use super::heads::{merge_heads, split_heads};
use super::hf_config::HfConfig;
use super::kv_cache::KvCache;
use super::layers::{EmbeddingRows, Linear, Lora, RmsNorm};

#[derive(Clone)]
struct Block {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Clone)]
pub struct LlamaTrunk {
    pub embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    inv_freq: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
}

/// Names of the linear layers of block `l` that LoRA can target, by their HF module names.
pub const LINEAR_MODULES: &[&str] =
    &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The HF name of a block's module (`self_attn.q_proj`, `mlp.up_proj`).
pub fn module_path(layer: usize, module: &str) -> String {
    let group = if module.ends_with("_proj") && ["q", "k", "v", "o"].contains(&&module[..1]) {
        "self_attn"
    } else {
        "mlp"
    };
    format!("model.layers.{layer}.{group}.{module}")
}

impl LlamaTrunk {
    /// The trunk over weights by HF names (LoRA adapters as `NAME.lora_A.weight` /
    /// `NAME.lora_B.weight`), computing in `dtype`.
    pub fn new(
        cfg: &HfConfig,
        w: &BTreeMap<String, Tensor>,
        lora_scale: f64,
        dtype: DType,
    ) -> Result<LlamaTrunk> {
        let get = |n: &str| -> Result<Tensor> {
            w.get(n)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing weight `{n}`")))?
                .to_dtype(dtype)
        };
        let norm =
            |n: &str| -> Result<RmsNorm> { Ok(RmsNorm { weight: get(n)?, eps: cfg.rms_norm_eps }) };
        let linear = |n: &str| -> Result<Linear> {
            let bias = w.get(&format!("{n}.bias")).map(|b| b.to_dtype(dtype)).transpose()?;
            let lora = match (
                w.get(&format!("{n}.lora_A.weight")),
                w.get(&format!("{n}.lora_B.weight")),
            ) {
                (Some(a), Some(b)) => Some(Lora { a: a.clone(), b: b.clone(), scale: lora_scale }),
                _ => None,
            };
            Ok(Linear { weight: get(&format!("{n}.weight"))?, bias, lora })
        };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = |s: &str| format!("model.layers.{l}.{s}");
                let optional_norm = |s: &str| -> Result<Option<RmsNorm>> {
                    let n = p(s);
                    w.contains_key(&n).then(|| norm(&n)).transpose()
                };
                Ok(Block {
                    input_norm: norm(&p("input_layernorm.weight"))?,
                    q: linear(&module_path(l, "q_proj"))?,
                    k: linear(&module_path(l, "k_proj"))?,
                    v: linear(&module_path(l, "v_proj"))?,
                    o: linear(&module_path(l, "o_proj"))?,
                    q_norm: optional_norm("self_attn.q_norm.weight")?,
                    k_norm: optional_norm("self_attn.k_norm.weight")?,
                    post_norm: norm(&p("post_attention_layernorm.weight"))?,
                    gate: linear(&module_path(l, "gate_proj"))?,
                    up: linear(&module_path(l, "up_proj"))?,
                    down: linear(&module_path(l, "down_proj"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = get("model.embed_tokens.weight")?;
        let inv_freq = cfg.inv_freq();
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, half, embed.device())?;
        Ok(LlamaTrunk {
            embed,
            blocks,
            norm: norm("model.norm.weight")?,
            inv_freq,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: cfg.head_dim(),
            dtype,
        })
    }

    /// `cos` and `sin` `[B, 1, L, Dh/2]` of each position, computed in f32.
    fn rotary(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l) = positions.dims2()?;
        let angles = positions
            .to_dtype(DType::F32)?
            .reshape((b, l, 1))?
            .broadcast_mul(&self.inv_freq.reshape((1, 1, self.head_dim / 2))?)?
            .unsqueeze(1)?;
        Ok((angles.cos()?.to_dtype(self.dtype)?, angles.sin()?.to_dtype(self.dtype)?))
    }

    /// Hidden states `[B, Lq, D]` after the final norm; see `Transformer::hidden`.
    pub fn hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        bias: &Tensor,
        mut cache: Option<&mut KvCache>,
        grad: bool,
    ) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let (h, kv, dh) = (self.heads, self.kv_heads, self.head_dim);
        let (cos, sin) = self.rotary(positions)?;
        let mut x = self.embed.embedding_rows(ids)?;
        let scale = 1.0 / (dh as f64).sqrt();
        for (li, blk) in self.blocks.iter().enumerate() {
            let a = blk.input_norm.forward(&x, grad)?;
            // Projections `[B, L, n·D]` to heads `[B, n, L, D]`, rotated when `rotary`; a
            // per-head norm (Qwen3) goes between the reshape and the transpose.
            let heads_of = |t: Tensor, n: usize, norm: &Option<RmsNorm>, rotary: bool| {
                let tables = rotary.then_some((&cos, &sin));
                let Some(nm) = norm else { return split_heads(&t, n, tables) };
                let t =
                    nm.forward(&t.reshape((b, l, n, dh))?, grad)?.transpose(1, 2)?.contiguous()?;
                if rotary { super::rope::rope(&t, &cos, &sin) } else { Ok(t) }
            };
            let q = heads_of(blk.q.forward(&a)?, h, &blk.q_norm, true)?;
            let mut k = heads_of(blk.k.forward(&a)?, kv, &blk.k_norm, true)?;
            let mut v = heads_of(blk.v.forward(&a)?, kv, &None, false)?;
            if let Some(c) = cache.as_deref_mut() {
                (k, v) = c.append(li, k, v)?;
            }
            let y = merge_heads(&super::attention::attend(&q, &k, &v, bias, scale, grad)?)?;
            x = (x + blk.o.forward(&y)?)?;
            let m = blk.post_norm.forward(&x, grad)?;
            let m = super::swiglu::silu_mul(&blk.gate.forward(&m)?, &blk.up.forward(&m)?)?;
            x = (x + blk.down.forward(&m)?)?;
        }
        self.norm.forward(&x, grad)
    }
}
