//! The closed loop (`orchard loop`): rounds of *generate with the current policy → train from it → hand the
//! trained weights back to the engine in memory → evaluate on a held-out split* — ReFT's warm-up then
//! reinforcement, RFT/STaR's sample-filter-finetune, Agent Q's and iTool's search-then-DPO iterations.
//!
//! Layout of `OUT` (each piece an existing format):
//! ```text
//! OUT/loop.toml            the configuration (a rerun with other settings is refused; `rounds` may grow)
//! OUT/loop.json            every round's report so far (accuracy with 95% intervals, counts, seconds per phase)
//! OUT/loop.jsonl           the same, one line per finished round
//! OUT/loop.svg             accuracy per round with intervals; training loss across rounds
//! OUT/round-0/eval/        the starting model's evaluation (eval.json)
//! OUT/round-R/data/        an `orchard sample` run directory of the round's generations (none for a warm-up)
//! OUT/round-R/train/       an `orchard train` directory (checkpoints, metrics.jsonl, metrics.svg)
//! OUT/round-R/eval/        eval.json of the round's trained policy
//! OUT/final/               the last policy as an HF directory (`orchard eval --model OUT/final`)
//! ```
//! A `kill -9` anywhere resumes where it stopped: generations from the run journal, training from its newest
//! checkpoint, finished rounds from their checkpoints (the policy of round R is rebuilt by applying rounds 1..R's
//! final checkpoints in turn, which gives the same weights bit for bit). A finished loop rerun does nothing.
//!
//! The policy is held as f32 weights (the trainer's master copy) and, for generation, as a Q8_0 re-quantization
//! of them (`handoff = "q8"`, the default) or the f32 weights themselves (`"f32"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use orchard_datasets::record::PairFormat;
use orchard_datasets::{PairSelection, RunDir, RunSpec, Task, TaskKind, TaskSource, WriterOptions};
use orchard_engine::autograd::DiffModel;
use orchard_engine::{Engine, GenerateOptions, Handoff, SamplingParams};
use orchard_rewards::Reward;
use orchard_train::data::{self, SftExample, SftFilter};
use orchard_train::{checkpoint, TrainData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::{evaluate, Accuracy, EvalConfig, EvalReport};
use crate::rl::{run_rl, RlConfig, RlReport};
use crate::sample::{sample, SampleJob};
use crate::search::{search, AlgoName, SearchJob, DEFAULT_WORKERS};
use crate::task::task_prompt;
use crate::train::{open_trainer, run_training, LossKind, TrainReport, TrainSpec};
use crate::Progress;

/// The configuration copy inside `OUT`.
pub const CONFIG_FILE: &str = "loop.toml";
/// Every round's report.
pub const REPORT_FILE: &str = "loop.json";
/// One line per finished round.
pub const ROUNDS_FILE: &str = "loop.jsonl";
/// The plot.
pub const PLOT_FILE: &str = "loop.svg";
/// A round's evaluation inside `round-R/eval/`.
pub const EVAL_FILE: &str = "eval.json";
/// The final policy as an HF directory.
pub const FINAL_DIR: &str = "final";
/// Default rounds.
pub const DEFAULT_ROUNDS: usize = 2;

/// How a round generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerateKind {
    /// Best-of-N sampling (`orchard sample`).
    #[default]
    Sample,
    /// Tree search (`orchard search`: MCTS, Tree-of-Code, best-of-N over the scheduler).
    Search,
}

/// Search settings of a search round (the `[mcts]`, `[toc]`, `[bon]`, `[pairs]` tables of `orchard search`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// Algorithm. Default mcts.
    pub algo: AlgoName,
    /// MCTS knobs.
    pub mcts: orchard_search::mcts::MctsConfig,
    /// Tree-of-Code knobs.
    pub toc: orchard_search::toc::TocConfig,
    /// Best-of-N knobs.
    pub bon: orchard_search::bon::BonConfig,
    /// Pair policy (default: agentq for MCTS, outcome otherwise).
    pub pairs: Option<orchard_search::pairs::PairConfig>,
}

impl PartialEq for SearchSettings {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

/// What each round generates with the current policy on the train questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateSpec {
    /// `sample` (best-of-N) or `search` (trees). Default sample.
    pub kind: GenerateKind,
    /// Samples per question (sample rounds). Default 4.
    pub n: usize,
    /// Sampling parameters (sample rounds). Default temperature 0.8, 256 new tokens.
    pub sampling: SamplingParams,
    /// How pairs are selected from each question's samples (sample rounds).
    pub pairs: PairSelection,
    /// Search settings (search rounds).
    pub search: SearchSettings,
    /// Trees grown at once (search rounds). Default [`DEFAULT_WORKERS`].
    pub workers: usize,
    /// Share computed prefixes between a tree's branches and across trees (search rounds). Default true.
    pub prefix_cache: bool,
    /// STaR rationalisation (sample rounds, SFT): questions with no correct sample are sampled again with the gold
    /// answer as a hint; completions that reach it are kept as SFT examples *without* the hint. Default false.
    pub star_hints: bool,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        GenerateSpec {
            kind: GenerateKind::Sample,
            n: 4,
            sampling: SamplingParams { temperature: 0.8, max_new_tokens: 256, ..SamplingParams::default() },
            pairs: PairSelection::default(),
            search: SearchSettings::default(),
            workers: DEFAULT_WORKERS,
            prefix_cache: true,
            star_hints: false,
        }
    }
}

/// The hint STaR appends to a question it rationalises (the completion is stored without it).
pub const STAR_HINT: &str = "(Hint: the answer is {answer}.)";
/// Where a round keeps its STaR rationalisations (prompt/completion JSONL, `orchard train --sft-data` reads it).
pub const STAR_FILE: &str = "star.jsonl";

