//! Online reinforced fine-tuning in one process (`orchard rl`): each step samples `group_size` completions for
//! each of `prompts_per_step` train prompts with the *current* weights (handed to the engine in memory), scores
//! them, computes group advantages, and takes an optimizer step on the clipped surrogate ([`orchard_train::rl`]) —
//! GRPO, Dr. GRPO, DAPO (clip-higher, dynamic sampling, overlong masking), RLOO, REINFORCE++-baseline — or online
//! TOPR ([`orchard_train::topr`]). A group's completions share their prompt's forward and backward
//! ([`Packed::groups`]).
//!
//! `OUT` holds `metrics.jsonl` (one line per step, TRL's metric names) and `metrics.svg` (its curves), checkpoints (exact resume: weights,
//! optimizer moments, the prompt cursor), `eval.jsonl` (held-out accuracy every `eval_every` steps) and `final/`.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use orchard_datasets::{task_seed, Task, TaskSource};
use orchard_engine::autograd::{DiffModel, Mode, Packed, Tuning};
use orchard_engine::{Engine, FinishReason, GenerateOptions, GenerateRequest, Handoff, SamplingParams, TokenId};
use orchard_rewards::Reward;
use orchard_train::checkpoint::{self, TrainState};
use orchard_train::optim::{AdamConfig, AdamW, Schedule, ScheduleKind};
use orchard_train::rl::{
    advantages, informative_groups, surrogate_loss, AdvantageKind, Aggregation, Surrogate, TokenBatch, UpdateCounts,
};
use orchard_train::topr::{topr_loss, Topr, TrajectoryLogps};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::{evaluate, Accuracy, EvalConfig};
use crate::task::{reward_task, task_prompt};
use crate::Progress;

/// The trained policy of a finished run, as an HF directory.
pub const FINAL_DIR: &str = "final";

/// Step metrics inside `OUT`.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The step curves inside `OUT`.
pub const PLOT_FILE: &str = "metrics.svg";
/// Held-out evaluations inside `OUT`.
pub const EVAL_FILE: &str = "eval.jsonl";

/// An online RL run: every key has a default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// Starting model. Default `default`.
    pub model: String,
    /// Seed of prompt order, sampling and LoRA init. Default 0.
    pub seed: u64,
    /// Reward. Default `gsm8k`.
    pub reward: String,
    /// System message. Default none.
    pub system: Option<String>,
    /// Train prompts. Default GSM8K train.
    pub prompts: TaskSource,
    /// Held-out evaluation set. Default none.
    pub eval_tasks: Option<TaskSource>,
    /// Evaluate every N steps (and at the end); 0: only at the end. Default 0.
    pub eval_every: usize,
    /// Evaluation settings.
    pub eval: EvalConfig,
    /// Optimizer steps. Default 20.
    pub steps: usize,
    /// Prompts per step P. Default 8.
    pub prompts_per_step: usize,
    /// Completions per prompt G. Default 8.
    pub group_size: usize,
    /// Sampling (temperature 1, 128 new tokens by default).
    pub sampling: SamplingParams,
    /// The loss: the clipped surrogate on group advantages (`{ kind = "clip" }`, the default) or online TOPR
    /// (`{ kind = "topr", baseline = 0.0, bounds = { … } }`: rewards minus a constant baseline, the importance
    /// ratio truncated per sign; `advantage` is then not used, and a group may be a single completion).
    pub objective: Objective,
    /// Advantage estimator (clip objective). Default grpo.
    pub advantage: AdvantageKind,
    /// Reduction of the per-token losses. Default sequence (GRPO).
    pub aggregation: Aggregation,
    /// Lower clip ε. Default 0.2.
    pub epsilon_low: f64,
    /// Upper clip ε (DAPO: 0.28). Default 0.2.
    pub epsilon_high: f64,
    /// KL coefficient β against the starting model (k3 estimator). Default 0.
    pub beta: f64,
    /// Optimizer passes over each batch (μ); > 1 uses the importance ratio against the sampling-time policy.
    pub num_iterations: usize,
    /// DAPO's dynamic sampling: drop groups whose rewards are all equal and sample more prompts to refill.
    pub dynamic_sampling: bool,
    /// Most extra sampling rounds a step makes to refill. Default 3.
    pub max_refills: usize,
    /// DAPO's overlong masking: completions cut at `max_new_tokens` get no loss.
    pub overlong_mask: bool,
    /// Skip the training forward and backward of a group whose every advantage is zero (all its rewards equal)
    /// when the objective is the clipped surrogate with β = 0: such a group adds exactly nothing to the loss, the
    /// gradient or the clipped count, so the update is the same bit for bit. Default true.
    pub skip_zero_advantage: bool,
    /// How the engine holds the weights it samples with. Default q8.
    pub handoff: Handoff,
    /// LoRA rank; none = full fine-tuning.
    pub lora_rank: Option<usize>,
    /// LoRA α (default 2 × rank).
    pub lora_alpha: Option<f32>,
    /// Learning rate. Default 1e-6 (TRL's GRPO default).
    pub lr: f64,
    /// Gradient clip. Default 1.0.
    pub max_grad_norm: f64,
    /// AdamW weight decay. Default 0.
    pub weight_decay: f64,
    /// Checkpoint every N steps (0: only at the end). Default 5.
    pub checkpoint_every: usize,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            model: "default".into(),
            seed: 0,
            reward: "gsm8k".into(),
            system: None,
            prompts: TaskSource::builtin(orchard_datasets::TaskKind::Gsm8k, Some("train")),
            eval_tasks: None,
            eval_every: 0,
            eval: EvalConfig { max_new_tokens: 256, ..EvalConfig::default() },
            steps: 20,
            prompts_per_step: 8,
            group_size: 8,
            sampling: SamplingParams { temperature: 1.0, max_new_tokens: 128, ..SamplingParams::default() },
            objective: Objective::Clip,
            advantage: AdvantageKind::Grpo,
            aggregation: Aggregation::Sequence,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            num_iterations: 1,
            dynamic_sampling: false,
            max_refills: 3,
            overlong_mask: false,
            skip_zero_advantage: true,
            handoff: Handoff::Q8,
            lora_rank: None,
            lora_alpha: None,
            lr: 1e-6,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            checkpoint_every: 5,
        }
    }
}

