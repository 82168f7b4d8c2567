//! The training loop. One optimizer step reads top to bottom: the step's examples → micro-batches →
//! `completion_logps` (policy) and the cached references → a pure loss function → `backward` into the optimizer's
//! accumulation buffers → `AdamW::step` → `metrics`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use orchard_engine::autograd::{DiffModel, Mode, Packed, Tuning};
use orchard_engine::{Engine, TokenId};
use serde::{Deserialize, Serialize};

use crate::batch::{completion_logps, epoch_order, micro_batches, pair_logps, MemoryModel};
use crate::checkpoint::{self, Checkpoint, TrainState};
use crate::data::{PairExample, SftExample, TrajectoryExample};
use crate::error::{Error, Result};
use crate::loss::{DpoLoss, PolicyLogps, UpdateTotals};
use crate::metrics::{PreferenceMetrics, SftMetrics, ToprMetrics, UpdateMetrics};
use crate::optim::{AdamConfig, AdamW, Schedule, ScheduleKind};
use crate::reference::{self, ReferenceSource, References};
use crate::sft::{sft_loss, Sft};
use crate::topr::{topr_loss, Topr, TrajectoryLogps};

/// Default pairs (or trajectories) per optimizer step.
pub const DEFAULT_BATCH_SIZE: usize = 8;
/// Default peak learning rate (TRL's DPO default).
pub const DEFAULT_LR: f64 = 1e-6;
/// Default memory budget for weights, optimizer state and activations, in GB.
pub const DEFAULT_MEMORY_GB: f64 = 8.0;
/// Default gradient clipping norm (TRL's default).
pub const DEFAULT_MAX_GRAD_NORM: f64 = 1.0;

/// What is optimised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "objective", rename_all = "lowercase")]
pub enum Objective {
    /// A DPO-family loss on preference pairs.
    Preference {
        /// The loss.
        loss: DpoLoss,
        /// Where reference log-probs come from (unused by reference-free losses).
        reference: ReferenceSource,
    },
    /// TOPR on scored trajectories.
    Topr(Topr),
    /// Supervised fine-tuning (NLL of completion tokens) on prompt/completion examples.
    Sft(Sft),
}

/// Optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Shape after warm-up.
    pub schedule: ScheduleKind,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Global gradient-norm clip (`None`: off).
    pub max_grad_norm: Option<f64>,
    /// AdamW's other hyper-parameters.
    pub adam: AdamConfig,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: DEFAULT_LR,
            schedule: ScheduleKind::default(),
            warmup_steps: 0,
            max_grad_norm: Some(DEFAULT_MAX_GRAD_NORM),
            adam: AdamConfig::default(),
        }
    }
}

/// How examples are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchConfig {
    /// Examples per optimizer step. Default [`DEFAULT_BATCH_SIZE`].
    pub batch_size: usize,
    /// Most examples per forward/backward (gradient accumulation over the rest); `None`: as many as fit the budget.
    pub micro_batch_size: Option<usize>,
    /// Memory budget in GB that sizes micro-batches. Default [`DEFAULT_MEMORY_GB`].
    pub memory_gb: f64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { batch_size: DEFAULT_BATCH_SIZE, micro_batch_size: None, memory_gb: DEFAULT_MEMORY_GB }
    }
}

/// A training run's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Loss and data kind.
    pub objective: Objective,
    /// Full fine-tuning or LoRA.
    pub tuning: Tuning,
    /// Optimizer.
    pub optim: OptimConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps (`None`: all epochs).
    pub max_steps: Option<usize>,
    /// Seed of the data order, dropout masks and LoRA initialisation.
    pub seed: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
}

impl TrainConfig {
    /// The settings a resumed run must share with its checkpoint (everything that changes the numbers).
    fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "objective": self.objective, "tuning": self.tuning, "optim": self.optim,
            "batch_size": self.batch.batch_size, "seed": self.seed,
        })
    }

    fn validate(&self) -> Result<()> {
        match &self.objective {
            Objective::Preference { loss, .. } => loss.validate()?,
            Objective::Topr(t) => t.validate()?,
            Objective::Sft(s) => s.validate()?,
        }
        if self.batch.batch_size == 0 || self.epochs == 0 {
            return Err(Error::Config("batch size and epochs must be at least 1".into()));
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return Err(Error::Config(format!("learning rate must be positive, got {}", self.optim.lr)));
        }
        if self.batch.memory_gb.is_nan() || self.batch.memory_gb <= 0.0 {
            return Err(Error::Config("the memory budget must be positive".into()));
        }
        Ok(())
    }
}