/// A loop: every key has a default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// The starting model. Default `default`.
    pub model: String,
    /// Rounds after round 0 (the starting model's evaluation). Default [`DEFAULT_ROUNDS`].
    pub rounds: usize,
    /// Base seed (round R samples with seed + R). Default 0.
    pub seed: u64,
    /// How trained weights are held for generation. Default `q8`.
    pub handoff: Handoff,
    /// Reward that scores generations and evaluations. Default `gsm8k`.
    pub reward: String,
    /// System message before each prompt (the same for generation, training and evaluation). Default none.
    pub system: Option<String>,
    /// The questions the policy trains on. Default GSM8K train.
    pub train_tasks: TaskSource,
    /// The held-out evaluation set (must not share a question with `train_tasks`). Default GSM8K test.
    pub eval_tasks: TaskSource,
    /// Evaluation settings. Default greedy, 512 new tokens.
    pub eval: EvalConfig,
    /// Round 1 only: SFT on the gold solutions of `train_tasks` (ReFT's warm-up). Default none.
    pub warmup: Option<TrainSpec>,
    /// What rounds generate.
    pub generate: GenerateSpec,
    /// How rounds train on their generations. Default SFT on the correct ones (rejection-sampling fine-tuning).
    pub train: TrainSpec,
    /// Most sequences the engine decodes together. Default 64.
    pub max_batch: usize,
    /// `iterative` (the default: the rounds above) or `online`: online RL in one process on `train_tasks` with
    /// the `[online]` table's settings, the held-out set evaluated before and after.
    #[serde(skip_serializing_if = "LoopMode::is_iterative")]
    pub mode: LoopMode,
    /// Online RL settings (`mode = "online"`): every `orchard rl` key; `model`, `seed`, `reward`, `system`,
    /// `prompts`, `eval_tasks`, `eval` and `handoff` come from the loop's own keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<RlConfig>,
}

/// How a loop improves the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopMode {
    /// Rounds of generate with the current policy → train → hand the weights back.
    #[default]
    Iterative,
    /// Online RL: sample groups with the current weights and take a GRPO-family (or TOPR) step, repeatedly.
    Online,
}

impl LoopMode {
    fn is_iterative(&self) -> bool {
        *self == LoopMode::Iterative
    }
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            model: "default".into(),
            rounds: DEFAULT_ROUNDS,
            seed: 0,
            handoff: Handoff::Q8,
            reward: "gsm8k".into(),
            system: None,
            train_tasks: TaskSource::builtin(TaskKind::Gsm8k, Some("train")),
            eval_tasks: TaskSource::builtin(TaskKind::Gsm8k, Some("test")),
            eval: EvalConfig::default(),
            warmup: None,
            generate: GenerateSpec::default(),
            train: TrainSpec { loss: LossKind::Sft, lr: 1e-5, ..TrainSpec::default() },
            max_batch: orchard_engine::engine::DEFAULT_MAX_BATCH,
            mode: LoopMode::Iterative,
            online: None,
        }
    }
}

impl LoopConfig {
    /// Reads a loop configuration from TOML (unknown keys are refused, naming the file).
    pub fn from_toml(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// What a rerun must share (everything except `rounds` and online RL's `steps`, which may grow, and
    /// `max_batch`).
    fn identity(&self) -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("rounds");
            o.remove("max_batch");
            // Online RL's steps may grow too (the run continues from its last checkpoint).
            if let Some(online) = o.get_mut("online") {
                crate::rl::forget_resumable_keys(online);
            }
        }
        Ok(v)
    }

    /// The online RL job of `mode = "online"`: the `[online]` settings with the loop's model, seed, reward,
    /// system, prompts, held-out set, evaluation and hand-off.
    pub fn online_config(&self) -> Result<RlConfig> {
        let online = self.online.as_ref().ok_or_else(|| {
            Error::Config("mode = \"online\" needs an [online] table (the `orchard rl` settings: steps, …)".into())
        })?;
        Ok(RlConfig {
            model: self.model.clone(),
            seed: self.seed,
            reward: self.reward.clone(),
            system: self.system.clone(),
            prompts: self.train_tasks.clone(),
            eval_tasks: Some(self.eval_tasks.clone()),
            eval: self.eval.clone(),
            handoff: self.handoff,
            ..online.clone()
        })
    }

    fn validate(&self) -> Result<()> {
        if self.warmup.as_ref().is_some_and(|w| w.loss != LossKind::Sft) {
            return Err(Error::Config("warmup trains on gold solutions: its loss must be `sft`".into()));
        }
        match (self.mode, &self.online) {
            (LoopMode::Online, _) => {
                // A warm-up is allowed: ReFT's SFT on gold solutions, then online RL from the warmed-up policy.
                self.online_config()?;
                return Ok(());
            }
            (LoopMode::Iterative, Some(_)) => {
                return Err(Error::Config("an [online] table is read only with mode = \"online\"".into()))
            }
            (LoopMode::Iterative, None) => {}
        }
        if self.rounds == 0 {
            return Err(Error::Config("rounds must be at least 1".into()));
        }
        if self.generate.n == 0 {
            return Err(Error::Config("generate.n must be at least 1".into()));
        }
        if self.generate.star_hints && (self.generate.kind != GenerateKind::Sample || self.train.loss != LossKind::Sft)
        {
            return Err(Error::Config("generate.star_hints needs kind = \"sample\" and train.loss = \"sft\"".into()));
        }
        self.generate.sampling.validate()?;
        if self.generate.kind == GenerateKind::Search {
            let mut job = SearchJob { algo: self.generate.search.algo, ..SearchJob::default() };
            job.mcts = self.generate.search.mcts.clone();
            job.toc = self.generate.search.toc.clone();
            job.algo()?;
        }
        Ok(())
    }
}

