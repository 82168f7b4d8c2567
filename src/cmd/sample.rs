//! `orchard sample`: best-of-N sampling to scored trajectories and preference pairs (the ReFT/RFT baseline).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use orchard_datasets::cli::PairArgs;
use orchard_datasets::record::{PairFormat, RewardRecord, SamplingRecord};
use orchard_datasets::run::timing;
use orchard_datasets::{
    select_pairs, task_seed, ModelRecord, PairPolicy, Shard, Task, TaskOutput, TaskSource, Trajectory,
};
use orchard_engine::{GenerateOptions, GenerateRequest, Sample, SamplingParams};
use orchard_rewards::Outcome;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::job::{
    model_record, open_run, reward_task, sampling_record, task_prompt, JobArgs, JobKeys, RunPlace, SamplingArgs,
};

/// Default samples per prompt.
pub const DEFAULT_N: usize = 8;

/// Sample N completions per task with the engine, score them with a verifiable reward, and write trajectories
/// and preference pairs (Parquet, TRL's DPO columns) plus manifest.json to --out.
///
/// Every flag has a key in the TOML job file (--config): top-level `model`, `n`, `seed`, `reward`,
/// `reward_config`, `system`, `out`, `pair_format`; tables `[source]` (task, split, path, limit, shuffle,
/// on_bad_row, fields.*), `[pairs]` (strategy, max_per_prompt, min_margin, correct_threshold) and `[sampling]`
/// (temperature, top_p, top_k, min_p, max_new_tokens, stop). Flags override the file.
///
/// Rerunning the same command on the same --out resumes: finished tasks (journaled) are skipped, a different
/// configuration is refused. --shard i/n runs one deterministic slice (by task id hash); `orchard merge` combines
/// the shards. Each task's samples are seeded from (--seed, task id), so resumed and sharded runs reproduce an
/// uninterrupted one.
///
/// Examples:
///   orchard sample --task gsm8k --split train --limit 50 --n 8 --reward gsm8k --out runs/gsm8k-50
///   orchard sample --config job.toml --shard 0/4
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub job: JobArgs,
    /// Samples per task. TOML: `n`.
    #[arg(long, short = 'n')]
    pub n: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub pairs: PairArgs,
    /// Tasks sampled together in one engine call (default: enough to fill the decode batch).
    #[arg(long)]
    pub group: Option<usize>,
}

