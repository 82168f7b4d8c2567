//! A training run as a job: [`TrainSpec`] (the TOML/flags form of every trainer setting, with defaults) →
//! [`TrainConfig`]; [`open_trainer`] (checks and exact resume from the newest checkpoint) and [`run_training`]
//! (steps, metrics log and plot, checkpoints). `orchard train` and each round of `orchard loop` use both.

use std::path::Path;

use orchard_engine::autograd::{LoraConfig, Target, Tuning, DEFAULT_LORA_DROPOUT};
use orchard_engine::Engine;
use orchard_train::checkpoint;
use orchard_train::loss::{DpoLoss, DEFAULT_BETA, DEFAULT_LABEL_SMOOTHING, DEFAULT_RPO_ALPHA, DEFAULT_SIMPO_GAMMA};
use orchard_train::metrics::{self, MetricsLog, UpdateMetrics};
use orchard_train::optim::{AdamConfig, ScheduleKind, DEFAULT_WEIGHT_DECAY};
use orchard_train::reference::ReferenceSource;
use orchard_train::sft::{MaskedThought, Sft, DEFAULT_MASK_RAMP};
use orchard_train::topr::{Bounds, RatioMode, Topr};
use orchard_train::trainer::{DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_MAX_GRAD_NORM, DEFAULT_MEMORY_GB};
use orchard_train::{BatchConfig, Objective, OptimConfig, TrainConfig, TrainData, Trainer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::Progress;

/// Metrics log inside a training directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Plot of the metrics inside a training directory.
pub const PLOT_FILE: &str = "metrics.svg";
/// Cached reference log-probs inside a training directory.
pub const CACHE_DIR: &str = "cache";

/// Which loss to train with (`orchard train --loss`, TOML `loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
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
    /// Supervised fine-tuning (NLL of completion tokens): --gold, --sft-data, or a run's correct --trajectories.
    Sft,
}

impl LossKind {
    /// Whether the loss trains on preference pairs.
    pub fn on_pairs(self) -> bool {
        !matches!(self, LossKind::Topr | LossKind::Sft)
    }
}

/// Every trainer setting, as a TOML table or `orchard train`'s flags. Each field's default is the flag's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    /// The loss. Default `dpo` (`orchard train`); the loop's rounds default to `sft`.
    pub loss: LossKind,
    /// β of the DPO family (ORPO's λ, IPO's τ). Default [`DEFAULT_BETA`].
    pub beta: f64,
    /// ε of cdpo and robust. Default [`DEFAULT_LABEL_SMOOTHING`].
    pub label_smoothing: f64,
    /// α of RPO's NLL term. Default [`DEFAULT_RPO_ALPHA`].
    pub rpo_alpha: f64,
    /// SimPO's γ. Default [`DEFAULT_SIMPO_GAMMA`].
    pub simpo_gamma: f64,
    /// DPO reference: `model` (the starting policy, scored once) or `behaviour` (the sampler's log-probs).
    pub reference: ReferenceSource,
    /// TOPR truncation bounds a⁺, b⁺, a⁻, b⁻. Default [1, 1, 0, 1].
    pub topr_bounds: [f64; 4],
    /// TOPR ratio over the sequence (false) or its per-token geometric mean (true). Default false.
    pub topr_length_normalised_ratio: bool,
    /// TOPR baseline. Default 0.
    pub baseline: f64,
    /// TOPR: divide each trajectory's loss by its length. Default true.
    pub length_normalise: bool,
    /// LoRA rank; none = full fine-tuning. Default none.
    pub lora_rank: Option<usize>,
    /// LoRA α. Default 2 × rank.
    pub lora_alpha: Option<f32>,
    /// LoRA dropout. Default [`DEFAULT_LORA_DROPOUT`].
    pub lora_dropout: f32,
    /// LoRA targets among q,k,v,o,gate,up,down. Default all seven.
    pub lora_targets: Vec<String>,
    /// Peak learning rate. Default [`DEFAULT_LR`].
    pub lr: f64,
    /// Passes over the data. Default 1.
    pub epochs: usize,
    /// Examples per optimizer step. Default [`DEFAULT_BATCH_SIZE`].
    pub batch_size: usize,
    /// Most examples per forward/backward. Default: what fits `memory_gb`.
    pub micro_batch_size: Option<usize>,
    /// Memory budget in GB. Default [`DEFAULT_MEMORY_GB`].
    pub memory_gb: f64,
    /// Stop after this many steps. Default none.
    pub max_steps: Option<usize>,
    /// Linear warm-up steps. Default 0.
    pub warmup_steps: usize,
    /// Schedule after warm-up: constant, cosine, linear. Default cosine.
    pub schedule: ScheduleKind,
    /// Gradient-norm clip (0: off). Default [`DEFAULT_MAX_GRAD_NORM`].
    pub max_grad_norm: f64,
    /// AdamW weight decay. Default [`DEFAULT_WEIGHT_DECAY`].
    pub weight_decay: f64,
    /// Seed of data order, LoRA init, dropout, masks. Default 0.
    pub seed: u64,
    /// Longest prompt + completion. Default: the model's context.
    pub max_length: Option<usize>,
    /// Drop over-long examples instead of failing. Default false.
    pub skip_long: bool,
    /// Checkpoint every N steps (0: only at the end). Default 0.
    pub checkpoint_every: usize,
    /// Checkpoints kept. Default 1.
    pub keep_checkpoints: usize,
    /// SFT: Masked Thought's largest ratio (0: off). Default 0.
    pub mask_ratio: f64,
    /// SFT: share of the steps over which the mask ratio ramps up. Default [`DEFAULT_MASK_RAMP`].
    pub mask_ramp: f64,
    /// SFT on trajectories: the least reward kept. Default 1.
    pub min_reward: f64,
    /// SFT on trajectories: drop identical completions of a prompt. Default true.
    pub dedup: bool,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            loss: LossKind::Dpo,
            beta: DEFAULT_BETA,
            label_smoothing: DEFAULT_LABEL_SMOOTHING,
            rpo_alpha: DEFAULT_RPO_ALPHA,
            simpo_gamma: DEFAULT_SIMPO_GAMMA,
            reference: ReferenceSource::Model,
            topr_bounds: [1.0, 1.0, 0.0, 1.0],
            topr_length_normalised_ratio: false,
            baseline: 0.0,
            length_normalise: true,
            lora_rank: None,
            lora_alpha: None,
            lora_dropout: DEFAULT_LORA_DROPOUT,
            lora_targets: ["q", "k", "v", "o", "gate", "up", "down"].map(String::from).to_vec(),
            lr: DEFAULT_LR,
            epochs: 1,
            batch_size: DEFAULT_BATCH_SIZE,
            micro_batch_size: None,
            memory_gb: DEFAULT_MEMORY_GB,
            max_steps: None,
            warmup_steps: 0,
            schedule: ScheduleKind::Cosine,
            max_grad_norm: DEFAULT_MAX_GRAD_NORM,
            weight_decay: DEFAULT_WEIGHT_DECAY,
            seed: 0,
            max_length: None,
            skip_long: false,
            checkpoint_every: 0,
            keep_checkpoints: 1,
            mask_ratio: 0.0,
            mask_ramp: DEFAULT_MASK_RAMP,
            min_reward: 1.0,
            dedup: true,
        }
    }
}

