//! Orchard's inference engine.
#![deny(missing_docs)]

pub mod error;
pub mod hub;

pub use error::{Error, Result};
