//! Errors of the jobs: each crate's error enters through `#[from]`; job-level problems name the file or key.

use std::path::PathBuf;

/// What can stop a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A job configuration is invalid (unknown key, bad value, inconsistent settings).
    #[error("{0}")]
    Config(String),
    /// The train questions and the evaluation set share problems.
    #[error("{0}")]
    Overlap(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] orchard_engine::Error),
    /// Loading tasks or writing a run failed.
    #[error(transparent)]
    Datasets(#[from] orchard_datasets::Error),
    /// The trainer failed.
    #[error(transparent)]
    Train(#[from] orchard_train::Error),
    /// A reward could not be built.
    #[error(transparent)]
    Rewards(#[from] orchard_rewards::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// JSON (de)serialisation failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// The jobs' result type.
pub type Result<T> = std::result::Result<T, Error>;
