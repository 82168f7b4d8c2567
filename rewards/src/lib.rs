//! Verifiable rewards for Orchard, and a sandbox for model-written code.
//!
//! Every reward implements one small trait, [`Reward`]: given a [`Task`] (prompt plus whatever reference the reward
//! needs) and a completion, return an [`Outcome`] (score, named components, what was extracted, why it failed).
//! Rewards are pure and `Send + Sync`; search workers call them from many threads. A reward never panics into its
//! caller when called through [`score_caught`], and a task that cannot be scored comes back as an outcome with
//! `error` set rather than as an `Err`, so one bad row never stops a batch.
//!
//! | name (`--reward`, TOML `kind`) | reward | paper (see `docs/ALGORITHMS.md`) |
//! |---|---|---|
//! | `gsm8k`, `svamp`, `math` | [`math::MathReward`]: `####`, "the answer is", `\boxed{}`, last number; tolerance 1e-2; 0.1 partial credit | ReFT §5.1 |
//! | `mathqa` | [`math::MultipleChoiceReward`] | ReFT (MathQA-MCQ) |
//! | `pot` | [`code::ProgramOfThought`]: run `solution()` in the sandbox, grade its return value as a math answer | ReFT P-CoT |
//! | `humaneval`, `unit-tests` | [`code::UnitTests`]: completion + tests + `check(entry_point)` in the sandbox | HumanEval, Tree-of-Code |
//! | `sql` | [`sql::SqlReward`]: execution accuracy on result multisets, cell precision/recall, tuple cardinality | Think2SQL §8.2 |
//! | `iou` | [`iou::IouReward`]: IoU + confidence + format | Visual-RFT §8.3 |
//! | `toolrl` | [`toolrl::ToolRlReward`]: format {0,1} + correctness [−3, 3] | ToolRL §8.1 |
//! | `tool-star` | [`tool_star::ToolStarReward`]: −1 / 0 / F1 / F1 + 0.1 | Tool-Star §8.4 |
//! | `format` | [`format::FormatReward`]: regex full match or tag count | Visual-RFT, Think2SQL |
//! | `judge` (TOML) | [`judge::JudgeReward`]: a model asked a templated question, score from choice log-probs or a regex | Agent Q (self-critique) |
//! | `python` (`--reward python:FILE:FUNCTION`) | [`pyfunc::PythonReward`]: the user's function with TRL's `reward_funcs` or verl's `compute_score` signature, in sandboxed worker processes | TRL, verl |
//!
//! Composites ([`composite::Weighted`], [`composite::Gate`]) combine them; [`RewardSpec`] builds any of these from
//! a name or from TOML.
//!
//! Code runs in a [`sandbox::Sandbox`]: [`sandbox::Bwrap`] (bubblewrap: fresh user, pid, network, IPC and UTS
//! namespaces, read-only host filesystem with home directories hidden, a size-capped private `/tmp`) on top of
//! rlimits, or, explicitly and visibly, [`sandbox::Rlimits`] alone when bubblewrap cannot run (see the
//! [`sandbox`] module for exactly what does and does not hold then). [`sandbox::Executor`] adds a result cache for
//! identical programs.
//!
//! ```
//! use orchard_rewards::{Reward, RewardSpec, Task};
//!
//! let reward = RewardSpec::from_name("gsm8k")?.build_pure()?;
//! let task = Task::new("Natalia sold 48 clips in April and half as many in May. How many in total?")
//!     .with_answer("48 / 2 = 24\n48 + 24 = 72\n#### 72");
//! let outcome = reward.score(&task, "She sold 48 + 24 = 72 clips. The answer is 72.");
//! assert_eq!(outcome.score, 1.0);
//! assert_eq!(outcome.extracted.as_deref(), Some("72"));
//!
//! let wrong = reward.score(&task, "The answer is 70.");
//! assert_eq!(wrong.score, 0.1); // ReFT's partial credit: extractable but wrong
//! # Ok::<(), orchard_rewards::Error>(())
//! ```
#![deny(missing_docs)]

pub mod code;
pub mod composite;
pub mod error;
pub mod format;
pub mod iou;
pub mod judge;
pub mod math;
pub mod outcome;
pub mod pyfunc;
mod registry;
pub mod sandbox;
pub mod sql;
pub mod task;
pub mod tool_star;
pub mod toolrl;
pub mod units;

pub use registry::{catalog, CatalogEntry, Explanation, Resources, RewardSpec, TermSpec, KNOWN_REWARDS};

pub use error::{Error, Result};
pub use outcome::Outcome;

pub use task::Task;

/// A verifiable reward: scores one completion against one task.
///
/// Implementations are pure (same inputs, same outcome; sandboxed rewards are deterministic up to timeouts) and
/// thread-safe. A wrong completion gives a low score with `failure` set; a task that cannot be scored gives an
/// outcome with `error` set. Implementations should not panic; callers that cannot afford one anyway use
/// [`score_caught`].
pub trait Reward: Send + Sync {
    /// Score `completion` against `task`.
    fn score(&self, task: &Task, completion: &str) -> Outcome;

    /// Score many (task, completion) rows, one outcome per row in order. Provided: calls [`score`](Self::score)
    /// per row on rayon's pool (sandboxed rewards run their programs side by side); rewards with a per-call cost
    /// (Python workers, a judge model) override it to batch.
    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<Outcome> {
        use rayon::prelude::*;
        items.par_iter().map(|(t, c)| self.score(t, c)).collect()
    }
}

impl<R: Reward + ?Sized> Reward for Box<R> {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        (**self).score(task, completion)
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<Outcome> {
        (**self).score_batch(items)
    }
}

impl<R: Reward + ?Sized> Reward for std::sync::Arc<R> {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        (**self).score(task, completion)
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<Outcome> {
        (**self).score_batch(items)
    }
}

/// Score with a panic guard: a panicking reward yields an outcome with `error` = "reward panicked: …" instead of
/// unwinding into the search worker.
pub fn score_caught(reward: &dyn Reward, task: &Task, completion: &str) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reward.score(task, completion))) {
        Ok(outcome) => outcome,
        Err(payload) => Outcome::task_error(format!("reward panicked: {}", panic_message(&*payload))),
    }
}

/// [`Reward::score_batch`] with the panic guard of [`score_caught`]: a panic marks every row of the batch, and a
/// reward that returns the wrong number of outcomes is caught here too (each row then gets an error).
pub fn score_batch_caught(reward: &dyn Reward, items: &[(&Task, &str)]) -> Vec<Outcome> {
    let _span = tracing::debug_span!("reward_batch", rows = items.len()).entered();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reward.score_batch(items))) {
        Ok(outcomes) if outcomes.len() == items.len() => outcomes,
        Ok(outcomes) => {
            let why = format!("reward returned {} outcomes for {} rows", outcomes.len(), items.len());
            vec![Outcome::task_error(why); items.len()]
        }
        Err(payload) => {
            vec![Outcome::task_error(format!("reward panicked: {}", panic_message(&*payload))); items.len()]
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Panics;
    impl Reward for Panics {
        fn score(&self, _: &Task, _: &str) -> Outcome {
            panic!("boom")
        }
    }

    #[test]
    fn panicking_reward_becomes_an_error_outcome() {
        let o = score_caught(&Panics, &Task::default(), "x");
        assert_eq!(o.error.as_deref(), Some("reward panicked: boom"));
        assert_eq!(o.score, 0.0);
    }

    #[test]
    fn rewards_are_send_and_sync_trait_objects() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn Reward>();
    }
}
