//! `orchard search`: grow search trees (MCTS, Tree-of-Code, best-of-N) over the engine and harvest trees,
//! trajectories and preference pairs into a run directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use orchard_datasets::record::{PairFormat, SamplingRecord};
use orchard_datasets::run::timing;
use orchard_datasets::{RunReader, Shard, TaskOutput, TaskSource};
use orchard_engine::scheduler::{Scheduler, SchedulerConfig};
use orchard_search::bon::BonConfig;
use orchard_search::grow::{grow_all, Algo, SearchTask};
use orchard_search::mcts::{Backup, Mcts, MctsConfig, Selection};
use orchard_search::pairs::{self, PairConfig, PolicyName, TrajectoryMeta};
use orchard_search::toc::{TocConfig, CODE_PROMPTS};
use orchard_search::StepRule;
use serde::{Deserialize, Serialize};

use crate::job::{model_record, open_run, reward_task, JobArgs, JobKeys, RunPlace};
use crate::policy::EnginePolicy;

/// Default worker threads growing trees at once.
pub const DEFAULT_WORKERS: usize = 16;
/// File in the run directory holding the engine's scheduler counters of the last session.
pub const METRICS_FILE: &str = "search_metrics.json";

/// The search algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AlgoName {
    /// Monte-Carlo tree search over steps (Agent Q / MCTS-DPO).
    #[default]
    Mcts,
    /// Tree-of-Code over whole programs.
    Toc,
    /// Best-of-N.
    Bon,
}

/// Grow search trees over the engine (MCTS, Tree-of-Code or best-of-N), score their solutions with a verifiable
/// reward, and write trees (every node), trajectories (every complete solution) and preference pairs (the chosen
/// pair policy) plus manifest.json to --out.
///
/// Every flag has a key in the TOML job file (--config): top-level `model`, `algo`, `seed`, `reward`,
/// `reward_config`, `system`, `out`, `pair_format`; tables `[source]`, `[mcts]` (selection = { rule = "ucb1",
/// c_exp } or { rule = "puct", c_puct, length_penalty }, backup = { rule = "mean" } or { rule = "visit-weighted",
/// gamma }, k, iterations, max_depth, max_tokens, parallel, step, step_tokens, rollout_tokens, critic, alpha,
/// sampling), `[toc]` (m, depth, program_tokens, max_tokens, prompts, sampling), `[bon]` (n, solution_tokens,
/// sampling) and `[pairs]` (policy, theta, alpha, correct_threshold, max_per_prompt). Flags override the file.
///
/// Resume, sharding and the manifest work as for `orchard sample`: a tree is committed whole, rerunning resumes,
/// --shard i/n runs one slice. Trees are seeded from (--seed, task id, node path).
///
/// Examples:
///   orchard search --algo mcts --task gsm8k --split train --limit 20 --reward gsm8k --out runs/mcts-20
///   orchard search --algo toc --task gsm8k --split train --limit 20 --reward pot --out runs/toc-20
///   orchard search --config job.toml --shard 0/4
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub job: JobArgs,
    /// Search algorithm. TOML: `algo`.
    #[arg(long, value_enum)]
    pub algo: Option<AlgoName>,
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Pair policy: outcome, agentq, mcts-dpo, itool, step-dpo (default: agentq for mcts, outcome otherwise).
    /// TOML: `pairs.policy`.
    #[arg(long)]
    pub policy: Option<PolicyName>,
    /// Agent Q's |ΔQ| threshold θ. TOML: `pairs.theta`.
    #[arg(long)]
    pub theta: Option<f64>,
    /// TRL layout of pairs/: standard or conversational. TOML: `pair_format`.
    #[arg(long)]
    pub pair_format: Option<PairFormat>,
    /// Trees grown at once (not part of the job's identity). Default [`DEFAULT_WORKERS`].
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Search knobs on the command line (each overrides its TOML key).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KnobArgs {
    /// MCTS proposals per expansion K. TOML: `mcts.k`.
    #[arg(long)]
    pub k: Option<usize>,
    /// MCTS selections per tree. TOML: `mcts.iterations`.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// MCTS deepest step. TOML: `mcts.max_depth`.
    #[arg(long)]
    pub max_depth: Option<u32>,
    /// MCTS selections in flight per tree. TOML: `mcts.parallel`.
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Where an MCTS step ends: newline, marker:TEXT, stop:TEXT, tokens:N. TOML: `mcts.step`.
    #[arg(long)]
    pub step: Option<StepRule>,
    /// Rank MCTS proposals with the model as critic (Agent Q). TOML: `mcts.critic`.
    #[arg(long)]
    pub critic: bool,
    /// α of Q = α·Q_mcts + (1−α)·Q_critic. TOML: `mcts.alpha` and `pairs.alpha`.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// UCB1 exploration constant (selects UCB1). TOML: `mcts.selection`.
    #[arg(long, conflicts_with = "c_puct")]
    pub c_exp: Option<f64>,
    /// PUCT constant (selects PUCT with the length-penalised prior). TOML: `mcts.selection`.
    #[arg(long)]
    pub c_puct: Option<f64>,
    /// Visit-weighted backup with this γ instead of the mean. TOML: `mcts.backup`.
    #[arg(long)]
    pub visit_weighted: Option<f64>,
    /// Generated-token budget per tree (every algorithm). TOML: `mcts.max_tokens`, `toc.max_tokens`.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Best-of-N samples. TOML: `bon.n`.
    #[arg(long, short = 'n')]
    pub n: Option<usize>,
    /// Tree-of-Code children per node. TOML: `toc.m`.
    #[arg(long)]
    pub m: Option<usize>,
    /// Tree-of-Code layers. TOML: `toc.depth`.
    #[arg(long)]
    pub depth: Option<u32>,
    /// Most tokens of a step / rollout / program / solution. TOML: `mcts.step_tokens`, `mcts.rollout_tokens`,
    /// `toc.program_tokens`, `bon.solution_tokens`.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature (every algorithm). TOML: `*.sampling.temperature`.
    #[arg(long)]
    pub temperature: Option<f32>,
}