/// Seconds spent in each phase of a round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Generating with the policy (and scoring).
    pub generate: f64,
    /// Training (reference log-probs included).
    pub train: f64,
    /// Handing the trained weights back to the engine: until it can generate with them (merge and Q8_0
    /// re-quantization, or the f32 merge). The f32 master copy the next round trains from counts as training.
    pub handoff: f64,
    /// Evaluating.
    pub eval: f64,
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// Round number (0: the starting model).
    pub round: usize,
    /// `eval` (round 0), `warmup` (SFT on gold solutions) or the round's loss (`sft`, `dpo`, `topr`, …).
    pub kind: String,
    /// Questions generated for.
    pub tasks: usize,
    /// Generated samples, and how many were correct.
    pub samples: usize,
    /// Correct samples.
    pub correct: usize,
    /// Examples trained on (SFT examples, pairs or trajectories).
    pub examples: usize,
    /// Training: steps and the last step's loss (none when nothing could be trained on).
    pub train: Option<TrainSummary>,
    /// Held-out evaluation after the round.
    pub eval: EvalSummary,
    /// Identity of the policy evaluated (weights digest).
    pub model_hash: String,
    /// Seconds per phase (of the process that ran the phase; resumed phases count what was run this time).
    pub seconds: PhaseSeconds,
}

/// Training in a round report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps.
    pub steps: usize,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Tokens per second of the last step.
    pub tokens_per_s: Option<f64>,
}

/// Evaluation in a round report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Greedy accuracy.
    pub greedy: Accuracy,
    /// maj@K when asked for.
    pub majority: Option<Accuracy>,
    /// Tokens generated.
    pub generated_tokens: usize,
}

/// The loop's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopReport {
    /// Round 0 (the starting model) and every finished round.
    pub rounds: Vec<RoundReport>,
}

impl LoopReport {
    /// Whether the last round's greedy interval lies wholly above round 0's.
    pub fn gain_is_significant(&self) -> bool {
        match (self.rounds.first(), self.rounds.last()) {
            (Some(a), Some(b)) if b.round > 0 => b.eval.greedy.above(&a.eval.greedy),
            _ => false,
        }
    }
}

/// The policy: f32 master weights (what training starts from) and the engine that generates with them.
struct Policy {
    base: Arc<Engine>,
    master: Option<Arc<Engine>>,
    sampler: Option<Arc<Engine>>,
}

impl Policy {
    fn master(&self) -> &Arc<Engine> {
        self.master.as_ref().unwrap_or(&self.base)
    }
    fn sampler(&self) -> &Arc<Engine> {
        self.sampler.as_ref().or(self.master.as_ref()).unwrap_or(&self.base)
    }

    /// Takes the trained weights in memory: the sampler first (what the next generation needs: Q8_0 quantized
    /// straight from the trained values, or the f32 weights), then the f32 master the next round trains from.
    /// Returns the seconds until the sampler was ready (the weight sync) and the total.
    fn hand_off(&mut self, trained: &DiffModel, handoff: Handoff, round: usize, dir: &Path) -> Result<(f64, f64)> {
        let t0 = Instant::now();
        let id = format!("{}+round-{round}", self.base.info().id);
        let sampler = match handoff {
            Handoff::Q8 => Some(Arc::new(self.base.with_weights(trained.merged_q8_model(dir)?, Handoff::F32, &id)?)),
            Handoff::F32 => None,
        };
        let ready = t0.elapsed().as_secs_f64();
        let master = Arc::new(self.base.with_weights(trained.merged_model(dir)?, Handoff::F32, &id)?);
        let total = t0.elapsed().as_secs_f64();
        self.sampler = sampler;
        self.master = Some(master);
        Ok((if handoff == Handoff::F32 { total } else { ready }, total))
    }
}

/// Checks a configuration without running it: settings, both task sets, their overlap. Returns the task counts.
pub fn check(cfg: &LoopConfig) -> Result<(usize, usize)> {
    cfg.validate()?;
    let train = load_tasks(&cfg.train_tasks, "train_tasks")?;
    let eval = load_tasks(&cfg.eval_tasks, "eval_tasks")?;
    check_overlap(&train, &eval)?;
    Ok((train.len(), eval.len()))
}

/// What an online loop did.
#[derive(Debug, Clone, Serialize)]
pub struct OnlineReport {
    /// The starting model on the held-out set (greedy).
    pub base: Accuracy,
    /// The policy after the SFT warm-up (when the loop has a `[warmup]`), on the held-out set (greedy): the
    /// policy online RL starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Accuracy>,
    /// The trained policy on the held-out set (greedy), once every step is done.
    pub trained: Option<Accuracy>,
    /// The RL run.
    pub rl: RlReport,
}

