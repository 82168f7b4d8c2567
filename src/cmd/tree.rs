//! `orchard tree show`: print one saved search tree readably.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use orchard_datasets::RunReader;
use orchard_search::Tree;

/// Inspect the trees a search run saved.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TreeCommand,
}

/// `orchard tree` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TreeCommand {
    /// Print one task's tree: a line per node (id, kind, visits, Q, critic, reward, text), children indented.
    Show {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// The task id.
        #[arg(long)]
        task: String,
        /// Characters of each node's text to show.
        #[arg(long, default_value_t = 100)]
        width: usize,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let TreeCommand::Show { run, task, width } = args.command;
    let reader = RunReader::open(&run).with_context(|| format!("opening run {}", run.display()))?;
    let rows: Vec<_> = reader.nodes()?.into_iter().filter(|n| n.task_id == task).collect();
    anyhow::ensure!(!rows.is_empty(), "{}: no tree for task {task:?}", run.display());
    let tree = Tree::from_rows(&rows)?;
    print!("{}", orchard_search::show::render(&tree, width));
    Ok(ExitCode::SUCCESS)
}
