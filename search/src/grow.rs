//! Growing many trees at once: [`grow_all`] runs `workers` threads, each growing one task's tree at a time
//! through a shared policy, so a batching policy sees the requests of many trees (and, within a tree, of several
//! selections in flight) together. A tree is grown by one thread from seeds fixed by (run seed, task id, node
//! path), so trees do not depend on the number of workers or on what else was in a batch.

use std::sync::atomic::{AtomicUsize, Ordering};

use orchard_datasets::Message;
use orchard_rewards::{Reward, Task};

use crate::bon::{self, BonConfig};
use crate::error::{Error, Result};
use crate::mcts::Mcts;
use crate::policy::Policy;
use crate::seed;
use crate::toc::{self, TocConfig};
use crate::tree::Tree;

/// Which search grows the trees.
#[derive(Debug, Clone)]
pub enum Algo {
    /// Monte-Carlo tree search over steps.
    Mcts(Mcts),
    /// Tree-of-Code over whole programs.
    Toc(TocConfig),
    /// Best-of-N.
    Bon(BonConfig),
}

impl Algo {
    /// `mcts`, `toc` or `bon`.
    pub fn name(&self) -> &'static str {
        match self {
            Algo::Mcts(_) => "mcts",
            Algo::Toc(_) => "toc",
            Algo::Bon(_) => "bon",
        }
    }
}

/// One task to grow a tree for.
#[derive(Debug, Clone)]
pub struct SearchTask {
    /// The task id.
    pub id: String,
    /// The prompt as chat messages (for MCTS and best-of-N, rendered by the policy).
    pub messages: Vec<Message>,
    /// The question alone (Tree-of-Code's prompt pool and the critic quote it).
    pub question: String,
    /// What the reward scores against.
    pub reward_task: Task,
}

/// A grown tree and what it cost.
#[derive(Debug, Clone)]
pub struct Grown {
    /// The tree.
    pub tree: Tree,
    /// Tokens the policy generated for it.
    pub generated: usize,
}

/// Grows one task's tree.
pub fn grow_tree<P: Policy>(
    algo: &Algo,
    policy: &P,
    reward: &dyn Reward,
    task: &SearchTask,
    run_seed: u64,
) -> Result<Grown> {
    let _span = tracing::debug_span!("grow_tree", task = task.id.as_str()).entered();
    let start = policy.start(&task.messages).map_err(|e| Error::policy(&task.id, e))?;
    let mut tree =
        Tree::new(&task.id, task.messages.clone(), &start.text, start.tokens, seed::tree_seed(run_seed, &task.id));
    let generated = match algo {
        Algo::Mcts(m) => m.grow(policy, reward, &task.reward_task, &mut tree)?.generated,
        Algo::Toc(cfg) => toc::grow(cfg, policy, reward, &task.reward_task, &task.question, &mut tree)?,
        Algo::Bon(cfg) => bon::grow(cfg, policy, reward, &task.reward_task, &mut tree)?,
    };
    Ok(Grown { tree, generated })
}

/// Grows every task's tree on `workers` threads; `sink` receives each result (task index, tree or error) on the
/// calling thread as trees finish. A sink error stops the workers after their current trees and is returned.
pub fn grow_all<P: Policy>(
    algo: &Algo,
    policy: &P,
    reward: &dyn Reward,
    tasks: &[SearchTask],
    run_seed: u64,
    workers: usize,
    mut sink: impl FnMut(usize, Result<Grown>) -> Result<()>,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::scope(|s| {
        for _ in 0..workers.max(1).min(tasks.len().max(1)) {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            s.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(task) = tasks.get(i) else { break };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    grow_tree(algo, policy, reward, task, run_seed)
                }))
                .unwrap_or_else(|_| Err(Error::Worker(format!("task {}: the search panicked", task.id))));
                if tx.send((i, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut first_err = None;
        for (i, result) in rx {
            if first_err.is_some() {
                continue;
            }
            if let Err(e) = sink(i, result) {
                stop.store(true, Ordering::Relaxed);
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}