/// The job file, and the job's identity once flags are applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchJob {
    /// Model spec.
    pub model: Option<String>,
    /// Algorithm.
    pub algo: AlgoName,
    /// Where tasks come from.
    pub source: TaskSource,
    /// Reward name.
    pub reward: Option<String>,
    /// Reward TOML file.
    pub reward_config: Option<PathBuf>,
    /// System message.
    pub system: Option<String>,
    /// Seed.
    pub seed: u64,
    /// MCTS knobs.
    pub mcts: MctsConfig,
    /// Tree-of-Code knobs.
    pub toc: TocConfig,
    /// Best-of-N knobs.
    pub bon: BonConfig,
    /// Pair policy (`policy` unset in the file: agentq for mcts, outcome otherwise).
    pub pairs: Option<PairConfig>,
    /// TRL layout of pairs.
    pub pair_format: PairFormat,
    /// Shard (not part of the identity).
    pub shard: Option<Shard>,
    /// Output directory (not part of the identity).
    pub out: Option<PathBuf>,
}

impl KnobArgs {
    fn apply(&self, job: &mut SearchJob) {
        let (m, t, b) = (&mut job.mcts, &mut job.toc, &mut job.bon);
        macro_rules! set {
            ($flag:expr => $($dst:expr),+) => { if let Some(v) = $flag { $($dst = v.clone();)+ } };
        }
        set!(self.k => m.k);
        set!(self.iterations => m.iterations);
        set!(self.max_depth => m.max_depth);
        set!(self.parallel => m.parallel);
        set!(&self.step => m.step);
        set!(self.alpha => m.alpha);
        set!(self.max_tokens => m.max_tokens, t.max_tokens);
        set!(self.n => b.n);
        set!(self.m => t.m);
        set!(self.depth => t.depth);
        set!(self.max_new_tokens => m.rollout_tokens, t.program_tokens, b.solution_tokens);
        set!(self.temperature => m.sampling.temperature, t.sampling.temperature, b.sampling.temperature);
        if self.critic {
            m.critic = true;
        }
        if let Some(c_exp) = self.c_exp {
            m.selection = Selection::Ucb1 { c_exp };
        }
        if let Some(c_puct) = self.c_puct {
            m.selection = Selection::Puct { c_puct, length_penalty: orchard_search::mcts::DEFAULT_LENGTH_PENALTY };
        }
        if let Some(gamma) = self.visit_weighted {
            m.backup = Backup::VisitWeighted { gamma };
        }
    }
}

