//! `rlx generate`: samples from a model directory or a run's trained policy.

use std::process::ExitCode;

use crate::args::GenerateArgs;

pub fn main(args: GenerateArgs) -> Result<ExitCode, String> {
    let GenerateArgs { model, prompt, n, temperature, top_p, max_tokens, chat, seed, device } =
        args;
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(format!("--temperature {temperature}: use a finite value ≥ 0"));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(format!("--top-p {top_p}: use a value in (0, 1]"));
    }
    if n == 0 || max_tokens == 0 {
        return Err("--n and --max-tokens must be at least 1".into());
    }
    let device = rlx::exec::device::device(&device.device)?;
    let loaded = rlx::inspect::load(&model, chat, &device)?;
    let sampling = rlx::sample::Sampling {
        temperature: temperature.max(1e-6),
        top_p,
        max_tokens,
        min_tokens: 0,
        stop: None,
        greedy: temperature == 0.0,
    };
    let texts = rlx::inspect::generate(&loaded, &prompt, n, &sampling, seed, &device)?;
    eprintln!("model: {}", loaded.dir.display());
    for (i, t) in texts.iter().enumerate() {
        if n > 1 {
            println!("--- sample {}", i + 1);
        }
        println!("{prompt}{t}");
    }
    Ok(ExitCode::SUCCESS)
}