/// The examples a run trains on.
#[derive(Debug, Clone)]
pub enum TrainData {
    /// Preference pairs.
    Pairs(Vec<PairExample>),
    /// Scored trajectories.
    Trajectories(Vec<TrajectoryExample>),
    /// Supervised examples.
    Sft(Vec<SftExample>),
}

impl TrainData {
    fn len(&self) -> usize {
        match self {
            TrainData::Pairs(p) => p.len(),
            TrainData::Trajectories(t) => t.len(),
            TrainData::Sft(e) => e.len(),
        }
    }

    fn hash(&self) -> String {
        match self {
            TrainData::Pairs(p) => crate::data::hash_pairs(p),
            TrainData::Trajectories(t) => crate::data::hash_trajectories(t),
            TrainData::Sft(e) => crate::data::hash_sft(e),
        }
    }

    /// (packed tokens, scored tokens) of example `i`.
    fn tokens(&self, i: usize) -> (usize, usize) {
        match self {
            TrainData::Pairs(p) => {
                let e = &p[i];
                (e.prompt.len() + e.chosen.len() + e.rejected.len(), e.chosen.len() + e.rejected.len())
            }
            TrainData::Trajectories(t) => (t[i].prompt.len() + t[i].completion.len(), t[i].completion.len()),
            TrainData::Sft(e) => (e[i].prompt.len() + e[i].completion.len(), e[i].completion.len()),
        }
    }
}

/// A training run: the model, its optimizer, the data and where the run stands.
#[derive(Debug)]
pub struct Trainer<'e> {
    cfg: TrainConfig,
    engine: &'e Engine,
    model: DiffModel,
    opt: AdamW,
    data: TrainData,
    refs: Option<References>,
    schedule: Schedule,
    mem: MemoryModel,
    budget: u64,
    state: TrainState,
    steps_per_epoch: usize,
}