/// The job's identity: the file with every flag applied.
fn resolve(args: &Args) -> anyhow::Result<SearchJob> {
    let mut job: SearchJob = args.job.read_file()?;
    args.job.apply(JobKeys {
        model: &mut job.model,
        source: &mut job.source,
        reward: &mut job.reward,
        reward_config: &mut job.reward_config,
        system: &mut job.system,
        seed: &mut job.seed,
    });
    if let Some(a) = args.algo {
        job.algo = a;
    }
    if let Some(f) = args.pair_format {
        job.pair_format = f;
    }
    args.knobs.apply(&mut job);
    let mut pairs = job.pairs.unwrap_or(PairConfig {
        policy: if job.algo == AlgoName::Mcts { PolicyName::Agentq } else { PolicyName::Outcome },
        ..PairConfig::default()
    });
    if let Some(p) = args.policy {
        pairs.policy = p;
    }
    if let Some(t) = args.theta {
        pairs.theta = t;
    }
    if let Some(a) = args.knobs.alpha {
        pairs.alpha = a;
    }
    job.pairs = Some(pairs);
    if job.algo == AlgoName::Toc
        && job.reward.as_deref() == Some("humaneval")
        && job.toc.prompts == TocConfig::default().prompts
    {
        job.toc.prompts = CODE_PROMPTS.iter().map(|s| s.to_string()).collect();
    }
    Ok(job)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let job = resolve(&args)?;
    let algo = match job.algo {
        AlgoName::Mcts => Algo::Mcts(Mcts::new(job.mcts.clone())?),
        AlgoName::Toc => {
            job.toc.validate()?;
            Algo::Toc(job.toc.clone())
        }
        AlgoName::Bon => Algo::Bon(job.bon.clone()),
    };
    let pair_cfg = job.pairs.expect("resolved");
    let rule = pair_cfg.rule();
    let (shard, out) = args.job.placement(job.shard, &job.out)?;
    let reward = args.job.reward(&job.reward, &job.reward_config)?;
    let identity = SearchJob { shard: None, out: None, ..job.clone() };

    // 1. Tasks, model, scheduler, run directory.
    let loaded = job.source.load()?;
    let engine = Arc::new(args.job.model_args(&job.model).load()?);
    let model = model_record(&engine)?;
    let sched_cfg = SchedulerConfig { precision: args.job.precision.resolve(), ..SchedulerConfig::default() };
    let policy = EnginePolicy::new(engine.clone(), Scheduler::start(engine, sched_cfg));
    let place = RunPlace {
        kind: "search",
        unit: "trees",
        identity: serde_json::to_value(&identity)?,
        shard,
        pair_format: job.pair_format,
        model: model.clone(),
        correct_threshold: pair_cfg.correct_threshold,
        out: &out,
        load_s: started.elapsed().as_secs_f64(),
    };
    let (mut run, todo) = open_run(place, loaded)?;
    let run_id = run.run_id().to_string();
    let tasks: Vec<SearchTask> = todo
        .iter()
        .map(|t| SearchTask {
            id: t.id.clone(),
            messages: t.chat(job.system.as_deref()),
            question: t.prompt.clone(),
            reward_task: reward_task(t),
        })
        .collect();
    let sampling = match &algo {
        Algo::Mcts(m) => (m.config().sampling, m.config().rollout_tokens),
        Algo::Toc(t) => (t.sampling, t.program_tokens),
        Algo::Bon(b) => (b.sampling, b.solution_tokens),
    };
    let meta = TrajectoryMeta {
        run_id: run_id.clone(),
        model,
        sampling: SamplingRecord {
            temperature: sampling.0.temperature,
            top_p: sampling.0.top_p,
            top_k: sampling.0.top_k as u32,
            min_p: sampling.0.min_p,
            max_new_tokens: sampling.1 as u32,
        },
    };

    // 2. Grow; commit each tree with its trajectories and pairs as it finishes.
    let bar = super::common::progress_bar(tasks.len() as u64, "trees");
    let t0 = Instant::now();
    let (mut nodes, mut generated) = (0usize, 0usize);
    let workers = args.workers.unwrap_or(DEFAULT_WORKERS);
    grow_all(&algo, &policy, reward.reward(), &tasks, job.seed, workers, |_, grown| {
        let grown = grown?;
        let tree = &grown.tree;
        nodes += tree.nodes.len();
        generated += grown.generated;
        let output = TaskOutput {
            task_id: tree.task_id.clone(),
            trajectories: pairs::trajectories(tree, &meta),
            pairs: pairs::extract(tree, &rule, &run_id),
            nodes: tree.to_rows(&run_id),
        };
        run.push(output)?;
        let (c, m, dt) = (run.counts(), policy.scheduler().metrics(), t0.elapsed().as_secs_f64().max(1e-9));
        bar.inc(1);
        bar.set_message(format!(
            "{:.1} nodes/s, {:.1} tok/s, {} pairs, KV hit {:.0}%, {:.1} rows/forward",
            nodes as f64 / dt,
            generated as f64 / dt,
            c.pairs,
            100.0 * m.prefix_hit_rate(),
            m.rows_per_forward()
        ));
        Ok(())
    })?;
    bar.finish_and_clear();
    let search_s = t0.elapsed().as_secs_f64();
    run.add_timing(timing::ENGINE, search_s);
    let metrics = policy.scheduler().metrics();
    let manifest = run.finish()?;
    std::fs::write(
        out.join(METRICS_FILE),
        serde_json::to_string_pretty(&serde_json::json!({
            "engine": metrics,
            "engine/prefix_hit_rate": metrics.prefix_hit_rate(),
            "engine/rows_per_forward": metrics.rows_per_forward(),
            "engine/sequences_per_forward": metrics.batch_occupancy(),
            "search/generated_tokens": generated,
            "search/nodes": nodes,
            "search/seconds": search_s,
        }))?,
    )
    .with_context(|| format!("writing {}", out.join(METRICS_FILE).display()))?;

    // 3. Summary (over the whole run, resumed sessions included).
    let reader = RunReader::open(&out)?;
    let trajectories = reader.trajectories()?;
    let mut solved = std::collections::BTreeSet::new();
    for t in &trajectories {
        if t.reward.usable_score().is_some_and(|s| s >= pair_cfg.correct_threshold) {
            solved.insert(t.task_id.as_str());
        }
    }
    let c = &manifest.counts;
    eprintln!(
        "orchard: {} trees ({} nodes), {} solutions, {}/{} tasks with a correct solution, {} pairs ({:?}) in {:.1}s; \
         {:.1} tok/s; engine {:.1} sequences / {:.1} rows per forward, KV prefix hit {:.1}%; wrote {}",
        c.tasks,
        c.nodes,
        c.trajectories,
        solved.len(),
        c.tasks,
        c.pairs,
        pair_cfg.policy,
        search_s,
        generated as f64 / search_s.max(1e-9),
        metrics.batch_occupancy(),
        metrics.rows_per_forward(),
        100.0 * metrics.prefix_hit_rate(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
