//! Errors of the trainer: each variant names what a user needs to fix (file, column, row, checkpoint).

use std::path::PathBuf;

/// Everything that can go wrong while training, checkpointing or exporting.
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
    /// A training data file lacks a column or has one of the wrong type.
    #[error("{path}: {reason}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Which column and what is wrong.
        reason: String,
    },
    /// A row of a training data file cannot be trained on.
    #[error("{path}: row {row}: {reason}")]
    BadRow {
        /// The file.
        path: PathBuf,
        /// 1-based row number within the file.
        row: usize,
        /// What is wrong.
        reason: String,
    },
    /// A run directory (or its Parquet parts) could not be read.
    #[error("{path}: {source}")]
    Run {
        /// The run directory or file.
        path: PathBuf,
        /// The datasets crate's error.
        source: orchard_datasets::Error,
    },
    /// A checkpoint is missing, damaged or belongs to another model, dataset or configuration.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// Training diverged or produced a non-finite value.
    #[error("{0}")]
    Numeric(String),
    /// The engine failed (loading, tokenizing, forward).
    #[error(transparent)]
    Engine(#[from] orchard_engine::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Reading Parquet failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// An Arrow operation failed.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Serialising JSON failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Writing or reading safetensors failed.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn schema(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Schema { path: path.into(), reason: reason.into() }
    }
    pub(crate) fn run(path: impl Into<PathBuf>, source: orchard_datasets::Error) -> Self {
        Error::Run { path: path.into(), source }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), reason: reason.into() }
    }
}

/// Result with the trainer's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
