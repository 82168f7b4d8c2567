//! Errors of the rewards crate: configuration that cannot be built and sandboxes that cannot run.
//!
//! A *wrong completion* is never an error: it is an [`Outcome`](crate::Outcome) with a low score and a `failure`.
//! A task that cannot be scored (missing field, missing database) is an `Outcome` with `error` set, so that one bad
//! row never stops a batch. The variants here are for the layers around that: building a reward from a name or TOML,
//! and starting a sandboxed process.

use std::path::PathBuf;

/// Everything that can go wrong outside of scoring one completion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reward name that is not in the registry.
    #[error("unknown reward kind `{name}` (known: {known})")]
    UnknownReward {
        /// The name asked for.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },
    /// A reward configuration that parsed but is not valid (bad regex, negative weight, empty composite ...).
    #[error("invalid reward configuration: {0}")]
    InvalidConfig(String),
    /// TOML that does not describe a reward.
    #[error("reward configuration is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A human size or duration (`512MiB`, `5s`) that does not parse.
    #[error("cannot parse `{input}` as a {what}: {why}")]
    Unit {
        /// The text given.
        input: String,
        /// "duration" or "size".
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A requested sandbox that cannot work on this machine (bwrap missing, user namespaces disabled ...).
    #[error("sandbox `{kind}` is unavailable: {why}")]
    SandboxUnavailable {
        /// Which sandbox was asked for.
        kind: &'static str,
        /// Why it cannot run.
        why: String,
    },
    /// A Python reward that cannot work: the file is missing, does not import, lacks the function, or no worker
    /// starts.
    #[error("python reward {}: {why}", file.display())]
    PythonReward {
        /// The reward file.
        file: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The interpreter the sandbox was configured with does not run.
    #[error("python interpreter `{path}` does not run: {why}")]
    Interpreter {
        /// The interpreter path.
        path: PathBuf,
        /// What happened when it was probed.
        why: String,
    },
    /// An operating-system call made by the sandbox failed (spawn, pipe, temp dir).
    #[error("sandbox I/O error while {during}: {source}")]
    SandboxIo {
        /// What the sandbox was doing.
        during: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(during: &'static str, source: std::io::Error) -> Self {
        Error::SandboxIo { during, source }
    }
}
