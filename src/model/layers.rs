//! Layers both trunks share (as candle-nn keeps its `Linear` apart from any model): a linear
//! layer with HF's `[out, in]` weight, optional bias and LoRA adapter; RMS norm; embedding rows.

use candle_core::{DType, Result, Tensor};

/// A LoRA adapter: `y += scale · (x Aᵀ) Bᵀ` with `A: [r, in]`, `B: [out, r]`.
#[derive(Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// A linear layer with HF's `[out, in]` weight, an optional bias and an optional adapter.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner;
        let x2 = x.reshape((rows, inner))?;
        let mut y = super::gemv::matmul_nt(&x2, &self.weight)?;
        if let Some(b) = &self.bias {
            y = super::bias::add_bias(&y, b)?;
        }
        if let Some(l) = &self.lora {
            let a = l.a.to_dtype(x.dtype())?;
            let b = l.b.to_dtype(x.dtype())?;
            y = (y + (x2.matmul(&a.t()?)?.matmul(&b.t()?)? * l.scale)?)?;
        }
        let mut out = dims;
        *out.last_mut().expect("rank ≥ 1") = self.weight.dim(0)?;
        y.reshape(out)
    }
}

#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        if !grad && x.dtype() == DType::F32 {
            return candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32);
        }
        super::norm::rms_norm(x, &self.weight, self.eps)
    }
}

/// Looking up the rows of an embedding table.
pub(crate) trait EmbeddingRows {
    fn embedding_rows(&self, ids: &Tensor) -> Result<Tensor>;
}

impl EmbeddingRows for Tensor {
    /// Rows of an embedding table `[N, D]` for ids `[B, L]`: `[B, L, D]`.
    fn embedding_rows(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let d = self.dim(1)?;
        self.index_select(&ids.flatten_all()?, 0)?.reshape((b, l, d))
    }
}