/// `mode = "online"`: evaluate the starting model on the held-out set (once, kept in `OUT/base_eval.json`), then
/// run (or resume) `orchard rl`'s job in `OUT/online` with the loop's model, reward, prompts and held-out set, and
/// write both accuracies to `OUT/online.json`.
///
/// With a `[warmup]` (ReFT: SFT on gold solutions, then online RL) the warm-up runs first as the iterative loop's
/// rounds 0–1 (`OUT/round-0`, `OUT/round-1`, `loop.json`; resumable the same way) and the RL job starts from the
/// warmed-up f32 weights; round 0's evaluation is the base accuracy.
pub fn run_online(
    cfg: &LoopConfig,
    base: Arc<Engine>,
    reward: &dyn Reward,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<OnlineReport> {
    cfg.validate()?;
    let rl = cfg.online_config()?;
    let train_tasks = load_tasks(&cfg.train_tasks, "train_tasks")?;
    let eval_tasks = load_tasks(&cfg.eval_tasks, "eval_tasks")?;
    check_overlap(&train_tasks, &eval_tasks)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // The policy RL starts from, with the held-out accuracy before it (and after the warm-up, when there is one).
    let (start, base_acc, warmup) = if cfg.warmup.is_some() {
        let warm_cfg = LoopConfig { rounds: 1, ..cfg.clone() };
        let (rounds, policy) = run_rounds(&warm_cfg, base, reward, out, progress)?;
        let acc = |i: usize| rounds.rounds.get(i).map(|r| r.eval.greedy);
        let base_acc = acc(0).ok_or_else(|| Error::Config("the warm-up loop has no round 0".into()))?;
        (policy.master().clone(), base_acc, acc(1))
    } else {
        let base_file = out.join("base_eval.json");
        let base_acc: Accuracy = match std::fs::read_to_string(&base_file) {
            Ok(text) => serde_json::from_str(&text)?,
            Err(_) => {
                let eval = EvalConfig { system: cfg.system.clone(), ..cfg.eval.clone() };
                let opts = GenerateOptions { max_batch: cfg.max_batch, ..GenerateOptions::default() };
                let acc = evaluate(&base, &eval_tasks, reward, &eval, &opts, progress)?.greedy;
                std::fs::write(&base_file, serde_json::to_string(&acc)?).map_err(|e| Error::io(&base_file, e))?;
                acc
            }
        };
        (base, base_acc, None)
    };
    let report = run_rl(&rl, start.as_ref(), reward, &out.join("online"), None, progress)?;
    let trained = report.evals.last().filter(|(s, _)| *s == rl.steps).map(|(_, a)| *a);
    let summary = OnlineReport { base: base_acc, warmup, trained, rl: report };
    write_json(&out.join("online.json"), &summary)?;
    Ok(summary)
}

/// Runs (or resumes) the loop `cfg` from `base` into `out`, scoring with `reward`.
pub fn run_loop(
    cfg: &LoopConfig,
    base: Arc<Engine>,
    reward: &dyn Reward,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<LoopReport> {
    let (report, policy) = run_rounds(cfg, base, reward, out, progress)?;
    export_final(&policy, out)?;
    plot(&report, out)?;
    Ok(report)
}

/// The iterative rounds of `cfg` (whatever its mode): round 0's evaluation, then `cfg.rounds` rounds; returns the
/// report and the last round's policy.
fn run_rounds(
    cfg: &LoopConfig,
    base: Arc<Engine>,
    reward: &dyn Reward,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<(LoopReport, Policy)> {
    cfg.validate()?;
    let train_tasks = load_tasks(&cfg.train_tasks, "train_tasks")?;
    let eval_tasks = load_tasks(&cfg.eval_tasks, "eval_tasks")?;
    check_overlap(&train_tasks, &eval_tasks)?;
    claim_dir(cfg, &base, out)?;
    let opts = GenerateOptions { max_batch: cfg.max_batch, ..GenerateOptions::default() };
    let mut report = LoopReport::default();
    let mut policy = Policy { base, master: None, sampler: None };

    // Round 0: the starting model.
    let r0 = eval_round(cfg, &policy, 0, "eval", &eval_tasks, reward, &opts, out, progress)?;
    record_round(out, &mut report, r0)?;

    for round in 1..=cfg.rounds {
        let dir = round_dir(out, round);
        let warm = round == 1 && cfg.warmup.is_some();
        let spec = if warm { cfg.warmup.clone().unwrap_or_default() } else { cfg.train.clone() };
        let kind = if warm { "warmup".to_string() } else { loss_name(spec.loss) };
        let _round = tracing::info_span!("round", round, kind = kind.as_str()).entered();
        if dir.join("eval").join(EVAL_FILE).is_file() {
            // A finished round: rebuild its policy from its final checkpoint.
            let t0 = Instant::now();
            replay(&mut policy, &spec, &dir.join("train"), cfg.handoff, round)?;
            let mut r = read_round(&dir)?;
            r.seconds = PhaseSeconds { handoff: t0.elapsed().as_secs_f64(), ..PhaseSeconds::default() };
            progress.log(&format!("round {round}: done before (greedy {:.3})", r.eval.greedy.accuracy));
            record_round(out, &mut report, r)?;
            continue;
        }
        let mut seconds = PhaseSeconds::default();
        // 1. Data: gold solutions (warm-up) or the current policy's generations.
        let t0 = Instant::now();
        progress.log(&format!("round {round}/{}: {kind}", cfg.rounds));
        let generate_span = tracing::info_span!("generate").entered();
        let (data, counts) = if warm {
            let master = policy.master().as_ref();
            let examples = gold_examples(master, &train_tasks, cfg.system.as_deref(), spec.limits(master)?, "warmup")?;
            let n = examples.len();
            (Some(TrainData::Sft(examples)), RoundCounts { tasks: n, examples: n, ..RoundCounts::default() })
        } else {
            generate_round(cfg, &policy, round, &train_tasks, reward, &spec, (&opts, out), progress)?
        };
        seconds.generate = t0.elapsed().as_secs_f64();

        // 2. Train from the master weights; 3. hand the result back to the engine in memory.
        drop(generate_span);
        let train_summary = match data {
            Some(data) => Some(train_round(cfg, &mut policy, (&spec, data), (round, &dir), &mut seconds, progress)?),
            None => {
                progress.log(&format!("round {round}: nothing to train on; the policy is unchanged"));
                mark_untrained(&dir)?;
                None
            }
        };

        // 4. Evaluate the new policy.
        let _eval = tracing::info_span!("eval").entered();
        let mut r = eval_round(cfg, &policy, round, &kind, &eval_tasks, reward, &opts, out, progress)?;
        r.tasks = counts.tasks;
        r.samples = counts.samples;
        r.correct = counts.correct;
        r.examples = counts.examples;
        r.train = train_summary;
        r.seconds = PhaseSeconds { eval: r.seconds.eval, ..seconds };
        write_json(&dir.join("eval").join(EVAL_FILE), &r)?;
        record_round(out, &mut report, r)?;
    }
    Ok((report, policy))
}

/// Trains round `round`'s policy from the master weights on `data` in `dir/train` and hands the result to the
/// engine in memory; adds the phases' seconds to `seconds`.
fn train_round(
    cfg: &LoopConfig,
    policy: &mut Policy,
    (spec, data): (&TrainSpec, TrainData),
    (round, dir): (usize, &Path),
    seconds: &mut PhaseSeconds,
    progress: &mut dyn Progress,
) -> Result<TrainSummary> {
    let _train = tracing::info_span!("train").entered();
    let t1 = Instant::now();
    let master = policy.master().clone();
    let tcfg = spec.config(&master)?;
    let train_dir = dir.join("train");
    let mut trainer = open_trainer(master.as_ref(), data, tcfg, &train_dir, progress)?;
    let tr: TrainReport = run_training(&mut trainer, &train_dir, None, progress)?;
    seconds.train = t1.elapsed().as_secs_f64();
    let (sync, total) = policy.hand_off(trainer.model(), cfg.handoff, round, &train_dir)?;
    drop(trainer);
    seconds.handoff = sync;
    // The f32 master copy the next round trains from is training's business, not the sync's.
    seconds.train += total - sync;
    progress.log(&format!("round {round}: weights handed to the engine in {:.3} s", seconds.handoff));
    Ok(TrainSummary {
        steps: tr.steps,
        last_loss: tr.last.as_ref().map(|m| m.loss),
        tokens_per_s: tr.last.as_ref().map(|m| m.tokens_per_s),
    })
}

/// Counts of a round's data phase.
#[derive(Debug, Clone, Copy, Default)]
struct RoundCounts {
    tasks: usize,
    samples: usize,
    correct: usize,
    examples: usize,
}

fn round_dir(out: &Path, round: usize) -> PathBuf {
    out.join(format!("round-{round}"))
}

fn loss_name(loss: LossKind) -> String {
    serde_json::to_value(loss).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn load_tasks(source: &TaskSource, key: &str) -> Result<Vec<Task>> {
    let loaded = source.load()?;
    if loaded.tasks.is_empty() {
        return Err(Error::Config(format!("{key}: no tasks")));
    }
    Ok(loaded.tasks)
}

/// A question's text as compared for overlap: lower case, whitespace collapsed.
fn normalised(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Refuses a train set that shares a question with the evaluation set, naming the ids.
pub fn check_overlap(train: &[Task], eval: &[Task]) -> Result<()> {
    let eval_by_text: HashMap<String, &str> = eval.iter().map(|t| (normalised(&t.prompt), t.id.as_str())).collect();
    let shared: Vec<String> = train
        .iter()
        .filter_map(|t| eval_by_text.get(&normalised(&t.prompt)).map(|e| format!("{} = {e}", t.id)))
        .collect();
    if shared.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = shared.iter().take(10).map(String::as_str).collect();
    Err(Error::Overlap(format!(
        "the train tasks share {} question(s) with the evaluation set (train id = eval id): {}{}; evaluate on \
         problems never trained on (e.g. svamp train vs heldout, gsm8k train vs test)",
        shared.len(),
        shown.join(", "),
        if shared.len() > shown.len() { ", …" } else { "" }
    )))
}

/// Writes `OUT/loop.toml` on a new loop; refuses an `OUT` whose loop has other settings or another base model.
fn claim_dir(cfg: &LoopConfig, base: &Engine, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join(CONFIG_FILE);
    let stamp = serde_json::json!({ "config": cfg.identity()?, "model_hash": base.identity()? });
    let stamp_path = out.join(".loop-identity.json");
    if stamp_path.is_file() {
        let text = std::fs::read_to_string(&stamp_path).map_err(|e| Error::io(&stamp_path, e))?;
        let mut old: serde_json::Value = serde_json::from_str(&text)?;
        // Stamps written before online `steps` left the identity still carry it.
        if let Some(online) = old["config"].get_mut("online") {
            crate::rl::forget_resumable_keys(online);
        }
        if old != stamp {
            let keys: Vec<String> = match (old["config"].as_object(), stamp["config"].as_object()) {
                (Some(a), Some(b)) => a.keys().filter(|k| a.get(*k) != b.get(*k)).cloned().collect(),
                _ => vec![],
            };
            let what = if old["model_hash"] != stamp["model_hash"] {
                "another starting model".to_string()
            } else {
                format!("other settings ({})", keys.join(", "))
            };
            return Err(Error::Config(format!(
                "{} holds a loop with {what}; use another --out or the same configuration",
                out.display()
            )));
        }
    } else {
        write_json(&stamp_path, &stamp)?;
    }
    let toml = toml::to_string(cfg).map_err(|e| Error::Config(format!("loop config: {e}")))?;
    write_atomic(&path, toml.as_bytes())
}

/// Evaluates the sampler and writes `round-R/eval/eval.json` (round 0's; later rounds are rewritten with their
/// counts by the caller).
#[allow(clippy::too_many_arguments)]
fn eval_round(
    cfg: &LoopConfig,
    policy: &Policy,
    round: usize,
    kind: &str,
    tasks: &[Task],
    reward: &dyn Reward,
    opts: &GenerateOptions,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<RoundReport> {
    let path = round_dir(out, round).join("eval").join(EVAL_FILE);
    if round == 0 && path.is_file() {
        return read_round(&round_dir(out, 0));
    }
    let engine = policy.sampler();
    let eval = EvalConfig { system: cfg.system.clone(), ..cfg.eval.clone() };
    let t0 = Instant::now();
    let rep: EvalReport = evaluate(engine.as_ref(), tasks, reward, &eval, opts, progress)?;
    let dir = path.parent().expect("eval.json has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let per_task: Vec<serde_json::Value> =
        rep.per_task.iter().map(|(id, ok)| serde_json::json!({"id": id, "correct": ok})).collect();
    write_json(&dir.join("per_task.json"), &per_task)?;
    let r = RoundReport {
        round,
        kind: kind.to_string(),
        tasks: 0,
        samples: 0,
        correct: 0,
        examples: 0,
        train: None,
        eval: EvalSummary { greedy: rep.greedy, majority: rep.majority, generated_tokens: rep.generated_tokens },
        model_hash: engine.identity()?,
        seconds: PhaseSeconds { eval: t0.elapsed().as_secs_f64(), ..PhaseSeconds::default() },
    };
    progress.log(&format!(
        "round {round}: greedy {}/{} = {:.3} [{:.3}, {:.3}]",
        r.eval.greedy.correct,
        r.eval.greedy.total,
        r.eval.greedy.accuracy,
        r.eval.greedy.ci95[0],
        r.eval.greedy.ci95[1]
    ));
    if round == 0 {
        write_json(&path, &r)?;
    }
    Ok(r)
}

fn read_round(dir: &Path) -> Result<RoundReport> {
    let path = dir.join("eval").join(EVAL_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Appends a finished round to the report, `loop.jsonl` and `loop.json`, and redraws the plot.
fn record_round(out: &Path, report: &mut LoopReport, r: RoundReport) -> Result<()> {
    let lines_path = out.join(ROUNDS_FILE);
    let mut lines: Vec<RoundReport> = report.rounds.clone();
    lines.push(r.clone());
    let text: String =
        lines.iter().map(|x| serde_json::to_string(x).map(|s| s + "\n")).collect::<std::result::Result<_, _>>()?;
    write_atomic(&lines_path, text.as_bytes())?;
    report.rounds.push(r);
    write_json(&out.join(REPORT_FILE), report)?;
    plot(report, out)
}

/// A finished round that had nothing to train on keeps the previous policy; this marker says so on resume.
fn mark_untrained(dir: &Path) -> Result<()> {
    let t = dir.join("train");
    std::fs::create_dir_all(&t).map_err(|e| Error::io(&t, e))?;
    write_atomic(&t.join("UNTRAINED"), b"no correct samples or pairs: the policy was not changed in this round\n")
}

/// Rebuilds a finished round's policy: its final checkpoint applied to the current master weights.
fn replay(policy: &mut Policy, spec: &TrainSpec, train_dir: &Path, handoff: Handoff, round: usize) -> Result<()> {
    if train_dir.join("UNTRAINED").is_file() {
        return Ok(());
    }
    let latest = checkpoint::latest(train_dir)?.ok_or_else(|| {
        Error::Config(format!("{}: round {round} is evaluated but has no checkpoint", train_dir.display()))
    })?;
    let ckpt = checkpoint::load(&latest)?;
    let master = policy.master();
    let hash = master.identity()?;
    if ckpt.state.model_hash != hash || ckpt.state.step < ckpt.state.total_steps {
        return Err(Error::Config(format!(
            "{}: round {round}'s checkpoint does not continue the policy of round {} (or is unfinished); remove \
             rounds from {round} on to redo them",
            latest.display(),
            round - 1
        )));
    }
    let tuning = spec.tuning()?;
    let model = DiffModel::new(master.model(), &tuning, &Device::Cpu, spec.seed)?;
    model.set_parameters(&ckpt.params)?;
    policy.hand_off(&model, handoff, round, train_dir).map(|_| ())
}

/// SFT examples from the gold solutions of `tasks`, prompted exactly as generation and evaluation prompt them
/// (`orchard train --gold` and the loop's warm-up). Errors start with `label` (`--gold svamp:train`, `warmup`).
pub fn gold_examples(
    engine: &Engine,
    tasks: &[Task],
    system: Option<&str>,
    limits: orchard_train::data::Limits,
    label: &str,
) -> Result<Vec<SftExample>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let gold = task
            .gold_solution()
            .ok_or_else(|| Error::Config(format!("{label}: task {} has no gold solution to fine-tune on", task.id)))?;
        if let Some(e) = data::sft_example(engine, &task_prompt(task, system), &gold, task.id.clone(), limits)? {
            out.push(e);
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!(
            "{label}: no gold solution to fine-tune on ({} tasks, none within max_length {})",
            tasks.len(),
            limits.max_length
        )));
    }
    Ok(out)
}

/// Samples the train questions with the policy into `round-R/data` (resumable) and reads back what the round's
/// loss trains on; `None` when there is nothing (no correct sample, no pair).
#[allow(clippy::too_many_arguments)]
fn generate_round(
    cfg: &LoopConfig,
    policy: &Policy,
    round: usize,
    tasks: &[Task],
    reward: &dyn Reward,
    spec: &TrainSpec,
    (opts, out): (&GenerateOptions, &Path),
    progress: &mut dyn Progress,
) -> Result<(Option<TrainData>, RoundCounts)> {
    let engine = policy.sampler();
    let out = round_dir(out, round).join("data");
    let seed = cfg.seed.wrapping_add(round as u64);
    let (run, star) = match cfg.generate.kind {
        GenerateKind::Sample => sample_round(cfg, engine, (round, seed), tasks, reward, (opts, &out), progress)?,
        GenerateKind::Search => (search_round(cfg, engine, seed, tasks, reward, &out, progress)?, Vec::new()),
    };
    let c = run.finish()?.counts;
    let mut counts = RoundCounts {
        tasks: c.tasks as usize,
        samples: c.trajectories as usize,
        // STaR's rationalised examples count as correct where they are trained on (SFT).
        correct: c.correct as usize + if matches!(spec.loss, LossKind::Sft) { star.len() } else { 0 },
        examples: 0,
    };
    let data = round_data(spec, policy, &out, (c.correct, c.pairs), star)?;
    counts.examples = match &data {
        Some(TrainData::Sft(e)) => e.len(),
        Some(TrainData::Pairs(p)) => p.len(),
        Some(TrainData::Trajectories(t)) => t.len(),
        None => 0,
    };
    Ok((data, counts))
}

/// A sampling round's run directory (resumed where it stopped) and, with STaR hints, its rationalised examples.
fn sample_round(
    cfg: &LoopConfig,
    engine: &Engine,
    (round, seed): (usize, u64),
    tasks: &[Task],
    reward: &dyn Reward,
    (opts, out): (&GenerateOptions, &Path),
    progress: &mut dyn Progress,
) -> Result<(RunDir, Vec<SftExample>)> {
    let job = SampleJob {
        model: Some(engine.info().id.clone()),
        source: cfg.train_tasks.clone(),
        n: Some(cfg.generate.n),
        reward: Some(cfg.reward.clone()),
        system: cfg.system.clone(),
        sampling: cfg.generate.sampling.clone(),
        pairs: cfg.generate.pairs,
        seed,
        ..SampleJob::default()
    };
    let spec_run = RunSpec {
        model: Some(crate::task::model_record(engine)?),
        pair_format: PairFormat::default(),
        ..RunSpec::new("sample", serde_json::to_value(&job)?)
    };
    let wopts = WriterOptions { correct_threshold: cfg.generate.pairs.correct_threshold, ..WriterOptions::default() };
    let mut run = RunDir::open(out, &spec_run, wopts)?;
    let todo = run.plan(tasks.to_vec());
    if run.done_count() > 0 {
        progress.log(&format!(
            "round {round}: resuming generation, {} tasks done, {} to go",
            run.done_count(),
            todo.len()
        ));
    }
    let group = (opts.max_batch / cfg.generate.n).max(1);
    sample(engine, &job, &mut run, &todo, reward, (opts, group), progress)?;
    let star = if cfg.generate.star_hints {
        star_rationales(engine, &job, out, tasks, reward, opts, progress)?
    } else {
        Vec::new()
    };
    Ok((run, star))
}

/// A search round's run directory (resumed where it stopped), its scheduler metrics in `search_metrics.json`.
fn search_round(
    cfg: &LoopConfig,
    engine: &Arc<Engine>,
    seed: u64,
    tasks: &[Task],
    reward: &dyn Reward,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<RunDir> {
    let s = &cfg.generate.search;
    let mut job = SearchJob {
        model: Some(engine.info().id.clone()),
        algo: s.algo,
        source: cfg.train_tasks.clone(),
        reward: Some(cfg.reward.clone()),
        system: cfg.system.clone(),
        seed,
        mcts: s.mcts.clone(),
        toc: s.toc.clone(),
        bon: s.bon.clone(),
        pairs: s.pairs,
        ..SearchJob::default()
    };
    job.resolve_defaults();
    let spec_run = RunSpec {
        model: Some(crate::task::model_record(engine)?),
        pair_format: PairFormat::default(),
        ..RunSpec::new("search", serde_json::to_value(&job)?)
    };
    let wopts = WriterOptions { correct_threshold: job.pair_config().correct_threshold, ..WriterOptions::default() };
    let mut run = RunDir::open(out, &spec_run, wopts)?;
    let todo = run.plan(tasks.to_vec());
    let sched = orchard_engine::SchedulerConfig {
        max_batch: cfg.max_batch,
        prefix_cache: cfg.generate.prefix_cache,
        ..orchard_engine::SchedulerConfig::default()
    };
    let rep = search(engine.clone(), &job, (&mut run, &todo), reward, (sched, cfg.generate.workers), progress)?;
    write_json(&out.join("search_metrics.json"), &rep)?;
    Ok(run)
}

/// What the round's loss trains on, read back from its run directory `out` (whose counts of correct samples and
/// pairs are `correct`, `pairs`); `star` examples join the SFT ones.
fn round_data(
    spec: &TrainSpec,
    policy: &Policy,
    out: &Path,
    (correct, pairs): (u64, u64),
    star: Vec<SftExample>,
) -> Result<Option<TrainData>> {
    let master = policy.master().as_ref();
    let limits = spec.limits(master)?;
    Ok(match spec.loss {
        LossKind::Sft => {
            let filter = SftFilter { min_reward: spec.min_reward, dedup: spec.dedup, weight_column: None };
            let mut examples = match data::read_sft_trajectories(out, &filter, limits, master) {
                Ok((examples, _)) => examples,
                Err(orchard_train::Error::Schema { .. }) if correct == 0 => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            examples.extend(star);
            (!examples.is_empty()).then_some(TrainData::Sft(examples))
        }
        LossKind::Topr => Some(TrainData::Trajectories(data::read_trajectories(out, limits, master)?.examples)),
        _ if pairs == 0 => None,
        _ => {
            let columns = data::PairColumns {
                behaviour: spec.reference == orchard_train::reference::ReferenceSource::Behaviour,
                label_smoothing: None,
            };
            Some(TrainData::Pairs(data::read_pairs(out, &columns, limits, master)?.examples))
        }
    })
}

/// STaR's rationalisation: each train question none of whose samples in `out` is correct is sampled again with its
/// gold answer as a hint; completions that reach the answer become SFT examples of the *unhinted* prompt. Kept in
/// `out/star.jsonl` (read back on resume instead of sampling again).
fn star_rationales(
    engine: &Engine,
    job: &SampleJob,
    out: &Path,
    tasks: &[Task],
    reward: &dyn Reward,
    opts: &GenerateOptions,
    progress: &mut dyn Progress,
) -> Result<Vec<SftExample>> {
    let path = out.join(STAR_FILE);
    let limits =
        orchard_train::data::Limits { max_length: engine.model().config().max_position_embeddings, skip_long: true };
    if path.is_file() {
        return read_star(&path, engine, limits);
    }
    let reader = orchard_datasets::RunReader::open(out)?;
    let mut solved = std::collections::HashSet::new();
    for t in reader.trajectories()? {
        if t.reward.usable_score().is_some_and(crate::is_correct) {
            solved.insert(t.task_id);
        }
    }
    let hinted: Vec<Task> = tasks
        .iter()
        .filter(|t| !solved.contains(&t.id) && t.reference.is_some())
        .map(|t| {
            let hint = STAR_HINT.replace("{answer}", t.reference.as_deref().unwrap_or_default());
            Task { prompt: format!("{}\n{hint}", t.prompt), ..t.clone() }
        })
        .collect();
    progress.log(&format!("STaR: {} unsolved questions sampled again with the answer as a hint", hinted.len()));
    let mut lines = String::new();
    let mut kept = 0usize;
    let n = job.n.unwrap_or(1);
    progress.start("star", hinted.len());
    for chunk in hinted.chunks((opts.max_batch / n).max(1)) {
        let mut requests = Vec::with_capacity(chunk.len());
        for t in chunk {
            let ids = engine.prompt_tokens(&task_prompt(t, job.system.as_deref()), None, false)?;
            requests.push(orchard_engine::GenerateRequest {
                prompt: ids,
                n,
                params: job.sampling.clone(),
                seed: orchard_datasets::task_seed(job.seed ^ 0x57A2, &t.id),
            });
        }
        let samples = engine.generate(&requests, opts, &mut |_| {})?;
        for (t, ss) in chunk.iter().zip(&samples) {
            let original = tasks.iter().find(|o| o.id == t.id).unwrap_or(t);
            let rt = crate::task::reward_task(original);
            // One rationale per question: the first that reaches the answer (and does not just quote the hint).
            let good = ss.iter().find(|s| {
                crate::is_correct(orchard_rewards::score_caught(reward, &rt, &s.text).score)
                    && !s.text.to_lowercase().contains("hint")
            });
            if let Some(s) = good {
                let prompt = task_prompt(original, job.system.as_deref());
                let row = serde_json::json!({
                    "prompt": prompt, "completion": s.text, "completion_ids": s.token_ids, "task_id": original.id,
                });
                lines.push_str(&format!("{row}\n"));
                kept += 1;
            }
        }
        progress.advance(chunk.len(), &format!("{kept} rationales"));
    }
    progress.finish();
    write_atomic(&path, lines.as_bytes())?;
    read_star(&path, engine, limits)
}

/// The SFT examples of a round's `star.jsonl`: the unhinted prompt, tokenized as generation does, and the sampled
/// completion's exact token ids (so a resumed round trains on the same tokens).
fn read_star(path: &Path, engine: &Engine, limits: orchard_train::data::Limits) -> Result<Vec<SftExample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: String| Error::Config(format!("{}:{}: {what}", path.display(), i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let prompt: orchard_engine::Prompt =
            serde_json::from_value(v["prompt"].clone()).map_err(|e| bad(format!("prompt: {e}")))?;
        let completion: Vec<u32> =
            serde_json::from_value(v["completion_ids"].clone()).map_err(|e| bad(format!("completion_ids: {e}")))?;
        let prompt = engine.prompt_tokens(&prompt, None, false)?;
        if completion.is_empty() || prompt.len() + completion.len() > limits.max_length {
            continue;
        }
        let origin = format!("star:{}", v["task_id"].as_str().unwrap_or_default());
        out.push(SftExample { prompt, completion, weight: 1.0, origin });
    }
    Ok(out)
}

/// Writes the final policy as an HF directory (once).
fn export_final(policy: &Policy, out: &Path) -> Result<()> {
    let Some(master) = &policy.master else { return Ok(()) };
    let dir = out.join(FINAL_DIR);
    if dir.join("config.json").is_file() {
        return Ok(());
    }
    orchard_train::export::export_hf(master.model(), master.as_ref(), &dir)?;
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Writes under a temporary name and renames, so a kill never leaves half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `loop.svg`: greedy accuracy per round with its 95% interval (left), every round's training loss over the
/// loop's cumulative optimizer steps (right).
fn plot(report: &LoopReport, out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let path = out.join(PLOT_FILE);
    let err = |e: String| Error::io(&path, std::io::Error::other(e));
    let root = SVGBackend::new(&path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(500);
    let rounds = report.rounds.len().max(1);
    let hi = report.rounds.iter().map(|r| r.eval.greedy.ci95[1]).fold(0.05f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("held-out greedy accuracy (95% CI)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(rounds as f64 - 0.5), 0f64..hi)
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("round").y_desc("accuracy").draw().map_err(|e| err(e.to_string()))?;
    for r in &report.rounds {
        let x = r.round as f64;
        let [lo, up] = r.eval.greedy.ci95;
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, up)], BLUE.stroke_width(2))))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(Circle::new((x, r.eval.greedy.accuracy), 5, BLUE.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    // Training loss across rounds.
    let mut pts: Vec<(f64, f64, usize)> = Vec::new();
    let mut offset = 0usize;
    for r in report.rounds.iter().filter(|r| r.round > 0) {
        let metrics = round_dir(out, r.round).join("train").join(crate::train::METRICS_FILE);
        if let Ok(rows) = orchard_train::metrics::read(&metrics) {
            for m in &rows {
                pts.push(((offset + m.step) as f64, m.loss, r.round));
            }
            offset += rows.last().map_or(0, |m| m.step);
        }
    }
    let (lo, up) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (lo, up) = if lo.is_finite() { (lo, if up > lo { up } else { lo + 1.0 }) } else { (0.0, 1.0) };
    let mut chart = ChartBuilder::on(&right)
        .caption("training loss (all rounds, by step)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(offset.max(1) as f64), (lo - 0.05 * (up - lo))..(up + 0.05 * (up - lo)))
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("optimizer step").y_desc("loss").draw().map_err(|e| err(e.to_string()))?;
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for round in 1..rounds {
        let series: Vec<(f64, f64)> = pts.iter().filter(|p| p.2 == round).map(|p| (p.0, p.1)).collect();
        if series.is_empty() {
            continue;
        }
        let c = colours[(round - 1) % colours.len()];
        chart
            .draw_series(LineSeries::new(series, c.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(format!("round {round}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
