//! Best-of-N (and self-consistency) as the degenerate tree: the root and N whole solutions below it, each scored;
//! the same rows, trajectories and pair policies as the other searches.

use orchard_rewards::{score_caught, Reward, Task};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{ExtendRequest, Policy, Sampling, Until};
use crate::seed;
use crate::tree::{NodeKind, Tree, Verdict};

/// Default samples per task.
pub const DEFAULT_N: usize = 8;
/// Default most tokens of one solution.
pub const DEFAULT_SOLUTION_TOKENS: usize = 256;

/// Best-of-N knobs (TOML table `[bon]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BonConfig {
    /// Samples. Default [`DEFAULT_N`].
    pub n: usize,
    /// Most tokens per solution. Default [`DEFAULT_SOLUTION_TOKENS`].
    pub solution_tokens: usize,
    /// Sampling.
    pub sampling: Sampling,
}

impl Default for BonConfig {
    fn default() -> Self {
        BonConfig { n: DEFAULT_N, solution_tokens: DEFAULT_SOLUTION_TOKENS, sampling: Sampling::default() }
    }
}

/// Samples `cfg.n` solutions below the root in one batch and scores them; each child's value is its score.
pub fn grow<P: Policy>(
    cfg: &BonConfig,
    policy: &P,
    reward: &dyn Reward,
    task: &Task,
    tree: &mut Tree,
) -> Result<usize> {
    if cfg.n == 0 || cfg.solution_tokens == 0 {
        return Err(Error::Config("bon: n and solution_tokens must be at least 1".into()));
    }
    let context = tree.context(0);
    let requests: Vec<ExtendRequest> = (0..cfg.n)
        .map(|j| ExtendRequest {
            context: context.clone(),
            until: Until::End,
            max_new: cfg.solution_tokens,
            sampling: cfg.sampling,
            seed: seed::child(tree.nodes[0].seed, j),
        })
        .collect();
    let samples = policy.extend_batch(&requests).map_err(|e| Error::policy(&tree.task_id, e))?;
    let mut generated = 0;
    for (ext, req) in samples.into_iter().zip(&requests) {
        generated += ext.generated;
        let id = tree.add_child(0, NodeKind::Sample, ext, req.seed);
        let verdict = Verdict::from(score_caught(reward, task, &tree.nodes[id].text));
        let node = &mut tree.nodes[id];
        node.terminal = true;
        node.visits = 1;
        node.q = if verdict.usable() { verdict.score } else { 0.0 };
        node.verdict = Some(verdict);
        tree.nodes[0].visits += 1;
    }
    let n = tree.nodes[0].visits.max(1) as f64;
    tree.nodes[0].q = tree.nodes[0].children.iter().map(|&c| tree.nodes[c].q).sum::<f64>() / n;
    Ok(generated)
}
