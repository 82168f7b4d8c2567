//! `orchard merge`: combine the run directories of the shards of one job into one run.

use std::path::PathBuf;
use std::process::ExitCode;

use orchard_datasets::{merge, MergeOptions};

/// Merge runs of the same job (e.g. the shards of `--shard i/n`) into one run directory. Checks that the manifests
/// agree (same job, config, pair format, model; distinct shards; no task in two runs) before writing anything.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The merged run directory to create (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Merge runs that have not finished (only their committed tasks).
    #[arg(long)]
    pub allow_incomplete: bool,
    /// The run directories to merge.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = MergeOptions { allow_incomplete: args.allow_incomplete };
    let manifest = merge(&args.out, &args.runs, &opts)?;
    let c = manifest.counts;
    println!(
        "merged {} runs into {}: {} tasks, {} trajectories, {} pairs, {} nodes{}",
        args.runs.len(),
        args.out.display(),
        c.tasks,
        c.trajectories,
        c.pairs,
        c.nodes,
        if manifest.status.complete { "" } else { " (not every shard is complete)" }
    );
    Ok(ExitCode::SUCCESS)
}
