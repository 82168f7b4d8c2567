//! `orchard train`: DPO-family losses on preference pairs, or TOPR on scored trajectories, in-process on the
//! engine's own model (LoRA or full fine-tuning), with exact-resume checkpoints, a metrics log and plot, and
//! exports (merged HF directory, PEFT adapter) that go straight back into the engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use orchard_engine::autograd::{LoraConfig, Target, Tuning, DEFAULT_LORA_DROPOUT};
use orchard_engine::Engine;
use orchard_train::checkpoint;
use orchard_train::data::{self, Limits, PairColumns};
use orchard_train::loss::{DpoLoss, DEFAULT_BETA, DEFAULT_LABEL_SMOOTHING, DEFAULT_RPO_ALPHA, DEFAULT_SIMPO_GAMMA};
use orchard_train::metrics::{self, MetricsLog, StepMetrics};
use orchard_train::optim::{AdamConfig, ScheduleKind, DEFAULT_WEIGHT_DECAY};
use orchard_train::reference::ReferenceSource;
use orchard_train::topr::{Bounds, RatioMode, Topr};
use orchard_train::trainer::{DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_MAX_GRAD_NORM, DEFAULT_MEMORY_GB};
use orchard_train::{export, BatchConfig, Objective, OptimConfig, TrainConfig, TrainData, Trainer};

use super::common::ModelArgs;

/// Metrics log inside --out.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Plot of the metrics inside --out.
pub const PLOT_FILE: &str = "metrics.svg";
/// Merged model (HF directory) inside --out.
pub const MERGED_DIR: &str = "merged";
/// PEFT adapter inside --out (LoRA runs).
pub const ADAPTER_DIR: &str = "adapter";
/// Cached reference log-probs inside --out.
pub const CACHE_DIR: &str = "cache";

/// Which loss to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LossArg {
    /// DPO, sigmoid loss.
    Dpo,
    /// Conservative DPO (label smoothing).
    Cdpo,
    /// Robust DPO.
    Robust,
    /// IPO (per-token averaged log-ratios).
    Ipo,
    /// Hinge (SLiC / RSO).
    Hinge,
    /// RPO: DPO + α·NLL of the chosen completion.
    Rpo,
    /// SimPO (reference-free, length-normalised, margin γ).
    Simpo,
    /// ORPO (reference-free odds ratio + NLL).
    Orpo,
    /// TOPR on trajectories.
    Topr,
}

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
    /// Preference pairs: a Parquet file, a directory of them, or an `orchard sample` run directory.
    #[arg(long, value_name = "PATH", conflicts_with = "trajectories", required_unless_present = "trajectories")]
    pub pairs: Option<PathBuf>,
    /// Scored trajectories (for --loss topr): a Parquet file, a directory, or a run directory.
    #[arg(long, value_name = "PATH")]
    pub trajectories: Option<PathBuf>,
    /// The loss.
    #[arg(long, value_enum, default_value_t = LossArg::Dpo)]
    pub loss: LossArg,
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
    fn objective(&self) -> anyhow::Result<Objective> {
        let beta = self.beta;
        let eps = self.label_smoothing;
        let loss = match self.loss {
            LossArg::Topr => {
                let b: Vec<f64> = self
                    .topr_bounds
                    .split(',')
                    .map(|s| s.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--topr-bounds `{}`: expected four numbers", self.topr_bounds))?;
                let [pos_low, pos_high, neg_low, neg_high] = b[..] else {
                    anyhow::bail!("--topr-bounds `{}`: expected four numbers a+,b+,a-,b-", self.topr_bounds);
                };
                return Ok(Objective::Topr(Topr {
                    bounds: Bounds { pos_low, pos_high, neg_low, neg_high },
                    ratio: match self.topr_ratio {
                        RatioArg::Sequence => RatioMode::Sequence,
                        RatioArg::LengthNormalised => RatioMode::LengthNormalised,
                    },
                    baseline: self.baseline,
                    length_normalise: !self.no_length_normalise,
                }));
            }
            LossArg::Dpo => DpoLoss::Sigmoid { beta },
            LossArg::Cdpo => DpoLoss::Cdpo { beta, label_smoothing: eps },
            LossArg::Robust => DpoLoss::Robust { beta, label_smoothing: eps },
            LossArg::Ipo => DpoLoss::Ipo { beta },
            LossArg::Hinge => DpoLoss::Hinge { beta },
            LossArg::Rpo => DpoLoss::Rpo { beta, alpha: self.rpo_alpha },
            LossArg::Simpo => DpoLoss::Simpo { beta, gamma: self.simpo_gamma },
            LossArg::Orpo => DpoLoss::Orpo { beta },
        };
        let reference = match self.reference {
            ReferenceArg::Model => ReferenceSource::Model,
            ReferenceArg::Behaviour => ReferenceSource::Behaviour,
        };
        Ok(Objective::Preference { loss, reference })
    }

    fn tuning(&self) -> anyhow::Result<Tuning> {
        let Some(rank) = self.lora_rank else { return Ok(Tuning::Full) };
        let targets = self.lora_targets.iter().map(|t| t.parse::<Target>()).collect::<Result<Vec<_>, _>>()?;
        Ok(Tuning::Lora(LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f32),
            dropout: self.lora_dropout,
            targets,
        }))
    }

    fn config(&self) -> anyhow::Result<TrainConfig> {
        Ok(TrainConfig {
            objective: self.objective()?,
            tuning: self.tuning()?,
            optim: OptimConfig {
                lr: self.lr,
                schedule: match self.schedule {
                    ScheduleArg::Constant => ScheduleKind::Constant,
                    ScheduleArg::Cosine => ScheduleKind::Cosine,
                    ScheduleArg::Linear => ScheduleKind::Linear,
                },
                warmup_steps: self.warmup_steps,
                max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
                adam: AdamConfig { weight_decay: self.weight_decay, ..AdamConfig::default() },
            },
            batch: BatchConfig {
                batch_size: self.batch_size,
                micro_batch_size: self.micro_batch_size,
                memory_gb: self.memory_gb,
            },
            epochs: self.epochs,
            max_steps: self.max_steps,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
        })
    }
}

