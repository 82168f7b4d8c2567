//! [`EnginePolicy`]: the search crate's [`Policy`] over the engine's continuous-batching scheduler.
//!
//! Every request becomes one scheduler sequence `prompt ‖ path` (exact token ids, never re-tokenised), so the
//! scheduler's radix prefix index shares the KV of the prompt and of every step above a node between siblings,
//! depths and iterations; and since many search workers submit at once, each forward holds rows from many trees.
//! A step is sampled with the step rule's stop strings and cut to the fewest tokens reaching its boundary.

use std::sync::Arc;

use orchard_datasets::Message;
use orchard_engine::scheduler::{Scheduler, SeqRequest};
use orchard_engine::{Engine, FinishReason, Prompt, SamplingParams};
use orchard_search::policy::{ChoiceRequest, EndReason, ExtendRequest, Extension, Start, Until};
use orchard_search::step::cut;
use orchard_search::Policy;

/// Most tokens of a critic's answer ("Candidate 3" fits).
const CRITIC_TOKENS: usize = 6;
/// Continuations of a step that stopped before any content.
const BLANK_STEP_RETRIES: usize = 2;

/// The engine as a search policy.
pub struct EnginePolicy {
    engine: Arc<Engine>,
    scheduler: Scheduler,
}

impl EnginePolicy {
    /// A policy generating through `scheduler` over `engine`.
    pub fn new(engine: Arc<Engine>, scheduler: Scheduler) -> Self {
        EnginePolicy { engine, scheduler }
    }

    /// The scheduler (for its metrics).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    fn render(&self, messages: &[Message]) -> orchard_engine::Result<Start> {
        let prompt = Prompt::Messages(
            messages.iter().map(|m| orchard_engine::Message::new(&m.role, m.content.clone())).collect(),
        );
        let text = self.engine.render_prompt(&prompt, None, false)?;
        let tokens = self.engine.tokenizer().encode(&text, false)?;
        Ok(Start { text, tokens })
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.engine.tokenizer().decode(ids, true).unwrap_or_default()
    }

    /// One sample per request, through the scheduler (all submitted before any is awaited).
    fn sample_batch(&self, requests: &[ExtendRequest]) -> orchard_engine::Result<Vec<Extension>> {
        let pending: Vec<_> = requests
            .iter()
            .map(|r| {
                let params = SamplingParams {
                    temperature: r.sampling.temperature,
                    top_p: r.sampling.top_p,
                    top_k: r.sampling.top_k,
                    min_p: r.sampling.min_p,
                    max_new_tokens: r.max_new,
                    stop: match &r.until {
                        Until::Step(rule) => rule.stop_strings(),
                        Until::End => Vec::new(),
                    },
                    ..SamplingParams::default()
                };
                self.scheduler.submit(SeqRequest { tokens: r.context.clone(), params, seed: r.seed })
            })
            .collect();
        let mut out = Vec::with_capacity(requests.len());
        for (rx, r) in pending.into_iter().zip(requests) {
            let sample =
                rx.recv().unwrap_or_else(|_| Err(orchard_engine::Error::Request("the scheduler stopped".into())))?;
            out.push(self.to_extension(&r.until, sample));
        }
        Ok(out)
    }

    fn to_extension(&self, until: &Until, s: orchard_engine::Sample) -> Extension {
        let n = s.token_ids.len();
        let eos = self.engine.tokenizer().eos();
        let ended = s.finish_reason == FinishReason::Stop && s.token_ids.last().is_some_and(|t| eos.contains(t));
        let (keep, end) = match until {
            _ if ended => (n, EndReason::Eos),
            Until::Step(rule) => {
                let k = cut(rule, n, |k| self.decode(&s.token_ids[..k]));
                let at_boundary = rule.boundary(&self.decode(&s.token_ids[..k])).is_some() || k < n;
                (
                    k,
                    if at_boundary || s.finish_reason == FinishReason::Stop {
                        EndReason::Step
                    } else {
                        EndReason::Length
                    },
                )
            }
            Until::End => (n, EndReason::Length),
        };
        let tokens = s.token_ids[..keep].to_vec();
        Extension {
            text: self.decode(&tokens),
            logprobs: s.token_logprobs[..keep].to_vec(),
            tokens,
            generated: n,
            end: Some(end),
        }
    }
}

impl Policy for EnginePolicy {
    type Error = orchard_engine::Error;

    fn start(&self, messages: &[Message]) -> Result<Start, Self::Error> {
        self.render(messages)
    }

    fn extend_batch(&self, requests: &[ExtendRequest]) -> Result<Vec<Extension>, Self::Error> {
        let mut out = self.sample_batch(requests)?;
        // A step that stopped at its delimiter before any content (a model opening with a blank line) continues
        // from there, so steps are never empty; the blank tokens stay part of the step.
        for _ in 0..BLANK_STEP_RETRIES {
            let blank: Vec<usize> = (0..out.len())
                .filter(|&i| {
                    let e = &out[i];
                    matches!(requests[i].until, Until::Step(_))
                        && e.end == Some(EndReason::Step)
                        && e.text.trim().is_empty()
                        && e.tokens.len() < requests[i].max_new
                })
                .collect();
            if blank.is_empty() {
                break;
            }
            let more: Vec<ExtendRequest> = blank
                .iter()
                .map(|&i| {
                    let r = &requests[i];
                    let mut context = r.context.clone();
                    context.extend_from_slice(&out[i].tokens);
                    ExtendRequest { context, max_new: r.max_new - out[i].tokens.len(), ..r.clone() }
                })
                .collect();
            for (&i, tail) in blank.iter().zip(self.sample_batch(&more)?) {
                let e = &mut out[i];
                e.tokens.extend(tail.tokens);
                e.logprobs.extend(tail.logprobs);
                e.text = self.decode(&e.tokens);
                e.generated += tail.generated;
                e.end = tail.end;
            }
        }
        Ok(out)
    }

    fn choose_batch(&self, requests: &[ChoiceRequest]) -> Result<Vec<Option<usize>>, Self::Error> {
        let mut seqs = Vec::with_capacity(requests.len());
        for r in requests {
            let start = self.render(&[Message::user(r.prompt.clone())])?;
            seqs.push(SeqRequest { tokens: start.tokens, params: SamplingParams::greedy(CRITIC_TOKENS), seed: r.seed });
        }
        let samples = self.scheduler.generate(seqs)?;
        Ok(samples.iter().zip(requests).map(|(s, r)| parse_choice(&s.text, r.options)).collect())
    }
}

/// The first number in a critic's answer as a 0-based candidate index, if it names one of `options`.
pub fn parse_choice(text: &str, options: usize) -> Option<usize> {
    let digits: String = text.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    let n: usize = digits.parse().ok()?;
    (1..=options).contains(&n).then(|| n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critic_answers_name_a_candidate_or_none() {
        assert_eq!(parse_choice("Candidate 2", 3), Some(1));
        assert_eq!(parse_choice("3.", 3), Some(2));
        assert_eq!(parse_choice("4", 3), None);
        assert_eq!(parse_choice("none", 3), None);
    }
}
