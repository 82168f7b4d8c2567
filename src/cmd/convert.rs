//! `orchard convert`: write a model (GGUF dequantized to f32, or an HF directory) as an HF directory — config,
//! safetensors, tokenizer and chat template — that transformers and `orchard generate --model DIR` load. This is
//! the base model that PEFT adapters from `orchard train` apply to, and what the TRL comparison trains.

use std::path::PathBuf;
use std::process::ExitCode;

use super::common::ModelArgs;

/// Write a model as an f32 HF directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output directory (replaced only once the new one is complete).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let engine = args.model.load()?;
    orchard_train::export::export_hf(engine.model(), &engine, &args.out)?;
    eprintln!("orchard: wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
