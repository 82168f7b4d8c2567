//! `orchard eval`: accuracy of a model on a verifiable task — greedy, and majority vote over K samples (maj@K) —
//! each with a 95% Wilson score interval, as one JSON object.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use orchard_datasets::cli::SourceArgs;
use orchard_datasets::TaskSource;
use orchard_engine::GenerateOptions;
use orchard_jobs::eval::{evaluate, EvalConfig, DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE};

use super::common::{ModelArgs, PrecisionArg};
use crate::job::build_reward;

/// Evaluate a model on GSM8K, SVAMP (or a task file): greedy accuracy and, with --n K > 1, maj@K, each with a 95%
/// Wilson interval. Prints one JSON object (and writes it to --out if given).
///
/// Examples:
///   orchard eval --model default --task gsm8k --split test --limit 100
///   orchard eval --model train/dpo/merged --task svamp --split test --n 8
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: super::common::DeviceArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Samples per task for maj@K (1: greedy only).
    #[arg(long, short = 'n', default_value_t = 1)]
    pub n: usize,
    /// Temperature of the maj@K samples.
    #[arg(long, default_value_t = DEFAULT_TEMPERATURE)]
    pub temperature: f32,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Reward that scores answers (default: the task's own, gsm8k or svamp).
    #[arg(long)]
    pub reward: Option<String>,
    /// System message before each prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Seed of the maj@K samples (and of --shuffle).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Numeric path.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// Also write the JSON here.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: crate::job::RewardArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut source = args.source.apply(TaskSource::default());
    source.seed = args.seed;
    let loaded = source.load()?;
    anyhow::ensure!(!loaded.tasks.is_empty(), "no tasks to evaluate");
    let reward_name = args.reward.clone().unwrap_or_else(|| source.task.name().to_string());
    let reward = build_reward(Some(&reward_name), None, &args.sandbox, Some(&args.model.model))?;
    let engine = args.device.place(args.model.load()?)?;
    let opts = GenerateOptions { precision: args.precision.resolve(), ..GenerateOptions::default() };
    let cfg = EvalConfig {
        n: args.n,
        temperature: args.temperature,
        max_new_tokens: args.max_new_tokens,
        system: args.system.clone(),
        seed: args.seed,
    };
    let mut bars = super::common::Bars::default();
    let rep = evaluate(&engine, &loaded.tasks, reward.reward(), &cfg, &opts, &mut bars)?;
    let mut report = serde_json::json!({
        "model": engine.info().id,
        "model_path": engine.info().path,
        "model_hash": engine.identity()?,
        "task": source.task.name(),
        "split": source.split,
        "source": loaded.report.file,
        "limit": source.limit,
        "tasks": rep.tasks,
        "reward": reward_name,
        "max_new_tokens": args.max_new_tokens,
        "greedy": rep.greedy,
        "generated_tokens": rep.generated_tokens,
        "seconds": started.elapsed().as_secs_f64(),
    });
    if let Some(m) = rep.majority {
        report[format!("maj@{}", args.n)] = serde_json::to_value(m)?;
        report["temperature"] = serde_json::json!(args.temperature);
        report["seed"] = serde_json::json!(args.seed);
    }
    let text = serde_json::to_string(&report)?;
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{text}\n")).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
