//! Throughput measurements shared by `orchard bench`, the criterion benches and the comparison scripts:
//! prefill of one prompt, and aggregate greedy decode of `B` sequences after their prompts.

use std::time::Instant;

use crate::error::Result;
use crate::kv::KvCache;
use crate::model::{LogitRows, Model, Step, TokenId};
use crate::sampling::{sample, SamplingParams, SeqRng};
use crate::weights::Precision;

/// The token ids of sequence `index` of a synthetic batch: `len` ids taken cyclically from `base`, starting at a
/// different offset per sequence so that no two prompts share a prefix.
pub fn prompt_ids(base: &[TokenId], len: usize, index: usize) -> Vec<TokenId> {
    let start = (index * 7) % base.len().max(1);
    (0..len).map(|i| base[(start + i) % base.len()]).collect()
}

/// Seconds to prefill `tokens` into an empty cache (logits of the last position included).
pub fn time_prefill(model: &Model, tokens: &[TokenId], precision: Precision) -> Result<f64> {
    let mut cache = model.new_cache();
    let start = Instant::now();
    let mut steps = [Step { cache: &mut cache, tokens, logits: LogitRows::Last }];
    model.forward(&mut steps, precision)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Prefills every prompt (untimed), then decodes `new_tokens` greedy tokens for all of them together, one forward
/// per step. Returns the decode seconds.
pub fn time_decode(model: &Model, prompts: &[Vec<TokenId>], new_tokens: usize, precision: Precision) -> Result<f64> {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut last: Vec<[TokenId; 1]> = Vec::with_capacity(prompts.len());
    {
        let mut steps: Vec<Step<'_>> = caches
            .iter_mut()
            .zip(prompts)
            .map(|(c, p)| Step { cache: c, tokens: p, logits: LogitRows::Last })
            .collect();
        let logits = model.forward(&mut steps, precision)?;
        let greedy = SamplingParams::greedy(1);
        let mut rng = SeqRng::new(0);
        for i in 0..prompts.len() {
            last.push([sample(logits.row(i, 0), &greedy, &mut rng).token]);
        }
    }
    let greedy = SamplingParams::greedy(1);
    let mut rng = SeqRng::new(0);
    let start = Instant::now();
    for _ in 0..new_tokens {
        let mut steps: Vec<Step<'_>> =
            caches.iter_mut().zip(&last).map(|(c, t)| Step { cache: c, tokens: t, logits: LogitRows::Last }).collect();
        let logits = model.forward(&mut steps, precision)?;
        drop(steps);
        for (i, t) in last.iter_mut().enumerate() {
            t[0] = sample(logits.row(i, 0), &greedy, &mut rng).token;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The median of a non-empty sample.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}
