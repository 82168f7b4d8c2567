//! Token sampling: temperature, top-k, top-p (nucleus), min-p, greedy; one seeded RNG per sequence.
//!
//! A sequence's draws depend only on its own logits and its own RNG (ChaCha8 seeded with the sequence's seed), so a
//! (seed, prompt) pair yields the same tokens whatever else shares the batch. Filters apply in HF/vLLM order:
//! temperature, top-k, top-p, min-p. The log-prob reported for a sampled token is the model's own (raw logits,
//! temperature 1, no filtering): the behaviour log-prob that off-policy DPO and TOPR need, and what
//! `orchard score` returns for the same tokens.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::ops::{argmax, exp, log_sum_exp, max, sum_exp};
use crate::model::TokenId;

/// Default sampling temperature (unbiased samples of the model's distribution).
pub const DEFAULT_TEMPERATURE: f32 = 1.0;
/// Default cap on generated tokens.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy. Default [`DEFAULT_TEMPERATURE`].
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables. Default 0.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 disables. Default 1.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 disables. Default 0.
    pub min_p: f32,
    /// Most tokens to generate. Default [`DEFAULT_MAX_NEW_TOKENS`].
    pub max_new_tokens: usize,
    /// Extra token ids that end a sequence (the model's EOS always does unless `ignore_eos`). Default none.
    pub stop_token_ids: Vec<TokenId>,
    /// Strings that end a sequence; the text is cut before the match. Default none.
    pub stop: Vec<String>,
    /// Keep generating through EOS (fixed-length benchmarks). Default false.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: DEFAULT_TEMPERATURE,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with the given budget.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_new_tokens, ..Default::default() }
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Request(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1), got {}", self.min_p));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

/// The per-sequence random state.
#[derive(Debug, Clone)]
pub struct SeqRng(ChaCha8Rng);

impl SeqRng {
    /// Seeds a sequence's generator.
    pub fn new(seed: u64) -> Self {
        SeqRng(ChaCha8Rng::seed_from_u64(seed))
    }
}

/// The seed of sample `index` of a request seeded with `seed` (SplitMix64 of both, so neighbouring seeds and
/// indices give unrelated streams).
pub fn sample_seed(seed: u64, index: u64) -> u64 {
    orchard_core::seed::splitmix64_at(seed, index.wrapping_add(1))
}

/// A sampled token and its log-prob under the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// The token.
    pub token: TokenId,
    /// `log p(token)` under the raw logits.
    pub logprob: f32,
}

/// Candidates considered before falling back to a full sort for top-p.
const TOP_P_PREFIX: usize = 1024;

/// Unnormalised probability of a logit at temperature `1/inv_t`: `exp((v − max)/T)` in f32, widened (the same
/// arithmetic as [`sum_exp`]).
#[inline]
fn weight(v: f32, max: f64, inv_t: f64) -> f64 {
    exp((v - max as f32) * inv_t as f32) as f64
}

