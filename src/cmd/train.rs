//! `orchard train`: DPO-family losses on preference pairs, or TOPR on scored trajectories, in-process on the
//! engine's own model (LoRA or full fine-tuning), with exact-resume checkpoints, a metrics log and plot, and
//! exports (merged HF directory, PEFT adapter) that go straight back into the engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use orchard_engine::autograd::{Tuning, DEFAULT_LORA_DROPOUT};
use orchard_engine::Engine;
use orchard_jobs::train::{self, LossKind, TrainSpec};
use orchard_train::checkpoint;
use orchard_train::data::{self, Limits, PairColumns, SftFilter};
use orchard_train::loss::{DEFAULT_BETA, DEFAULT_LABEL_SMOOTHING, DEFAULT_RPO_ALPHA, DEFAULT_SIMPO_GAMMA};
use orchard_train::optim::{ScheduleKind, DEFAULT_WEIGHT_DECAY};
use orchard_train::reference::ReferenceSource;
use orchard_train::trainer::{DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_MAX_GRAD_NORM, DEFAULT_MEMORY_GB};
use orchard_train::{export, Objective, TrainConfig, TrainData, Trainer};

use super::common::ModelArgs;

/// Merged model (HF directory) inside --out.
pub const MERGED_DIR: &str = "merged";
/// PEFT adapter inside --out (LoRA runs).
pub const ADAPTER_DIR: &str = "adapter";

