//! `rlx bench`: throughput of the built-in transformer on a given shape, so figures can be set
//! beside other frameworks' on the same shapes.
//!
//! - Sampling: new tokens per second of batched KV-cache generation, prompt prefill included,
//!   every row generating exactly the requested number of tokens (EOS is masked until then).
//! - Training: tokens per second of one optimiser step — forward, cross-entropy, backward and
//!   AdamW — on `batch × length` token sequences.
//! - Matmuls: the training step's matrix products alone (each linear layer's forward product
//!   and its two backward products, as autograd computes them), in GFLOP/s: how fast the GEMMs
//!   run at this shape, apart from everything else a step does.
//!
//! Weights are random (the shape, not the values, sets the cost). Each measurement is repeated
//! after untimed warm-up runs and the median is reported.

use std::time::Instant;

use candle_core::{Device, Result, Var};
use serde::Serialize;

use crate::model::transformer::{Heads, init_params};
use crate::model::{Layout, ModelConfig, Transformer};
use crate::rng::Rng;
use crate::sample::{Sampling, generate};
use crate::tokenizer::Tok;
use crate::train::optim::{AdamW, AdamWConfig};

/// First id a benchmark prompt may use (after the special tokens).
const FIRST_ORDINARY_ID: u32 = 5;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: ModelConfig,
    /// Sampling: rows, prompt tokens per row, new tokens per row.
    pub batch: usize,
    pub prompt: usize,
    pub new_tokens: usize,
    /// Training: sequences per step and tokens per sequence.
    pub train_batch: usize,
    pub train_len: usize,
    pub warmup: usize,
    pub repeats: usize,
    pub seed: u64,
}

/// One measured workload.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub name: &'static str,
    /// The workload in words, e.g. `32 × (16 prompt + 48 new)`.
    pub shape: String,
    /// Tokens counted per run (new tokens for sampling, all tokens for training).
    pub tokens: usize,
    /// Seconds of each timed run.
    pub seconds: Vec<f64>,
    /// Floating-point operations per run, where the workload counts them (matmuls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

impl Measurement {
    pub fn median_seconds(&self) -> f64 {
        median(self.seconds.clone())
    }

    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.median_seconds()
    }

    pub fn gflops(&self) -> Option<f64> {
        self.flops.map(|f| f / self.median_seconds() / 1e9)
    }
}

/// Every measurement of one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: ModelConfig,
    pub parameters: usize,
    pub device: String,
    pub threads: usize,
    /// What the figures were measured on: AVX2 and AVX-512 machines differ.
    pub cpu: Cpu,
    pub measurements: Vec<Measurement>,
}

/// Runs the benchmarks `which` (`sampling`, `training`) on random weights of `cfg.model`'s shape.
pub fn run(cfg: &BenchConfig, which: &[&str], device: &Device) -> Result<Report> {
    check_shape(cfg)?;
    let mut rng = Rng::new(cfg.seed);
    let heads = Heads { lm: true, value: false, score: false };
    let params = init_params(&cfg.model, heads, &mut rng, device)?;
    run_on(cfg, params, which, device)
}

/// Runs the benchmarks on a Hugging Face checkpoint (every weight trained); `cfg.model` is
/// replaced by the checkpoint's shape.
pub fn run_checkpoint(
    cfg: &BenchConfig,
    dir: &std::path::Path,
    bf16: bool,
    which: &[&str],
    device: &Device,
) -> Result<Report> {
    let ck = crate::model::hf::load(dir, device).map_err(candle_core::Error::Msg)?;
    let model = ModelConfig::llama(crate::model::LlamaSpec { hf: ck.cfg, lora: None, bf16 });
    let cfg = BenchConfig { model, ..cfg.clone() };
    check_shape(&cfg)?;
    let mut params = crate::model::Params::new();
    for (k, v) in &ck.weights {
        params.insert(k, Var::from_tensor(v)?);
    }
    run_on(&cfg, params, which, device)
}

fn run_on(
    cfg: &BenchConfig,
    params: crate::model::Params,
    which: &[&str],
    device: &Device,
) -> Result<Report> {
    let parameters = params.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    let mut measurements = Vec::new();
    for name in which {
        measurements.push(match *name {
            "sampling" => sampling(cfg, &Transformer::frozen(&cfg.model, &params)?, device)?,
            "training" => {
                let vars = params.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
                training(cfg, &Transformer::from_params(&cfg.model, &params)?, vars, device)?
            }
            "matmuls" => matmuls(cfg, &params, device)?,
            other => candle_core::bail!("unknown benchmark `{other}`"),
        });
    }
    // What candle's CPU kernels actually use (it reads `RAYON_NUM_THREADS` the same way).
    let threads = candle_core::utils::get_num_threads();
    Ok(Report {
        config: cfg.model.clone(),
        parameters,
        device: format!("{device:?}"),
        threads,
        cpu: cpu(),
        measurements,
    })
}

