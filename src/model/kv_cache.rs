//! The sampler's key/value cache: per layer, preallocated `[B, G, capacity, D]` buffers that
//! each decoding step writes its new columns into in place, and views of the columns written
//! so far for attention to read.
//!
//! Appending by `Tensor::cat` copied the whole cache into a fresh allocation every token of
//! every layer (quadratic in the response length, and most of it fresh pages the kernel had to
//! zero); here a step copies only its own columns, and a buffer grows (doubling) only when a
//! row runs past what was reserved.

use candle_core::{Device, Result, Tensor};

/// Keys and values of every layer for the columns seen so far, with which columns are real.
///
/// Not `Clone`: views handed out by `append` share the buffers, which later appends write
/// into (past those views' columns); a copy that appended too would overwrite the original's.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Columns a layer's buffers hold when first allocated (prompt + new tokens, when known).
    reserve: usize,
    /// Per row: whether each cached column is a real token.
    pub valid: Vec<Vec<bool>>,
    /// Per row: the position the next token takes.
    pub next_pos: Vec<u32>,
    /// Appends by concatenation, which back-propagates (a training forward over a shared
    /// prompt), instead of writing buffers in place, which does not.
    tracked: bool,
}

/// One layer's buffers `[B, G, capacity, D]`, of which the first `len` columns are written.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerKv {
    fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// The written columns, `[B, G, len, D]` views of the buffers.
    fn views(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.k.narrow(2, 0, self.len)?, self.v.narrow(2, 0, self.len)?))
    }
}

/// A zeroed buffer like `t` (`[B, G, _, D]`) with `columns` columns.
fn buffer_like(t: &Tensor, columns: usize) -> Result<Tensor> {
    let (b, g, _, d) = t.dims4()?;
    Tensor::zeros((b, g, columns, d), t.dtype(), t.device())
}

impl KvCache {
    /// An empty cache whose buffers, once allocated, hold `reserve` columns before growing.
    pub fn new(layers: usize, rows: usize, reserve: usize) -> KvCache {
        KvCache {
            layers: (0..layers).map(|_| None).collect(),
            reserve,
            valid: vec![vec![]; rows],
            next_pos: vec![0; rows],
            tracked: false,
        }
    }

    /// An empty cache whose appends concatenate, so that gradients flow from the keys and
    /// values read later back to the forward that wrote them (and through `fork`'s row
    /// selection). `valid` and `next_pos` are the caller's to fill: the caller gives the
    /// attention bias.
    pub fn tracked(layers: usize, rows: usize) -> KvCache {
        KvCache { tracked: true, ..KvCache::new(layers, rows, 0) }
    }

