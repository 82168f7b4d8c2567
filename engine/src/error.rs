//! Errors of the engine crate: each variant carries the context a user needs (file, field, shape).

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
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
    /// A model file or directory is malformed (truncated GGUF, bad header, missing tensor...).
    #[error("{path}: {msg}")]
    BadModel {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The model's configuration is valid but not supported by this engine.
    #[error("{path}: unsupported model: {msg}")]
    Unsupported {
        /// The file or directory.
        path: PathBuf,
        /// What is unsupported.
        msg: String,
    },
    /// Fetching the default model failed.
    #[error("fetching the default model failed: {0}")]
    Fetch(String),
    /// The tokenizer could not be built or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Rendering a chat template failed.
    #[error("chat template: {0}")]
    Template(String),
    /// A request is invalid (prompt too long, bad sampling parameter...).
    #[error("{0}")]
    Request(String),
    /// A tensor error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn bad_model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadModel { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn unsupported(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Unsupported { path: path.into(), msg: msg.into() }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
