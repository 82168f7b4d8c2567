//! Pieces every data-generation job shares: the job file, the reward, the model record, task conversions.

use std::path::{Path, PathBuf};

use anyhow::Context;
use orchard_datasets::cli::SourceArgs;
use orchard_datasets::{Shard, TaskSource};
use orchard_engine::SamplingParams;
pub use orchard_jobs::reward::JobReward;
use serde::de::DeserializeOwned;

use crate::cmd::common::{ModelArgs, PrecisionArg};
use crate::cmd::exec::SandboxArgs;

/// Flags every data-generation job has (`orchard sample`, `orchard search`); each overrides its key in the job
/// file.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// TOML job file (flags override its values).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Model: `default`, a .gguf file or an HF directory. TOML: `model`.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Compute threads (not part of the job's identity).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: crate::cmd::common::DeviceArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Reward name: gsm8k, svamp, math, pot, humaneval, … TOML: `reward`.
    #[arg(long)]
    pub reward: Option<String>,
    /// Reward described in TOML (composites) instead of --reward. TOML: `reward_config`.
    #[arg(long, value_name = "FILE.toml")]
    pub reward_config: Option<PathBuf>,
    /// System message before each prompt. TOML: `system`.
    #[arg(long)]
    pub system: Option<String>,
    /// Base seed of sampling (and of --shuffle). TOML: `seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// This process's slice of the tasks, `i/n` (e.g. a Slurm array index). TOML: `shard`.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Output run directory. TOML: `out`.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Numeric path (not part of the job's identity: every path is batch-invariant).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// Commit finished tasks to the run directory at least this often (`30s`, `5m`; default 60 s): what a
    /// preempted or cancelled job keeps. Not part of the job's identity.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub commit_every: Option<std::time::Duration>,
    #[command(flatten)]
    pub sandbox: RewardArgs,
}

/// Flags of the rewards a job builds: the sandbox of code rewards (and of Python rewards), the judge's model.
#[derive(Debug, clap::Args)]
pub struct RewardArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Run Python reward functions (`--reward python:FILE:FUNCTION`) without a sandbox, with your environment and
    /// permissions (default: in bubblewrap, the host read-only; `--sandbox rlimits` gives them rlimits only).
    /// TOML: `sandbox = "none"` in the reward's table.
    #[arg(long)]
    pub no_reward_sandbox: bool,
    /// Model of a judge reward whose TOML names none (`default`, a .gguf or an HF directory; default: the job's
    /// model).
    #[arg(long, value_name = "MODEL")]
    pub judge_model: Option<String>,
}

impl RewardArgs {
    /// Apply the flags to a Python reward's settings.
    fn apply_python(&self, c: &mut orchard_rewards::pyfunc::PythonConfig) {
        use orchard_rewards::pyfunc::PySandbox;
        if c.python.is_none() {
            c.python.clone_from(&self.sandbox.python);
        }
        if self.sandbox.sandbox == orchard_rewards::sandbox::SandboxChoice::Rlimits && c.sandbox == PySandbox::Bwrap {
            c.sandbox = PySandbox::Rlimits;
        }
        if self.no_reward_sandbox {
            c.sandbox = PySandbox::None;
        }
    }

    /// The model a judge without one of its own loads: `--judge-model`, else the job's model, else `default`.
    fn judge_model(&self, job_model: Option<&str>) -> String {
        self.judge_model.clone().or(job_model.map(str::to_string)).unwrap_or_else(|| "default".into())
    }
}

/// The keys of a job file that [`JobArgs`] override, borrowed from the file's own struct.
pub struct JobKeys<'a> {
    /// `model` (resolved to `default` when neither flag nor file names one).
    pub model: &'a mut Option<String>,
    /// `[source]` (its seed becomes the job's seed).
    pub source: &'a mut TaskSource,
    /// `reward`.
    pub reward: &'a mut Option<String>,
    /// `reward_config`.
    pub reward_config: &'a mut Option<PathBuf>,
    /// `system`.
    pub system: &'a mut Option<String>,
    /// `seed`.
    pub seed: &'a mut u64,
}

