//! Search as a job: grow MCTS / Tree-of-Code / best-of-N trees over the engine's continuous-batching scheduler
//! (radix prefix cache on or off), score their solutions, and push trees, trajectories and pairs into a run
//! directory. `orchard search` and the loop's search rounds call [`search`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use orchard_datasets::record::{PairFormat, SamplingRecord};
use orchard_datasets::{RunDir, Shard, Task, TaskOutput, TaskSource};
use orchard_engine::scheduler::{Metrics, Scheduler, SchedulerConfig};
use orchard_engine::Engine;
use orchard_rewards::Reward;
use orchard_search::bon::BonConfig;
use orchard_search::grow::{grow_all, Algo, SearchTask};
use orchard_search::mcts::{Mcts, MctsConfig};
use orchard_search::pairs::{self, PairConfig, PairRuleName, TrajectoryMeta};
use orchard_search::toc::{TocConfig, CODE_PROMPTS};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::EnginePolicy;
use crate::task::reward_task;
use crate::Progress;

/// Default worker threads growing trees at once.
pub const DEFAULT_WORKERS: usize = 16;

/// The search algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// The job file of `orchard search`, and the job's identity once flags are applied.
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

impl SearchJob {
    /// Fills what the file left to the algorithm: the pair policy (agentq for MCTS, outcome otherwise) and, for
    /// Tree-of-Code on HumanEval, the code prompts.
    pub fn resolve_defaults(&mut self) {
        if self.pairs.is_none() {
            self.pairs = Some(PairConfig {
                policy: if self.algo == AlgoName::Mcts { PairRuleName::Agentq } else { PairRuleName::Outcome },
                ..PairConfig::default()
            });
        }
        if self.algo == AlgoName::Toc
            && self.reward.as_deref() == Some("humaneval")
            && self.toc.prompts == TocConfig::default().prompts
        {
            self.toc.prompts = CODE_PROMPTS.iter().map(|s| s.to_string()).collect();
        }
    }

    /// The algorithm, validated.
    pub fn algo(&self) -> Result<Algo> {
        Ok(match self.algo {
            AlgoName::Mcts => Algo::Mcts(Mcts::new(self.mcts.clone()).map_err(|e| Error::Config(e.to_string()))?),
            AlgoName::Toc => {
                self.toc.validate().map_err(|e| Error::Config(e.to_string()))?;
                Algo::Toc(self.toc.clone())
            }
            AlgoName::Bon => Algo::Bon(self.bon.clone()),
        })
    }

    /// The resolved pair policy.
    pub fn pair_config(&self) -> PairConfig {
        self.pairs.unwrap_or_default()
    }
}

/// What a search call did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SearchReport {
    /// Trees grown by this call.
    pub trees: usize,
    /// Nodes of those trees.
    pub nodes: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Wall seconds of growing.
    pub seconds: f64,
    /// The scheduler's counters (prefix hits, rows per forward, …).
    pub engine: Metrics,
}

/// Grows a tree per task of `todo` with `job`'s algorithm over a scheduler on `engine` (`sched`: prefix cache,
/// batch, precision), `workers` trees at a time, committing each tree with its trajectories and pairs to `run` as
/// it finishes (a killed job resumes where it stopped).
pub fn search(
    engine: Arc<Engine>,
    job: &SearchJob,
    (run, todo): (&mut RunDir, &[Task]),
    reward: &dyn Reward,
    (sched, workers): (SchedulerConfig, usize),
    progress: &mut dyn Progress,
) -> Result<SearchReport> {
    let algo = job.algo()?;
    let rule = job.pair_config().rule();
    let model = crate::task::model_record(&engine)?;
    let policy = EnginePolicy::new(engine.clone(), Scheduler::start(engine, sched));
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
    progress.start("trees", tasks.len());
    let t0 = Instant::now();
    let mut report = SearchReport::default();
    grow_all(&algo, &policy, reward, &tasks, job.seed, workers, |_, grown| {
        let grown = grown?;
        let tree = &grown.tree;
        report.trees += 1;
        report.nodes += tree.nodes.len();
        report.generated_tokens += grown.generated;
        let output = TaskOutput {
            task_id: tree.task_id.clone(),
            trajectories: pairs::trajectories(tree, &meta),
            pairs: pairs::extract(tree, &rule, &run_id),
            nodes: tree.to_rows(&run_id),
        };
        run.push(output)?;
        let (c, m, dt) = (run.counts(), policy.scheduler().metrics(), t0.elapsed().as_secs_f64().max(1e-9));
        progress.advance(
            1,
            &format!(
                "{:.1} nodes/s, {:.1} tok/s, {} pairs, KV hit {:.0}%, {:.1} rows/forward",
                report.nodes as f64 / dt,
                report.generated_tokens as f64 / dt,
                c.pairs,
                100.0 * m.prefix_hit_rate(),
                m.rows_per_forward()
            ),
        );
        Ok(())
    })
    .map_err(|e| Error::Config(format!("search: {e}")))?;
    progress.finish();
    report.seconds = t0.elapsed().as_secs_f64();
    report.engine = policy.scheduler().metrics();
    Ok(report)
}
