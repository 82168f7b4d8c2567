//! [`Policy`]: the seam between search algorithms and a language model.
//!
//! Search is generic over `P: Policy` and never depends on the engine. The engine implements it in the `orchard`
//! binary (over its continuous-batching scheduler); [`crate::testing::ScriptedPolicy`] implements it without a
//! model so that every algorithm is testable.
//!
//! **State is a token sequence.** A node's state is the prompt's tokens followed by the tokens of every step on its
//! path ([`crate::Tree::context`]); forking a branch is appending to a copy. No KV handle crosses the seam: the
//! engine's prefix index recognises the shared prefix of a request and computes only its new suffix, so a policy
//! that is handed `prompt ‖ path` sequences in large batches shares KV between siblings, depths and iterations
//! without the search knowing about caches.
//!
//! **Batches.** Every method takes a batch; a search hands over everything it can decide at once (the K proposals
//! of several in-flight selections, all their rollouts, every critic question), and many trees call concurrently
//! from worker threads, so a batching policy always has a full batch.
//!
//! **Determinism.** A request carries its own seed (derived from the run seed, the task and the node's path, see
//! [`crate::seed`]); a policy must return the same extension for the same `(context, until, max_new, sampling,
//! seed)` whatever else is in the batch.

use orchard_datasets::Message;
use serde::{Deserialize, Serialize};

use crate::step::StepRule;

/// A token id (the engine's vocabulary; the scripted policy uses bytes).
pub use orchard_core::TokenId;

/// Sampling knobs a search sets per request (stop strings come from [`Until`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy. Default 1.0.
    pub temperature: f32,
    /// Nucleus mass (1 = off). Default 1.0.
    pub top_p: f32,
    /// Keep the K most likely tokens (0 = off). Default 0.
    pub top_k: usize,
    /// Min-p filter (0 = off). Default 0.
    pub min_p: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_p: 1.0, top_k: 0, min_p: 0.0 }
    }
}

/// How far an extension goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Until {
    /// One step: up to the [`StepRule`]'s boundary (or the end of the solution, if that comes first).
    Step(StepRule),
    /// To the end of the solution (EOS) or the token budget.
    End,
}

/// Continue one context by one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendRequest {
    /// Everything before the continuation: prompt tokens, then the path's steps.
    pub context: Vec<TokenId>,
    /// One step or to the end.
    pub until: Until,
    /// Most tokens to keep.
    pub max_new: usize,
    /// Sampling knobs.
    pub sampling: Sampling,
    /// The sample's seed.
    pub seed: u64,
}

/// Why an extension ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// The model ended the solution (EOS): the node is terminal.
    Eos,
    /// The step rule's boundary was reached.
    Step,
    /// The token budget ran out.
    Length,
}

/// One sampled continuation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extension {
    /// The kept tokens (for a step: up to the boundary; the end token included when the solution ended).
    pub tokens: Vec<TokenId>,
    /// The sampler's log-prob of each kept token.
    pub logprobs: Vec<f32>,
    /// The text of the kept tokens (special tokens removed).
    pub text: String,
    /// Tokens the policy generated for this request, kept or not (a step cut at a boundary may drop a few): what
    /// token budgets count.
    pub generated: usize,
    /// Why it ended.
    pub end: Option<EndReason>,
}

impl Extension {
    /// Whether the model ended the solution here.
    pub fn ended(&self) -> bool {
        self.end == Some(EndReason::Eos)
    }

    /// Sum of the token log-probs (f64): the behaviour log-prob of the continuation.
    pub fn logprob_sum(&self) -> f64 {
        self.logprobs.iter().map(|&l| f64::from(l)).sum()
    }
}

/// A rendered prompt: the text the model sees and its tokens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Start {
    /// The prompt text (chat template applied).
    pub text: String,
    /// Its tokens.
    pub tokens: Vec<TokenId>,
}

/// Ask the model, acting as a critic, which of `options` numbered candidates is best.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceRequest {
    /// The critic's question (a user message listing the candidates as `Candidate 1` … `Candidate n`).
    pub prompt: String,
    /// How many candidates it lists.
    pub options: usize,
    /// Seed, should the policy sample its answer.
    pub seed: u64,
}

/// A language model as search sees it.
pub trait Policy: Sync {
    /// What can go wrong.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Render chat messages as the model sees them (template applied, generation prompt appended).
    fn start(&self, messages: &[Message]) -> Result<Start, Self::Error>;

    /// Continue each request's context by one sample; results in request order. Implementations batch them.
    fn extend_batch(&self, requests: &[ExtendRequest]) -> Result<Vec<Extension>, Self::Error>;

    /// The critic's pick for each request: a 0-based candidate index, or `None` when its answer named none.
    fn choose_batch(&self, requests: &[ChoiceRequest]) -> Result<Vec<Option<usize>>, Self::Error>;

    /// One request (provided: a batch of one).
    fn extend(&self, request: &ExtendRequest) -> Result<Extension, Self::Error> {
        let mut out = self.extend_batch(std::slice::from_ref(request))?;
        Ok(out.pop().unwrap_or_default())
    }
}

impl<P: Policy> Policy for &P {
    type Error = P::Error;

    fn start(&self, messages: &[Message]) -> Result<Start, Self::Error> {
        (**self).start(messages)
    }

    fn extend_batch(&self, requests: &[ExtendRequest]) -> Result<Vec<Extension>, Self::Error> {
        (**self).extend_batch(requests)
    }

    fn choose_batch(&self, requests: &[ChoiceRequest]) -> Result<Vec<Option<usize>>, Self::Error> {
        (**self).choose_batch(requests)
    }
}
