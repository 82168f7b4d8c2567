//! Datasets for Orchard: where tasks come from and where harvested data goes.
//!
//! - [`loaders`]: GSM8K, SVAMP, HumanEval (shipped inside the binary) and generic JSONL / JSON / Parquet files with a
//!   [`FieldMap`]; validation with [`BadRow`] reports; `limit`, `shuffle`, `seed` ([`TaskSource`]).
//! - [`record`]: [`Trajectory`], [`PreferencePair`] (TRL's DPO layout, standard or conversational), [`TreeNode`],
//!   [`KtoRow`], [`PrmRow`] — each with its Arrow schema, typed builder and reader.
//! - [`part`]: Parquet files through `ArrowWriter` with zstd and explicit row groups, written atomically.
//! - [`select`]: pair selection, a pure function of one task's scored trajectories.
//! - [`run`]: run directories ([`RunDir`]: create or resume, config check, journal commits, manifest) and
//!   [`RunReader`]; [`shard`]: `--shard i/n`; [`merge`](mod@merge) and [`export`](mod@export).
//!
//! A job's loop, as `orchard sample` runs it (the engine and reward parts elided):
//!
//! ```no_run
//! use orchard_datasets::{
//!     select_pairs, task_seed, PairSelection, RunDir, RunSpec, TaskKind, TaskOutput, TaskSource, Trajectory,
//!     WriterOptions,
//! };
//!
//! # fn main() -> orchard_datasets::Result<()> {
//! let source = TaskSource { limit: Some(50), ..TaskSource::builtin(TaskKind::Gsm8k, Some("train")) };
//! let loaded = source.load()?;
//! let config = serde_json::json!({ "source": source, "n": 8, "seed": 0 });
//! let spec = RunSpec { source: Some(loaded.report.clone()), ..RunSpec::new("sample", config) };
//! let mut run = RunDir::open("runs/demo".as_ref(), &spec, WriterOptions::default())?;
//! let policy = PairSelection::default();
//! for task in run.plan(loaded.tasks) {
//!     let _seed = task_seed(0, &task.id); // the engine's seed for this task's samples
//!     let trajectories: Vec<Trajectory> = Vec::new(); // sample with the engine, score with the reward
//!     let pairs = select_pairs(&trajectories, &policy);
//!     run.push(TaskOutput { task_id: task.id, trajectories, pairs, nodes: vec![] })?;
//! }
//! let manifest = run.finish()?;
//! println!("{} pairs", manifest.counts.pairs);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod cli;
pub mod error;
pub mod export;
pub mod loaders;
pub mod merge;
pub mod part;
pub mod record;
pub mod run;
pub mod select;
pub mod shard;
pub mod task;
pub mod testing;

pub use error::{Error, Result};
pub use export::{export, ExportFormat, ExportOptions, ExportSummary, StepPairs};
pub use loaders::{load, BadRow, FieldMap, LoadReport, Loaded, OnBadRow, TaskKind, TaskSource};
pub use merge::{merge, MergeOptions};
pub use part::ParquetOptions;
pub use record::{
    KtoRow, ModelRecord, NodeDetail, PairFormat, PairKind, PairSide, PreferencePair, PrmRow, Record, RewardRecord,
    SamplingRecord, Trajectory, TreeNode,
};
pub use run::{Manifest, RunDir, RunReader, RunSpec, TaskOutput, WriterOptions};
pub use select::{select_pairs, PairSelection, PairStrategy};
pub use shard::{task_seed, Shard};
pub use task::{Message, Task};
