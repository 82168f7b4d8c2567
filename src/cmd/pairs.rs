//! `orchard pairs`: re-extract preference pairs from a run's saved trees.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use orchard_datasets::part::write_file;
use orchard_datasets::{ParquetOptions, RunReader};
use orchard_search::pairs::{extract, PairConfig, PairRuleName};
use orchard_search::Tree;

/// Re-extract preference pairs from the trees a search run saved (`trees/`), with any pair policy, without
/// regenerating. Knobs not given come from the run's own `[pairs]` configuration; with none given, the output
/// equals the run's `pairs/`.
///
/// Examples:
///   orchard pairs --run runs/mcts-20 --policy mcts-dpo --out mcts-dpo.parquet
///   orchard pairs --run runs/mcts-20 --policy agentq --theta 0.3 --out agentq.parquet
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// outcome, agentq, mcts-dpo, itool or step-dpo (default: the run's).
    #[arg(long)]
    pub policy: Option<PairRuleName>,
    /// Agent Q's θ.
    #[arg(long)]
    pub theta: Option<f64>,
    /// α of Q = α·Q_mcts + (1−α)·Q_critic.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Score at or above which a solution is correct.
    #[arg(long)]
    pub correct_threshold: Option<f64>,
    /// Output Parquet file (the run's pair format).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let reader = RunReader::open(&args.run).with_context(|| format!("opening run {}", args.run.display()))?;
    let manifest = reader.manifest();
    let mut cfg: PairConfig = match manifest.config.get("pairs") {
        Some(v) if !v.is_null() => serde_json::from_value(v.clone()).context("the run's [pairs] configuration")?,
        _ => PairConfig::default(),
    };
    if let Some(p) = args.policy {
        cfg.policy = p;
    }
    if let Some(t) = args.theta {
        cfg.theta = t;
    }
    if let Some(a) = args.alpha {
        cfg.alpha = a;
    }
    if let Some(c) = args.correct_threshold {
        cfg.correct_threshold = c;
    }
    let run_id = manifest.identity.run_id.clone();
    let trees = Tree::all_from_rows(reader.nodes()?)?;
    anyhow::ensure!(!trees.is_empty(), "{}: the run holds no trees", args.run.display());
    let rule = cfg.rule();
    let pairs: Vec<_> = trees.iter().flat_map(|t| extract(t, &rule, &run_id)).collect();
    write_file(&args.out, &pairs, manifest.pair_format, &ParquetOptions::default())?;
    eprintln!(
        "orchard: {} pairs ({:?}) from {} trees; wrote {}",
        pairs.len(),
        cfg.policy,
        trees.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
