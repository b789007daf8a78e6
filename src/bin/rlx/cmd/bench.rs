//! `rlx bench`: throughput of the built-in transformer (or a checkpoint) at sampling and
//! training, on random weights of a given shape.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use rlx::bench::BenchConfig;
use rlx::model::ModelConfig;

use crate::args::{BenchArgs, Workload};

pub fn main(args: BenchArgs) -> Result<ExitCode, String> {
    let BenchArgs {
        preset,
        layers,
        width,
        heads,
        vocab,
        context,
        batch,
        prompt,
        new_tokens,
        train_batch,
        train_len,
        repeats,
        warmup,
        only,
        device,
        seed,
        format,
        checkpoint,
        bf16,
    } = args;
    let preset = preset.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    let base = ModelConfig::preset(&preset, vocab)
        .ok_or_else(|| format!("unknown preset `{preset}`: use tiny, small or base"))?;
    let model = ModelConfig {
        layers: layers.unwrap_or(base.layers),
        width: width.unwrap_or(base.width),
        heads: heads.unwrap_or(base.heads),
        context,
        vocab,
        family: Default::default(),
        classifier_pad: None,
    };
    let sizes = [
        ("--layers", model.layers),
        ("--width", model.width),
        ("--heads", model.heads),
        ("--vocab", model.vocab),
        ("--context", model.context),
        ("--batch", batch),
        ("--prompt", prompt),
        ("--new-tokens", new_tokens),
        ("--train-batch", train_batch),
        ("--train-len", train_len),
        ("--repeats", repeats),
    ];
    if let Some((flag, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return Err(format!("`{flag} 0`: must be at least 1"));
    }
    if !model.width.is_multiple_of(model.heads) {
        return Err(format!(
            "--width {} is not a multiple of --heads {}",
            model.width, model.heads
        ));
    }
    let cfg = BenchConfig {
        model,
        batch,
        prompt,
        new_tokens,
        train_batch,
        train_len,
        warmup,
        repeats,
        seed,
    };
    let name = |w: &Workload| match w {
        Workload::Sampling => "sampling",
        Workload::Training => "training",
        Workload::Matmuls => "matmuls",
    };
    let which: Vec<&str> = if only.is_empty() {
        vec!["sampling", "training"]
    } else {
        only.iter().map(name).collect()
    };
    report(&cfg, checkpoint.as_deref().map(|m| (m, bf16)), &which, &device.device, format.json())
}

/// Measures and prints.
fn report(
    cfg: &BenchConfig,
    checkpoint: Option<(&Path, bool)>,
    which: &[&str],
    device: &str,
    json: bool,
) -> Result<ExitCode, String> {
    let device = rlx::exec::device::device(device)?;
    let report = match checkpoint {
        Some((dir, bf16)) => rlx::bench::run_checkpoint(cfg, dir, bf16, which, &device),
        None => rlx::bench::run(cfg, which, &device),
    }
    .map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &report.config;
    println!(
        "model: {} layers, width {}, {} heads, vocabulary {}, context {} — {:.2}M parameters",
        m.layers,
        m.width,
        m.heads,
        m.vocab,
        m.context,
        report.parameters as f64 / 1e6
    );
    println!(
        "device: {}, {} threads; median of {} runs",
        report.device, report.threads, cfg.repeats
    );
    println!(
        "cpu: {} ({}); rlx's kernels: {}; matmuls: {}",
        report.cpu.model,
        report.cpu.features.join(", "),
        report.cpu.kernels,
        report.cpu.matmuls
    );
    for x in &report.measurements {
        let rate = match x.gflops() {
            Some(g) => format!("{g:>10.1} GFLOP/s"),
            None => format!("{:>10.0} tokens/s", x.tokens_per_second()),
        };
        println!(
            "{:<9} {:<28} {rate}  ({:.1} ms per run)",
            x.name,
            x.shape,
            x.median_seconds() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}