impl RlConfig {
    /// Reads a configuration from TOML (unknown keys refused, naming the file).
    pub fn from_toml(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    fn validate(&self) -> Result<()> {
        if let Objective::Topr(t) = &self.objective {
            t.validate()?;
            if self.beta > 0.0 {
                return Err(Error::Config(
                    "beta > 0 (a KL term) is not part of the topr objective; set beta = 0".into(),
                ));
            }
        } else if self.group_size < 2 {
            return Err(Error::Config(format!(
                "group_size = {}: {:?} advantages are relative to the group, which needs at least 2 completions per \
                 prompt",
                self.group_size, self.advantage
            )));
        }
        if self.prompts_per_step == 0 || self.steps == 0 || self.num_iterations == 0 {
            return Err(Error::Config("steps, prompts_per_step and num_iterations must be at least 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Config(format!("lr must be positive, got {}", self.lr)));
        }
        self.sampling.validate()?;
        Ok(())
    }

    fn tuning(&self) -> Tuning {
        match self.lora_rank {
            None => Tuning::Full,
            Some(rank) => Tuning::Lora(orchard_engine::autograd::LoraConfig {
                rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * rank as f32),
                ..Default::default()
            }),
        }
    }
}

/// The loss of an online RL step.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Objective {
    /// The PPO-style clipped surrogate on group advantages (GRPO family).
    #[default]
    Clip,
    /// Tapered off-policy REINFORCE ([`orchard_train::topr`]) on the step's completions.
    Topr(Topr),
}

/// One step's metrics (TRL's names where they exist).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RlStep {
    /// Optimizer step, 1-based.
    pub step: usize,
    /// The loss of the last pass.
    pub loss: f64,
    /// Mean reward of the step's completions.
    pub reward: f64,
    /// Mean of the per-group reward std.
    pub reward_std: f64,
    /// Share of sampled groups whose rewards were all equal.
    pub frac_reward_zero_std: f64,
    /// Share of kept tokens whose ratio was clipped (topr: of kept completions whose ratio was truncated).
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_ratio: f64,
    /// Mean k3 KL to the starting model (β > 0).
    pub kl: f64,
    /// Mean per-token entropy of the sampling policy, estimated as the mean −log p of the sampled tokens (exact in
    /// expectation at temperature 1) over the trained groups.
    #[serde(default)]
    pub entropy: f64,
    /// Groups sampled this step (more than `prompts_per_step` when dynamic sampling refilled).
    #[serde(default)]
    pub groups_sampled: usize,
    /// Groups trained on.
    #[serde(default)]
    pub groups_trained: usize,
    /// Of those, groups whose forward and backward were skipped: every advantage zero and β = 0, so they add
    /// nothing to the update (`skip_zero_advantage`).
    #[serde(default)]
    pub groups_skipped: usize,
    /// Mean completion length (tokens).
    #[serde(rename = "completions/mean_length")]
    pub completion_length: f64,
    /// Share of completions cut at `max_new_tokens`.
    #[serde(rename = "completions/clipped_ratio")]
    pub clipped_ratio: f64,
    /// Completions left out of the loss (reward error or timeout, overlong mask, dropped groups).
    pub excluded: usize,
    /// Completions whose reward failed (error or timeout): marked, excluded, counted.
    pub reward_errors: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate.
    pub learning_rate: f64,
    /// Generated tokens per second of sampling.
    pub sampling_tokens_per_s: f64,
    /// Tokens per second of the training forward/backward.
    pub training_tokens_per_s: f64,
    /// Seconds sampling (and scoring).
    pub seconds_sampling: f64,
    /// Seconds training.
    pub seconds_training: f64,
    /// Seconds handing the weights to the engine.
    pub seconds_handoff: f64,
    /// Per reward component (`correct`, `format`, a composite's `sql/ex` …): `rewards/<name>/mean` and
    /// `rewards/<name>/std` over the trained groups' scored completions (TRL's per-function names).
    #[serde(flatten)]
    pub components: std::collections::BTreeMap<String, f64>,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RlReport {
    /// Steps done in all.
    pub steps: usize,
    /// Steps taken by this call.
    pub taken: usize,
    /// Held-out evaluations (step, greedy accuracy).
    pub evals: Vec<(usize, Accuracy)>,
    /// Prompts excluded up front (longer than the context with `max_new_tokens`).
    pub excluded_prompts: usize,
}

/// A sampled group.
#[derive(Debug, Clone, Default)]
struct Group {
    prompt: Vec<TokenId>,
    completions: Vec<Vec<TokenId>>,
    rewards: Vec<f64>,
    keep: Vec<bool>,
    errors: usize,
    clipped: usize,
    /// Sum of the sampled tokens' log-probs and their count (the entropy estimate).
    sampled_logprob: (f64, usize),
    /// The named reward components of each scored completion.
    components: Vec<std::collections::BTreeMap<String, f64>>,
}

/// What [`fill_groups`] gathered.
#[derive(Debug, Default)]
struct Filled {
    groups: Vec<Group>,
    sampled: usize,
    zero_std: usize,
}

/// DAPO's dynamic sampling over a sampler: ask `sample` for `want` groups; with `dynamic`, drop the groups whose
/// rewards are all equal and ask again for as many as are missing, at most `max_refills` more times. Without
/// `dynamic` every sampled group is kept.
fn fill_groups(
    want: usize,
    dynamic: bool,
    max_refills: usize,
    mut sample: impl FnMut(usize) -> Result<Vec<Group>>,
) -> Result<Filled> {
    let mut f = Filled::default();
    for refill in 0..=max_refills {
        let missing = want - f.groups.len();
        if missing == 0 || (refill > 0 && !dynamic) {
            break;
        }
        for g in sample(missing)? {
            f.sampled += 1;
            let informative = !informative_groups(&g.rewards, g.rewards.len()).is_empty();
            f.zero_std += usize::from(!informative);
            if !dynamic || informative {
                f.groups.push(g);
            }
        }
    }
    Ok(f)
}

/// Runs (or resumes from `out`'s newest checkpoint) the online RL job `cfg` from `base`.
pub fn run_rl(
    cfg: &RlConfig,
    base: &Engine,
    reward: &dyn Reward,
    out: &Path,
    stop_after: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<RlReport> {
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut report = RlReport::default();
    let tasks = train_prompts(cfg, base, &mut report, progress)?;
    let eval_tasks: Option<Vec<Task>> = cfg.eval_tasks.as_ref().map(|s| s.load().map(|l| l.tasks)).transpose()?;
    if let Some(e) = &eval_tasks {
        let train: Vec<Task> = tasks.iter().map(|(t, _)| t.clone()).collect();
        crate::rounds::check_overlap(&train, e)?;
    }

    // The trainable model, its optimizer, and the run's state (resumed exactly when a checkpoint exists).
    let model = DiffModel::new(base.model(), &cfg.tuning(), &Device::Cpu, cfg.seed)?;
    let mut opt =
        AdamW::new(model.named_parameters(), AdamConfig { weight_decay: cfg.weight_decay, ..AdamConfig::default() });
    let mut state = start_or_resume(cfg, base, tasks.len(), out, &model, &mut opt, progress)?;
    let mut log = StepLog::open(&out.join(METRICS_FILE), state.step)?;
    let ctx = StepCtx { cfg, base, reward, tasks: &tasks, model: &model, out };

    progress.start("rl steps", cfg.steps);
    progress.advance(state.step, "");
    while state.step < cfg.steps && stop_after.is_none_or(|n| report.taken < n) {
        let m = ctx.step(&mut opt, &mut state, progress)?;
        state.step += 1;
        report.taken += 1;
        log.push(&m)?;
        progress.advance(
            1,
            &format!(
                "reward {:.3} loss {:.4} clip {:.3} {:.0}+{:.0}s",
                m.reward, m.loss, m.clip_ratio, m.seconds_sampling, m.seconds_training
            ),
        );
        if cfg.checkpoint_every > 0 && state.step.is_multiple_of(cfg.checkpoint_every) {
            checkpoint::save(out, &state, &model, &opt, 1)?;
        }
        if let (Some(e), true) = (&eval_tasks, cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) {
            report.evals.push((state.step, ctx.eval(e, state.step, progress)?));
        }
    }
    progress.finish();
    checkpoint::save(out, &state, &model, &opt, 1)?;
    if state.step >= cfg.steps && (report.taken > 0 || !out.join(FINAL_DIR).join("config.json").is_file()) {
        export_final(base, &model, out)?;
    }
    if let Some(e) = &eval_tasks {
        if state.step >= cfg.steps && report.evals.last().is_none_or(|(s, _)| *s != state.step) {
            report.evals.push((state.step, ctx.eval(e, state.step, progress)?));
        }
    }
    report.steps = state.step;
    Ok(report)
}

/// The train prompts that fit the context with room for a completion (with their tokens); the rest are named and
/// counted in `report`.
fn train_prompts(
    cfg: &RlConfig,
    base: &Engine,
    report: &mut RlReport,
    progress: &mut dyn Progress,
) -> Result<Vec<(Task, Vec<TokenId>)>> {
    let loaded = cfg.prompts.load()?;
    if loaded.tasks.is_empty() {
        return Err(Error::Config(format!(
            "no train prompts in {} ({} bad rows skipped)",
            loaded.report.file, loaded.report.bad_rows_skipped
        )));
    }
    let context = base.model().config().max_position_embeddings;
    let mut tasks = Vec::new();
    for t in loaded.tasks {
        let ids = base.prompt_tokens(&task_prompt(&t, cfg.system.as_deref()), None, false)?;
        if ids.len() + cfg.sampling.max_new_tokens > context {
            report.excluded_prompts += 1;
            progress.log(&format!("prompt {} ({} tokens) leaves no room for a completion: excluded", t.id, ids.len()));
        } else {
            tasks.push((t, ids));
        }
    }
    if tasks.is_empty() {
        return Err(Error::Config("no train prompt fits the model's context".into()));
    }
    Ok(tasks)
}

/// A fresh run's state, or the newest checkpoint's in `out` (weights and optimizer moments loaded) when it belongs
/// to the same model and configuration.
fn start_or_resume(
    cfg: &RlConfig,
    base: &Engine,
    n_tasks: usize,
    out: &Path,
    model: &DiffModel,
    opt: &mut AdamW,
    progress: &mut dyn Progress,
) -> Result<TrainState> {
    let identity = run_identity(cfg, n_tasks)?;
    let state = TrainState {
        format: checkpoint::FORMAT,
        orchard_version: env!("CARGO_PKG_VERSION").into(),
        step: 0,
        total_steps: cfg.steps,
        epoch: 0,
        order: orchard_train::batch::epoch_order(n_tasks, cfg.seed, 0),
        seed: cfg.seed,
        model_hash: base.identity()?,
        data_hash: String::new(),
        config: serde_json::json!({ "identity": identity, "cursor": 0 }),
    };
    let Some(dir) = checkpoint::latest(out)? else {
        return Ok(state);
    };
    let ckpt = checkpoint::load(&dir)?;
    // Checkpoints written before `steps` left the identity still carry it: compare without it.
    let mut stored = ckpt.state.config["identity"].clone();
    if let Some(rl) = stored.get_mut("rl") {
        forget_resumable_keys(rl);
    }
    if ckpt.state.model_hash != state.model_hash || stored != identity {
        return Err(Error::Config(format!(
            "{}: this checkpoint belongs to another model or configuration; nothing was changed in {}",
            dir.display(),
            out.display()
        )));
    }
    if ckpt.state.step > cfg.steps {
        return Err(Error::Config(format!(
            "{}: the run is at step {}, past steps = {}; steps can only grow (rerun with more to continue it)",
            out.display(),
            ckpt.state.step,
            cfg.steps
        )));
    }
    model.set_parameters(&ckpt.params)?;
    let (steps, mut moments) = ckpt.moments;
    opt.load_state(steps, |n| moments.remove(n))?;
    progress.log(&format!("resuming {} at step {}/{}", dir.display(), ckpt.state.step, cfg.steps));
    // `steps` may grow between runs (the learning rate is constant): the rest of the state continues as it was.
    Ok(TrainState { total_steps: cfg.steps, ..ckpt.state })
}

/// What a resumed run must share with the run in its directory: every setting but `steps`, which may grow, and
/// `skip_zero_advantage`, which changes no update, and the number of train prompts.
fn run_identity(cfg: &RlConfig, n_tasks: usize) -> Result<serde_json::Value> {
    let mut rl = serde_json::to_value(cfg)?;
    forget_resumable_keys(&mut rl);
    Ok(serde_json::json!({ "rl": rl, "tasks": n_tasks }))
}

/// Drops from a serialised [`RlConfig`] (a run's identity, or the loop's `[online]` table) what may change when a
/// run continues: `steps`, which may grow, and `skip_zero_advantage`, which changes no update (runs stamped before
/// it existed continue).
pub(crate) fn forget_resumable_keys(rl: &mut serde_json::Value) {
    if let Some(o) = rl.as_object_mut() {
        o.remove("steps");
        o.remove("skip_zero_advantage");
    }
}

/// Writes the policy as an HF directory `OUT/final` (f32, adapters merged): what `orchard eval`, `orchard generate`
/// and other trainers load.
fn export_final(base: &Engine, model: &DiffModel, out: &Path) -> Result<()> {
    let id = format!("{}+rl", base.info().id);
    let engine = base.with_weights(model.merged_model(out)?, Handoff::F32, &id)?;
    orchard_train::export::export_hf(engine.model(), &engine, &out.join(FINAL_DIR))?;
    Ok(())
}

/// What every step of a run reads.
struct StepCtx<'a> {
    cfg: &'a RlConfig,
    base: &'a Engine,
    reward: &'a dyn Reward,
    tasks: &'a [(Task, Vec<TokenId>)],
    model: &'a DiffModel,
    out: &'a Path,
}

impl StepCtx<'_> {
    /// One optimizer step: hand the weights to the engine, sample and score groups, train on them.
    fn step(&self, opt: &mut AdamW, state: &mut TrainState, progress: &mut dyn Progress) -> Result<RlStep> {
        let cfg = self.cfg;
        let schedule = Schedule { peak: cfg.lr, warmup: 0, total: cfg.steps, kind: ScheduleKind::Constant };
        let mut m = RlStep { step: state.step + 1, learning_rate: schedule.lr(state.step), ..RlStep::default() };
        let _span = tracing::info_span!("rl_step", step = m.step).entered();
        let t0 = Instant::now();
        let sampler = policy_engine(self.base, self.model, cfg.handoff, self.out)?;
        m.seconds_handoff = t0.elapsed().as_secs_f64();

        let sample_span = tracing::info_span!("sample").entered();
        let t1 = Instant::now();
        let mut cursor = state.config["cursor"].as_u64().unwrap_or(0) as usize;
        let mut generated = 0usize;
        let filled = fill_groups(cfg.prompts_per_step, cfg.dynamic_sampling, cfg.max_refills, |want| {
            let picked: Vec<usize> = (0..want).map(|k| state.order[(cursor + k) % self.tasks.len()]).collect();
            cursor += want;
            self.sample(&sampler, &picked, m.step, &mut generated)
        })?;
        state.config["cursor"] = serde_json::json!(cursor);
        let groups = filled.groups;
        m.seconds_sampling = t1.elapsed().as_secs_f64();
        m.sampling_tokens_per_s = generated as f64 / m.seconds_sampling.max(1e-9);
        m.frac_reward_zero_std = filled.zero_std as f64 / filled.sampled.max(1) as f64;
        m.groups_sampled = filled.sampled;
        m.groups_trained = groups.len();
        let all_rewards: Vec<f64> = groups.iter().flat_map(|g| g.rewards.clone()).collect();
        let n_completions = all_rewards.len();
        m.reward = all_rewards.iter().sum::<f64>() / n_completions.max(1) as f64;
        m.reward_std = groups.iter().map(|g| std(&g.rewards)).sum::<f64>() / groups.len().max(1) as f64;
        m.reward_errors = groups.iter().map(|g| g.errors).sum();
        let lengths: Vec<usize> = groups.iter().flat_map(|g| g.completions.iter().map(Vec::len)).collect();
        m.completion_length = lengths.iter().sum::<usize>() as f64 / n_completions.max(1) as f64;
        m.clipped_ratio = groups.iter().map(|g| g.clipped).sum::<usize>() as f64 / n_completions.max(1) as f64;
        let (lp_sum, lp_n) =
            groups.iter().fold((0.0, 0), |(s, n), g| (s + g.sampled_logprob.0, n + g.sampled_logprob.1));
        m.entropy = -lp_sum / lp_n.max(1) as f64;
        m.components = component_stats(groups.iter().flat_map(|g| &g.components));

        drop(sample_span);
        let _train = tracing::info_span!("train", groups = groups.len()).entered();
        let t2 = Instant::now();
        if groups.is_empty() {
            progress.log(&format!("step {}: every group had equal rewards; no update", m.step));
        } else {
            m.excluded = groups.iter().flat_map(|g| &g.keep).filter(|k| !**k).count()
                + (filled.sampled - groups.len()) * cfg.group_size;
            self.train(opt, &groups, &mut m)?;
        }
        m.seconds_training = t2.elapsed().as_secs_f64();
        Ok(m)
    }

