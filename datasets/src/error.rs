//! The crate's error type: one enum, each variant carrying the context (path, line, task id) needed to act on it.

use std::path::{Path, PathBuf};

use crate::loaders::BadRow;

/// Everything that can go wrong while loading, writing, reading, merging or exporting datasets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON or TOML document (manifest, journal, config, JSON dataset) could not be parsed or written.
    #[error("{path}: {reason}")]
    Json {
        /// The document.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// Arrow rejected an array or batch (a bug in a builder, or a file with an unexpected layout).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The Parquet encoder or decoder failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A dataset row failed validation and the source says `on_bad_row = "fail"`.
    #[error("bad row: {0}")]
    BadRow(BadRow),
    /// The task source configuration is invalid (unknown dataset or split, missing path ...).
    #[error("task source: {0}")]
    Source(String),
    /// A Parquet file does not have the columns or types of the record being read.
    #[error("{record} schema: {reason}")]
    Schema {
        /// Which record was being read (`trajectories`, `pairs`, `nodes` ...).
        record: &'static str,
        /// The missing or mistyped column.
        reason: String,
    },
    /// A record cannot be written in the requested layout (e.g. a conversational prompt that does not end in a
    /// user turn).
    #[error("invalid {record} row for task {task_id}: {reason}")]
    InvalidRecord {
        /// Which record.
        record: &'static str,
        /// The task the row belongs to.
        task_id: String,
        /// What is wrong.
        reason: String,
    },
    /// `--shard i/n` did not parse or is out of range.
    #[error("invalid shard {spec:?}: expected i/n with 0 <= i < n")]
    Shard {
        /// The string given.
        spec: String,
    },
    /// The run directory exists with a different configuration; resuming it would mix two jobs.
    #[error(
        "{path} holds a run with a different configuration; refusing to resume it.\n{}\nUse a new --out directory, or delete the old one to start over.",
        .differences.join("\n")
    )]
    ConfigMismatch {
        /// The run directory.
        path: PathBuf,
        /// One line per differing key: `  n: 8 (existing) vs 4 (this command)`.
        differences: Vec<String>,
    },
    /// Another process holds the run directory's lock.
    #[error("{path} is in use by another process (its .lock is held)")]
    Locked {
        /// The run directory.
        path: PathBuf,
    },
    /// The journal has a corrupt line before its end (a torn *last* line is repaired silently).
    #[error("{path}:{line}: corrupt journal entry: {reason}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A run directory is missing, incomplete or inconsistent (manifest, parts).
    #[error("{path}: {reason}")]
    Run {
        /// The run directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Runs given to `merge` cannot be combined.
    #[error("cannot merge: {0}")]
    Merge(String),
    /// An export cannot be produced from this run.
    #[error("cannot export: {0}")]
    Export(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path to `std::io` errors: `fs::read(p).at(p)?`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}

impl Error {
    pub(crate) fn json(path: &Path, err: impl std::fmt::Display) -> Self {
        Error::Json { path: path.to_path_buf(), reason: err.to_string() }
    }

    pub(crate) fn run(path: &Path, reason: impl Into<String>) -> Self {
        Error::Run { path: path.to_path_buf(), reason: reason.into() }
    }
}