fn check_shape(cfg: &BenchConfig) -> Result<()> {
    let m = &cfg.model;
    let gpt = matches!(m.family, crate::model::Family::Gpt);
    if m.heads == 0 || (gpt && !m.width.is_multiple_of(m.heads)) {
        candle_core::bail!("width {} is not a multiple of heads {}", m.width, m.heads)
    }
    if m.vocab <= FIRST_ORDINARY_ID as usize {
        candle_core::bail!("vocabulary {} is too small (at least 6)", m.vocab)
    }
    if cfg.prompt + cfg.new_tokens > m.context || cfg.train_len > m.context {
        candle_core::bail!("sequences are longer than the context of {}", m.context)
    }
    if cfg.prompt == 0 || cfg.train_len < 2 || cfg.repeats == 0 {
        candle_core::bail!("prompt ≥ 1, length ≥ 2 and repeats ≥ 1 are needed")
    }
    Ok(())
}

/// Random token ids of ordinary (non-special) tokens.
fn random_ids(n: usize, vocab: usize, rng: &mut Rng) -> Vec<u32> {
    let span = vocab - FIRST_ORDINARY_ID as usize;
    (0..n).map(|_| FIRST_ORDINARY_ID + rng.below(span) as u32).collect()
}

/// Times `f` `repeats` times after `warmup` untimed calls.
fn timed(
    cfg: &BenchConfig,
    device: &Device,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..cfg.warmup {
        f()?;
    }
    device.synchronize()?;
    let mut seconds = Vec::with_capacity(cfg.repeats);
    for _ in 0..cfg.repeats {
        let t0 = Instant::now();
        f()?;
        device.synchronize()?;
        seconds.push(t0.elapsed().as_secs_f64());
    }
    Ok(seconds)
}

fn sampling(cfg: &BenchConfig, model: &Transformer, device: &Device) -> Result<Measurement> {
    // The sampler needs a tokenizer only for stop strings; none are used here.
    let tok = Tok::from_json(&Tok::json(&[])).map_err(candle_core::Error::Msg)?;
    let mut rng = Rng::new(cfg.seed ^ 0x5a);
    let prompts: Vec<Vec<u32>> =
        (0..cfg.batch).map(|_| random_ids(cfg.prompt, cfg.model.vocab, &mut rng)).collect();
    let s = Sampling {
        temperature: 1.0,
        top_p: 1.0,
        max_tokens: cfg.new_tokens,
        min_tokens: cfg.new_tokens,
        stop: None,
        greedy: false,
    };
    let mut generated = 0;
    let seconds = timed(cfg, device, || {
        let g = generate(model, &tok, &prompts, &s, &mut rng, device)?;
        generated = g.tokens.iter().map(Vec::len).sum();
        Ok(())
    })?;
    if generated != cfg.batch * cfg.new_tokens {
        candle_core::bail!("generated {generated} tokens, expected {}", cfg.batch * cfg.new_tokens)
    }
    Ok(Measurement {
        name: "sampling",
        shape: format!("{} × ({} prompt + {} new)", cfg.batch, cfg.prompt, cfg.new_tokens),
        tokens: generated,
        seconds,
        flops: None,
    })
}

fn training(
    cfg: &BenchConfig,
    model: &Transformer,
    vars: Vec<(String, Var)>,
    device: &Device,
) -> Result<Measurement> {
    let mut rng = Rng::new(cfg.seed ^ 0xa5);
    let rows: Vec<Vec<u32>> = (0..cfg.train_batch)
        .map(|_| random_ids(cfg.train_len, cfg.model.vocab, &mut rng))
        .collect();
    // First token as the prompt, the rest as the text: every position but the first is predicted.
    let prompts: Vec<&[u32]> = rows.iter().map(|r| &r[..1]).collect();
    let texts: Vec<&[u32]> = rows.iter().map(|r| &r[1..]).collect();
    let layout = Layout::new(&prompts, &texts, device)?;
    let predicted = (cfg.train_batch * (cfg.train_len - 1)) as f64;
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_grad: Some(1.0),
            warmup_steps: 0,
            decay_steps: None,
        },
    )?;
    let seconds = timed(cfg, device, || {
        let hidden = model.hidden_of(&layout, true)?;
        let loss = (model.token_logp(&hidden, &layout, 1.0)?.sum_all()? / -predicted)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        Ok(())
    })?;
    Ok(Measurement {
        name: "training",
        shape: format!("{} × {} tokens", cfg.train_batch, cfg.train_len),
        tokens: cfg.train_batch * cfg.train_len,
        seconds,
        flops: None,
    })
}