    /// Sample a group for each picked prompt with `sampler` and score it.
    fn sample(&self, sampler: &Engine, picked: &[usize], step: usize, generated: &mut usize) -> Result<Vec<Group>> {
        let cfg = self.cfg;
        let requests: Vec<GenerateRequest> = picked
            .iter()
            .map(|&i| GenerateRequest {
                prompt: self.tasks[i].1.clone(),
                n: cfg.group_size,
                params: cfg.sampling.clone(),
                seed: task_seed(cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9), &self.tasks[i].0.id),
            })
            .collect();
        let samples = sampler.generate(&requests, &GenerateOptions::default(), &mut |_| {})?;
        let to_score: Vec<_> = picked
            .iter()
            .zip(&samples)
            .map(|(&i, ss)| (reward_task(&self.tasks[i].0), ss.iter().map(|s| s.text.as_str()).collect()))
            .collect();
        let scored = crate::task::score_groups(self.reward, &to_score);
        let mut groups = Vec::with_capacity(picked.len());
        for ((&i, ss), outcomes) in picked.iter().zip(&samples).zip(scored) {
            let errors: Vec<bool> = outcomes.iter().map(|o| o.error.is_some()).collect();
            let clipped: Vec<bool> = ss.iter().map(|s| s.finish_reason == FinishReason::Length).collect();
            *generated += ss.iter().map(|s| s.token_ids.len()).sum::<usize>();
            let keep = errors
                .iter()
                .zip(&clipped)
                .zip(ss)
                .map(|((e, c), s)| !(*e || s.token_ids.is_empty() || (cfg.overlong_mask && *c)))
                .collect();
            let lp = ss.iter().flat_map(|s| &s.token_logprobs);
            groups.push(Group {
                prompt: self.tasks[i].1.clone(),
                completions: ss.iter().map(|s| s.token_ids.clone()).collect(),
                rewards: outcomes.iter().map(|o| if o.error.is_some() { 0.0 } else { o.score }).collect(),
                keep,
                errors: errors.iter().filter(|e| **e).count(),
                clipped: clipped.iter().filter(|c| **c).count(),
                sampled_logprob: (lp.clone().map(|l| f64::from(*l)).sum(), lp.count()),
                components: outcomes.iter().filter(|o| o.error.is_none()).map(|o| o.components.clone()).collect(),
            });
        }
        Ok(groups)
    }

    /// μ passes over the groups (one micro-batch each, the prompt run once per group) and an optimizer step each.
    fn train(&self, opt: &mut AdamW, groups: &[Group], m: &mut RlStep) -> Result<()> {
        let cfg = self.cfg;
        let t = Instant::now();
        let rewards: Vec<f64> = groups.iter().flat_map(|g| g.rewards.clone()).collect();
        let lengths: Vec<usize> = groups.iter().flat_map(|g| g.completions.iter().map(Vec::len)).collect();
        let keep: Vec<bool> = groups.iter().flat_map(|g| g.keep.clone()).collect();
        let adv = match cfg.objective {
            Objective::Clip => advantages(&rewards, cfg.group_size, cfg.advantage)?,
            Objective::Topr(_) => rewards.clone(),
        };
        let counts = UpdateCounts::of(&lengths, &keep);
        let run = groups_to_run(cfg, groups, &adv);
        m.groups_skipped = run.iter().filter(|r| !**r).count();
        let reference: Option<Vec<Vec<f32>>> =
            (cfg.beta > 0.0).then(|| reference_logps(self.base, groups)).transpose()?;
        let old: Option<Vec<Vec<f32>>> = (cfg.num_iterations > 1)
            .then(|| {
                groups
                    .iter()
                    .zip(&run)
                    .map(|(g, &r)| {
                        if !r {
                            return Ok(Vec::new());
                        }
                        group_logps(self.model, g, Mode::Eval)?.to_vec1::<f32>().map_err(Error::from)
                    })
                    .collect::<Result<_>>()
            })
            .transpose()?;
        let surrogate = Surrogate {
            epsilon_low: cfg.epsilon_low,
            epsilon_high: cfg.epsilon_high,
            beta: cfg.beta,
            aggregation: cfg.aggregation,
        };
        let mut tokens_run = 0usize;
        for pass in 0..cfg.num_iterations {
            let (mut loss, mut clip, mut kl, mut at) = (0.0, 0.0, 0.0, 0usize);
            for (gi, g) in groups.iter().enumerate() {
                let n = g.completions.len();
                if !run[gi] {
                    at += n;
                    continue;
                }
                let mode =
                    Mode::Train { dropout_seed: cfg.seed ^ ((m.step as u64) << 24 | (pass as u64) << 16 | gi as u64) };
                let lp = group_logps(self.model, g, mode)?;
                let detached: Vec<f32> = lp.to_vec1()?;
                let b = TokenBatch {
                    logps: &lp,
                    old: old.as_ref().map_or(&detached, |o| &o[gi]),
                    reference: reference.as_ref().map(|r| r[gi].as_slice()),
                    lengths: &lengths[at..at + n],
                    advantages: &adv[at..at + n],
                    keep: &keep[at..at + n],
                    step: Some(counts),
                };
                let terms = match &cfg.objective {
                    Objective::Clip => {
                        let t = surrogate_loss(&surrogate, &b)?;
                        let kept_tokens: usize =
                            b.lengths.iter().zip(b.keep).filter(|(_, k)| **k).map(|(l, _)| l).sum();
                        let kept_tokens = kept_tokens as f64;
                        Terms { loss: Some(t.loss), clipped: t.clip_fraction * kept_tokens, kl_sum: t.kl * kept_tokens }
                    }
                    Objective::Topr(t) => topr_terms(t, &b, counts.kept)?,
                };
                if let Some(l) = terms.loss.as_ref() {
                    loss += l.to_scalar::<f64>()?;
                    opt.accumulate(&l.backward()?)?;
                }
                clip += terms.clipped;
                kl += terms.kl_sum;
                tokens_run += g.prompt.len() + g.completions.iter().map(Vec::len).sum::<usize>();
                at += n;
            }
            let stats = opt.step(m.learning_rate, (cfg.max_grad_norm > 0.0).then_some(cfg.max_grad_norm))?;
            m.loss = loss;
            m.grad_norm = stats.grad_norm;
            let per = match cfg.objective {
                Objective::Clip => counts.kept_tokens,
                Objective::Topr(_) => counts.kept,
            };
            m.clip_ratio = clip / per.max(1) as f64;
            m.kl = kl / counts.kept_tokens.max(1) as f64;
        }
        m.training_tokens_per_s = tokens_run as f64 / t.elapsed().as_secs_f64().max(1e-9);
        Ok(())
    }

    /// Greedy accuracy of the current weights on the held-out set, appended to `eval.jsonl`.
    fn eval(&self, tasks: &[Task], step: usize, progress: &mut dyn Progress) -> Result<Accuracy> {
        let engine = policy_engine(self.base, self.model, self.cfg.handoff, self.out)?;
        let eval = EvalConfig { system: self.cfg.system.clone(), ..self.cfg.eval.clone() };
        let rep = evaluate(&engine, tasks, self.reward, &eval, &GenerateOptions::default(), progress)?;
        let line = serde_json::json!({ "step": step, "greedy": rep.greedy, "seconds": rep.seconds });
        use std::io::Write;
        let path = self.out.join(EVAL_FILE);
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&path, e))?;
        progress.log(&format!(
            "step {step}: held-out greedy {:.3} [{:.3}, {:.3}]",
            rep.greedy.accuracy, rep.greedy.ci95[0], rep.greedy.ci95[1]
        ));
        Ok(rep.greedy)
    }
}

