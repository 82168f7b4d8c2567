//! What several of Orchard's crates share, defined once: the token id type, the chat message, the seeding functions
//! every random draw derives from, and the score from which a completion counts as correct. No dependencies but serde
//! (no candle, no arrow), so the engine, the search, the datasets and the rewards can all use it.
//!
//! ```
//! use orchard_core::seed::{splitmix64_at, splitmix64_next};
//! let mut state = 7;
//! let a = splitmix64_next(&mut state);
//! assert_eq!(a, splitmix64_at(7, 1)); // the k-th output of a stream is a pure function of (seed, k)
//! assert!(orchard_core::is_correct(1.0) && !orchard_core::is_correct(0.1));
//! ```
#![deny(missing_docs)]

pub mod seed;

/// A token id of a model's vocabulary.
pub type TokenId = u32;

/// One chat message, as in TRL's conversational format and the OpenAI chat schema: what the loaders read, the chat
/// template renders and the Parquet records store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new("assistant", content)
    }
}

/// Score at or above which a completion counts as correct (the run directories', the pair extractors' and the
/// evaluations' default: a reward of 1 is a correct answer, ReFT's 0.1 partial credit is not).
pub const DEFAULT_CORRECT_THRESHOLD: f64 = 1.0;

/// Whether `score` counts as correct under [`DEFAULT_CORRECT_THRESHOLD`].
pub fn is_correct(score: f64) -> bool {
    score >= DEFAULT_CORRECT_THRESHOLD
}