    /// Writes a layer's new keys and values `[B, G, L, D]` after the cached ones; returns all
    /// of them (views of the buffers).
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let new = k.dim(2)?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let reserve = self.reserve;
        let slot = &mut self.layers[layer];
        if self.tracked {
            let entry = match slot.take() {
                None => LayerKv { k, v, len: new },
                Some(e) => LayerKv {
                    k: Tensor::cat(&[&e.k, &k], 2)?,
                    v: Tensor::cat(&[&e.v, &v], 2)?,
                    len: e.len + new,
                },
            };
            let views = (entry.k.clone(), entry.v.clone());
            *slot = Some(entry);
            return Ok(views);
        }
        let entry = match slot.take() {
            None if new >= reserve => LayerKv { k, v, len: new },
            None => {
                let (kb, vb) = (buffer_like(&k, reserve)?, buffer_like(&v, reserve)?);
                kb.slice_set(&k, 2, 0)?;
                vb.slice_set(&v, 2, 0)?;
                LayerKv { k: kb, v: vb, len: new }
            }
            Some(mut e) => {
                if e.len + new > e.capacity() {
                    let columns = (e.len + new).max(2 * e.capacity());
                    let (ok, ov) = e.views()?;
                    let (kb, vb) = (buffer_like(&k, columns)?, buffer_like(&v, columns)?);
                    kb.slice_set(&ok.contiguous()?, 2, 0)?;
                    vb.slice_set(&ov.contiguous()?, 2, 0)?;
                    (e.k, e.v) = (kb, vb);
                }
                e.k.slice_set(&k, 2, e.len)?;
                e.v.slice_set(&v, 2, e.len)?;
                e.len += new;
                e
            }
        };
        let views = entry.views()?;
        *slot = Some(entry);
        Ok(views)
    }

    pub fn columns(&self) -> usize {
        self.valid.first().map_or(0, |v| v.len())
    }

    /// A cache for new rows: row `i` continues row `rows[i]` from its first `cuts[i]` columns.
    /// Columns past a row's cut stay in the buffers but are masked out, so rows with different
    /// prefix lengths share one batch (VinePPO's rollouts from every step start).
    pub fn fork(&self, rows: &[usize], cuts: &[usize]) -> Result<KvCache> {
        let width = cuts.iter().copied().max().unwrap_or(0);
        let device = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|e| e.k.device().clone())
            .unwrap_or(Device::Cpu);
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            &device,
        )?;
        // Whole buffers are selected (contiguous, with their spare columns), so the fork's
        // steps write in place too; only the first `width` columns count as written.
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref()
                    .map(|e| -> Result<LayerKv> {
                        if width > e.len {
                            candle_core::bail!("fork past the cache's {} columns", e.len)
                        }
                        if self.tracked {
                            // Exactly the kept columns: later appends concatenate after them.
                            let k = e.k.narrow(2, 0, width)?.contiguous()?;
                            let v = e.v.narrow(2, 0, width)?.contiguous()?;
                            return Ok(LayerKv {
                                k: k.index_select(&index, 0)?,
                                v: v.index_select(&index, 0)?,
                                len: width,
                            });
                        }
                        Ok(LayerKv {
                            k: e.k.index_select(&index, 0)?,
                            v: e.v.index_select(&index, 0)?,
                            len: width,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let mut valid = Vec::with_capacity(rows.len());
        let mut next_pos = Vec::with_capacity(rows.len());
        for (&r, &cut) in rows.iter().zip(cuts) {
            let real =
                |j: usize| self.valid.get(r).and_then(|v| v.get(j)).copied().unwrap_or(false);
            let v: Vec<bool> = (0..width).map(|j| j < cut && real(j)).collect();
            next_pos.push(v.iter().filter(|x| **x).count() as u32);
            valid.push(v);
        }
        Ok(KvCache { layers, reserve: self.reserve, valid, next_pos, tracked: self.tracked })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(seed: f32, n: usize) -> Tensor {
        let v: Vec<f32> = (0..2 * 3 * n * 4).map(|i| seed + i as f32).collect();
        Tensor::from_vec(v, (2, 3, n, 4), &Device::Cpu).unwrap()
    }

    /// Appending in place (within the reserve, growing past it, and with no reserve) gives
    /// exactly what concatenating gives, and earlier views keep their values.
    #[test]
    fn appends_equal_concatenation_across_growth() {
        for reserve in [0, 3, 8] {
            let mut cache = KvCache::new(1, 2, reserve);
            let mut expected: Option<Tensor> = None;
            let mut first_view: Option<(Tensor, Tensor)> = None;
            for (step, n) in [2, 1, 1, 3, 1].into_iter().enumerate() {
                let (k, v) = (columns(step as f32 * 100.0, n), columns(-(step as f32), n));
                let (kv, vv) = cache.append(0, k.clone(), v.clone()).unwrap();
                let e = match expected {
                    Some(e) => Tensor::cat(&[&e, &k], 2).unwrap(),
                    None => k.clone(),
                };
                let diff = (kv.clone() - &e).unwrap().abs().unwrap().sum_all().unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "reserve {reserve} step {step}");
                assert_eq!(vv.dims(), kv.dims());
                expected = Some(e);
                first_view.get_or_insert((kv, vv));
            }
            let (k0, v0) = first_view.unwrap();
            let k0 = k0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = columns(0.0, 2).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(k0, want);
            let v0 = v0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(v0, columns(-0.0, 2).flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }

    /// A fork selects rows, keeps the first `width` columns and appends after them.
    #[test]
    fn forks_select_rows_and_append_after_the_cut() {
        let mut cache = KvCache::new(1, 2, 6);
        cache.valid = vec![vec![true; 4]; 2];
        cache.append(0, columns(0.0, 4), columns(1.0, 4)).unwrap();
        let mut fork = cache.fork(&[1, 1, 0], &[2, 3, 3]).unwrap();
        assert_eq!(fork.next_pos, vec![2, 3, 3]);
        let new = Tensor::ones((3, 3, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (k, _) = fork.append(0, new.clone(), new).unwrap();
        assert_eq!(k.dims(), [3, 3, 4, 4]);
        let original = columns(0.0, 4);
        let row1 = original.narrow(0, 1, 1).unwrap().narrow(2, 0, 3).unwrap();
        let got = k.narrow(0, 0, 1).unwrap().narrow(2, 0, 3).unwrap();
        let diff = (got - row1).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let last = k.narrow(2, 3, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(last.iter().all(|x| *x == 1.0));
        // The original is untouched by the fork's append.
        let (again, _) = cache.layers[0].as_ref().unwrap().views().unwrap();
        let diff = (again - original).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
