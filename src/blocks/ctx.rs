//! What a block's forward sees: its input values with their masks, its resolved parameters, the
//! mask of its output, the group of every sequence, and the device. Blocks never create a device.

use candle_core::{DType, Device, Result, Tensor, bail};

use super::param::{self as params, Level, Resolved, Value as Param};

/// A text of the batch: which tokens are real (`mask`), and where known its token ids and the
/// reasoning step of each token.
#[derive(Debug, Clone)]
pub struct TextData {
    pub name: String,
    /// `[B, T]` f32, 1 on real tokens.
    pub mask: Tensor,
    /// `[B, T]` i64 token ids, for alignments (`edit_weights`).
    pub tokens: Option<Tensor>,
    /// `[B, T]` i64 step index of each token, −1 outside every step (`split_steps`).
    pub step_ids: Option<Tensor>,
}

/// A segmentation of a text into reasoning steps.
#[derive(Debug, Clone)]
pub struct StepsData {
    pub text: String,
    /// `[B, T]` i64 step index of each token, −1 outside every step.
    pub ids: Tensor,
    /// `[B, S]` f32, 1 on the steps each sequence has.
    pub mask: Tensor,
}

/// A value flowing along a wire.
#[derive(Debug, Clone)]
pub enum Value {
    Tensor(Tensor),
    Text(TextData),
    Steps(StepsData),
    /// A reward function, by name; the runtime evaluates it.
    Scorer(String),
}

impl Value {
    pub fn tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

/// One input of a call.
#[derive(Debug, Clone, Copy)]
pub struct Arg<'a> {
    pub value: &'a Value,
    pub level: Option<Level>,
    /// For token and step values, the mask of their axis.
    pub mask: Option<&'a Tensor>,
}

/// Everything a forward function may read.
pub struct Ctx<'a> {
    pub device: &'a Device,
    pub args: Vec<Arg<'a>>,
    pub params: &'a [Resolved],
    /// The output's level and, for token or step outputs, the mask of its axis.
    pub level: Level,
    pub mask: Option<&'a Tensor>,
    /// `[B]` i64 group of every sequence, when the batch has groups.
    pub groups: Option<&'a Tensor>,
}

/// A block's forward computation.
pub type Forward = fn(&Ctx) -> Result<Value>;

impl<'a> Ctx<'a> {
    pub fn tensor(&self, i: usize) -> Result<&'a Tensor> {
        match self.args.get(i).map(|a| a.value) {
            Some(Value::Tensor(t)) => Ok(t),
            _ => bail!("input {i} is not a tensor"),
        }
    }

    pub fn text(&self, i: usize) -> Result<&'a TextData> {
        match self.args.get(i).map(|a| a.value) {
            Some(Value::Text(t)) => Ok(t),
            _ => bail!("input {i} is not a text"),
        }
    }

    pub fn steps(&self, i: usize) -> Result<&'a StepsData> {
        match self.args.get(i).map(|a| a.value) {
            Some(Value::Steps(s)) => Ok(s),
            _ => bail!("input {i} is not a step segmentation"),
        }
    }

    /// The mask of input `i`'s axis.
    pub fn input_mask(&self, i: usize) -> Result<&'a Tensor> {
        match self.args.get(i).and_then(|a| a.mask) {
            Some(m) => Ok(m),
            None => bail!("input {i} has no mask"),
        }
    }

    pub fn input_level(&self, i: usize) -> Option<Level> {
        self.args.get(i).and_then(|a| a.level)
    }

    /// The mask of the output's axis.
    pub fn out_mask(&self) -> Result<&'a Tensor> {
        match self.mask {
            Some(m) => Ok(m),
            None => bail!("the output has no mask"),
        }
    }

    pub fn num(&self, name: &str) -> Result<f64> {
        match params::get(self.params, name) {
            Some(Param::Num(v)) => Ok(*v),
            _ => bail!("parameter `{name}` is not a number"),
        }
    }

    /// A number, or `None` where the parameter is `none`.
    pub fn opt_num(&self, name: &str) -> Option<f64> {
        params::get_num(self.params, name)
    }

    pub fn choice(&self, name: &str) -> Result<&'a str> {
        match params::get(self.params, name) {
            Some(Param::Str(s)) => Ok(s),
            _ => bail!("parameter `{name}` is not a choice"),
        }
    }

    pub fn flag(&self, name: &str) -> Result<bool> {
        match params::get(self.params, name) {
            Some(Param::Bool(b)) => Ok(*b),
            _ => bail!("parameter `{name}` is not a flag"),
        }
    }

    /// The group of every sequence; errors if the batch has none.
    pub fn group_ids(&self) -> Result<Vec<i64>> {
        match self.groups {
            Some(g) => g.to_dtype(DType::I64)?.to_vec1::<i64>(),
            None => bail!("this block needs the group of every sequence (`group`)"),
        }
    }
}