/// The job file, and the job's identity once flags are applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleJob {
    /// Model spec.
    pub model: Option<String>,
    /// Where tasks come from.
    pub source: TaskSource,
    /// Samples per task.
    pub n: Option<usize>,
    /// Reward name.
    pub reward: Option<String>,
    /// Reward TOML file.
    pub reward_config: Option<PathBuf>,
    /// System message.
    pub system: Option<String>,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Pair selection.
    pub pairs: PairPolicy,
    /// TRL layout of pairs.
    pub pair_format: PairFormat,
    /// Seed.
    pub seed: u64,
    /// Shard (not part of the identity).
    pub shard: Option<Shard>,
    /// Output directory (not part of the identity).
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut file: SampleJob = args.job.read_file()?;
    // 1. The job: the file's values with every given flag applied.
    args.job.apply(JobKeys {
        model: &mut file.model,
        source: &mut file.source,
        reward: &mut file.reward,
        reward_config: &mut file.reward_config,
        system: &mut file.system,
        seed: &mut file.seed,
    });
    let (pairs, pair_format) = args.pairs.apply(file.pairs, file.pair_format);
    let sampling = args.sampling.apply(file.sampling.clone());
    sampling.validate()?;
    let n = args.n.or(file.n).unwrap_or(DEFAULT_N);
    anyhow::ensure!(n >= 1, "--n must be at least 1");
    let (shard, out) = args.job.placement(file.shard, &file.out)?;
    let reward = args.job.reward(&file.reward, &file.reward_config)?;
    let identity =
        SampleJob { n: Some(n), sampling: sampling.clone(), pairs, pair_format, shard: None, out: None, ..file };
    let (source, seed, system) = (identity.source.clone(), identity.seed, identity.system.clone());

    // 2. Tasks, model, run directory.
    let loaded = source.load()?;
    let load_s = started.elapsed().as_secs_f64();
    let engine = args.job.model_args(&identity.model).load()?;
    let model = model_record(&engine)?;
    let place = RunPlace {
        kind: "sample",
        unit: "tasks",
        identity: serde_json::to_value(&identity)?,
        shard,
        pair_format,
        model: model.clone(),
        correct_threshold: pairs.correct_threshold,
        out: &out,
        load_s,
    };
    let (mut run, todo) = open_run(place, loaded)?;
    let run_id = run.run_id().to_string();

    // 3. Sample, score, pair — a group of tasks per engine call.
    let gen_opts = GenerateOptions { precision: args.job.precision.resolve(), ..GenerateOptions::default() };
    let group = args.group.unwrap_or_else(|| (gen_opts.max_batch / n).max(1));
    let record = sampling_record(&sampling, sampling.max_new_tokens);
    let bar = super::common::progress_bar(todo.len() as u64, "prompts");
    let mut generated = 0usize;
    let mut engine_s = 0f64;
    for tasks in todo.chunks(group) {
        let t0 = Instant::now();
        let mut prompts = Vec::with_capacity(tasks.len());
        let mut requests = Vec::with_capacity(tasks.len());
        for task in tasks {
            let prompt = task_prompt(task, system.as_deref());
            let text = engine.render_prompt(&prompt, None, false).with_context(|| format!("task {}", task.id))?;
            let ids = engine.tokenizer().encode(&text, false)?;
            requests.push(GenerateRequest {
                prompt: ids,
                n,
                params: sampling.clone(),
                seed: task_seed(seed, &task.id),
            });
            prompts.push(text);
        }
        let samples = engine.generate(&requests, &gen_opts, &mut |_| {})?;
        let dt = t0.elapsed().as_secs_f64();
        engine_s += dt;
        run.add_timing(timing::ENGINE, dt);

        let t1 = Instant::now();
        let outcomes: Vec<Vec<_>> = tasks
            .par_iter()
            .zip(&samples)
            .map(|(task, ss)| {
                let rt = reward_task(task);
                ss.iter().map(|s| reward.score(&rt, &s.text)).collect()
            })
            .collect();
        run.add_timing(timing::REWARD, t1.elapsed().as_secs_f64());

        let t2 = Instant::now();
        let ctx = Recorded { run_id: &run_id, system: system.as_deref(), sampling: record, model: &model };
        for ((task, ss), (os, prompt)) in tasks.iter().zip(&samples).zip(outcomes.iter().zip(&prompts)) {
            generated += ss.iter().map(|s| s.token_ids.len()).sum::<usize>();
            let trajectories: Vec<Trajectory> =
                ss.iter().zip(os).enumerate().map(|(k, (s, o))| ctx.trajectory(task, prompt, k, s, o)).collect();
            let pairs = select_pairs(&trajectories, &pairs);
            run.push(TaskOutput { task_id: task.id.clone(), trajectories, pairs, nodes: vec![] })?;
        }
        run.add_timing(timing::SELECT, t2.elapsed().as_secs_f64());
        let c = run.counts();
        bar.inc(tasks.len() as u64);
        bar.set_message(format!(
            "{:.1} tok/s, {} correct / {} samples, {} pairs",
            generated as f64 / engine_s.max(1e-9),
            c.correct,
            c.trajectories,
            c.pairs
        ));
    }
    bar.finish_and_clear();
    let manifest = run.finish()?;
    let c = &manifest.counts;
    let wall = manifest.timings.get(timing::WALL).copied().unwrap_or_default();
    let share = manifest.outside_engine_share().unwrap_or(f64::NAN);
    eprintln!(
        "orchard: {} tasks, {} trajectories ({} correct), {} pairs in {:.1}s; engine {:.1} tok/s; {:.1}% of the time outside the engine; wrote {}",
        c.tasks,
        c.trajectories,
        c.correct,
        c.pairs,
        wall,
        generated as f64 / engine_s.max(1e-9),
        100.0 * share,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What every trajectory of the run records besides its own sample and score.
struct Recorded<'a> {
    run_id: &'a str,
    system: Option<&'a str>,
    sampling: SamplingRecord,
    model: &'a ModelRecord,
}

impl Recorded<'_> {
    fn trajectory(&self, task: &Task, prompt: &str, k: usize, s: &Sample, o: &Outcome) -> Trajectory {
        Trajectory {
            id: Trajectory::make_id(&task.id, k as u32),
            run_id: self.run_id.to_string(),
            task_id: task.id.clone(),
            sample_index: k as u32,
            prompt: prompt.to_string(),
            prompt_messages: task.chat(self.system),
            completion: s.text.clone(),
            token_ids: s.token_ids.clone(),
            token_logprobs: s.token_logprobs.clone(),
            finish_reason: finish_name(s.finish_reason).to_string(),
            reward: RewardRecord {
                score: o.score,
                components: o.components.clone(),
                extracted: o.extracted.clone(),
                failure: o.failure.clone(),
                error: o.error.clone(),
            },
            sampling: self.sampling,
            seed: s.seed,
            model: self.model.clone(),
        }
    }
}

fn finish_name(r: orchard_engine::FinishReason) -> &'static str {
    match r {
        orchard_engine::FinishReason::Stop => "stop",
        orchard_engine::FinishReason::Length => "length",
    }
}
