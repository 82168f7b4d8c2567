//! The search crate's error type.

use std::path::PathBuf;

/// Why a search (or a pair extraction from saved trees) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy (the engine, or a scripted stand-in) failed on a task's tree.
    #[error("task {task_id}: policy: {source}")]
    Policy {
        /// The task whose tree was growing.
        task_id: String,
        /// What the policy said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A configuration value is out of range (checked once, when a search is built).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Saved tree rows do not form a tree.
    #[error("tree {tree_id}: {reason}")]
    BrokenTree {
        /// The tree.
        tree_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A worker thread died (a panic in a policy or sink).
    #[error("search worker failed: {0}")]
    Worker(String),
    /// The sink refused a result.
    #[error("sink: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Reading or writing a run.
    #[error(transparent)]
    Datasets(#[from] orchard_datasets::Error),
    /// File access.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps a policy error with the task it happened on.
    pub fn policy(task_id: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Policy { task_id: task_id.to_string(), source: Box::new(source) }
    }
}

/// The search crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