/// Host-side helpers for the sequential estimators, which run without gradient.
pub mod host {
    use candle_core::{DType, Result, Tensor};

    use crate::model::fastmath::{Kernel, dispatch};

    /// The elements of a tensor, flattened, read without an intermediate candle tensor when the
    /// dtype is f32 or f64.
    pub fn flat(t: &Tensor) -> Result<Vec<f64>> {
        let t = t.flatten_all()?;
        match t.dtype() {
            DType::F64 => t.to_vec1::<f64>(),
            DType::F32 => Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect()),
            _ => Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?.into_iter().map(f64::from).collect()),
        }
    }

    /// The elements as f32 (the dtype of batch tensors): no conversion and half the memory of
    /// f64 for the sequential estimators, which, like their peers, work in f32.
    pub fn flat32(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
    }

    /// A tensor of `shape` from f32 data, with `like`'s dtype and device.
    pub fn from_flat32(data: Vec<f32>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(data, shape, like.device())?.to_dtype(like.dtype())
    }

    pub fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
        let cols = t.dim(1)?;
        Ok(flat(t)?.chunks(cols.max(1)).map(<[f64]>::to_vec).collect())
    }

    pub fn vec(t: &Tensor) -> Result<Vec<f64>> {
        flat(t)
    }

    /// A tensor of `shape` with `like`'s dtype and device, built directly in that dtype.
    pub fn from_flat(data: Vec<f64>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
        match like.dtype() {
            DType::F64 => Tensor::from_vec(data, shape, like.device()),
            DType::F32 => Tensor::from_vec(
                data.into_iter().map(|x| x as f32).collect::<Vec<f32>>(),
                shape,
                like.device(),
            ),
            dt => Tensor::from_vec(data, shape, like.device())?.to_dtype(dt),
        }
    }

    /// A `[B, T]` tensor with `like`'s dtype and device.
    pub fn from_rows(rows: &[Vec<f64>], like: &Tensor) -> Result<Tensor> {
        let b = rows.len();
        let t = rows.first().map_or(0, |r| r.len());
        from_flat(rows.iter().flatten().copied().collect(), &[b, t], like)
    }

    /// A `[B]` tensor with `like`'s dtype and device.
    pub fn from_vec(v: Vec<f64>, like: &Tensor) -> Result<Tensor> {
        let n = v.len();
        from_flat(v, &[n], like)
    }

    /// `[B, S]` f32: 1 on the steps each sequence has, from `[B, T]` step ids (−1 outside every
    /// step); `S` is the most steps of any sequence, at least 1.
    pub fn step_mask(ids: &Tensor) -> Result<Tensor> {
        let (rows, cols) = ids.dims2()?;
        let flat = ids.flatten_all()?.to_vec1::<i64>()?;
        let counts: Vec<i64> =
            (0..rows).map(|r| dispatch(RowMax(&flat[r * cols..(r + 1) * cols])) + 1).collect();
        let width = counts.iter().copied().max().unwrap_or(0).max(1) as usize;
        let flat: Vec<f32> = counts
            .iter()
            .flat_map(|c| (0..width).map(move |j| if (j as i64) < *c { 1.0 } else { 0.0 }))
            .collect();
        Tensor::from_vec(flat, (rows, width), ids.device())
    }

    /// The largest of a row of step ids, −1 for none, in independent lanes (vectorised).
    struct RowMax<'a>(&'a [i64]);

    impl Kernel for RowMax<'_> {
        type Output = i64;

        #[inline(always)]
        fn run(self) -> i64 {
            let mut acc = [-1i64; 8];
            let chunks = self.0.chunks_exact(8);
            let tail = chunks.remainder().iter().fold(-1, |a, &x| a.max(x));
            for c in chunks {
                for i in 0..8 {
                    acc[i] = acc[i].max(c[i]);
                }
            }
            acc.iter().fold(tail, |a, &x| a.max(x))
        }
    }

    /// A mask's values flat, its row width, and each row's number of real entries.
    pub fn row_lengths(mask: &Tensor) -> Result<(Vec<f64>, usize, Vec<f64>)> {
        let cols = mask.dim(1)?.max(1);
        let m = flat(mask)?;
        let lengths = m.chunks(cols).map(|row| row.iter().sum()).collect();
        Ok((m, cols, lengths))
    }

    /// Indices of the sequences of each group, groups in order of first appearance.
    pub fn group_members(groups: &[i64]) -> Vec<Vec<usize>> {
        let mut order: Vec<i64> = Vec::new();
        let mut members: std::collections::HashMap<i64, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            let entry = members.entry(*g).or_default();
            if entry.is_empty() {
                order.push(*g);
            }
            entry.push(i);
        }
        order.into_iter().map(|g| members.remove(&g).unwrap_or_default()).collect()
    }

    /// 1/√(v + eps), or 1/√max(v, eps) with `floor_max`; 0 where that is not finite (zero variance
    /// with eps = 0), so constant inputs whiten to 0 instead of NaN.
    pub fn inverse_std(var: f64, eps: f64, floor_max: bool) -> f64 {
        let s = 1.0 / if floor_max { var.max(eps) } else { var + eps }.sqrt();
        if s.is_finite() { s } else { 0.0 }
    }

    /// `Σ f(xᵢ, wᵢ)` over the shorter of the two, in independent lanes (a single running f64
    /// sum is a serial chain; the order of the additions differs by rounding only).
    #[inline(always)]
    pub fn lane_sum(x: &[f64], w: &[f64], f: impl Fn(f64, f64) -> f64) -> f64 {
        const LANES: usize = 8;
        let n = x.len().min(w.len());
        let (x, w) = (&x[..n], &w[..n]);
        let mut acc = [0f64; LANES];
        let (xc, wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
        let tail: f64 = xc.remainder().iter().zip(wc.remainder()).map(|(&x, &w)| f(x, w)).sum();
        for (x, w) in xc.zip(wc) {
            for i in 0..LANES {
                acc[i] += f(x[i], w[i]);
            }
        }
        acc.iter().sum::<f64>() + tail
    }

    /// Mean and variance of `xs` weighted by `ws` (a 0/1 mask, or counts: an entry of weight L
    /// counts L times). `unbiased` applies Bessel's correction to the total weight; with a
    /// total weight of 1 or less the variance is 0.
    pub fn mean_var(xs: &[f64], ws: &[f64], unbiased: bool) -> (f64, f64, f64) {
        let n = lane_sum(ws, ws, |_, w| w);
        if n <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        let mean = lane_sum(xs, ws, |x, w| x * w) / n;
        let ss = lane_sum(xs, ws, |x, w| w * (x - mean) * (x - mean));
        let var = if unbiased { if n > 1.0 { ss / (n - 1.0) } else { 0.0 } } else { ss / n };
        (mean, var, n)
    }
}
