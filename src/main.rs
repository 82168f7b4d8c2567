//! The `orchard` binary: grow search trees over LLM generations and harvest them as training data.
//!
//! Each subcommand lives in its own module under `cmd/`; `main` only parses arguments, sets up logging and maps
//! errors to an exit code (as ripgrep does).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod job;

/// Orchard: grow search trees over LLM generations and harvest them as training data.
#[derive(Debug, Parser)]
#[command(name = "orchard", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or `json` (one object per line, with span timings: rounds, RL steps, training steps,
    /// generate calls, reward batches). Logs go to stderr.
    #[arg(long, global = true, value_enum, default_value_t = cmd::LogFormat::Text)]
    log_format: cmd::LogFormat,
    /// Log level when `RUST_LOG` is unset: `warn` (default), `info` (job phases), `debug` (every step and batch).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample completions from a model (JSON lines out, one row per sample).
    Generate(cmd::generate::Args),
    /// Teacher-forced log-probs of completions given prompts (JSON lines in and out).
    Score(cmd::score::Args),
    /// Show how a model's tokenizer splits a text (ids and pieces).
    Tokenize(cmd::tokenize::Args),
    /// Describe a model: backend, architecture, stored tensor types, shape, context, chat template.
    Info(cmd::info::Args),
    /// Best-of-N sampling to scored trajectories and preference pairs (Parquet, resumable, shardable).
    Sample(Box<cmd::sample::Args>),
    /// Measure prefill and decode throughput (tokens/s) on this machine.
    Bench(cmd::bench::Args),
    /// Fetch the default model into the cache and print its path.
    FetchModel(cmd::fetch_model::Args),
    /// Run a Python program in the sandbox and print the result as JSON.
    Exec(cmd::exec::Args),
    /// Score a JSONL file of completions with a verifiable reward.
    Reward(cmd::reward::Args),
    /// Combine the runs of the shards of one job into one run directory.
    Merge(cmd::merge::Args),
    /// Export a run as one Parquet file for a trainer (TRL DPO standard/conversational, KTO, PRM).
    Export(cmd::export::Args),
    /// Grow search trees (MCTS, Tree-of-Code, best-of-N) to trees, trajectories and pairs (resumable, shardable).
    Search(Box<cmd::search::Args>),
    /// Re-extract preference pairs from a run's saved trees with a pair policy.
    Pairs(cmd::pairs::Args),
    /// Inspect saved search trees.
    Tree(cmd::tree::Args),
    /// Train on preference pairs (DPO family) or scored trajectories (TOPR), LoRA or full fine-tuning.
    Train(Box<cmd::train::Args>),
    /// Accuracy on GSM8K/SVAMP (greedy and maj@K) with 95% intervals, as JSON.
    Eval(Box<cmd::eval::Args>),
    /// Write a model as an f32 HF directory (the base for PEFT adapters and other trainers).
    Convert(cmd::convert::Args),
    /// Make a model better: rounds of generate → train → hand weights back in memory → held-out eval.
    Loop(Box<cmd::rounds::Args>),
    /// Online RL in one process: sample groups with the current weights, GRPO-family step, repeat.
    Rl(Box<cmd::rl::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::init_logging(cli.log_format, cli.log_level.as_deref());
    let result = match cli.command {
        Command::Generate(args) => cmd::generate::run(args),
        Command::Score(args) => cmd::score::run(args),
        Command::Tokenize(args) => cmd::tokenize::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Sample(args) => cmd::sample::run(*args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::FetchModel(args) => cmd::fetch_model::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Reward(args) => cmd::reward::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Search(args) => cmd::search::run(*args),
        Command::Pairs(args) => cmd::pairs::run(args),
        Command::Tree(args) => cmd::tree::run(args),
        Command::Train(args) => cmd::train::run(*args),
        Command::Eval(args) => cmd::eval::run(*args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Loop(args) => cmd::rounds::run(*args),
        Command::Rl(args) => cmd::rl::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
