//! AdamW with global gradient-norm clipping and linear warm-up; its moments are saved with the
//! checkpoint so a resumed run continues exactly.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var, backprop::GradStore};
use rayon::prelude::*;

use crate::host::read_host;
use crate::model::fastmath::{Kernel, dispatch};

/// Elements per parallel task of the host update.
const CHUNK: usize = 1 << 15;

/// One step's schedule, shared by both forms of the update.
struct Schedule {
    /// The clip scale of each group's gradient.
    scales: Vec<f64>,
    lr: f64,
    c1: f64,
    c2: f64,
}

/// One step's scalars, in f32 as the weights are.
#[derive(Clone, Copy)]
struct Coefficients {
    scale: f32,
    b1: f32,
    b2: f32,
    /// 1 − β₁ and 1 − β₂, rounded once from f64 as the tensor form rounds them.
    one_b1: f32,
    one_b2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    lr: f32,
    /// 1 − lr · weight_decay (decoupled decay).
    decay: f32,
}

impl Coefficients {
    /// AdamW on one chunk: moments in place, new weights into `new`; their f32 sum (not finite
    /// when a weight is NaN or inf, or the weights are too large to sum, as the checkpoint checks).
    fn apply(self, new: &mut [f32], w: &[f32], m: &mut [f32], v: &mut [f32], g: &[f32]) -> f32 {
        dispatch(AdamWChunk { k: self, new, w, m, v, g })
    }
}

/// Lanes of the partial sums below (a fixed order whatever the vector width, so the loops
/// vectorise and every instruction set gives the same values).
const LANES: usize = 16;

/// One chunk of the AdamW update, compiled per instruction set (`fastmath::dispatch`).
struct AdamWChunk<'a> {
    k: Coefficients,
    new: &'a mut [f32],
    w: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
}

impl Kernel for AdamWChunk<'_> {
    type Output = f32;

    #[inline(always)]
    fn run(self) -> f32 {
        let k = self.k;
        let mut sums = [0f32; LANES];
        let n = self.new.len();
        let full = n - n % LANES;
        let (new, new_tail) = self.new.split_at_mut(full);
        let (m, m_tail) = self.m.split_at_mut(full);
        let (v, v_tail) = self.v.split_at_mut(full);
        let (w, w_tail) = self.w.split_at(full);
        let (g, g_tail) = self.g.split_at(full);
        let blocks = (new.chunks_exact_mut(LANES).zip(m.chunks_exact_mut(LANES)))
            .zip(v.chunks_exact_mut(LANES).zip(w.chunks_exact(LANES).zip(g.chunks_exact(LANES))));
        for ((new, m), (v, (w, g))) in blocks {
            for i in 0..LANES {
                new[i] = k.update(w[i], &mut m[i], &mut v[i], g[i]);
                sums[i] += new[i];
            }
        }
        let tail =
            new_tail.iter_mut().zip(m_tail).zip(v_tail.iter_mut().zip(w_tail.iter().zip(g_tail)));
        for (i, ((new, m), (v, (w, g)))) in tail.enumerate() {
            *new = k.update(*w, m, v, *g);
            sums[i] += *new;
        }
        sums.iter().sum()
    }
}

impl Coefficients {
    /// One weight's update: its moments in place, the new weight returned.
    #[inline(always)]
    fn update(self, w: f32, m: &mut f32, v: &mut f32, g: f32) -> f32 {
        let g = g * self.scale;
        *m = *m * self.b1 + g * self.one_b1;
        *v = *v * self.b2 + (g * g) * self.one_b2;
        let update = (*m / self.c1) / ((*v / self.c2).sqrt() + self.eps);
        w * self.decay - update * self.lr
    }
}

/// `Σ x²` in f64, in `LANES` partial sums (vectorised).
struct SquaredNorm<'a>(&'a [f32]);

impl Kernel for SquaredNorm<'_> {
    type Output = f64;

    #[inline(always)]
    fn run(self) -> f64 {
        let mut sums = [0f64; LANES];
        let chunks = self.0.chunks_exact(LANES);
        let tail: f64 = chunks.remainder().iter().map(|x| (*x as f64) * (*x as f64)).sum();
        for c in chunks {
            for i in 0..LANES {
                sums[i] += (c[i] as f64) * (c[i] as f64);
            }
        }
        sums.iter().sum::<f64>() + tail
    }
}

/// Optimiser settings, from `optim { }`.
#[derive(Debug, Clone)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub clip_grad: Option<f64>,
    /// Optimiser steps of linear warm-up.
    pub warmup_steps: usize,
    /// Cosine decay to 10% of `lr` over this many steps (after warm-up); `None`: constant.
    pub decay_steps: Option<usize>,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Moment>,
    v: Vec<Moment>,
    /// The clipping group of each variable: `clip_grad` bounds each group's norm on its own
    /// (a policy and a critic of its own are two models, clipped apart as servers do).
    groups: Vec<usize>,
    pub steps: usize,
}