impl<'e> Trainer<'e> {
    /// Sets up a run from the starting model `engine`: copies its weights into a differentiable model and, for
    /// losses with a reference, reads or computes the reference log-probs (cached in `cache_dir`).
    pub fn new(
        engine: &'e Engine,
        data: TrainData,
        cfg: TrainConfig,
        cache_dir: &Path,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<Self> {
        cfg.validate()?;
        match (&cfg.objective, &data) {
            (Objective::Preference { .. }, TrainData::Pairs(_))
            | (Objective::Topr(_), TrainData::Trajectories(_))
            | (Objective::Sft(_), TrainData::Sft(_)) => {}
            _ => {
                return Err(Error::Config(
                    "preference losses train on pairs, TOPR on trajectories, SFT on prompt/completion examples".into(),
                ))
            }
        }
        let model_hash = engine.identity()?;
        let data_hash = data.hash();
        let model = DiffModel::new(engine.model(), &cfg.tuning, &Device::Cpu, cfg.seed)?;
        let mem = MemoryModel::for_config(model.config());
        let budget = activation_budget(&cfg, &model, engine);
        let refs = match (&cfg.objective, &data) {
            (Objective::Preference { loss, reference }, TrainData::Pairs(pairs)) if loss.needs_reference() => {
                Some(match reference {
                    ReferenceSource::Behaviour => References::from_behaviour(pairs, &data_hash)?,
                    ReferenceSource::Model => {
                        let path = reference::cache_path(cache_dir, &model_hash, &data_hash);
                        match reference::load_cached(&path, &model_hash, &data_hash, pairs.len()) {
                            Some(r) => r,
                            None => {
                                let values =
                                    reference::compute(&model, pairs, budget, &mut |d, t| progress("reference", d, t))?;
                                let r =
                                    References { model_hash: model_hash.clone(), data_hash: data_hash.clone(), values };
                                reference::store(&path, &r)?;
                                r
                            }
                        }
                    }
                })
            }
            _ => None,
        };
        let steps_per_epoch = data.len().div_ceil(cfg.batch.batch_size);
        let total = cfg.max_steps.unwrap_or(usize::MAX).min(steps_per_epoch * cfg.epochs);
        let schedule = Schedule { peak: cfg.optim.lr, warmup: cfg.optim.warmup_steps, total, kind: cfg.optim.schedule };
        let opt = AdamW::new(model.named_parameters(), cfg.optim.adam);
        let state = TrainState {
            format: checkpoint::FORMAT,
            orchard_version: env!("CARGO_PKG_VERSION").into(),
            step: 0,
            total_steps: total,
            epoch: 0,
            order: epoch_order(data.len(), cfg.seed, 0),
            seed: cfg.seed,
            model_hash,
            data_hash,
            config: serde_json::to_value(&cfg)?,
        };
        Ok(Trainer { cfg, engine, model, opt, data, refs, schedule, mem, budget, state, steps_per_epoch })
    }

    /// Continues from `ckpt`: refuses one from another model, dataset or configuration, then restores the
    /// trainable tensors, optimizer moments, step and data order.
    pub fn resume(&mut self, ckpt: Checkpoint) -> Result<()> {
        let s = &ckpt.state;
        let bad = |reason: String| Error::checkpoint(&ckpt.dir, reason);
        if s.model_hash != self.state.model_hash {
            return Err(bad(format!(
                "it was trained from a model with hash {}…, this run starts from {} (hash {}…)",
                &s.model_hash[..s.model_hash.len().min(16)],
                self.engine.info().path.display(),
                &self.state.model_hash[..self.state.model_hash.len().min(16)]
            )));
        }
        if s.data_hash != self.state.data_hash {
            return Err(bad("it was trained on different data (the tokenized examples differ)".into()));
        }
        let saved: TrainConfig =
            serde_json::from_value(s.config.clone()).map_err(|e| bad(format!("unreadable config: {e}")))?;
        let (a, b) = (saved.identity(), self.cfg.identity());
        if a != b {
            let keys: Vec<String> = a
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, v)| format!("{k}: checkpoint {v}, now {}", b[k.as_str()]))
                .collect();
            return Err(bad(format!("its settings differ: {}", keys.join("; "))));
        }
        self.model.set_parameters(&ckpt.params).map_err(|e| bad(e.to_string()))?;
        let (steps, mut moments) = ckpt.moments;
        self.opt.load_state(steps, |n| moments.remove(n)).map_err(|e| bad(e.to_string()))?;
        if s.order.len() != self.data.len() {
            return Err(bad("its data order does not cover this data".into()));
        }
        self.state.step = s.step;
        self.state.epoch = s.epoch;
        self.state.order = s.order.clone();
        Ok(())
    }

    /// Optimizer steps done.
    pub fn step_index(&self) -> usize {
        self.state.step
    }
    /// Optimizer steps planned.
    pub fn total_steps(&self) -> usize {
        self.state.total_steps
    }
    /// The differentiable model (current weights).
    pub fn model(&self) -> &DiffModel {
        &self.model
    }
    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }
    /// Where the run stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }
    /// The reference log-probs, if the loss uses them.
    pub fn references(&self) -> Option<&References> {
        self.refs.as_ref()
    }

    /// Whether all planned steps are done.
    pub fn finished(&self) -> bool {
        self.state.step >= self.state.total_steps
    }

    /// The examples of the next step and its micro-batches.
    fn plan(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let b = self.cfg.batch.batch_size;
        let k = self.state.step % self.steps_per_epoch;
        let n = self.data.len();
        let idx: Vec<usize> = self.state.order[k * b..((k + 1) * b).min(n)].to_vec();
        let cost = |i: usize| {
            let (t, s) = self.data.tokens(i);
            self.mem.bytes(t, s)
        };
        let max = self.cfg.batch.micro_batch_size.unwrap_or(usize::MAX);
        let micro = micro_batches(&idx, cost, self.budget, max);
        (idx, micro)
    }

    /// Runs one optimizer step and returns its metrics.
    pub fn step(&mut self) -> Result<UpdateMetrics> {
        let start = Instant::now();
        let lr = self.schedule.lr(self.state.step);
        let acc = self.accumulate()?;
        let stats = {
            let _span = tracing::trace_span!("optimizer").entered();
            self.opt.step(lr, self.cfg.optim.max_grad_norm)?
        };
        self.advance();
        let seconds = start.elapsed().as_secs_f64();
        Ok(acc.finish(&self.state, self.steps_per_epoch, lr, stats.grad_norm, seconds))
    }

    /// The forward and backward passes of the next step, micro-batch by micro-batch, summed into the optimizer's
    /// gradient buffers (no update).
    fn accumulate(&mut self) -> Result<StepAccumulator> {
        let (idx, micro) = self.plan();
        let mut acc = StepAccumulator::default();
        for (m, mb) in micro.iter().enumerate() {
            // Dropout masks are a pure function of (seed, step, micro-batch): resumes retrace them exactly.
            let dropout_seed =
                self.cfg.seed ^ ((self.state.step as u64) << 20 | m as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mode = Mode::Train { dropout_seed };
            let loss = match (&self.cfg.objective, &self.data) {
                (Objective::Preference { loss, .. }, TrainData::Pairs(pairs)) => {
                    let chosen_tokens = idx.iter().map(|&i| pairs[i].chosen.len()).sum();
                    let totals = UpdateTotals { pairs: idx.len(), chosen_tokens };
                    self.preference_micro_batch(loss, pairs, mb, totals, mode, &mut acc)?
                }
                (Objective::Topr(cfg), TrainData::Trajectories(t)) => {
                    self.topr_micro_batch(cfg, t, mb, idx.len(), mode, &mut acc)?
                }
                (Objective::Sft(cfg), TrainData::Sft(e)) => {
                    let step_tokens = idx.iter().map(|&i| e[i].completion.len()).sum();
                    self.sft_micro_batch(cfg, e, (mb, m), step_tokens, mode, &mut acc)?
                }
                _ => return Err(Error::Config("objective and data do not match".into())),
            };
            acc.loss += loss.to_scalar::<f64>()?;
            let _backward = tracing::trace_span!("backward", micro_batch = m).entered();
            let grads = loss.backward()?;
            self.opt.accumulate(&grads)?;
            acc.tokens += mb.iter().map(|&i| self.data.tokens(i).0).sum::<usize>();
        }
        if !acc.loss.is_finite() {
            return Err(Error::Numeric(format!("the loss at step {} is {}", self.state.step + 1, acc.loss)));
        }
        Ok(acc)
    }

    fn advance(&mut self) {
        self.state.step += 1;
        let epoch = self.state.step / self.steps_per_epoch;
        if epoch != self.state.epoch {
            self.state.epoch = epoch;
            self.state.order = epoch_order(self.data.len(), self.cfg.seed, epoch);
        }
    }

    /// One micro-batch of pairs: policy log-probs of chosen and rejected → the loss's share of the step.
    fn preference_micro_batch(
        &self,
        loss: &DpoLoss,
        pairs: &[PairExample],
        mb: &[usize],
        totals: UpdateTotals,
        mode: Mode,
        acc: &mut StepAccumulator,
    ) -> Result<Tensor> {
        let b = mb.len();
        // Chosen and rejected continue the same prompt: one forked sequence per pair runs the prompt once.
        let seqs: Vec<(&[TokenId], &[TokenId], &[TokenId])> =
            mb.iter().map(|&i| (&pairs[i].prompt[..], &pairs[i].chosen[..], &pairs[i].rejected[..])).collect();
        let logps = pair_logps(&self.model, &seqs, mode)?;
        let count = |f: fn(&PairExample) -> usize| -> Result<Tensor> {
            let v: Vec<f32> = mb.iter().map(|&i| f(&pairs[i]) as f32).collect();
            Ok(Tensor::from_vec(v, b, self.model.device())?)
        };
        let policy = PolicyLogps {
            chosen: logps.narrow(0, 0, b)?,
            rejected: logps.narrow(0, b, b)?,
            chosen_tokens: count(|e| e.chosen.len())?,
            rejected_tokens: count(|e| e.rejected.len())?,
        };
        let reference = self.refs.as_ref().map(|r| r.select(mb)).transpose()?;
        let smoothing: Option<Vec<f64>> = mb.iter().map(|&i| pairs[i].label_smoothing).collect();
        let smoothing = smoothing.map(|s| Tensor::from_vec(s, b, &Device::Cpu)).transpose()?;
        let terms = loss.compute(&policy, reference.as_ref(), smoothing.as_ref(), totals)?;
        let (c, r): (Vec<f64>, Vec<f64>) = (terms.chosen_rewards.to_vec1()?, terms.rejected_rewards.to_vec1()?);
        let (lc, lr): (Vec<f32>, Vec<f32>) = (policy.chosen.to_vec1()?, policy.rejected.to_vec1()?);
        let p = acc.preference.get_or_insert_with(PreferenceMetrics::default);
        for k in 0..b {
            p.chosen += c[k];
            p.rejected += r[k];
            p.accuracy += f64::from(u8::from(c[k] > r[k]));
            p.logps_chosen += lc[k] as f64;
            p.logps_rejected += lr[k] as f64;
        }
        acc.items += b;
        Ok(terms.loss)
    }

    /// One micro-batch of trajectories: the policy log-probs → TOPR's share of the step.
    fn topr_micro_batch(
        &self,
        cfg: &Topr,
        t: &[TrajectoryExample],
        mb: &[usize],
        step_items: usize,
        mode: Mode,
        acc: &mut StepAccumulator,
    ) -> Result<Tensor> {
        let seqs: Vec<(&[TokenId], &[TokenId])> =
            mb.iter().map(|&i| (&t[i].prompt[..], &t[i].completion[..])).collect();
        let logp = completion_logps(&self.model, &seqs, mode)?;
        let f = |g: fn(&TrajectoryExample) -> f64| -> Result<Tensor> {
            Ok(Tensor::from_vec(mb.iter().map(|&i| g(&t[i])).collect::<Vec<f64>>(), mb.len(), &Device::Cpu)?)
        };
        let inputs = TrajectoryLogps {
            policy: logp.clone(),
            behaviour: f(|e| e.behaviour)?,
            reward: f(|e| e.reward)?,
            tokens: f(|e| e.completion.len() as f64)?,
        };
        let terms = topr_loss(cfg, &inputs, step_items)?;
        let (w, ratio): (Vec<f64>, Vec<f64>) = (terms.weights.to_vec1()?, terms.ratios.to_vec1()?);
        let lp: Vec<f32> = logp.to_vec1()?;
        let m = acc.topr.get_or_insert_with(ToprMetrics::default);
        for (k, &i) in mb.iter().enumerate() {
            m.reward += t[i].reward;
            m.weight += w[k];
            m.ratio += ratio[k];
            m.positive += f64::from(u8::from(t[i].reward - cfg.baseline >= 0.0));
            m.logps += lp[k] as f64;
        }
        acc.items += mb.len();
        Ok(terms.loss)
    }

    /// One micro-batch of SFT examples: completion-token log-probs (inputs masked by Masked Thought when set,
    /// targets always the original tokens) → the step's per-token mean NLL share.
    fn sft_micro_batch(
        &self,
        cfg: &Sft,
        e: &[SftExample],
        (mb, m): (&[usize], usize),
        step_tokens: usize,
        mode: Mode,
        acc: &mut StepAccumulator,
    ) -> Result<Tensor> {
        let ratio = cfg.masked_thought.map_or(0.0, |mt| mt.ratio_at(self.state.step, self.state.total_steps));
        let (mut inputs, mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut masked = 0usize;
        for (k, &i) in mb.iter().enumerate() {
            let x = &e[i];
            let completion = match cfg.masked_thought {
                Some(mt) if ratio > 0.0 => {
                    // The mask of (seed, step, micro-batch, example): resumes retrace it exactly.
                    let seed = self.cfg.seed
                        ^ ((self.state.step as u64) << 32 | (m as u64) << 16 | k as u64)
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    mt.mask(&x.completion, ratio, seed)
                }
                _ => x.completion.clone(),
            };
            masked += completion.iter().zip(&x.completion).filter(|(a, b)| a != b).count();
            inputs.push([&x.prompt[..], &completion[..]].concat());
            for (j, &t) in x.completion.iter().enumerate() {
                targets.push(t);
                weights.push(x.weight as f32);
                rows.push(j + x.prompt.len() - 1);
            }
        }
        let batch = Packed::new(&inputs);
        // Offsets of each sequence in the packed batch.
        let mut r = 0;
        for (s, &i) in mb.iter().enumerate() {
            let start = batch.seqs()[s].0;
            for row in rows.iter_mut().skip(r).take(e[i].completion.len()) {
                *row += start;
            }
            r += e[i].completion.len();
        }
        let lp = self.model.token_logprobs(&batch, &rows, &targets, mode)?;
        let n = weights.len();
        let w = Tensor::from_vec(weights, n, self.model.device())?;
        let loss = sft_loss(&lp, &w, step_tokens)?;
        let lps: Vec<f32> = lp.to_vec1()?;
        let s = acc.sft.get_or_insert_with(SftMetrics::default);
        s.mask_ratio = ratio;
        s.masked_tokens += masked;
        s.completion_tokens += n;
        s.logps += lps.iter().map(|&v| f64::from(v)).sum::<f64>();
        acc.items += mb.len();
        Ok(loss)
    }

    /// Writes a checkpoint of the current state into `out`.
    pub fn save_checkpoint(&self, out: &Path) -> Result<PathBuf> {
        checkpoint::save(out, &self.state, &self.model, &self.opt, self.cfg.keep_checkpoints)
    }

    /// Whether a checkpoint is due after the step just taken.
    pub fn checkpoint_due(&self) -> bool {
        self.cfg.checkpoint_every > 0 && self.state.step.is_multiple_of(self.cfg.checkpoint_every)
    }
}

/// The bytes left for activations once weights and optimizer state are counted: the base weights in f32 (the
/// differentiable copy), the engine's own copy, and per trainable value its gradient, accumulator and moments.
fn activation_budget(cfg: &TrainConfig, model: &DiffModel, engine: &Engine) -> u64 {
    let total = (cfg.batch.memory_gb * 1e9) as u64;
    let base = 4 * model.config().num_parameters() as u64;
    let trainable = model.num_trainable() as u64;
    let fixed = base + engine.model().weight_bytes() as u64 + 16 * trainable;
    total.saturating_sub(fixed).max(1)
}

/// Sums over a step's micro-batches.
#[derive(Debug, Default)]
struct StepAccumulator {
    loss: f64,
    items: usize,
    tokens: usize,
    preference: Option<PreferenceMetrics>,
    topr: Option<ToprMetrics>,
    sft: Option<SftMetrics>,
}

impl StepAccumulator {
    fn finish(
        self,
        state: &TrainState,
        steps_per_epoch: usize,
        lr: f64,
        grad_norm: f64,
        seconds: f64,
    ) -> UpdateMetrics {
        let n = self.items.max(1) as f64;
        let preference = self.preference.map(|mut p| {
            p.chosen /= n;
            p.rejected /= n;
            p.margins = p.chosen - p.rejected;
            p.accuracy /= n;
            p.logps_chosen /= n;
            p.logps_rejected /= n;
            p
        });
        let topr = self.topr.map(|mut t| {
            t.reward /= n;
            t.weight /= n;
            t.ratio /= n;
            t.positive /= n;
            t.logps /= n;
            t
        });
        let sft = self.sft.map(|mut s| {
            s.nll_per_token = -s.logps / s.completion_tokens.max(1) as f64;
            s
        });
        UpdateMetrics {
            sft,
            step: state.step,
            epoch: state.step as f64 / steps_per_epoch.max(1) as f64,
            loss: self.loss,
            lr,
            grad_norm,
            tokens_per_s: self.tokens as f64 / seconds.max(1e-9),
            tokens: self.tokens,
            seconds,
            preference,
            topr,
        }
    }
}

#[cfg(test)]
mod tests;
