//! Evaluation: accuracy of a model on verifiable tasks — greedy, and majority vote over K samples (maj@K) — each
//! with a 95% Wilson score interval. `orchard eval` and every round of `orchard loop` call [`evaluate`].

use std::collections::HashMap;
use std::time::Instant;

use orchard_datasets::{task_seed, Task};
use orchard_engine::{Engine, GenerateOptions, GenerateRequest, SamplingParams};
use orchard_rewards::{Outcome, Reward};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::task::{reward_task, score_groups, task_prompt};
use crate::Progress;

/// Default most new tokens per answer.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;
/// Default temperature of the maj@K samples.
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// How to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Samples per task for maj@K (1: greedy only). Default 1.
    pub n: usize,
    /// Temperature of the maj@K samples. Default [`DEFAULT_TEMPERATURE`].
    pub temperature: f32,
    /// Most new tokens per answer. Default [`DEFAULT_MAX_NEW_TOKENS`].
    pub max_new_tokens: usize,
    /// System message before each prompt. Default none.
    pub system: Option<String>,
    /// Seed of the maj@K samples. Default 0.
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            n: 1,
            temperature: DEFAULT_TEMPERATURE,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            system: None,
            seed: 0,
        }
    }
}

/// An accuracy with its 95% Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Tasks counted correct.
    pub correct: usize,
    /// Tasks.
    pub total: usize,
    /// correct / total.
    pub accuracy: f64,
    /// 95% Wilson interval `[low, high]`.
    pub ci95: [f64; 2],
}

impl Accuracy {
    /// `correct` of `total`, with its Wilson interval (Wilson 1927; the interval `statsmodels`' `proportion_confint(
    /// method="wilson")` gives).
    pub fn new(correct: usize, total: usize) -> Self {
        if total == 0 {
            return Accuracy { correct, total, accuracy: f64::NAN, ci95: [0.0, 1.0] };
        }
        let n = total as f64;
        let p = correct as f64 / n;
        let z2 = Z95 * Z95;
        let denom = 1.0 + z2 / n;
        let center = (p + z2 / (2.0 * n)) / denom;
        let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
        Accuracy { correct, total, accuracy: p, ci95: [(center - half).max(0.0), (center + half).min(1.0)] }
    }

    /// Whether this interval lies wholly above `other`'s (the loop's test of a gain).
    pub fn above(&self, other: &Accuracy) -> bool {
        self.ci95[0] > other.ci95[1]
    }
}

/// What an evaluation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Tasks evaluated.
    pub tasks: usize,
    /// Greedy accuracy.
    pub greedy: Accuracy,
    /// maj@K accuracy when K > 1.
    pub majority: Option<Accuracy>,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Wall seconds.
    pub seconds: f64,
    /// Per task: (id, greedy correct).
    pub per_task: Vec<(String, bool)>,
}

/// The answer a majority of samples give (ties: the one reached first), and whether it is correct.
pub fn majority(outcomes: &[Outcome]) -> bool {
    let mut votes: HashMap<&str, (usize, usize, bool)> = HashMap::new();
    for (i, o) in outcomes.iter().enumerate() {
        if let Some(a) = o.extracted.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            let e = votes.entry(a).or_insert((0, i, crate::is_correct(o.score)));
            e.0 += 1;
        }
    }
    votes.values().max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1))).is_some_and(|v| v.2)
}

