//! AdamW with global gradient-norm clipping and linear warm-up; its moments are saved with the
//! checkpoint so a resumed run continues exactly.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var, backprop::GradStore};

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
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub steps: usize,
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
        let m = vars.iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<Result<_>>()?;
        let v = vars.iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<Result<_>>()?;
        Ok(AdamW { cfg, vars, m, v, steps: 0 })
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
        let mut sq = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update. A variable without a gradient is left alone (its moments decay).
    pub fn step(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let norm = self.grad_norm(grads)?;
        let scale = match self.cfg.clip_grad {
            Some(c) if norm > c => c / norm,
            _ => 1.0,
        };
        let lr = self.current_lr();
        self.steps += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c1 = 1.0 - b1.powi(self.steps as i32);
        let c2 = 1.0 - b2.powi(self.steps as i32);
        // Σ of every updated weight, summed on the device: one read tells whether all are finite.
        let mut total: Option<Tensor> = None;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Detached: otherwise each step's moments keep that step's whole autograd graph alive.
            let g = (g.detach() * scale)?;
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?.detach();
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + self.cfg.eps)?)?;
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
        Ok(StepInfo { grad_norm: norm, lr, clipped: scale < 1.0, non_finite })
    }

    /// The first variable whose weights are not finite (read only after a failed step).
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
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("{prefix}m.{name}"), self.m[i].clone()));
            out.push((format!("{prefix}v.{name}"), self.v[i].clone()));
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
                self.m[i] = m.clone();
                self.v[i] = v.clone();
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