impl TrainSpec {
    /// The objective; `mask_token` is where Masked Thought writes (see [`mask_token`]).
    pub fn objective(&self, mask_token: u32) -> Result<Objective> {
        let beta = self.beta;
        let eps = self.label_smoothing;
        let loss = match self.loss {
            LossKind::Sft => {
                let masked_thought = (self.mask_ratio > 0.0).then_some(MaskedThought {
                    max_ratio: self.mask_ratio,
                    ramp: self.mask_ramp,
                    mask_token,
                });
                return Ok(Objective::Sft(Sft { masked_thought }));
            }
            LossKind::Topr => {
                let [pos_low, pos_high, neg_low, neg_high] = self.topr_bounds;
                return Ok(Objective::Topr(Topr {
                    bounds: Bounds { pos_low, pos_high, neg_low, neg_high },
                    ratio: if self.topr_length_normalised_ratio {
                        RatioMode::LengthNormalised
                    } else {
                        RatioMode::Sequence
                    },
                    baseline: self.baseline,
                    length_normalise: self.length_normalise,
                }));
            }
            LossKind::Dpo => DpoLoss::Sigmoid { beta },
            LossKind::Cdpo => DpoLoss::Cdpo { beta, label_smoothing: eps },
            LossKind::Robust => DpoLoss::Robust { beta, label_smoothing: eps },
            LossKind::Ipo => DpoLoss::Ipo { beta },
            LossKind::Hinge => DpoLoss::Hinge { beta },
            LossKind::Rpo => DpoLoss::Rpo { beta, alpha: self.rpo_alpha },
            LossKind::Simpo => DpoLoss::Simpo { beta, gamma: self.simpo_gamma },
            LossKind::Orpo => DpoLoss::Orpo { beta },
        };
        Ok(Objective::Preference { loss, reference: self.reference })
    }

