//! `orchard search`: grow search trees (MCTS, Tree-of-Code, best-of-N) over the engine and harvest trees,
//! trajectories and preference pairs into a run directory.

use std::process::ExitCode;
use std::sync::Arc;

use orchard_datasets::record::PairFormat;
use orchard_jobs::run::{run_search, Runtime};
pub use orchard_jobs::search::{AlgoName, SearchJob};
use orchard_search::mcts::{Backup, Selection};
use orchard_search::pairs::PairRuleName;
use orchard_search::StepRule;

use crate::job::{JobArgs, JobKeys};

/// The search algorithm on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlgoArg {
    /// Monte-Carlo tree search over steps (Agent Q / MCTS-DPO).
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
    pub algo: Option<AlgoArg>,
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Pair policy: outcome, agentq, mcts-dpo, itool, step-dpo (default: agentq for mcts, outcome otherwise).
    /// TOML: `pairs.policy`.
    #[arg(long)]
    pub policy: Option<PairRuleName>,
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
        job.algo = match a {
            AlgoArg::Mcts => AlgoName::Mcts,
            AlgoArg::Toc => AlgoName::Toc,
            AlgoArg::Bon => AlgoName::Bon,
        };
    }
    if let Some(f) = args.pair_format {
        job.pair_format = f;
    }
    args.knobs.apply(&mut job);
    job.resolve_defaults();
    let mut pairs = job.pair_config();
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
    Ok(job)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut job = resolve(&args)?;
    job.algo()?;
    let pair_cfg = job.pair_config();
    let (shard, out) = args.job.placement(job.shard, &job.out)?;
    (job.shard, job.out) = (Some(shard), Some(out));
    let reward = args.job.reward(&job.reward, &job.reward_config, &job.model)?;

    // 1. Model; 2. grow, each tree committed with its trajectories and pairs as it finishes.
    let engine = Arc::new(args.job.device.place(args.job.model_args(&job.model).load()?)?);
    let rt = Runtime {
        precision: args.job.precision.resolve(),
        commit_every: args.job.commit_every,
        group: None,
        workers: args.workers,
    };
    let mut bars = super::common::Bars::default();
    let done = run_search(engine, &job, reward.reward(), &rt, &mut bars)?;

    // 3. Summary (over the whole run, resumed sessions included).
    let (rep, metrics) = (&done.report, &done.report.engine);
    let c = &done.job.manifest.counts;
    eprintln!(
        "orchard: {} trees ({} nodes), {} solutions, {}/{} tasks with a correct solution, {} pairs ({:?}) in {:.1}s; \
         {:.1} tok/s; engine {:.1} sequences / {:.1} rows per forward, KV prefix hit {:.1}%; wrote {}",
        c.tasks,
        c.nodes,
        c.trajectories,
        done.solved,
        c.tasks,
        c.pairs,
        pair_cfg.policy,
        rep.seconds,
        rep.generated_tokens as f64 / rep.seconds.max(1e-9),
        metrics.batch_occupancy(),
        metrics.rows_per_forward(),
        100.0 * metrics.prefix_hit_rate(),
        done.job.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
