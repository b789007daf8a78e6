//! A model's parameters: named candle variables, initialised from rlx's own seeded generator so
//! that a seed fixes a run, and saved to / loaded from safetensors.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::rng::Rng;

/// How a fresh parameter is filled.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Zeros,
    Ones,
    Normal(f64),
}

/// Named trainable variables, in name order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    pub fn new() -> Params {
        Params::default()
    }

    /// Creates a parameter.
    pub fn init(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
        };
        let var = Var::from_tensor(&Tensor::from_vec(data, shape, device)?)?;
        let t = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(t)
    }

    /// Adds an existing variable.
    pub fn insert(&mut self, name: &str, var: Var) {
        self.vars.insert(name.to_string(), var);
    }

    /// Keeps the parameters whose names pass `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.vars.retain(|k, _| keep(k));
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// The current values, detached (a frozen snapshot shares nothing with later updates).
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?))).collect()
    }

    /// Overwrites every parameter named in `values`; every parameter must be there.
    pub fn assign(&self, values: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            let Some(v) = values.get(name) else {
                candle_core::bail!("the checkpoint has no tensor `{name}`")
            };
            if v.dims() != var.dims() {
                candle_core::bail!(
                    "`{name}` has shape {:?} in the checkpoint, {:?} in the model",
                    v.dims(),
                    var.dims()
                )
            }
            var.set(&v.to_dtype(DType::F32)?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Saves to safetensors, under `prefix.` names.
    pub fn tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.vars.iter().map(|(k, v)| (format!("{prefix}{k}"), v.as_tensor().clone())).collect()
    }

    pub fn load(&self, path: &Path, prefix: &str, device: &Device) -> Result<()> {
        let all = candle_core::safetensors::load(path, device)?;
        let mine: BTreeMap<String, Tensor> = all
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
            .collect();
        self.assign(&mine)
    }
}
