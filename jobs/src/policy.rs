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
        let prompt = Prompt::Messages(messages.to_vec());
        let text = self.engine.render_prompt(&prompt, None, false)?;
        let tokens = self.engine.tokenizer().encode(&text, false)?;
        Ok(Start { text, tokens })
    }

    fn decode(&self, ids: &[u32]) -> orchard_engine::Result<String> {
        self.engine.tokenizer().decode(ids, true)
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
            out.push(self.to_extension(&r.until, sample)?);
        }
        Ok(out)
    }

    fn to_extension(&self, until: &Until, s: orchard_engine::Sample) -> orchard_engine::Result<Extension> {
        let n = s.token_ids.len();
        // Every prefix of ids that decode decodes: checked once here, the step cut below reads prefixes.
        self.decode(&s.token_ids)?;
        let prefix = |k: usize| self.decode(&s.token_ids[..k]).unwrap_or_default();
        let eos = self.engine.tokenizer().eos();
        let ended = s.finish_reason == FinishReason::Stop && s.token_ids.last().is_some_and(|t| eos.contains(t));
        let (keep, end) = match until {
            _ if ended => (n, EndReason::Eos),
            Until::Step(rule) => {
                let k = cut(rule, n, prefix);
                let at_boundary = rule.boundary(&prefix(k)).is_some() || k < n;
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
        Ok(Extension {
            text: self.decode(&tokens)?,
            logprobs: s.token_logprobs[..keep].to_vec(),
            tokens,
            generated: n,
            end: Some(end),
        })
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
                e.text = self.decode(&e.tokens)?;
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
    use orchard_engine::scheduler::SchedulerConfig;
    use orchard_search::policy::Sampling;
    use orchard_search::step::StepRule;

    /// The default model (fetched by `.ci/run`; a tiny random model only ever writes one token).
    fn default_policy() -> EnginePolicy {
        let engine = Arc::new(Engine::load("default").expect("the default model (run `orchard fetch-model`)"));
        let scheduler = Scheduler::start(engine.clone(), SchedulerConfig::default());
        EnginePolicy::new(engine, scheduler)
    }

    fn request(context: &[u32], until: Until, seed: u64) -> ExtendRequest {
        ExtendRequest { context: context.to_vec(), until, max_new: 40, sampling: Sampling::default(), seed }
    }

    /// A step is the start of the whole continuation of the same seed, cut at its rule's first boundary: the fewest
    /// tokens whose text reaches it, never fewer than one.
    #[test]
    fn a_step_is_the_continuation_cut_at_its_first_boundary() -> anyhow::Result<()> {
        let policy = default_policy();
        let question =
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. \
                        How many clips did Natalia sell altogether in April and May? Answer step by step.";
        let start = policy.start(&[Message::user(question)])?;
        let (mut cut_somewhere, mut checked) = (false, 0);
        for seed in 0..6 {
            let whole = policy.extend_batch(&[request(&start.tokens, Until::End, seed)])?.remove(0);
            assert_eq!(whole.tokens.len(), whole.logprobs.len());
            assert_eq!(whole.text, policy.decode(&whole.tokens)?);
            for rule in [StepRule::Newline, StepRule::Stop(". ".into())] {
                let step = policy.extend_batch(&[request(&start.tokens, Until::Step(rule.clone()), seed)])?.remove(0);
                assert!(!step.tokens.is_empty());
                if step.text.contains('\n') && step.text.split('\n').next().is_some_and(|l| l.trim().is_empty()) {
                    continue; // a blank first line was continued by a request of its own (BLANK_STEP_RETRIES)
                }
                assert!(whole.tokens.starts_with(&step.tokens), "seed {seed}: the step is not the run's start");
                assert_eq!(step.logprobs[..], whole.logprobs[..step.tokens.len()]);
                let shorter = policy.decode(&step.tokens[..step.tokens.len() - 1])?;
                assert!(rule.boundary(&shorter).is_none(), "seed {seed}: cut after the boundary");
                cut_somewhere |= step.tokens.len() < whole.tokens.len();
                checked += 1;
            }
        }
        assert!(cut_somewhere, "no step ended before the continuation did");
        assert!(checked >= 8, "only {checked} of 12 steps were not continued after a blank line");
        Ok(())
    }

    /// The critic is asked greedily: the same answer for the same question, and an index only when it names one.
    #[test]
    fn critic_choices_are_greedy_and_in_range() -> anyhow::Result<()> {
        let policy = default_policy();
        let ask =
            |seed| ChoiceRequest { prompt: "Which is best? Candidate 1: a. Candidate 2: b.".into(), options: 2, seed };
        let picks = policy.choose_batch(&[ask(1), ask(2)])?;
        assert_eq!(picks[0], picks[1]);
        assert!(picks[0].is_none_or(|i| i < 2));
        Ok(())
    }

    #[test]
    fn critic_answers_name_a_candidate_or_none() {
        assert_eq!(parse_choice("Candidate 2", 3), Some(1));
        assert_eq!(parse_choice("3.", 3), Some(2));
        assert_eq!(parse_choice("4", 3), None);
        assert_eq!(parse_choice("none", 3), None);
    }
}
