//! `orchard eval`: accuracy of a model on a verifiable task — greedy, and majority vote over K samples (maj@K) —
//! each with a 95% Wilson score interval, as one JSON object.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use orchard_datasets::cli::SourceArgs;
use orchard_datasets::{task_seed, TaskSource};
use orchard_engine::{GenerateOptions, GenerateRequest, SamplingParams};
use orchard_rewards::Outcome;
use rayon::prelude::*;
use serde::Serialize;

use super::common::{ModelArgs, PrecisionArg};
use super::exec::SandboxArgs;
use crate::job::{reward_task, task_prompt, JobReward};

/// Default most new tokens per answer.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;
/// Default temperature of the maj@K samples.
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Evaluate a model on GSM8K, SVAMP (or a task file): greedy accuracy and, with --n K > 1, maj@K, each with a 95%
/// Wilson interval. Prints one JSON object (and writes it to --out if given).
///
/// Examples:
///   orchard eval --model default --task gsm8k --split test --limit 100
///   orchard eval --model train/dpo/merged --task svamp --split test --n 8
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Samples per task for maj@K (1: greedy only).
    #[arg(long, short = 'n', default_value_t = 1)]
    pub n: usize,
    /// Temperature of the maj@K samples.
    #[arg(long, default_value_t = DEFAULT_TEMPERATURE)]
    pub temperature: f32,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Reward that scores answers (default: the task's own, gsm8k or svamp).
    #[arg(long)]
    pub reward: Option<String>,
    /// System message before each prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Seed of the maj@K samples (and of --shuffle).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Numeric path.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// Also write the JSON here.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// An accuracy with its 95% Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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
}

/// The answer a majority of samples give (ties: the one reached first), and whether it is correct.
fn majority(outcomes: &[Outcome]) -> bool {
    let mut votes: HashMap<&str, (usize, usize, bool)> = HashMap::new();
    for (i, o) in outcomes.iter().enumerate() {
        if let Some(a) = o.extracted.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            let e = votes.entry(a).or_insert((0, i, o.score >= 1.0));
            e.0 += 1;
        }
    }
    votes.values().max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1))).is_some_and(|v| v.2)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    anyhow::ensure!(args.n >= 1, "--n must be at least 1");
    let mut source = args.source.apply(TaskSource::default());
    source.seed = args.seed;
    let loaded = source.load()?;
    anyhow::ensure!(!loaded.tasks.is_empty(), "no tasks to evaluate");
    let reward_name = args.reward.clone().unwrap_or_else(|| source.task.name().to_string());
    let reward = JobReward::build(Some(&reward_name), None, &args.sandbox)?;
    let engine = args.model.load()?;
    let opts = GenerateOptions { precision: args.precision.resolve(), ..GenerateOptions::default() };
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: args.max_new_tokens, ..SamplingParams::default() };
    let sampled = SamplingParams { temperature: args.temperature, ..greedy.clone() };

    let tasks = &loaded.tasks;
    let mut prompts = Vec::with_capacity(tasks.len());
    for task in tasks {
        let prompt = task_prompt(task, args.system.as_deref());
        prompts.push(engine.prompt_tokens(&prompt, None, false).with_context(|| format!("task {}", task.id))?);
    }
    // Tasks go to the engine in groups that fill its decode batch; the scheduler batches within a call.
    let group = (opts.max_batch / args.n.max(1)).max(1);
    let bar = super::common::progress_bar(tasks.len() as u64, "tasks");
    let (mut greedy_ok, mut maj_ok, mut generated) = (0usize, 0usize, 0usize);
    for (chunk, ids) in tasks.chunks(group).zip(prompts.chunks(group)) {
        let mut requests: Vec<GenerateRequest> = ids
            .iter()
            .zip(chunk)
            .map(|(p, t)| GenerateRequest {
                prompt: p.clone(),
                n: 1,
                params: greedy.clone(),
                seed: task_seed(args.seed, &t.id),
            })
            .collect();
        if args.n > 1 {
            requests.extend(ids.iter().zip(chunk).map(|(p, t)| GenerateRequest {
                prompt: p.clone(),
                n: args.n,
                params: sampled.clone(),
                seed: task_seed(args.seed, &t.id),
            }));
        }
        let samples = engine.generate(&requests, &opts, &mut |_| {})?;
        generated += samples.iter().flatten().map(|s| s.token_ids.len()).sum::<usize>();
        let scored: Vec<Vec<Outcome>> = samples
            .par_iter()
            .enumerate()
            .map(|(i, ss)| {
                let rt = reward_task(&chunk[i % chunk.len()]);
                ss.iter().map(|s| reward.score(&rt, &s.text)).collect()
            })
            .collect();
        greedy_ok += scored[..chunk.len()].iter().filter(|o| o.first().is_some_and(|o| o.score >= 1.0)).count();
        if args.n > 1 {
            maj_ok += scored[chunk.len()..].iter().filter(|o| majority(o)).count();
        }
        bar.inc(chunk.len() as u64);
        bar.set_message(format!("greedy {greedy_ok}/{}", bar.position()));
    }
    bar.finish_and_clear();
    let total = tasks.len();
    let mut report = serde_json::json!({
        "model": engine.info().id,
        "model_path": engine.info().path,
        "model_hash": engine.info().hash()?,
        "task": source.task.name(),
        "split": source.split,
        "source": loaded.report.file,
        "limit": source.limit,
        "tasks": total,
        "reward": reward_name,
        "max_new_tokens": args.max_new_tokens,
        "greedy": Accuracy::new(greedy_ok, total),
        "generated_tokens": generated,
        "seconds": started.elapsed().as_secs_f64(),
    });
    if args.n > 1 {
        report[format!("maj@{}", args.n)] = serde_json::to_value(Accuracy::new(maj_ok, total))?;
        report["temperature"] = serde_json::json!(args.temperature);
        report["seed"] = serde_json::json!(args.seed);
    }
    let text = serde_json::to_string(&report)?;
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{text}\n")).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
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