/// Train a model on preference pairs (DPO family) or scored trajectories (TOPR).
///
/// Writes into --out: checkpoint-NNNNNN/ (trainable tensors, optimizer state, step, data order), latest.json,
/// metrics.jsonl (TRL's metric names), metrics.svg, merged/ (an HF directory that `orchard generate --model` and
/// transformers load) and, for LoRA, adapter/ (PEFT's format). Rerunning the same command on the same --out
/// resumes exactly from the newest checkpoint; different data, model or settings are refused.
///
/// Examples:
///   orchard train --pairs runs/gsm8k --loss dpo --beta 0.1 --lora-rank 16 --lr 5e-5 --epochs 1 --out train/dpo
///   orchard train --trajectories runs/gsm8k --loss topr --baseline 0.5 --lr 1e-5 --epochs 1 --out train/topr
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// TOML file of training settings (every key of `orchard loop`'s `[train]` table: loss, beta, lr, epochs,
    /// batch_size, lora_rank, mask_ratio, …); a flag given with a non-default value overrides its key.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Preference pairs: a Parquet file, a directory of them, or an `orchard sample` run directory.
    #[arg(long, value_name = "PATH", conflicts_with = "trajectories", required_unless_present_any = ["trajectories", "gold", "sft_data"])]
    pub pairs: Option<PathBuf>,
    /// Scored trajectories (for --loss topr): a Parquet file, a directory, or a run directory.
    #[arg(long, value_name = "PATH")]
    pub trajectories: Option<PathBuf>,
    /// SFT on a built-in dataset's gold solutions, `TASK:SPLIT` (gsm8k:train, svamp:train): ReFT's warm-up.
    #[arg(long, value_name = "TASK:SPLIT", conflicts_with_all = ["pairs", "trajectories", "sft_data"])]
    pub gold: Option<String>,
    /// --gold: only the first N tasks.
    #[arg(long, value_name = "N")]
    pub gold_limit: Option<usize>,
    /// SFT on a JSON-lines file of `{"prompt", "completion"}` or `{"messages"}` rows.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["pairs", "trajectories"])]
    pub sft_data: Option<PathBuf>,
    /// SFT on --trajectories: keep those with at least this reward (rejection sampling).
    #[arg(long, default_value_t = 1.0)]
    pub min_reward: f64,
    /// SFT on --trajectories: keep identical completions of a prompt as many times as they were sampled.
    #[arg(long)]
    pub no_dedup: bool,
    /// SFT on --trajectories: a float column with each example's loss weight.
    #[arg(long, value_name = "COLUMN")]
    pub weight_column: Option<String>,
    /// SFT: Masked Thought's largest share of completion tokens masked in the input (0: off; paper: 0.4).
    #[arg(long, default_value_t = 0.0)]
    pub mask_ratio: f64,
    /// SFT: share of the steps over which the mask ratio ramps up from 0.
    #[arg(long, default_value_t = orchard_train::sft::DEFAULT_MASK_RAMP)]
    pub mask_ramp: f64,
    /// The loss.
    #[arg(long, value_enum, default_value_t = LossKind::Dpo)]
    pub loss: LossKind,
    /// β of the DPO family (ORPO's λ, IPO's τ).
    #[arg(long, default_value_t = DEFAULT_BETA)]
    pub beta: f64,
    /// ε of cdpo and robust.
    #[arg(long, default_value_t = DEFAULT_LABEL_SMOOTHING)]
    pub label_smoothing: f64,
    /// cdpo: read each pair's ε from this float column (MCTS-DPO's visit-count smoothing; `orchard search` and
    /// `orchard pairs --policy mcts-dpo` write it as `meta_label_smoothing`).
    #[arg(long, value_name = "COLUMN")]
    pub smoothing_column: Option<String>,
    /// α of RPO's NLL term.
    #[arg(long, default_value_t = DEFAULT_RPO_ALPHA)]
    pub rpo_alpha: f64,
    /// γ, SimPO's target margin.
    #[arg(long, default_value_t = DEFAULT_SIMPO_GAMMA)]
    pub simpo_gamma: f64,
    /// Reference log-probs: the starting model (scored once, cached) or the pairs file's behaviour log-probs.
    #[arg(long, value_enum, default_value_t = ReferenceArg::Model)]
    pub reference: ReferenceArg,
    /// TOPR truncation bounds a⁺,b⁺,a⁻,b⁻.
    #[arg(long, value_name = "A+,B+,A-,B-", default_value = "1,1,0,1")]
    pub topr_bounds: String,
    /// TOPR importance ratio: the sequence ratio (paper) or its per-token geometric mean (verl).
    #[arg(long, value_enum, default_value_t = RatioArg::Sequence)]
    pub topr_ratio: RatioArg,
    /// TOPR baseline c (advantage = reward − c).
    #[arg(long, default_value_t = 0.0)]
    pub baseline: f64,
    /// TOPR: do not divide each trajectory's loss by its length.
    #[arg(long)]
    pub no_length_normalise: bool,
    /// LoRA rank; without it every weight is trained (full fine-tuning).
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (default: 2 × rank).
    #[arg(long)]
    pub lora_alpha: Option<f32>,
    /// LoRA dropout.
    #[arg(long, default_value_t = DEFAULT_LORA_DROPOUT)]
    pub lora_dropout: f32,
    /// LoRA target modules, comma-separated, among q,k,v,o,gate,up,down.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    pub lora_targets: Vec<String>,
    /// Peak learning rate.
    #[arg(long, default_value_t = DEFAULT_LR)]
    pub lr: f64,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Examples (pairs or trajectories) per optimizer step.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Most examples per forward/backward (the rest of a step is accumulated); default: what fits --memory-gb.
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Memory budget (GB) for weights, optimizer state and activations; sizes micro-batches.
    #[arg(long, default_value_t = DEFAULT_MEMORY_GB)]
    pub memory_gb: f64,
    /// Stop after this many optimizer steps in all (the schedule ends there).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Learning-rate shape after warm-up.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = DEFAULT_MAX_GRAD_NORM)]
    pub max_grad_norm: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = DEFAULT_WEIGHT_DECAY)]
    pub weight_decay: f64,
    /// Seed of data order, LoRA init and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest prompt + completion in tokens (default: the model's context).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Drop examples longer than --max-length (counted) instead of failing.
    #[arg(long)]
    pub skip_long: bool,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Checkpoints kept in --out.
    #[arg(long, default_value_t = 1)]
    pub keep_checkpoints: usize,
    /// Stop this invocation after N steps (with a checkpoint); rerun the command to continue.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Skip writing merged/ (and adapter/).
    #[arg(long)]
    pub no_export: bool,
    /// Output directory.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

/// Where DPO's reference log-probs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReferenceArg {
    /// The starting model, scored once with the policy's f32 path (cached).
    Model,
    /// The pairs file's meta_behaviour_logp_* columns (the sampler; off-policy DPO).
    Behaviour,
}