/// The matrix products of a training step on `train_batch × train_len` rows, for every linear
/// layer (the head included, embeddings not): forward `x·W`, and backward `dy·Wᵀ` and `xᵀ·dy`,
/// each in the operand layout autograd hands candle's matmul (the built-in model keeps GPT-2's
/// `[in, out]` weights; the Llama family `[out, in]`, used as `x·Wᵀ`).
fn matmuls(
    cfg: &BenchConfig,
    params: &crate::model::Params,
    device: &Device,
) -> Result<Measurement> {
    use candle_core::Tensor;
    let rows = cfg.train_batch * cfg.train_len;
    let in_out = matches!(cfg.model.family, crate::model::Family::Gpt);
    let is_embedding =
        |n: &str| n.starts_with("tok.") || n.starts_with("pos.") || n.contains("embed");
    let mut weights: Vec<Tensor> = params
        .iter()
        .filter(|(n, v)| v.as_tensor().rank() == 2 && !is_embedding(n))
        .map(|(_, v)| v.as_tensor().clone())
        .collect();
    // A tied head multiplies by the embedding table.
    if !params.iter().any(|(n, _)| n.contains("lm_head"))
        && let Some((_, v)) = params.iter().find(|(n, _)| n.contains("embed_tokens"))
    {
        weights.push(v.as_tensor().clone());
    }
    let mut flops = 0.0;
    let mut cases = Vec::with_capacity(weights.len());
    for w in weights {
        let (i, o) = if in_out { w.dims2()? } else { (w.dim(1)?, w.dim(0)?) };
        let x = Tensor::randn(0f32, 1.0, (rows, i), device)?.to_dtype(w.dtype())?;
        let dy = Tensor::randn(0f32, 1.0, (rows, o), device)?.to_dtype(w.dtype())?;
        flops += 3.0 * 2.0 * (rows * i * o) as f64;
        cases.push((x, w, dy));
    }
    let seconds = timed(cfg, device, || {
        for (x, w, dy) in &cases {
            if in_out {
                x.matmul(w)?;
                dy.matmul(&w.t()?)?;
            } else {
                x.matmul(&w.t()?)?;
                dy.matmul(w)?;
            }
            x.t()?.matmul(dy)?;
        }
        Ok(())
    })?;
    Ok(Measurement {
        name: "matmuls",
        shape: format!("{rows} rows × {} weights", cases.len()),
        tokens: rows,
        seconds,
        flops: Some(flops),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BenchConfig {
        BenchConfig {
            model: ModelConfig {
                vocab: 40,
                layers: 1,
                width: 16,
                heads: 2,
                context: 32,
                family: Default::default(),
                classifier_pad: None,
            },
            batch: 3,
            prompt: 4,
            new_tokens: 5,
            train_batch: 2,
            train_len: 6,
            warmup: 0,
            repeats: 3,
            seed: 1,
        }
    }

    #[test]
    fn measures_both_workloads_with_exact_token_counts() {
        let r = run(&tiny(), &["sampling", "training"], &Device::Cpu).unwrap();
        assert_eq!(r.measurements[0].tokens, 15);
        assert_eq!(r.measurements[1].tokens, 12);
        assert!(r.measurements.iter().all(|m| m.seconds.len() == 3));
        assert!(r.measurements.iter().all(|m| m.tokens_per_second() > 0.0));
        // tok 40×16 + pos 32×16 + one block + final norm + head 16×40.
        let block = 2 * 16 + 16 * 48 + 48 + 16 * 16 + 16 + 2 * 16 + 16 * 64 + 64 + 64 * 16 + 16;
        assert_eq!(r.parameters, 40 * 16 + 32 * 16 + block + 2 * 16 + 16 * 40);
    }

    #[test]
    fn rejects_impossible_shapes() {
        let mut c = tiny();
        c.model.heads = 3;
        assert!(run(&c, &["training"], &Device::Cpu).is_err());
        let mut c = tiny();
        c.new_tokens = 40;
        assert!(run(&c, &["sampling"], &Device::Cpu).is_err());
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        let m = |s: Vec<f64>| Measurement {
            name: "x",
            shape: String::new(),
            tokens: 1,
            seconds: s,
            flops: None,
        };
        assert_eq!(m(vec![3.0, 1.0, 2.0]).median_seconds(), 2.0);
        assert_eq!(m(vec![4.0, 1.0, 2.0, 3.0]).median_seconds(), 2.5);
    }
}

/// The CPU a benchmark ran on: its model, the vector instruction sets it has, which copy of
/// rlx's own kernels `fastmath::dispatch` runs, and which kernels candle's matmuls (the `gemm`
/// crate) run: AVX-512 only in a build with the `avx512` feature on a CPU that has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cpu {
    pub model: String,
    pub features: Vec<&'static str>,
    pub kernels: &'static str,
    pub matmuls: &'static str,
}

pub fn cpu() -> Cpu {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    // Which copy of rlx's kernels runs, with `RLX_SIMD`'s cap applied.
    let features = features();
    let has = |f: &str| features.contains(&f);
    let matmuls = if cfg!(feature = "avx512") && has("avx512f") {
        "AVX-512"
    } else if has("avx2") && has("fma") {
        "AVX2 + FMA"
    } else {
        "baseline"
    };
    Cpu { model, features, kernels: crate::model::fastmath::kernel_level(), matmuls }
}

#[cfg(target_arch = "x86_64")]
fn features() -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { out.push($f); } )* };
    }
    probe!(
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avx512bf16"
    );
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn features() -> Vec<&'static str> {
    Vec::new()
}
