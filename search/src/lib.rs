//! Tree search over LLM generations for Orchard: MCTS (Agent Q, MCTS-DPO), Tree-of-Code, best-of-N, persisted
//! trees and pair extraction, generic over a [`Policy`].
//!
//! - [`policy`]: the seam to a language model ([`Policy`]: render a prompt, extend contexts by a step or to the
//!   end, let the model pick among candidates as a critic — all batched). The `orchard` binary implements it over
//!   the engine's continuous-batching scheduler; [`testing::ScriptedPolicy`] implements it without a model.
//! - [`step`]: where a step ends ([`StepRule`]).
//! - [`tree`]: the [`Tree`] every search grows and its `trees/` Parquet rows.
//! - [`mcts`], [`toc`], [`bon`]: the searches; [`grow`]: many trees at once on worker threads.
//! - [`pairs`]: pair-extraction policies (outcome, Agent Q, MCTS-DPO, iTool, Step-DPO).
//! - [`seed`]: every random draw is fixed by (run seed, task, node path).
//!
//! ```
//! use orchard_search::mcts::{Mcts, MctsConfig};
//! use orchard_search::grow::{grow_tree, Algo, SearchTask};
//! use orchard_search::pairs::{extract, PairRule};
//! use orchard_search::testing::{ScriptedPolicy, ScriptedReward};
//!
//! let algo = Algo::Mcts(Mcts::new(MctsConfig { iterations: 12, ..Default::default() })?);
//! let task = SearchTask {
//!     id: "t/1".into(),
//!     messages: vec![orchard_datasets::Message::user("What is 0 + 1?")],
//!     question: "What is 0 + 1?".into(),
//!     reward_task: orchard_rewards::Task::new("What is 0 + 1?"),
//! };
//! let grown = grow_tree(&algo, &ScriptedPolicy::new(3), &ScriptedReward::default(), &task, 0)?;
//! assert!(grown.tree.nodes.len() > 1);
//! let pairs = extract(&grown.tree, &PairRule::AgentQ { theta: 0.1, alpha: 1.0 }, "run");
//! assert!(pairs.iter().all(|p| p.chosen.score - p.rejected.score >= 0.1));
//! # Ok::<(), orchard_search::Error>(())
//! ```
#![deny(missing_docs)]

pub mod bon;
pub mod error;
pub mod grow;
pub mod mcts;
pub mod pairs;
pub mod policy;
pub mod seed;
pub mod show;
pub mod step;
pub mod testing;
pub mod toc;
pub mod tree;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use policy::Policy;
pub use step::StepRule;
pub use tree::Tree;
