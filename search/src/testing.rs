//! Test doubles: [`ScriptedPolicy`] (a deterministic "model" over bytes) and [`ScriptedReward`].
//!
//! The scripted policy writes solutions made of lines `step N` ending in a line `answer A`; every choice is a
//! hash of the request's seed (and, for steps, of the depth reached), so the same request always gives the same
//! extension, whatever else is in the batch. It records how many requests each batch held.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use orchard_datasets::Message;
use orchard_rewards::{Outcome, Reward, Task};

use crate::policy::{ChoiceRequest, EndReason, ExtendRequest, Extension, Policy, Start, Until};
use crate::seed::{mix, splitmix64};

/// Why the scripted policy failed (only when told to).
#[derive(Debug, thiserror::Error)]
#[error("scripted failure")]
pub struct ScriptedError;

/// A deterministic policy over bytes (see the module docs).
#[derive(Debug, Default)]
pub struct ScriptedPolicy {
    /// Fail every extend call after this many (None: never).
    pub fail_after: Option<usize>,
    /// Most lines before the answer line.
    pub max_steps: usize,
    calls: AtomicUsize,
    batches: Mutex<Vec<usize>>,
}

impl ScriptedPolicy {
    /// A policy writing at most `max_steps` step lines before its answer.
    pub fn new(max_steps: usize) -> Self {
        ScriptedPolicy { max_steps, ..Default::default() }
    }

    /// This policy, failing every extend call after the first `calls` (None: never).
    pub fn failing_after(mut self, calls: Option<usize>) -> Self {
        self.fail_after = calls;
        self
    }

    /// Sizes of the extend batches seen so far.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().expect("not poisoned").clone()
    }

    /// The next line after `context` for `seed`: `(line, is_answer)`.
    fn line(&self, context: &[u32], seed: u64) -> (String, bool) {
        let depth = context.iter().filter(|&&t| t == u32::from(b'\n')).count().saturating_sub(1);
        let h = mix(seed, depth as u64);
        if depth >= self.max_steps || h.is_multiple_of(4) {
            (format!("answer {}", (h >> 8) % 3), true)
        } else {
            (format!("step {}\n", (h >> 8) % 5), false)
        }
    }
}

fn extension(text: String, ended: bool, seed: u64) -> Extension {
    let tokens: Vec<u32> = text.bytes().map(u32::from).collect();
    let logprobs = (0..tokens.len()).map(|i| -(((splitmix64(seed ^ i as u64) % 9) + 1) as f32) / 10.0).collect();
    Extension {
        generated: tokens.len(),
        tokens,
        logprobs,
        text,
        end: Some(if ended { EndReason::Eos } else { EndReason::Step }),
    }
}

impl Policy for ScriptedPolicy {
    type Error = ScriptedError;

    fn start(&self, messages: &[Message]) -> Result<Start, ScriptedError> {
        let text: String = messages.iter().map(|m| format!("{}: {}", m.role, m.content.replace('\n', " "))).collect();
        let text = format!("{text}\n");
        Ok(Start { tokens: text.bytes().map(u32::from).collect(), text })
    }

    fn extend_batch(&self, requests: &[ExtendRequest]) -> Result<Vec<Extension>, ScriptedError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_after.is_some_and(|f| n >= f) {
            return Err(ScriptedError);
        }
        self.batches.lock().expect("not poisoned").push(requests.len());
        Ok(requests
            .iter()
            .map(|r| match r.until {
                Until::Step(_) => {
                    let (line, ended) = self.line(&r.context, r.seed);
                    extension(line, ended, r.seed)
                }
                Until::End => {
                    let mut ctx = r.context.clone();
                    let mut text = String::new();
                    loop {
                        let (line, ended) = self.line(&ctx, r.seed);
                        ctx.extend(line.bytes().map(u32::from));
                        text.push_str(&line);
                        if ended || text.len() >= r.max_new {
                            break extension(text, ended, r.seed);
                        }
                    }
                }
            })
            .collect())
    }

    fn choose_batch(&self, requests: &[ChoiceRequest]) -> Result<Vec<Option<usize>>, ScriptedError> {
        Ok(requests.iter().map(|r| Some((splitmix64(r.seed) % r.options as u64) as usize)).collect())
    }
}

/// Scores 1 when the solution's last line is `answer 1`, else 0 (with the answer extracted); panics on solutions
/// containing `panic_on`, when set.
#[derive(Debug, Default)]
pub struct ScriptedReward {
    /// A substring that makes the reward panic.
    pub panic_on: Option<String>,
}

impl Reward for ScriptedReward {
    fn score(&self, _task: &Task, completion: &str) -> Outcome {
        if let Some(p) = &self.panic_on {
            assert!(!completion.contains(p.as_str()), "scripted reward panics on {p:?}");
        }
        let last = completion.lines().last().unwrap_or_default();
        let Some(answer) = last.strip_prefix("answer ") else {
            return Outcome::new(0.0).with_failure("no answer");
        };
        let correct = answer == "1";
        let o = Outcome::new(if correct { 1.0 } else { 0.0 }).with_extracted(answer);
        if correct {
            o
        } else {
            o.with_failure("wrong answer")
        }
    }
}
