//! `orchard sample`: best-of-N sampling to scored trajectories and preference pairs (the ReFT/RFT baseline).

use std::process::ExitCode;

use orchard_datasets::cli::PairArgs;
use orchard_datasets::run::timing;
use orchard_jobs::run::{run_sample, Runtime};
pub use orchard_jobs::sample::{SampleJob, DEFAULT_N};

use crate::job::{JobArgs, JobKeys, SamplingArgs};

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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
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
    let reward = args.job.reward(&file.reward, &file.reward_config, &file.model)?;
    let job = SampleJob { n: Some(n), sampling, pairs, pair_format, shard: Some(shard), out: Some(out), ..file };

    // 2. Model; 3. sample, score, pair — a group of tasks per engine call — into the run directory.
    let engine = args.job.device.place(args.job.model_args(&job.model).load()?)?;
    let rt = Runtime {
        precision: args.job.precision.resolve(),
        commit_every: args.job.commit_every,
        group: args.group,
        workers: None,
    };
    let mut bars = super::common::Bars::default();
    let done = run_sample(&engine, &job, reward.reward(), &rt, &mut bars)?;
    let c = &done.manifest.counts;
    let wall = done.manifest.timings.get(timing::WALL).copied().unwrap_or_default();
    let share = done.manifest.outside_engine_share().unwrap_or(f64::NAN);
    eprintln!(
        "orchard: {} tasks, {} trajectories ({} correct), {} pairs in {:.1}s; engine {:.1} tok/s; {:.1}% of the time outside the engine; wrote {}",
        c.tasks,
        c.trajectories,
        c.correct,
        c.pairs,
        wall,
        done.generated_tokens as f64 / done.engine_s.max(1e-9),
        100.0 * share,
        done.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