/// Reads the training data named by the flags (errors name file, column and row).
fn read_data(args: &Args, engine: &Engine, cfg: &TrainConfig) -> anyhow::Result<TrainData> {
    let context = engine.model().config().max_position_embeddings;
    let max_length = args.max_length.unwrap_or(context);
    anyhow::ensure!(
        max_length <= context,
        "--max-length {max_length} is longer than the model's context ({context} tokens)"
    );
    let limits = Limits { max_length, skip_long: args.skip_long };
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
        (Objective::Topr(_), _, _) => anyhow::bail!("--loss topr trains on --trajectories"),
        _ => anyhow::bail!("--loss {:?} trains on --pairs", args.loss),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // 1. Settings, model, data: every input is checked before anything is written to --out.
    let cfg = args.config()?;
    let engine = args.model.load()?;
    let data = read_data(&args, &engine, &cfg)?;
    let out = &args.out;
    let existing = checkpoint::latest(out)?;
    if let Some(dir) = &existing {
        let ckpt = checkpoint::load(dir)?;
        let hash = engine.info().hash()?;
        anyhow::ensure!(
            ckpt.state.model_hash == hash,
            "checkpoint {}: it was trained from another model (hash {}…), not {} (hash {}…); nothing was changed \
             in {}",
            dir.display(),
            &ckpt.state.model_hash[..ckpt.state.model_hash.len().min(16)],
            engine.info().path.display(),
            &hash[..hash.len().min(16)],
            out.display()
        );
    }

    // 2. The trainer (reference log-probs computed once and cached), resumed from --out's newest checkpoint.
    let bar = super::common::progress_bar(0, "reference");
    let mut trainer = Trainer::new(&engine, data, cfg, &out.join(CACHE_DIR), &mut |what, done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    })?;
    bar.finish_and_clear();
    if let Some(dir) = &existing {
        trainer.resume(checkpoint::load(dir)?).with_context(|| format!("nothing was changed in {}", out.display()))?;
        eprintln!("orchard: resuming {} at step {}/{}", dir.display(), trainer.step_index(), trainer.total_steps());
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut log = MetricsLog::open(&out.join(METRICS_FILE), trainer.step_index())?;

    // 3. Steps: forward, loss, backward, update; metrics after each, checkpoints as asked.
    let bar = super::common::progress_bar(trainer.total_steps() as u64, "steps");
    bar.set_position(trainer.step_index() as u64);
    let mut taken = 0usize;
    let mut last: Option<StepMetrics> = None;
    while !trainer.finished() {
        if args.stop_after.is_some_and(|n| taken >= n) {
            break;
        }
        let m = trainer.step()?;
        log.push(&m)?;
        bar.set_position(m.step as u64);
        bar.set_message(progress_message(&m));
        taken += 1;
        if trainer.checkpoint_due() {
            trainer.save_checkpoint(out)?;
        }
        last = Some(m);
    }
    bar.finish_and_clear();
    let ckpt = trainer.save_checkpoint(out)?;
    let rows = metrics::read(&out.join(METRICS_FILE))?;
    metrics::plot(&rows, &out.join(PLOT_FILE))?;

    // 4. Exports, once the run is complete.
    if trainer.finished() && !args.no_export {
        export_model(&trainer, &engine, out)?;
    }
    let summary = match &last {
        Some(m) => format!("last step {}: {}", m.step, progress_message(m)),
        None => "no steps taken".into(),
    };
    eprintln!(
        "orchard: {} of {} steps; {summary}; checkpoint {}",
        trainer.step_index(),
        trainer.total_steps(),
        ckpt.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The progress bar's message: loss, reward accuracy (or TOPR's mean weight) and throughput.
fn progress_message(m: &StepMetrics) -> String {
    let extra = match (&m.preference, &m.topr) {
        (Some(p), _) => format!("acc {:.2} margin {:.3}", p.accuracy, p.margins),
        (None, Some(t)) => format!("reward {:.2} w {:.3}", t.reward, t.weight),
        _ => String::new(),
    };
    format!("loss {:.4} {extra} {:.0} tok/s", m.loss, m.tokens_per_s)
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