/// Greedy (and maj@K) accuracy of `engine` on `tasks`, scored by `reward`.
pub fn evaluate(
    engine: &Engine,
    tasks: &[Task],
    reward: &dyn Reward,
    cfg: &EvalConfig,
    opts: &GenerateOptions,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let _span = tracing::info_span!("evaluate", tasks = tasks.len(), n = cfg.n).entered();
    let started = Instant::now();
    if cfg.n == 0 {
        return Err(Error::Config("eval: n must be at least 1".into()));
    }
    if tasks.is_empty() {
        return Err(Error::Config("eval: no tasks to evaluate".into()));
    }
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: cfg.max_new_tokens, ..SamplingParams::default() };
    let sampled = SamplingParams { temperature: cfg.temperature, ..greedy.clone() };
    let mut prompts = Vec::with_capacity(tasks.len());
    for task in tasks {
        let prompt = task_prompt(task, cfg.system.as_deref());
        prompts.push(
            engine.prompt_tokens(&prompt, None, false).map_err(|e| Error::Config(format!("task {}: {e}", task.id)))?,
        );
    }
    // Tasks go to the engine in groups that fill its decode batch; the scheduler batches within a call.
    let group = (opts.max_batch / cfg.n.max(1)).max(1);
    progress.start("eval", tasks.len());
    let (mut greedy_ok, mut maj_ok, mut generated) = (0usize, 0usize, 0usize);
    let mut per_task = Vec::with_capacity(tasks.len());
    for (chunk, ids) in tasks.chunks(group).zip(prompts.chunks(group)) {
        let request = |p: &Vec<u32>, t: &Task, n, params: &SamplingParams| GenerateRequest {
            prompt: p.clone(),
            n,
            params: params.clone(),
            seed: task_seed(cfg.seed, &t.id),
        };
        let mut requests: Vec<GenerateRequest> =
            ids.iter().zip(chunk).map(|(p, t)| request(p, t, 1, &greedy)).collect();
        if cfg.n > 1 {
            requests.extend(ids.iter().zip(chunk).map(|(p, t)| request(p, t, cfg.n, &sampled)));
        }
        let samples = engine.generate(&requests, opts, &mut |_| {})?;
        generated += samples.iter().flatten().map(|s| s.token_ids.len()).sum::<usize>();
        let groups: Vec<_> = samples
            .iter()
            .enumerate()
            .map(|(i, ss)| (reward_task(&chunk[i % chunk.len()]), ss.iter().map(|s| s.text.as_str()).collect()))
            .collect();
        let scored: Vec<Vec<Outcome>> = score_groups(reward, &groups);
        for (task, o) in chunk.iter().zip(&scored[..chunk.len()]) {
            let ok = o.first().is_some_and(|o| crate::is_correct(o.score));
            greedy_ok += usize::from(ok);
            per_task.push((task.id.clone(), ok));
        }
        if cfg.n > 1 {
            maj_ok += scored[chunk.len()..].iter().filter(|o| majority(o)).count();
        }
        progress.advance(chunk.len(), &format!("greedy {greedy_ok}/{}", per_task.len()));
    }
    progress.finish();
    Ok(EvalReport {
        tasks: tasks.len(),
        greedy: Accuracy::new(greedy_ok, tasks.len()),
        majority: (cfg.n > 1).then(|| Accuracy::new(maj_ok, tasks.len())),
        generated_tokens: generated,
        seconds: started.elapsed().as_secs_f64(),
        per_task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from the textbook formula in Python (what statsmodels' `proportion_confint(c, n,
    /// method="wilson")` computes):
    /// ```python
    /// from math import sqrt
    /// def wilson(c, n, z=1.959963984540054):
    ///     p = c / n; d = 1 + z * z / n; m = (p + z * z / (2 * n)) / d
    ///     h = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    ///     return m - h, m + h
    /// wilson(37, 100)  # (0.28182360534324524, 0.4677947041905709)
    /// wilson(0, 20)    # (0.0, 0.16112515805281938)
    /// ```
    #[test]
    fn wilson_interval_matches_statsmodels() {
        let a = Accuracy::new(37, 100);
        assert!((a.ci95[0] - 0.281_823_605).abs() < 1e-8 && (a.ci95[1] - 0.467_794_704).abs() < 1e-8, "{a:?}");
        let z = Accuracy::new(0, 20);
        assert!(z.ci95[0] == 0.0 && (z.ci95[1] - 0.161_125_158).abs() < 1e-8, "{z:?}");
        assert!(Accuracy::new(60, 100).above(&Accuracy::new(30, 100)));
        assert!(!Accuracy::new(40, 100).above(&Accuracy::new(30, 100)));
    }

    #[test]
    fn majority_vote_counts_extracted_answers() {
        let o = |a: Option<&str>, s: f64| {
            let mut out = Outcome::new(s);
            out.extracted = a.map(str::to_string);
            out
        };
        assert!(majority(&[o(Some("3"), 1.0), o(Some("4"), 0.0), o(Some("3"), 1.0)]));
        assert!(!majority(&[o(Some("3"), 1.0), o(Some("4"), 0.0), o(Some("4"), 0.0)]));
        // A tie goes to the answer seen first; no answer at all is wrong.
        assert!(majority(&[o(Some("3"), 1.0), o(Some("4"), 0.0)]));
        assert!(!majority(&[o(None, 0.0), o(None, 0.0)]));
    }
}
