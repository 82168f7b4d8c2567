//! Orchard's trainer: preference optimisation (the DPO family) and TOPR on the engine's own model, with LoRA or
//! full fine-tuning, exact-resume checkpoints, and exports that PEFT, transformers and the engine load.
//!
//! One optimizer step reads like nanoGPT's `train.py` ([`Trainer::step`]): the step's examples are split into
//! micro-batches sized to a memory budget; each runs [`batch::completion_logps`] on the differentiable model
//! ([`orchard_engine::autograd`]), takes the cached [`reference`] log-probs, computes a pure loss
//! ([`loss::DpoLoss`] or [`topr::topr_loss`]) and back-propagates into the optimizer's accumulation buffers;
//! then [`optim::AdamW`] takes one fused step and [`metrics`] records what happened.
//!
//! | module | what |
//! |---|---|
//! | [`data`] | pairs and trajectories from Parquet, tokenized, with file/column/row errors |
//! | [`loss`], [`topr`], [`sft`], [`rl`] | one pure function per loss, in f64 (RL: GRPO family, RLOO, REINFORCE++) |
//! | [`reference`] | behaviour or model reference log-probs, cached by model and data hash |
//! | [`batch`] | data order, memory-sized micro-batches, per-sequence log-probs |
//! | [`optim`] | fused AdamW, clipping, schedules |
//! | [`checkpoint`] | atomic checkpoints that resume exactly |
//! | [`export`] | PEFT adapters, HF directories |
//! | [`metrics`] | TRL-named metrics, JSONL log, SVG plot |
//!
//! ```no_run
//! use orchard_engine::autograd::{LoraConfig, Tuning};
//! use orchard_train::{data, loss::DpoLoss, BatchConfig, Objective, OptimConfig, TrainConfig, TrainData, Trainer};
//! # fn main() -> orchard_train::Result<()> {
//! let engine = orchard_engine::Engine::load("default")?;
//! let limits = data::Limits { max_length: 1024, skip_long: false };
//! let pairs = data::read_pairs("runs/gsm8k".as_ref(), &data::PairColumns::default(), limits, &engine)?;
//! let cfg = TrainConfig {
//!     objective: Objective::Preference { loss: DpoLoss::Sigmoid { beta: 0.1 }, reference: Default::default() },
//!     tuning: Tuning::Lora(LoraConfig::default()),
//!     optim: OptimConfig { lr: 5e-5, ..OptimConfig::default() },
//!     batch: BatchConfig::default(),
//!     epochs: 1,
//!     max_steps: None,
//!     seed: 0,
//!     checkpoint_every: 0,
//!     keep_checkpoints: 1,
//! };
//! let mut trainer = Trainer::new(&engine, TrainData::Pairs(pairs.examples), cfg, "cache".as_ref(), &mut |_, _, _| {})?;
//! while !trainer.finished() {
//!     let m = trainer.step()?;
//!     println!("step {} loss {:.4}", m.step, m.loss);
//! }
//! trainer.save_checkpoint("out".as_ref())?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod export;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod reference;
pub mod rl;
pub mod sft;
pub mod topr;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::{BatchConfig, Objective, OptimConfig, TrainConfig, TrainData, Trainer};