/// `rewards/<name>/mean` and `rewards/<name>/std` (with Bessel's correction) of each component over `outcomes`.
fn component_stats<'a>(
    outcomes: impl Iterator<Item = &'a std::collections::BTreeMap<String, f64>>,
) -> std::collections::BTreeMap<String, f64> {
    let mut values: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for o in outcomes {
        for (k, v) in o {
            values.entry(k.as_str()).or_default().push(*v);
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in values {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        out.insert(format!("rewards/{k}/mean"), mean);
        out.insert(format!("rewards/{k}/std"), std(&v));
    }
    out
}

/// A micro-batch's loss (none when nothing in it counts), clipped count (tokens, or topr completions) and summed
/// per-token KL.
struct Terms {
    loss: Option<Tensor>,
    clipped: f64,
    kl_sum: f64,
}

/// TOPR on one group's completions: per kept completion `log π(τ)` (the sum of its token log-probs, differentiable)
/// and `log μ(τ)` (the sampling-time policy's), rewards as given; its share of a step of `step_kept` completions.
fn topr_terms(t: &Topr, b: &TokenBatch<'_>, step_kept: usize) -> Result<Terms> {
    let (mut policy, mut behaviour, mut reward, mut tokens) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    for ((&len, &keep), &r) in b.lengths.iter().zip(b.keep).zip(b.advantages) {
        if keep && len > 0 {
            policy.push(b.logps.narrow(0, start, len)?.sum_all()?);
            behaviour.push(b.old[start..start + len].iter().map(|&x| f64::from(x)).sum::<f64>());
            reward.push(r);
            tokens.push(len as f64);
        }
        start += len;
    }
    if policy.is_empty() {
        return Ok(Terms { loss: None, clipped: 0.0, kl_sum: 0.0 });
    }
    let cpu = Device::Cpu;
    let x = TrajectoryLogps {
        policy: Tensor::stack(&policy, 0)?,
        behaviour: Tensor::new(behaviour.as_slice(), &cpu)?,
        reward: Tensor::new(reward.as_slice(), &cpu)?,
        tokens: Tensor::new(tokens.as_slice(), &cpu)?,
    };
    let out = topr_loss(t, &x, step_kept)?;
    let (w, ratio): (Vec<f64>, Vec<f64>) = (out.weights.to_vec1()?, out.ratios.to_vec1()?);
    let truncated = w.iter().zip(&ratio).filter(|(w, r)| (*w - *r).abs() > 1e-12).count();
    Ok(Terms { loss: Some(out.loss), clipped: truncated as f64, kl_sum: 0.0 })
}

/// `metrics.jsonl`, cut back on resume to the steps the checkpoint holds (so a resumed run's log equals an
/// uninterrupted one's).
struct StepLog {
    path: std::path::PathBuf,
}

impl StepLog {
    fn open(path: &Path, keep_through: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<RlStep>(l).is_ok_and(|m| m.step <= keep_through))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(path, kept).map_err(|e| Error::io(path, e))?;
        Ok(StepLog { path: path.to_path_buf() })
    }

    /// Append a step and redraw `metrics.svg` beside the log.
    fn push(&mut self, m: &RlStep) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{}", serde_json::to_string(m)?).map_err(|e| Error::io(&self.path, e))?;
        let text = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let rows: Vec<RlStep> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        plot(&rows, &self.path.with_file_name(PLOT_FILE))
    }
}