impl JobArgs {
    /// Read the job file (`--config`, or defaults) into `T`.
    pub fn read_file<T: DeserializeOwned + Default>(&self) -> anyhow::Result<T> {
        read_job_file(self.config.as_deref())
    }

    /// Apply the flags that are part of the job's identity to the file's keys.
    pub fn apply(&self, keys: JobKeys<'_>) {
        *keys.source = self.source.apply(keys.source.clone());
        *keys.seed = self.seed.unwrap_or(*keys.seed);
        keys.source.seed = *keys.seed;
        *keys.model = Some(self.model.clone().or(keys.model.take()).unwrap_or_else(|| "default".into()));
        *keys.reward = self.reward.clone().or(keys.reward.take());
        *keys.reward_config = self.reward_config.clone().or(keys.reward_config.take());
        *keys.system = self.system.clone().or(keys.system.take());
    }

    /// Where this process's output goes and which slice it runs: flags over the file's `shard` and `out`.
    pub fn placement(&self, shard: Option<Shard>, out: &Option<PathBuf>) -> anyhow::Result<(Shard, PathBuf)> {
        Ok((self.shard.or(shard).unwrap_or_default(), out_dir(&self.out, out)?))
    }

    /// The model flags for loading `model` (a resolved spec).
    pub fn model_args(&self, model: &Option<String>) -> ModelArgs {
        ModelArgs { model: model.clone().unwrap_or_else(|| "default".into()), threads: self.threads }
    }

    /// The job's reward, built from the resolved `reward` / `reward_config` keys with the sandbox flags (a judge
    /// defaults to the job's `model`).
    pub fn reward(
        &self,
        reward: &Option<String>,
        reward_config: &Option<PathBuf>,
        model: &Option<String>,
    ) -> anyhow::Result<JobReward> {
        build_reward(reward.as_deref(), reward_config.as_deref(), &self.sandbox, model.as_deref())
    }
}

/// Reads a TOML job file into `T` (unknown keys are refused, with the file named).
pub fn read_job_file<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    match path {
        None => Ok(T::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        }
    }
}

/// Builds the reward named `kind`, or described by the TOML file `config`, with the sandbox flags applied (the
/// library's [`JobReward`]); a judge without a model of its own uses `--judge-model`, else `job_model`.
pub fn build_reward(
    kind: Option<&str>,
    config: Option<&Path>,
    args: &RewardArgs,
    job_model: Option<&str>,
) -> anyhow::Result<JobReward> {
    let mut spec = JobReward::spec(kind, config)?;
    for limits in spec.limits_mut() {
        args.sandbox.apply(limits);
    }
    for python in spec.python_mut() {
        args.apply_python(python);
    }
    let sb = if spec.needs_sandbox() { Some(args.sandbox.open()?) } else { None };
    Ok(JobReward::new(spec, sb, args.judge_model(job_model))?)
}

/// Sampling knobs on the command line; each has a TOML key in the job file's `[sampling]` table.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 = greedy. TOML: `sampling.temperature`.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (1 = off). TOML: `sampling.top_p`.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep the K most likely tokens (0 = off). TOML: `sampling.top_k`.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Min-p filter (0 = off). TOML: `sampling.min_p`.
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Most tokens per completion. TOML: `sampling.max_new_tokens`.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Stop string (repeatable). TOML: `sampling.stop`.
    #[arg(long = "stop", value_name = "S")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The job file's parameters with every given flag applied.
    pub fn apply(&self, mut p: SamplingParams) -> SamplingParams {
        if let Some(v) = self.temperature {
            p.temperature = v;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.top_k {
            p.top_k = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.max_new_tokens {
            p.max_new_tokens = v;
        }
        if !self.stop.is_empty() {
            p.stop.clone_from(&self.stop);
        }
        p
    }
}

/// `out` from the flag, else from the job file.
pub fn out_dir(flag: &Option<PathBuf>, file: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    flag.clone().or_else(|| file.clone()).context("no output directory: give --out DIR (or `out` in the job file)")
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    orchard_rewards::units::parse_duration(s).map_err(|e| e.to_string())
}