    /// Full fine-tuning or LoRA.
    pub fn tuning(&self) -> Result<Tuning> {
        let Some(rank) = self.lora_rank else { return Ok(Tuning::Full) };
        let targets = self
            .lora_targets
            .iter()
            .map(|t| t.parse::<Target>().map_err(|e| Error::Config(format!("lora_targets: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tuning::Lora(LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f32),
            dropout: self.lora_dropout,
            targets,
        }))
    }

    /// The trainer's configuration for `engine`'s model.
    pub fn config(&self, engine: &Engine) -> Result<TrainConfig> {
        Ok(TrainConfig {
            objective: self.objective(mask_token(engine))?,
            tuning: self.tuning()?,
            optim: OptimConfig {
                lr: self.lr,
                schedule: self.schedule,
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

    /// Length limits for reading data, checked against the model's context.
    pub fn limits(&self, engine: &Engine) -> Result<orchard_train::data::Limits> {
        let context = engine.model().config().max_position_embeddings;
        let max_length = self.max_length.unwrap_or(context);
        if max_length > context {
            return Err(Error::Config(format!(
                "max_length {max_length} is longer than the model's context ({context} tokens)"
            )));
        }
        Ok(orchard_train::data::Limits { max_length, skip_long: self.skip_long })
    }
}

/// The token Masked Thought writes over masked completion tokens: the tokenizer's `<unk>` or pad token when it has
/// one, else `<|endoftext|>`, else its first end-of-sequence token, else id 0.
pub fn mask_token(engine: &Engine) -> u32 {
    let t = engine.tokenizer();
    ["<unk>", "<pad>", "<|endoftext|>"]
        .iter()
        .find_map(|s| t.token_id(s))
        .or_else(|| t.eos().first().copied())
        .unwrap_or(0)
}

/// A trainer for `data` starting from `engine`, resumed from the newest checkpoint in `out` if there is one (a
/// checkpoint of another model, dataset or configuration is refused, naming what differs, and nothing in `out` is
/// changed). Reference log-probs are computed once and cached in `out/cache`.
pub fn open_trainer<'e>(
    engine: &'e Engine,
    data: TrainData,
    cfg: TrainConfig,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<Trainer<'e>> {
    let existing = checkpoint::latest(out)?;
    let hash = engine.identity()?;
    if let Some(dir) = &existing {
        let ckpt = checkpoint::load(dir)?;
        if ckpt.state.model_hash != hash {
            return Err(Error::Config(format!(
                "checkpoint {}: it was trained from another model (hash {}…), not {} (hash {}…); nothing was changed \
                 in {}",
                dir.display(),
                &ckpt.state.model_hash[..ckpt.state.model_hash.len().min(16)],
                engine.info().id,
                &hash[..hash.len().min(16)],
                out.display()
            )));
        }
    }
    progress.start("reference", 0);
    let mut trainer = Trainer::new(engine, data, cfg, &out.join(CACHE_DIR), &mut |what, done, total| {
        progress.position(what, done, total);
    })?;
    progress.finish();
    if let Some(dir) = &existing {
        trainer
            .resume(checkpoint::load(dir)?)
            .map_err(|e| Error::Config(format!("{e}; nothing was changed in {}", out.display())))?;
        progress.log(&format!("resuming {} at step {}/{}", dir.display(), trainer.step_index(), trainer.total_steps()));
    }
    Ok(trainer)
}

/// What a training call did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps done in all (including resumed ones).
    pub steps: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// Steps taken by this call.
    pub taken: usize,
    /// The last step's metrics.
    pub last: Option<UpdateMetrics>,
    /// Seconds of this call.
    pub seconds: f64,
}

/// Trains until the run is finished (or `stop_after` steps were taken by this call), appending each step's
/// metrics to `out/metrics.jsonl`, checkpointing as configured and at the end, and drawing `out/metrics.svg`.
pub fn run_training(
    trainer: &mut Trainer<'_>,
    out: &Path,
    stop_after: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<TrainReport> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut log = MetricsLog::open(&out.join(METRICS_FILE), trainer.step_index())?;
    progress.start("steps", trainer.total_steps());
    progress.advance(trainer.step_index(), "");
    let mut report = TrainReport::default();
    while !trainer.finished() {
        if stop_after.is_some_and(|n| report.taken >= n) {
            break;
        }
        let m = {
            let _span = tracing::debug_span!("train_step", step = trainer.step_index() + 1).entered();
            trainer.step()?
        };
        log.push(&m)?;
        progress.advance(1, &step_message(&m));
        report.taken += 1;
        if trainer.checkpoint_due() {
            trainer.save_checkpoint(out)?;
        }
        report.last = Some(m);
    }
    progress.finish();
    trainer.save_checkpoint(out)?;
    let rows = metrics::read(&out.join(METRICS_FILE))?;
    metrics::plot(&rows, &out.join(PLOT_FILE))?;
    report.steps = trainer.step_index();
    report.total_steps = trainer.total_steps();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A progress line for one step: loss, the objective's headline metric, throughput.
pub fn step_message(m: &UpdateMetrics) -> String {
    let extra = match (&m.preference, &m.topr, &m.sft) {
        (Some(p), _, _) => format!("acc {:.2} margin {:.3}", p.accuracy, p.margins),
        (None, Some(t), _) => format!("reward {:.2} w {:.3}", t.reward, t.weight),
        (None, None, Some(s)) => format!("nll {:.3} mask {:.2}", s.nll_per_token, s.mask_ratio),
        _ => String::new(),
    };
    format!("loss {:.4} {extra} {:.0} tok/s", m.loss, m.tokens_per_s)
}
