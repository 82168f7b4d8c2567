//! Orchard's jobs as a library: what `orchard sample`, `orchard eval`, `orchard train` and `orchard loop` do,
//! callable from any program — each a serde configuration with documented defaults and a function over an
//! [`orchard_engine::Engine`] that reports progress through a [`Progress`] sink and returns a report. The binary
//! only parses flags, resolves them into these configurations and calls them.
//!
//! | module | job |
//! |---|---|
//! | [`sample`] | best-of-N sampling into a run directory (trajectories, pairs) |
//! | [`search`] | MCTS / Tree-of-Code / best-of-N trees over the engine's scheduler into a run directory |
//! | [`policy`] | the engine as the search crate's `Policy` (step cutting, retries, critic parsing) |
//! | [`eval`] | greedy and maj@K accuracy with 95% Wilson intervals |
//! | [`judge`] | the engine as the judge reward's model |
//! | [`train`] | every trainer setting as one spec; open (with resume) and run a training |
//! | [`rl`] | online RL: sample groups with the current weights, GRPO-family step, in one process |
//! | [`run`] | a data job end to end: open or resume its run directory, sample or search, finish the manifest |
//! | [`reward`] | a job's reward with its sandbox and judge loader, from a name or a TOML description |
//! | [`rounds`] | the closed loop: generate with the current policy → train → hand the weights back in memory → eval |
//!
//! ```no_run
//! use orchard_jobs::{rounds::{run_loop, LoopConfig}, NoProgress};
//! # fn main() -> orchard_jobs::Result<()> {
//! let cfg: LoopConfig = toml::from_str(&std::fs::read_to_string("examples/loop.toml").unwrap()).unwrap();
//! let engine = std::sync::Arc::new(orchard_engine::Engine::load(&cfg.model)?);
//! let reward = orchard_rewards::RewardSpec::from_name(&cfg.reward)?.build(None)?;
//! let report = run_loop(&cfg, engine, reward.as_ref(), "runs/loop".as_ref(), &mut NoProgress)?;
//! println!("{:?}", report.rounds.last().map(|r| r.eval.greedy));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod error;
pub mod eval;
pub mod judge;
pub mod policy;
pub mod reward;
pub mod rl;
pub mod rounds;
pub mod run;
pub mod sample;
pub mod search;
pub mod task;
pub mod train;

pub use error::{Error, Result};

pub use orchard_core::is_correct;

/// Where a job reports how far it got: the binary draws progress bars with ETAs, tests and libraries pass
/// [`NoProgress`].
pub trait Progress {
    /// A phase of `total` units begins (0: unknown).
    fn start(&mut self, what: &str, total: usize);
    /// `n` more units are done; `message` says how it goes.
    fn advance(&mut self, n: usize, message: &str);
    /// The phase stands at `done` of `total` (for callers that report positions, not increments).
    fn position(&mut self, what: &str, done: usize, total: usize);
    /// The phase is over.
    fn finish(&mut self);
    /// A line for the user (resume notes, summaries).
    fn log(&mut self, line: &str) {
        tracing::info!("{line}");
    }
}

/// A progress sink that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: usize) {}
    fn advance(&mut self, _: usize, _: &str) {}
    fn position(&mut self, _: &str, _: usize, _: usize) {}
    fn finish(&mut self) {}
}
