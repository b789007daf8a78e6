//! `rlx tiny-checkpoint`: a tiny random Hugging Face checkpoint of a supported family, written
//! as transformers writes one.

use std::process::ExitCode;

use clap::ValueEnum;
use rlx::model::hf_tiny::{self, ConfigStyle, TinySpec};

use crate::args::{Layout, TinyCheckpointArgs};

/// The name a value has on the command line, which is also the library's name for it.
fn name(v: impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

pub fn main(args: TinyCheckpointArgs) -> Result<ExitCode, String> {
    let TinyCheckpointArgs { dir, family, shards, size, seed, transformers, bf16, reward_model } =
        args;
    let style = if transformers == Layout::V4 { ConfigStyle::V4 } else { ConfigStyle::V5 };
    let (family, size, layout) = (name(family), name(size), name(transformers));
    let spec = TinySpec {
        family: family.clone(),
        size: size.clone(),
        shards,
        seed,
        style,
        bf16,
        reward_model,
    };
    hf_tiny::write_tiny(&dir, &spec)?;
    let what = if reward_model { "reward model" } else { "checkpoint" };
    println!(
        "wrote a random {size} {family} {what} (transformers {layout} layout) to {}",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