/// Samples one token from `logits`.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut SeqRng) -> Draw {
    let lse = log_sum_exp(logits);
    let logprob = |t: usize| (logits[t] as f64 - lse) as f32;
    if params.temperature == 0.0 {
        let best = argmax(logits);
        return Draw { token: best as TokenId, logprob: logprob(best) };
    }
    let inv_t = 1.0 / params.temperature as f64;
    let max = max(logits) as f64;
    let u: f64 = rng.0.random();
    let filtered = params.top_k > 0 || params.top_p < 1.0 || params.min_p > 0.0;
    if !filtered {
        // Inverse CDF in vocabulary order over the whole distribution, without materialising it.
        let total = sum_exp(logits, max as f32, inv_t as f32);
        let target = u * total;
        let mut acc = 0.0;
        let mut last_positive = 0;
        for (i, &v) in logits.iter().enumerate() {
            let w = weight(v, max, inv_t);
            if w > 0.0 {
                last_positive = i;
            }
            acc += w;
            if acc > target {
                return Draw { token: i as TokenId, logprob: logprob(i) };
            }
        }
        return Draw { token: last_positive as TokenId, logprob: logprob(last_positive) };
    }
    // Candidates in (probability desc, id asc) order.
    let by_rank = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let all: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &v)| (i, weight(v, max, inv_t))).collect();
    let total: f64 = all.iter().map(|c| c.1).sum();
    let keep = if params.top_k > 0 { params.top_k.min(all.len()) } else { all.len() };
    let prefix = keep.min(TOP_P_PREFIX);
    let mut cands = all.clone();
    if prefix < cands.len() {
        cands.select_nth_unstable_by(prefix - 1, by_rank);
        cands.truncate(prefix);
    }
    cands.sort_unstable_by(by_rank);
    let top_k_mass = if params.top_k > 0 { cands.iter().map(|c| c.1).sum::<f64>() } else { total };
    if params.top_p < 1.0 {
        let goal = params.top_p as f64 * top_k_mass;
        let mut acc = 0.0;
        let mut cut = None;
        for (i, c) in cands.iter().enumerate() {
            acc += c.1;
            if acc >= goal {
                cut = Some(i + 1);
                break;
            }
        }
        match cut {
            Some(n) => cands.truncate(n),
            None if keep > prefix => {
                // The nucleus is wider than the prefix: rank everything (rare: very flat distributions).
                let mut full = all;
                full.sort_unstable_by(by_rank);
                full.truncate(keep);
                let mut acc = 0.0;
                let n = full.iter().position(|c| {
                    acc += c.1;
                    acc >= goal
                });
                full.truncate(n.map_or(keep, |n| n + 1));
                cands = full;
            }
            None => {}
        }
    } else if keep > prefix {
        let mut full = all;
        full.sort_unstable_by(by_rank);
        full.truncate(keep);
        cands = full;
    }
    if params.min_p > 0.0 {
        let floor = params.min_p as f64 * cands[0].1;
        cands.retain(|c| c.1 >= floor);
    }
    let mass: f64 = cands.iter().map(|c| c.1).sum();
    let target = u * mass;
    let mut acc = 0.0;
    for c in &cands {
        acc += c.1;
        if acc > target {
            return Draw { token: c.0 as TokenId, logprob: logprob(c.0) };
        }
    }
    let last = cands.last().map_or(0, |c| c.0);
    Draw { token: last as TokenId, logprob: logprob(last) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![2.0, 1.0, 0.5, -1.0, 3.0, 0.0]
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let d = sample(&logits(), &SamplingParams::greedy(1), &mut SeqRng::new(0));
        assert_eq!(d.token, 4);
        let lse = log_sum_exp(&logits());
        assert!((d.logprob as f64 - (3.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams { top_k: 1, ..Default::default() };
        for s in 0..20 {
            assert_eq!(sample(&logits(), &p, &mut SeqRng::new(s)).token, 4);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // probs ∝ e^x: token 4 ≈ 0.61, token 0 ≈ 0.22 → p = 0.7 keeps {4, 0}.
        let p = SamplingParams { top_p: 0.7, ..Default::default() };
        for s in 0..200 {
            let t = sample(&logits(), &p, &mut SeqRng::new(s)).token;
            assert!(t == 4 || t == 0, "{t}");
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let p = SamplingParams { min_p: 0.3, ..Default::default() };
        for s in 0..200 {
            let t = sample(&logits(), &p, &mut SeqRng::new(s)).token;
            assert!(t == 4 || t == 0, "{t}"); // e^(2-3) = 0.37 ≥ 0.3, e^(1-3) = 0.14 < 0.3
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let p = SamplingParams::default();
        let mut rng = SeqRng::new(42);
        let mut counts = [0usize; 6];
        for _ in 0..20_000 {
            counts[sample(&logits(), &p, &mut rng).token as usize] += 1;
        }
        let z: f64 = logits().iter().map(|&x| (x as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = (logits()[i] as f64).exp() / z;
            assert!((c as f64 / 20_000.0 - want).abs() < 0.015, "token {i}: {c} vs {want}");
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = SamplingParams::default();
        let (mut a, mut b) = (SeqRng::new(7), SeqRng::new(7));
        for _ in 0..50 {
            assert_eq!(sample(&logits(), &p, &mut a), sample(&logits(), &p, &mut b));
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        for p in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { min_p: 1.0, ..Default::default() },
            SamplingParams { max_new_tokens: 0, ..Default::default() },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }

    #[test]
    fn sample_seeds_differ() {
        assert_ne!(sample_seed(0, 0), sample_seed(0, 1));
        assert_ne!(sample_seed(1, 0), sample_seed(0, 1));
    }
}