/// The step curves as one SVG: reward, zero-variance groups, clip fraction, KL, entropy, completion length.
fn plot(rows: &[RlStep], path: &Path) -> Result<()> {
    type Get = fn(&RlStep) -> f64;
    let panels: [(&'static str, Get); 6] = [
        ("reward", |m| m.reward),
        ("frac_reward_zero_std", |m| m.frac_reward_zero_std),
        ("clip_ratio/region_mean", |m| m.clip_ratio),
        ("kl", |m| m.kl),
        ("entropy", |m| m.entropy),
        ("completions/mean_length", |m| m.completion_length),
    ];
    let curves: Vec<orchard_train::metrics::Curve> =
        panels.iter().map(|(name, get)| (*name, rows.iter().map(|m| (m.step as f64, get(m))).collect())).collect();
    Ok(orchard_train::metrics::plot_curves(&curves, (3, 2), path)?)
}

/// The current weights as an engine (in memory): Q8_0 straight from the trained values, or f32.
fn policy_engine(base: &Engine, model: &DiffModel, handoff: Handoff, out: &Path) -> Result<Engine> {
    let merged = match handoff {
        Handoff::Q8 => model.merged_q8_model(out)?,
        Handoff::F32 => model.merged_model(out)?,
    };
    Ok(base.with_weights(merged, Handoff::F32, "rl-policy")?)
}

/// Per group: whether its training forward and backward run. A group whose every advantage is exactly zero adds
/// nothing to the clipped surrogate without a KL term: `−min(ρ·0, clip(ρ)·0) = 0` for every token, with zero
/// gradient, and a token counts as clipped only with a non-zero advantage. The step's denominators
/// ([`UpdateCounts`]) still count its completions, so the update is the same bit for bit.
fn groups_to_run(cfg: &RlConfig, groups: &[Group], adv: &[f64]) -> Vec<bool> {
    let may_skip = cfg.skip_zero_advantage && cfg.beta == 0.0 && matches!(cfg.objective, Objective::Clip);
    let mut at = 0;
    groups
        .iter()
        .map(|g| {
            let n = g.completions.len();
            let zero = adv[at..at + n].iter().all(|a| *a == 0.0);
            at += n;
            !(may_skip && zero)
        })
        .collect()
}

fn std(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()
}

/// Per-token log-probs of a group's completions `(N,)`, completion after completion, with the prompt run once.
fn group_logps(model: &DiffModel, g: &Group, mode: Mode) -> Result<Tensor> {
    let branches: Vec<&[TokenId]> = g.completions.iter().map(Vec::as_slice).collect();
    let batch = Packed::groups(&[(&g.prompt[..], branches)]);
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    let p = g.prompt.len();
    let mut start = p;
    for c in &g.completions {
        for (j, &t) in c.iter().enumerate() {
            // Token 0 of every branch is predicted by the prompt's last row; token j > 0 by its branch's row j − 1.
            rows.push(if j == 0 { p - 1 } else { start + j - 1 });
            targets.push(t);
        }
        start += c.len();
    }
    Ok(model.token_logprobs(&batch, &rows, &targets, mode)?)
}

/// The starting model's per-token log-probs of each group's completions (f32 teacher forcing).
fn reference_logps(base: &Engine, groups: &[Group]) -> Result<Vec<Vec<f32>>> {
    groups
        .iter()
        .map(|g| {
            let pairs: Vec<(Vec<TokenId>, Vec<TokenId>)> =
                g.completions.iter().map(|c| (g.prompt.clone(), c.clone())).collect();
            Ok(base.score(&pairs)?.into_iter().flat_map(|s| s.token_logprobs).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(rewards: &[f64]) -> Group {
        Group { rewards: rewards.to_vec(), keep: vec![true; rewards.len()], ..Group::default() }
    }

    /// DAPO's refill on a scripted sampler: all-equal groups are dropped and as many prompts are sampled again,
    /// at most `max_refills` more times; without dynamic sampling nothing is dropped or refilled.
    #[test]
    fn dynamic_sampling_refills_dropped_groups() -> Result<()> {
        // The sampler hands out these groups in order; `[1, 1]` and `[0, 0]` carry no signal.
        let script = [vec![1.0, 1.0], vec![1.0, 0.0], vec![0.0, 0.0], vec![0.2, 0.1], vec![0.5, 0.5], vec![1.0, 0.0]];
        let run = |dynamic: bool, max_refills: usize| -> Result<(Filled, Vec<usize>)> {
            let (mut next, mut asked) = (0, Vec::new());
            let f = fill_groups(3, dynamic, max_refills, |want| {
                asked.push(want);
                let out = script[next..next + want].iter().map(|r| group(r)).collect();
                next += want;
                Ok(out)
            })?;
            Ok((f, asked))
        };
        let (f, asked) = run(true, 3)?;
        assert_eq!(asked, [3, 2, 1], "asks again for exactly the missing groups");
        let kept: Vec<Vec<f64>> = f.groups.iter().map(|g| g.rewards.clone()).collect();
        assert_eq!(kept, [vec![1.0, 0.0], vec![0.2, 0.1], vec![1.0, 0.0]]);
        assert_eq!((f.sampled, f.zero_std), (6, 3));
        let (f, asked) = run(true, 1)?;
        assert_eq!((asked, f.groups.len(), f.sampled, f.zero_std), (vec![3, 2], 2, 5, 3), "refills are bounded");
        let (f, asked) = run(false, 3)?;
        assert_eq!((asked, f.groups.len(), f.sampled, f.zero_std), (vec![3], 3, 3, 2), "no dynamic sampling: all kept");
        Ok(())
    }

    #[test]
    fn component_stats_are_means_and_sample_stds() {
        let o = |c: f64, f: Option<f64>| {
            let mut m = std::collections::BTreeMap::from([("correct".to_string(), c)]);
            if let Some(f) = f {
                m.insert("format".into(), f);
            }
            m
        };
        let rows = [o(1.0, Some(1.0)), o(0.0, Some(0.0)), o(1.0, None), o(0.0, None)];
        let s = component_stats(rows.iter());
        assert_eq!(s["rewards/correct/mean"], 0.5);
        assert!((s["rewards/correct/std"] - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!((s["rewards/format/mean"], s.len()), (0.5, 4), "a component only some rows have");
    }

    /// TOPR per group: the completions' sequence log-probs and the ratio against the sampling-time ones, as the
    /// paper's loss on the same trajectories (`topr_loss`, itself checked against a direct transcription).
    #[test]
    fn topr_terms_sum_each_kept_completion() -> Result<()> {
        let logps = [-1.0f32, -0.5, -2.0, -0.3, -1.2, -0.8, -0.1];
        let old = [-1.1f32, -0.2, -2.5, -0.3, -0.9, -0.8, -0.6];
        let var = candle_core::Var::from_vec(logps.to_vec(), logps.len(), &Device::Cpu)?;
        let b = TokenBatch {
            logps: var.as_tensor(),
            old: &old,
            reference: None,
            lengths: &[3, 2, 2],
            advantages: &[1.0, 0.0, 0.0],
            keep: &[true, false, true],
            step: None,
        };
        let t = Topr { length_normalise: false, ..Topr::default() };
        let got = topr_terms(&t, &b, 2)?;
        // Kept: completion 0 (reward 1: weight 1) and 2 (reward 0: A = 0 adds nothing); step of 2 completions.
        let loss = got.loss.as_ref().ok_or_else(|| Error::Config("no loss".into()))?;
        let want = -(1.0 * (-1.0 - 0.5 - 2.0)) / 2.0;
        assert!((loss.to_scalar::<f64>()? - want).abs() < 1e-6);
        let grad: Vec<f32> = loss.backward()?.get(var.as_tensor()).ok_or(Error::Config("grad".into()))?.to_vec1()?;
        assert_eq!(grad, [-0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0], "only the positive kept completion pulls");
        // Ratio of completion 2: exp((−0.8 − 0.1) − (−0.8 − 0.6)) = e^0.5 > 1, truncated to 1 (A ≥ 0 side).
        assert_eq!(got.clipped, 2.0, "completion 0's ratio e^(−3.5+3.8) and completion 2's are both truncated");
        let none = TokenBatch { keep: &[false, false, false], ..b };
        assert!(topr_terms(&t, &none, 0)?.loss.is_none());
        Ok(())
    }
}
