//! `orchard rl`: online reinforced fine-tuning in one process (the library's [`orchard_jobs::rl`]).

use std::path::PathBuf;
use std::process::ExitCode;

use orchard_jobs::rl::{run_rl, RlConfig};

use super::common::{Bars, ModelArgs};
use crate::job::build_reward;

/// Online RL: every step samples G completions for each of P train prompts with the current weights (handed to
/// the engine in memory, nothing copied to another process), scores them with the reward, computes group
/// advantages and takes an optimizer step — GRPO (default), Dr. GRPO, DAPO (clip-higher, dynamic sampling,
/// overlong masking), RLOO, REINFORCE++-baseline; LoRA or full fine-tuning; optional KL to the starting model.
///
/// TOML keys (every one has a default; unknown keys are refused): `model`, `seed`, `reward`, `system`, `steps`,
/// `prompts_per_step`, `group_size`, `advantage` (grpo|dr_grpo|rloo|reinforce_pp), `aggregation` ({ kind =
/// "sequence" } | { kind = "token" } | { kind = "constant", length = N }), `epsilon_low`, `epsilon_high`, `beta`,
/// `num_iterations`, `dynamic_sampling`, `max_refills`, `overlong_mask`, `handoff` (q8|f32), `lora_rank`,
/// `lora_alpha`, `lr`, `max_grad_norm`, `weight_decay`, `checkpoint_every`, `eval_every`; tables `[prompts]`,
/// `[eval_tasks]` (task, split, limit, …), `[eval]`, `[sampling]` (temperature, max_new_tokens, …).
///
/// Writes into --out: metrics.jsonl (one line per step: reward, reward_std, frac_reward_zero_std,
/// clip_ratio/region_mean, kl, completions/mean_length, seconds of sampling / training / hand-off, tokens/s),
/// checkpoints (rerun to resume exactly; rerun with a larger `steps` to continue a finished run), eval.jsonl
/// (held-out greedy accuracy with 95% intervals), final/ (the trained policy as an HF directory).
///
/// Examples:
///   orchard rl --config examples/rl/grpo.toml --out runs/grpo
///   orchard rl --config examples/rl/grpo.toml --out runs/grpo --stop-after 5
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The run's TOML file.
    #[arg(long, value_name = "FILE.toml")]
    pub config: PathBuf,
    /// Output directory.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Stop this invocation after N steps (with a checkpoint); rerun to continue.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: super::common::DeviceArgs,
    #[command(flatten)]
    pub sandbox: crate::job::RewardArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = RlConfig::from_toml(&args.config)?;
    let reward = build_reward(Some(&cfg.reward), None, &args.sandbox, Some(&cfg.model))?;
    let engine = args.device.place(ModelArgs { model: cfg.model.clone(), threads: args.threads }.load()?)?;
    let mut bars = Bars::default();
    let report = run_rl(&cfg, &engine, reward.reward(), &args.out, args.stop_after, &mut bars)?;
    for (step, a) in &report.evals {
        eprintln!(
            "orchard: step {step}: held-out greedy {}/{} = {:.3} [{:.3}, {:.3}]",
            a.correct, a.total, a.accuracy, a.ci95[0], a.ci95[1]
        );
    }
    eprintln!("orchard: {} of {} steps; wrote {}", report.steps, cfg.steps, args.out.display());
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
