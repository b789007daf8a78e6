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
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub steps: usize,
}

/// What one optimiser step saw.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub grad_norm: f64,
    pub lr: f64,
    pub clipped: bool,
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
            self.cfg.lr * (self.steps + 1) as f64 / w as f64
        } else {
            self.cfg.lr
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
            var.set(&(w - (update * lr)?)?.detach())?;
        }
        Ok(StepInfo { grad_norm: norm, lr, clipped: scale < 1.0 })
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