/// TOPR's importance ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RatioArg {
    /// π(τ)/μ(τ) over the whole sequence.
    Sequence,
    /// Its geometric mean per token.
    LengthNormalised,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// Constant.
    Constant,
    /// Half cosine to zero.
    Cosine,
    /// Linear to zero.
    Linear,
}

impl Args {
    /// The settings: the --config file's, with every flag whose value differs from its default applied on top.
    fn settings(&self) -> anyhow::Result<TrainSpec> {
        let flags = self.spec()?;
        let Some(path) = &self.config else { return Ok(flags) };
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let file: TrainSpec = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (mut merged, given, default) =
            (serde_json::to_value(&file)?, serde_json::to_value(&flags)?, serde_json::to_value(TrainSpec::default())?);
        if let (Some(m), Some(g), Some(d)) = (merged.as_object_mut(), given.as_object(), default.as_object()) {
            for (k, v) in g {
                if d.get(k) != Some(v) {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(serde_json::from_value(merged)?)
    }

    /// The flags as the trainer's spec (the one mapping from settings to a [`TrainConfig`], shared with the loop).
    fn spec(&self) -> anyhow::Result<TrainSpec> {
        let b: Vec<f64> = self
            .topr_bounds
            .split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--topr-bounds `{}`: expected four numbers", self.topr_bounds))?;
        let [a, bp, c, d] = b[..] else {
            anyhow::bail!("--topr-bounds `{}`: expected four numbers a+,b+,a-,b-", self.topr_bounds);
        };
        Ok(TrainSpec {
            loss: self.loss,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            rpo_alpha: self.rpo_alpha,
            simpo_gamma: self.simpo_gamma,
            reference: match self.reference {
                ReferenceArg::Model => ReferenceSource::Model,
                ReferenceArg::Behaviour => ReferenceSource::Behaviour,
            },
            topr_bounds: [a, bp, c, d],
            topr_length_normalised_ratio: self.topr_ratio == RatioArg::LengthNormalised,
            baseline: self.baseline,
            length_normalise: !self.no_length_normalise,
            lora_rank: self.lora_rank,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            lora_targets: self.lora_targets.clone(),
            lr: self.lr,
            epochs: self.epochs,
            batch_size: self.batch_size,
            micro_batch_size: self.micro_batch_size,
            memory_gb: self.memory_gb,
            max_steps: self.max_steps,
            warmup_steps: self.warmup_steps,
            schedule: match self.schedule {
                ScheduleArg::Constant => ScheduleKind::Constant,
                ScheduleArg::Cosine => ScheduleKind::Cosine,
                ScheduleArg::Linear => ScheduleKind::Linear,
            },
            max_grad_norm: self.max_grad_norm,
            weight_decay: self.weight_decay,
            seed: self.seed,
            max_length: self.max_length,
            skip_long: self.skip_long,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            mask_ratio: self.mask_ratio,
            mask_ramp: self.mask_ramp,
            min_reward: self.min_reward,
            dedup: !self.no_dedup,
        })
    }
}

/// Reads the training data named by the flags (errors name file, column and row).
fn read_data(args: &Args, spec: &TrainSpec, engine: &Engine, cfg: &TrainConfig) -> anyhow::Result<TrainData> {
    let limits = spec.limits(engine)?;
    let max_length = limits.max_length;
    match (&cfg.objective, &args.pairs, &args.trajectories) {
        (Objective::Preference { reference, .. }, Some(path), None) => {
            let columns = PairColumns {
                behaviour: *reference == ReferenceSource::Behaviour,
                label_smoothing: args.smoothing_column.clone(),
            };
            let loaded = data::read_pairs(path, &columns, limits, engine)?;
            if loaded.skipped > 0 {
                eprintln!("orchard: skipped {} pairs longer than {max_length} tokens", loaded.skipped);
            }
            Ok(TrainData::Pairs(loaded.examples))
        }
        (Objective::Topr(_), None, Some(path)) => {
            let loaded = data::read_trajectories(path, limits, engine)?;
            if loaded.skipped > 0 {
                eprintln!("orchard: skipped {} trajectories (unscored or too long)", loaded.skipped);
            }
            Ok(TrainData::Trajectories(loaded.examples))
        }
        (Objective::Sft(_), None, Some(path)) => {
            let filter =
                SftFilter { min_reward: spec.min_reward, dedup: spec.dedup, weight_column: args.weight_column.clone() };
            let (examples, c) = data::read_sft_trajectories(path, &filter, limits, engine)?;
            eprintln!(
                "orchard: SFT on {} trajectories with reward ≥ {} ({} below, {} duplicates, {} unscored or too long)",
                c.kept, spec.min_reward, c.below_threshold, c.duplicates, c.skipped
            );
            Ok(TrainData::Sft(examples))
        }
        (Objective::Sft(_), None, None) => {
            if let Some(path) = &args.sft_data {
                let loaded = data::read_sft_jsonl(path, limits, engine)?;
                if loaded.skipped > 0 {
                    eprintln!("orchard: skipped {} examples longer than {max_length} tokens", loaded.skipped);
                }
                return Ok(TrainData::Sft(loaded.examples));
            }
            let Some(gold) = &args.gold else {
                anyhow::bail!("--loss sft trains on --gold TASK:SPLIT, --sft-data FILE.jsonl or --trajectories RUN")
            };
            Ok(TrainData::Sft(gold_examples(gold, args.gold_limit, limits, engine)?))
        }
        (Objective::Topr(_), _, _) => anyhow::bail!("--loss topr trains on --trajectories"),
        _ => anyhow::bail!("--loss {:?} trains on --pairs", args.loss),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // 1. Settings, model, data: every input is checked before anything is written to --out.
    let spec = args.settings()?;
    let engine = args.model.load()?;
    let cfg = spec.config(&engine)?;
    let data = read_data(&args, &spec, &engine, &cfg)?;
    let out = &args.out;

    // 2. The trainer (reference log-probs computed once and cached), resumed from --out's newest checkpoint;
    // 3. steps, metrics, checkpoints.
    let mut bars = super::common::Bars::default();
    let mut trainer = train::open_trainer(&engine, data, cfg, out, &mut bars)?;
    let report = train::run_training(&mut trainer, out, args.stop_after, &mut bars)?;

    // 4. Exports, once the run is complete.
    if trainer.finished() && !args.no_export {
        export_model(&trainer, &engine, out)?;
    }
    let summary = match &report.last {
        Some(m) => format!("last step {}: {}", m.step, train::step_message(m)),
        None => "no steps taken".into(),
    };
    let ckpt = checkpoint::latest(out)?.unwrap_or_default();
    eprintln!(
        "orchard: {} of {} steps; {summary}; checkpoint {}",
        trainer.step_index(),
        trainer.total_steps(),
        ckpt.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// SFT examples from a built-in dataset's gold solutions (`gsm8k:train`), prompted as `orchard sample` and
/// `orchard eval` prompt them (the question as one user turn, no system message).
fn gold_examples(
    spec: &str,
    limit: Option<usize>,
    limits: Limits,
    engine: &Engine,
) -> anyhow::Result<Vec<orchard_train::data::SftExample>> {
    let (task, split) = spec.split_once(':').unwrap_or((spec, "train"));
    let kind: orchard_datasets::TaskKind = task.parse().map_err(|e| anyhow::anyhow!("--gold {spec}: {e}"))?;
    let mut source = orchard_datasets::TaskSource::builtin(kind, Some(split));
    source.limit = limit;
    let loaded = source.load()?;
    Ok(orchard_jobs::rounds::gold_examples(engine, &loaded.tasks, None, limits, &format!("--gold {spec}"))?)
}

/// Writes merged/ (the trained model as an HF directory) and, for LoRA, adapter/ (PEFT).
fn export_model(trainer: &Trainer<'_>, engine: &Engine, out: &Path) -> anyhow::Result<()> {
    let merged = trainer.model().merged_model(&out.join(MERGED_DIR))?;
    export::export_hf(&merged, engine, &out.join(MERGED_DIR))?;
    if matches!(trainer.model().tuning(), Tuning::Lora(_)) {
        let base = engine.info().path.display().to_string();
        export::export_peft(trainer.model(), &base, &out.join(ADAPTER_DIR))?;
    }
    Ok(())
}