/// A moment estimate: a tensor, or (for the host update) a buffer updated in place.
enum Moment {
    Tensor(Tensor),
    Host(Vec<f32>),
}

impl Moment {
    /// As a tensor shaped and placed like `like`.
    fn tensor(&self, like: &Tensor) -> Result<Tensor> {
        match self {
            Moment::Tensor(t) => Ok(t.clone()),
            Moment::Host(v) => Tensor::from_vec(v.clone(), like.shape(), like.device()),
        }
    }

    /// The host buffer, taken out of a tensor the first time.
    fn host(&mut self) -> Result<&mut Vec<f32>> {
        if let Moment::Tensor(t) = self {
            *self = Moment::Host(t.flatten_all()?.to_vec1::<f32>()?);
        }
        match self {
            Moment::Host(v) => Ok(v),
            Moment::Tensor(_) => unreachable!("converted above"),
        }
    }
}

/// What one optimiser step saw.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub grad_norm: f64,
    pub lr: f64,
    pub clipped: bool,
    /// The first variable the update left non-finite (NaN, inf, or too large to sum), if any:
    /// the caller must stop before these weights are used or saved.
    pub non_finite: Option<String>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<AdamW> {
        let zeros = |v: &Var| v.as_tensor().zeros_like().map(Moment::Tensor);
        let m = vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_>>()?;
        let v = vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_>>()?;
        let groups = vec![0; vars.len()];
        Ok(AdamW { cfg, vars, m, v, groups, steps: 0 })
    }

    /// Clips each group's gradient norm on its own: `groups[i]` is variable i's group.
    pub fn clipped_by_group(mut self, groups: Vec<usize>) -> AdamW {
        assert_eq!(groups.len(), self.vars.len(), "one group per variable");
        self.groups = groups;
        self
    }

    fn group_count(&self) -> usize {
        self.groups.iter().max().map_or(1, |g| g + 1)
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The learning rate of the next step.
    pub fn current_lr(&self) -> f64 {
        let w = self.cfg.warmup_steps;
        if w > 0 && self.steps < w {
            return self.cfg.lr * (self.steps + 1) as f64 / w as f64;
        }
        match self.cfg.decay_steps {
            Some(total) if total > w => {
                let progress = ((self.steps - w) as f64 / (total - w) as f64).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.cfg.lr * (0.1 + 0.9 * cosine)
            }
            _ => self.cfg.lr,
        }
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        Ok(self.group_squares(grads)?.iter().sum::<f64>().sqrt())
    }

    /// The squared L2 norm of each group's gradient.
    fn group_squares(&self, grads: &GradStore) -> Result<Vec<f64>> {
        let mut sq = vec![0f64; self.group_count()];
        for ((_, var), &group) in self.vars.iter().zip(&self.groups) {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq[group] += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq)
    }

    /// Counts a step and gives its scalars: the clip scale of each group whose gradient has the
    /// squared norm `squares[g]`, the learning rate, and the bias corrections of both moments.
    fn next_step(&mut self, squares: &[f64]) -> Schedule {
        let scales = squares
            .iter()
            .map(|sq| match self.cfg.clip_grad {
                Some(c) if sq.sqrt() > c => c / sq.sqrt(),
                _ => 1.0,
            })
            .collect();
        let lr = self.current_lr();
        self.steps += 1;
        let c1 = 1.0 - self.cfg.beta1.powi(self.steps as i32);
        let c2 = 1.0 - self.cfg.beta2.powi(self.steps as i32);
        Schedule { scales, lr, c1, c2 }
    }

    /// One update. A variable without a gradient is left alone (its moments decay).
    pub fn step(&mut self, grads: &GradStore) -> Result<StepInfo> {
        if self.host_eligible(grads) {
            return self.step_host(grads);
        }
        self.step_tensors(grads)
    }

    /// Every weight and gradient is an f32 tensor in CPU memory: the fused host update applies.
    fn host_eligible(&self, grads: &GradStore) -> bool {
        let on_host = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        self.vars.iter().all(|(_, var)| {
            on_host(var.as_tensor()) && grads.get(var.as_tensor()).is_none_or(on_host)
        })
    }

    /// The update as one pass per variable over weights, gradient and moments (the gradient's
    /// norm in one pass before it), in place, split across threads: the tensor form below makes
    /// about fifteen full-size temporaries per variable. Same formula, f32 arithmetic.
    fn step_host(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let mut sq = vec![0f64; self.group_count()];
        for ((_, var), &group) in self.vars.iter().zip(&self.groups) {
            if let Some(g) = grads.get(var.as_tensor()) {
                // Chunk sums collected in order and added in order: rayon's `sum` combines
                // them as work stealing splits, which moved the norm's last bits between runs.
                sq[group] += read_host(g, |g| {
                    let parts: Vec<f64> =
                        g.par_chunks(CHUNK).map(|c| dispatch(SquaredNorm(c))).collect();
                    parts.iter().sum::<f64>()
                })?;
            }
        }
        let norm = sq.iter().sum::<f64>().sqrt();
        let Schedule { scales, lr, c1, c2 } = self.next_step(&sq);
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let ks: Vec<Coefficients> = scales
            .iter()
            .map(|&scale| Coefficients {
                scale: scale as f32,
                b1: b1 as f32,
                b2: b2 as f32,
                one_b1: (1.0 - b1) as f32,
                one_b2: (1.0 - b2) as f32,
                c1: c1 as f32,
                c2: c2 as f32,
                eps: self.cfg.eps as f32,
                lr: lr as f32,
                decay: (1.0 - lr * self.cfg.weight_decay) as f32,
            })
            .collect();
        let mut non_finite = None;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let k = ks[self.groups[i]];
            let m = self.m[i].host()?;
            let v = self.v[i].host()?;
            let w = var.as_tensor();
            let (new, finite) = read_host(g, |g| {
                read_host(w, |w| {
                    let mut new = vec![0f32; w.len()];
                    let finite = new
                        .par_chunks_mut(CHUNK)
                        .zip(w.par_chunks(CHUNK))
                        .zip(m.par_chunks_mut(CHUNK))
                        .zip(v.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK))
                        .map(|((((new, w), m), v), g)| k.apply(new, w, m, v, g))
                        .reduce(|| 0f32, |a, b| a + b)
                        .is_finite();
                    (new, finite)
                })
            })??;
            if !finite && non_finite.is_none() {
                non_finite = Some(name.clone());
            }
            var.set(&Tensor::from_vec(new, w.shape(), w.device())?)?;
        }
        let clipped = scales.iter().any(|&s| s < 1.0);
        Ok(StepInfo { grad_norm: norm, lr, clipped, non_finite })
    }

    /// The update through tensor operations (any device, any dtype).
    fn step_tensors(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let sq = self.group_squares(grads)?;
        let norm = sq.iter().sum::<f64>().sqrt();
        let Schedule { scales, lr, c1, c2 } = self.next_step(&sq);
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        // Σ of every updated weight, summed on the device: one read tells whether all are finite.
        let mut total: Option<Tensor> = None;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Detached: otherwise each step's moments keep that step's whole autograd graph alive.
            let g = (g.detach() * scales[self.groups[i]])?;
            let (m, v) = (self.m[i].tensor(var.as_tensor())?, self.v[i].tensor(var.as_tensor())?);
            let m = ((m * b1)? + (&g * (1.0 - b1))?)?.detach();
            let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.cfg.eps)?)?;
            self.m[i] = Moment::Tensor(m);
            self.v[i] = Moment::Tensor(v);
            let mut w = var.as_tensor().detach();
            if self.cfg.weight_decay > 0.0 {
                w = (&w * (1.0 - lr * self.cfg.weight_decay))?;
            }
            let w = (w - (update * lr)?)?.detach();
            let sum = w.to_dtype(candle_core::DType::F32)?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + sum)?,
                None => sum,
            });
            var.set(&w)?;
        }
        let finite = match total {
            Some(t) => t.to_scalar::<f32>()?.is_finite(),
            None => true,
        };
        let non_finite = if finite { None } else { self.first_non_finite()? };
        let clipped = scales.iter().any(|&s| s < 1.0);
        Ok(StepInfo { grad_norm: norm, lr, clipped, non_finite })
    }

    /// The first variable whose weights are not finite (read only after a failed tensor step).
    fn first_non_finite(&self) -> Result<Option<String>> {
        for (name, var) in &self.vars {
            let s = var.as_tensor().to_dtype(candle_core::DType::F32)?.sum_all()?;
            if !s.to_scalar::<f32>()?.is_finite() {
                return Ok(Some(name.clone()));
            }
        }
        Ok(Some("a variable".into()))
    }

    /// Moments by name, for checkpoints.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let like = var.as_tensor();
            if let (Ok(m), Ok(v)) = (self.m[i].tensor(like), self.v[i].tensor(like)) {
                out.push((format!("{prefix}m.{name}"), m));
                out.push((format!("{prefix}v.{name}"), v));
            }
        }
        out
    }

    pub fn restore(
        &mut self,
        all: &BTreeMap<String, Tensor>,
        prefix: &str,
        steps: usize,
    ) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            if let (Some(m), Some(v)) =
                (all.get(&format!("{prefix}m.{name}")), all.get(&format!("{prefix}v.{name}")))
            {
                self.m[i] = Moment::Tensor(m.clone());
                self.v[i] = Moment::Tensor(v.clone());
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused host update and the tensor update agree, step after step, with clipping and
    /// weight decay, and leave a variable without a gradient alone.
    #[test]
    fn host_update_equals_tensor_update() {
        let dev = Device::Cpu;
        let cfg = AdamWConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            clip_grad: Some(0.5),
            warmup_steps: 2,
            decay_steps: None,
        };
        let make = || -> Vec<(String, Var)> {
            (0..3)
                .map(|i| {
                    let n = [70_000, 7, 129][i];
                    let data: Vec<f32> =
                        (0..n).map(|k| ((k * 37 + i * 11) % 101) as f32 / 50.0 - 1.0).collect();
                    (
                        format!("w{i}"),
                        Var::from_tensor(&Tensor::from_vec(data, n, &dev).unwrap()).unwrap(),
                    )
                })
                .collect()
        };
        let (va, vb) = (make(), make());
        let mut host = AdamW::new(va.clone(), cfg.clone()).unwrap();
        let mut tensors = AdamW::new(vb.clone(), cfg).unwrap();
        for step in 0..5 {
            // loss = Σ w² · c_i over the first two variables (the third gets no gradient).
            let loss = |vars: &[(String, Var)]| -> Tensor {
                let a = (vars[0].1.as_tensor().sqr().unwrap().sum_all().unwrap()
                    * (1.0 + step as f64))
                    .unwrap();
                let b = vars[1].1.as_tensor().sqr().unwrap().sum_all().unwrap();
                (a + b).unwrap()
            };
            assert!(host.host_eligible(&loss(&va).backward().unwrap()));
            let ia = host.step(&loss(&va).backward().unwrap()).unwrap();
            let ib = tensors.step_tensors(&loss(&vb).backward().unwrap()).unwrap();
            // The tensor form sums squares in f32, the host form in f64.
            assert!((ia.grad_norm - ib.grad_norm).abs() <= 1e-5 * ib.grad_norm.max(1.0));
            assert_eq!((ia.clipped, ia.lr, ia.non_finite), (ib.clipped, ib.lr, ib.non_finite));
            for ((_, a), (_, b)) in va.iter().zip(&vb) {
                let (a, b) = (
                    a.as_tensor().to_vec1::<f32>().unwrap(),
                    b.as_tensor().to_vec1::<f32>().unwrap(),
                );
                let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-6, "step {step}: max |host − tensor| = {worst}");
            }
        }
        // The variable without a gradient never moved.
        assert_eq!(
            va[2].1.as_tensor().to_vec1::<f32>().unwrap(),
            make()[2].1.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn host_update_names_the_variable_it_made_non_finite() {
        let dev = Device::Cpu;
        let vars = vec![
            (
                "ok".to_string(),
                Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev).unwrap()).unwrap(),
            ),
            (
                "bad".to_string(),
                Var::from_tensor(&Tensor::new(&[f32::MAX, 1.0], &dev).unwrap()).unwrap(),
            ),
        ];
        let cfg = AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_grad: None,
            warmup_steps: 0,
            decay_steps: None,
        };
        let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
        let loss = (vars[0].1.as_tensor().sum_all().unwrap()
            + vars[1].1.as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let info = opt.step(&loss.backward().unwrap()).unwrap();
        assert_eq!(info.non_finite.as_deref(), Some("bad"));
    }

    fn schedule(warmup_steps: usize, decay_steps: Option<usize>) -> Vec<f64> {
        let cfg = AdamWConfig {
            lr: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_grad: None,
            warmup_steps,
            decay_steps,
        };
        let mut opt = AdamW::new(vec![], cfg).unwrap();
        (0..12)
            .map(|s| {
                opt.steps = s;
                opt.current_lr()
            })
            .collect()
    }

    #[test]
    fn warm_up_then_constant_or_cosine_to_a_tenth() {
        let constant = schedule(4, None);
        assert_eq!(&constant[..5], &[0.25, 0.5, 0.75, 1.0, 1.0]);
        assert!(constant[4..].iter().all(|&x| x == 1.0));

        let cosine = schedule(2, Some(10));
        assert_eq!(&cosine[..3], &[0.5, 1.0, 1.0]);
        // Halfway through the decay (step 6 of 2..10): 0.1 + 0.9 · ½.
        assert!((cosine[6] - 0.55).abs() < 1e-12);
        assert!(cosine[2..].windows(2).all(|w| w[1] <= w[0]));
        assert!((cosine[10] - 0.1).abs() < 1e-12 && (cosine[11] - 0.1).abs() < 1e-12);
    }
}
