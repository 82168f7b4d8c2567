//! Monte-Carlo tree search over reasoning steps: Agent Q (UCB1, Eq. 7; mean backup, Eq. 8; critic mixing, Eq. 10)
//! and MCTS-DPO (PUCT with a length-penalised policy prior; visit-weighted backup). See `docs/ALGORITHMS.md` (Search).
//!
//! One round of [`Mcts::grow`]:
//! 1. **Select** up to `parallel` leaves, walking down by UCB1 or PUCT; each walk adds a virtual loss to the nodes
//!    it passes so the next walk of the same round prefers another branch (a walk that reaches a leaf already
//!    being expanded ends the round's selection).
//! 2. **Expand** every selected non-terminal leaf with `k` sampled steps, all in one policy batch.
//! 3. **Critique** (optional): the policy ranks each leaf's proposals by Agent Q's iterative best-then-remove
//!    questions; rank r becomes `Q_critic = 1/r` (the community code's mapping; the paper gives none).
//! 4. **Simulate**: from each expanded leaf, the proposal ranked first (by the critic, else by the policy prior)
//!    is rolled out to the end of the solution (one batch) and the solution is scored by the reward. A node whose
//!    reward panics or errs is marked failed (its verdict carries the error), counts as [`FAILED_VALUE`], and the
//!    search goes on.
//! 5. **Back up** the reward along the path and undo every virtual loss of the round (also when the policy fails).
//!
//! Budgets: `iterations` selections per tree, `max_depth` steps, `max_tokens` generated tokens per tree: a round
//! starts only as many walks as fit the budget left if every step and rollout used its whole token allowance (at
//! least one), and no round starts once the budget is spent.

use std::collections::HashMap;

use orchard_rewards::{score_caught, Reward, Task};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{ChoiceRequest, ExtendRequest, Extension, Policy, Sampling, Until};
use crate::seed;
use crate::step::StepRule;
use crate::tree::{NodeId, NodeKind, Tree, Verdict};

/// Default UCB1 exploration constant c_exp (Agent Q gives no value; √2 is UCB1's textbook constant).
pub const DEFAULT_C_EXP: f64 = std::f64::consts::SQRT_2;
/// Default PUCT constant c_puct (MCTS-DPO's `w_exp`).
pub const DEFAULT_C_PUCT: f64 = 1.0;
/// Default length penalty of the PUCT prior (MCTS-DPO's `mcts_length_penalty`).
pub const DEFAULT_LENGTH_PENALTY: f64 = 1.25;
/// Default proposals per expansion K.
pub const DEFAULT_K: usize = 4;
/// Default MCTS iterations (selections) per tree.
pub const DEFAULT_ITERATIONS: usize = 16;
/// Default maximum depth (steps).
pub const DEFAULT_MAX_DEPTH: u32 = 8;
/// Default selections in flight per tree.
pub const DEFAULT_PARALLEL: usize = 4;
/// Default α of Q = α·Q_mcts + (1−α)·Q_critic (Agent Q reports none).
pub const DEFAULT_ALPHA: f64 = 0.5;
/// Default most tokens of one step.
pub const DEFAULT_STEP_TOKENS: usize = 64;
/// Default most tokens of one rollout.
pub const DEFAULT_ROLLOUT_TOKENS: usize = 256;
/// The value a virtual loss stands for (a lost game: the lowest verifiable reward).
pub const VIRTUAL_LOSS_VALUE: f64 = 0.0;
/// The value backed up for a node the reward could not score.
pub const FAILED_VALUE: f64 = 0.0;

/// How a child is selected.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Selection {
    /// Agent Q, Eq. 7: `Q + c_exp·sqrt(ln N(parent) / (1 + N(child)))`.
    Ucb1 {
        /// Exploration constant. Default [`DEFAULT_C_EXP`].
        c_exp: f64,
    },
    /// MCTS-DPO: `Q + c_puct·p·sqrt(N(parent)) / (1 + N(child))`, `p = exp(Σ log π / |a|^length_penalty)`.
    Puct {
        /// Exploration constant. Default [`DEFAULT_C_PUCT`].
        c_puct: f64,
        /// Length penalty of the prior. Default [`DEFAULT_LENGTH_PENALTY`].
        length_penalty: f64,
    },
}

impl Default for Selection {
    fn default() -> Self {
        Selection::Ucb1 { c_exp: DEFAULT_C_EXP }
    }
}

/// How a reward is backed up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
#[derive(Default)]
pub enum Backup {
    /// Agent Q, Eq. 8: every node on the path takes the running mean of the rewards through it.
    #[default]
    Mean,
    /// MCTS-DPO: the evaluated node takes the mean of its rewards; each ancestor
    /// `Q = γ·Σ_c max(1, N_c)·Q_c / Σ_c max(1, N_c)` over its visited children.
    VisitWeighted {
        /// Discount γ (MCTS-DPO: 1).
        gamma: f64,
    },
}

/// MCTS knobs (TOML table `[mcts]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MctsConfig {
    /// Selection rule. Default UCB1 with [`DEFAULT_C_EXP`].
    pub selection: Selection,
    /// Backup rule. Default [`Backup::Mean`].
    pub backup: Backup,
    /// Proposals per expansion K. Default [`DEFAULT_K`].
    pub k: usize,
    /// Selections per tree. Default [`DEFAULT_ITERATIONS`].
    pub iterations: usize,
    /// Deepest step. Default [`DEFAULT_MAX_DEPTH`].
    pub max_depth: u32,
    /// Generated-token budget per tree (steps and rollouts), checked between rounds; 0 = none. Default 0.
    pub max_tokens: usize,
    /// Selections in flight per tree (kept apart by virtual loss). Default [`DEFAULT_PARALLEL`].
    pub parallel: usize,
    /// Where a step ends. Default one line.
    pub step: StepRule,
    /// Most tokens of a step. Default [`DEFAULT_STEP_TOKENS`].
    pub step_tokens: usize,
    /// Most tokens of a rollout. Default [`DEFAULT_ROLLOUT_TOKENS`].
    pub rollout_tokens: usize,
    /// Ask the policy to rank proposals (Agent Q's self-critique). Default false.
    pub critic: bool,
    /// α of Q = α·Q_mcts + (1−α)·Q_critic, used in selection and by pair policies. Default [`DEFAULT_ALPHA`].
    pub alpha: f64,
    /// Sampling of steps and rollouts.
    pub sampling: Sampling,
}

impl Default for MctsConfig {
    fn default() -> Self {
        MctsConfig {
            selection: Selection::default(),
            backup: Backup::default(),
            k: DEFAULT_K,
            iterations: DEFAULT_ITERATIONS,
            max_depth: DEFAULT_MAX_DEPTH,
            max_tokens: 0,
            parallel: DEFAULT_PARALLEL,
            step: crate::step::DEFAULT_STEP_RULE,
            step_tokens: DEFAULT_STEP_TOKENS,
            rollout_tokens: DEFAULT_ROLLOUT_TOKENS,
            critic: false,
            alpha: DEFAULT_ALPHA,
            sampling: Sampling::default(),
        }
    }
}

impl MctsConfig {
    /// Checks every value once, before any tree grows.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("mcts: {what}")));
        match self.selection {
            Selection::Ucb1 { c_exp } if c_exp.is_nan() || c_exp < 0.0 => return bad("c_exp must be ≥ 0"),
            Selection::Puct { c_puct, length_penalty }
                if c_puct.is_nan() || c_puct < 0.0 || length_penalty.is_nan() || length_penalty < 0.0 =>
            {
                return bad("c_puct and length_penalty must be ≥ 0")
            }
            _ => {}
        }
        if let Backup::VisitWeighted { gamma } = self.backup {
            if !(0.0..=1.0).contains(&gamma) {
                return bad("gamma must be in [0, 1]");
            }
        }
        if self.k == 0 || self.parallel == 0 || self.iterations == 0 || self.max_depth == 0 {
            return bad("k, parallel, iterations and max_depth must be at least 1");
        }
        if self.step_tokens == 0 || self.rollout_tokens == 0 {
            return bad("step_tokens and rollout_tokens must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad("alpha must be in [0, 1]");
        }
        Ok(())
    }
}

/// UCB1 (Agent Q, Eq. 7): `q + c·sqrt(ln max(n_parent, 1) / (1 + n_child))`.
pub fn ucb1(q: f64, n_parent: f64, n_child: f64, c_exp: f64) -> f64 {
    q + c_exp * (n_parent.max(1.0).ln() / (1.0 + n_child)).sqrt()
}

/// PUCT (MCTS-DPO): `q + c·prior·sqrt(n_parent) / (1 + n_child)`.
pub fn puct(q: f64, prior: f64, n_parent: f64, n_child: f64, c_puct: f64) -> f64 {
    q + c_puct * prior * n_parent.sqrt() / (1.0 + n_child)
}

/// MCTS-DPO's length-penalised prior of a step: `exp(Σ log π / |a|^penalty)` (1 for an empty step).
pub fn length_penalised_prior(logprob_sum: f64, len: usize, penalty: f64) -> f64 {
    if len == 0 {
        return 1.0;
    }
    (logprob_sum / (len as f64).powf(penalty)).exp()
}

/// Counts of one tree's search.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Selections made.
    pub iterations: usize,
    /// Tokens the policy generated for the tree.
    pub generated: usize,
}

/// The MCTS searcher.
#[derive(Debug, Clone)]
pub struct Mcts {
    cfg: MctsConfig,
}

/// One selection of a round.
struct Walk {
    /// Root to leaf.
    path: Vec<NodeId>,
}

impl Mcts {
    /// A searcher with a validated configuration.
    pub fn new(cfg: MctsConfig) -> Result<Mcts> {
        cfg.validate()?;
        Ok(Mcts { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &MctsConfig {
        &self.cfg
    }

    /// The selection score of `child` (virtual losses count as visits valued [`VIRTUAL_LOSS_VALUE`]).
    pub fn child_score(&self, tree: &Tree, parent: NodeId, child: NodeId) -> f64 {
        let (p, c) = (&tree.nodes[parent], &tree.nodes[child]);
        let n_parent = (p.visits + u64::from(p.virtual_loss)) as f64;
        let (n, vl) = (c.visits as f64, f64::from(c.virtual_loss));
        let q_mcts = if n + vl > 0.0 { (c.q * n + VIRTUAL_LOSS_VALUE * vl) / (n + vl) } else { 0.0 };
        let q = match c.critic {
            Some(critic) => self.cfg.alpha * q_mcts + (1.0 - self.cfg.alpha) * critic,
            None => q_mcts,
        };
        match self.cfg.selection {
            Selection::Ucb1 { c_exp } => ucb1(q, n_parent, n + vl, c_exp),
            Selection::Puct { c_puct, length_penalty } => {
                let prior = length_penalised_prior(c.logprob_sum(), c.tokens.len(), length_penalty);
                puct(q, prior, n_parent, n + vl, c_puct)
            }
        }
    }

    /// The child of `parent` a walk goes to: the best [`Mcts::child_score`] among its step children (the first
    /// on ties), `None` when it has none.
    pub fn select_child(&self, tree: &Tree, parent: NodeId) -> Option<NodeId> {
        let mut best: Option<(NodeId, f64)> = None;
        for &c in &tree.nodes[parent].children {
            if tree.nodes[c].kind != NodeKind::Step {
                continue;
            }
            let s = self.child_score(tree, parent, c);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((c, s));
            }
        }
        best.map(|(c, _)| c)
    }

    /// Walks from the root to a leaf (a node without step children, a terminal node or one at `max_depth`).
    fn walk(&self, tree: &Tree) -> Walk {
        let mut path = vec![0];
        let mut at = 0;
        while !tree.nodes[at].terminal && tree.nodes[at].depth < self.cfg.max_depth {
            match self.select_child(tree, at) {
                Some(c) => {
                    path.push(c);
                    at = c;
                }
                None => break,
            }
        }
        Walk { path }
    }

    /// Grows `tree` until a budget runs out. `task` is what the reward scores solutions against.
    pub fn grow<P: Policy>(&self, policy: &P, reward: &dyn Reward, task: &Task, tree: &mut Tree) -> Result<Stats> {
        let mut stats = Stats { iterations: 0, generated: 0 };
        while stats.iterations < self.cfg.iterations && !self.out_of_tokens(tree) {
            let walks = self.select(tree, (self.cfg.iterations - stats.iterations).min(self.walks_within_budget(tree)));
            if walks.is_empty() {
                break;
            }
            stats.iterations += walks.len();
            let result = self.round(policy, reward, task, tree, &walks, &mut stats);
            for w in &walks {
                for &n in &w.path {
                    tree.nodes[n].virtual_loss -= 1;
                }
            }
            result.map_err(|e| match e {
                Error::Policy { source, .. } => Error::Policy { task_id: tree.task_id.clone(), source },
                other => other,
            })?;
        }
        Ok(stats)
    }

    /// Walks a round may start without passing the token budget even if every step and rollout used its full
    /// token allowance (at least one, so a search always moves).
    fn walks_within_budget(&self, tree: &Tree) -> usize {
        if self.cfg.max_tokens == 0 {
            return usize::MAX;
        }
        let worst = self.cfg.k * self.cfg.step_tokens + self.cfg.rollout_tokens;
        (self.cfg.max_tokens.saturating_sub(tree.generated_tokens()) / worst).max(1)
    }

    fn out_of_tokens(&self, tree: &Tree) -> bool {
        self.cfg.max_tokens > 0 && tree.generated_tokens() >= self.cfg.max_tokens
    }

    /// Step 1: up to `parallel` (and `left`) walks, each adding a virtual loss along its path.
    fn select(&self, tree: &mut Tree, left: usize) -> Vec<Walk> {
        let mut walks: Vec<Walk> = Vec::new();
        for _ in 0..self.cfg.parallel.min(left) {
            let walk = self.walk(tree);
            let leaf = *walk.path.last().expect("a walk holds the root");
            let expandable = !tree.nodes[leaf].terminal;
            if expandable && walks.iter().any(|w| w.path.last() == Some(&leaf)) {
                break; // Collision: every branch is already being expanded this round.
            }
            for &n in &walk.path {
                tree.nodes[n].virtual_loss += 1;
            }
            walks.push(walk);
        }
        walks
    }

    /// Steps 2–5 for the round's walks (virtual losses are undone by the caller).
    fn round<P: Policy>(
        &self,
        policy: &P,
        reward: &dyn Reward,
        task: &Task,
        tree: &mut Tree,
        walks: &[Walk],
        stats: &mut Stats,
    ) -> Result<()> {
        // 2. Expand.
        let (expand, children) = self.expand(policy, tree, walks, stats)?;
        // 3. Critic ranking.
        if self.cfg.critic {
            self.critique(policy, tree, &children)?;
        }
        // 4. Simulate: one node per walk to evaluate.
        let mut evaluate: Vec<(usize, NodeId)> = Vec::new(); // (walk index, node)
        let mut next_expanded = children.iter();
        for (wi, w) in walks.iter().enumerate() {
            let leaf = *w.path.last().expect("a walk holds the root");
            let node = if expand.contains(&leaf) {
                let kids = next_expanded.next().expect("one child list per expanded leaf");
                self.first_to_simulate(tree, kids)
            } else {
                leaf
            };
            evaluate.push((wi, node));
        }
        let ends = self.simulate(policy, reward, task, tree, &evaluate, stats)?;
        // 5. Back up.
        for &(wi, n) in &evaluate {
            let end = ends.get(&n).copied().unwrap_or(n);
            let value = tree.nodes[end].score().unwrap_or(FAILED_VALUE);
            let mut path = walks[wi].path.clone();
            if path.last() != Some(&n) {
                path.push(n);
            }
            self.backup(tree, &path, value);
        }
        Ok(())
    }

    /// Expands the walks' leaves that are below max depth, not terminal and not expanded yet: K proposals each, in
    /// one batch. Returns the expanded leaves and their new children.
    fn expand<P: Policy>(
        &self,
        policy: &P,
        tree: &mut Tree,
        walks: &[Walk],
        stats: &mut Stats,
    ) -> Result<(Vec<NodeId>, Vec<Vec<NodeId>>)> {
        let until = Until::Step(self.cfg.step.clone());
        let mut expand: Vec<NodeId> = Vec::new();
        for w in walks {
            let leaf = *w.path.last().expect("a walk holds the root");
            let n = &tree.nodes[leaf];
            if !n.terminal
                && n.depth < self.cfg.max_depth
                && !n.children.iter().any(|&c| tree.nodes[c].kind == NodeKind::Step)
            {
                expand.push(leaf);
            }
        }
        let mut requests = Vec::new();
        for &leaf in &expand {
            let context = tree.context(leaf);
            let base = tree.nodes[leaf].children.len();
            for i in 0..self.cfg.k {
                requests.push(ExtendRequest {
                    context: context.clone(),
                    until: until.clone(),
                    max_new: self.cfg.step_tokens,
                    sampling: self.cfg.sampling,
                    seed: seed::child(tree.nodes[leaf].seed, base + i),
                });
            }
        }
        let mut proposals = extend_all(policy, &requests)?.into_iter();
        let mut children: Vec<Vec<NodeId>> = Vec::new();
        for (&leaf, reqs) in expand.iter().zip(requests.chunks(self.cfg.k)) {
            let mut kids = Vec::new();
            for r in reqs {
                let ext =
                    proposals.next().ok_or_else(|| Error::Worker("the policy returned too few extensions".into()))?;
                stats.generated += ext.generated;
                kids.push(tree.add_child(leaf, NodeKind::Step, ext, r.seed));
            }
            children.push(kids);
        }
        Ok((expand, children))
    }

    /// Rolls the non-terminal nodes of `evaluate` out to a solution end (one batch) and scores every end not scored
    /// yet (a reward panic becomes a failed node). Returns each rolled-out node's end.
    fn simulate<P: Policy>(
        &self,
        policy: &P,
        reward: &dyn Reward,
        task: &Task,
        tree: &mut Tree,
        evaluate: &[(usize, NodeId)],
        stats: &mut Stats,
    ) -> Result<HashMap<NodeId, NodeId>> {
        let rollout_from: Vec<NodeId> = evaluate.iter().map(|&(_, n)| n).filter(|&n| !tree.nodes[n].terminal).collect();
        let requests: Vec<ExtendRequest> = rollout_from
            .iter()
            .map(|&n| ExtendRequest {
                context: tree.context(n),
                until: Until::End,
                max_new: self.cfg.rollout_tokens,
                sampling: self.cfg.sampling,
                seed: seed::mix(seed::child(tree.nodes[n].seed, tree.nodes[n].children.len()), seed::ROLLOUT),
            })
            .collect();
        let rollouts = extend_all(policy, &requests)?;
        let mut ends = HashMap::new();
        for ((&from, ext), req) in rollout_from.iter().zip(rollouts).zip(&requests) {
            stats.generated += ext.generated;
            let id = tree.add_child(from, NodeKind::Rollout, ext, req.seed);
            ends.insert(from, id);
        }
        for &(_, n) in evaluate {
            let end = ends.get(&n).copied().unwrap_or(n);
            if tree.nodes[end].verdict.is_none() {
                let solution = tree.solution(end);
                tree.nodes[end].verdict = Some(Verdict::from(score_caught(reward, task, &solution)));
            }
        }
        Ok(ends)
    }

    /// The proposal a simulation starts from: the critic's first, else the highest prior, else the first.
    /// Among fresh children, the one simulated first: the critic's pick, else the highest length-penalised prior
    /// (with PUCT's configured length penalty; UCB1 has none of its own and uses [`DEFAULT_LENGTH_PENALTY`]).
    pub(crate) fn first_to_simulate(&self, tree: &Tree, kids: &[NodeId]) -> NodeId {
        let penalty = match self.cfg.selection {
            Selection::Puct { length_penalty, .. } => length_penalty,
            Selection::Ucb1 { .. } => DEFAULT_LENGTH_PENALTY,
        };
        let key = |&c: &NodeId| {
            let n = &tree.nodes[c];
            n.critic.unwrap_or_else(|| length_penalised_prior(n.logprob_sum(), n.tokens.len(), penalty))
        };
        let mut best = kids[0];
        for &c in &kids[1..] {
            if key(&c) > key(&best) {
                best = c;
            }
        }
        best
    }

    /// Backs `value` up along `path` (root first; the last node is the evaluated one).
    pub fn backup(&self, tree: &mut Tree, path: &[NodeId], value: f64) {
        match self.cfg.backup {
            Backup::Mean => {
                for &n in path {
                    let node = &mut tree.nodes[n];
                    node.q = (node.q * node.visits as f64 + value) / (node.visits as f64 + 1.0);
                    node.visits += 1;
                }
            }
            Backup::VisitWeighted { gamma } => {
                let (&last, above) = path.split_last().expect("a path holds the root");
                let leaf = &mut tree.nodes[last];
                leaf.q = (leaf.q * leaf.visits as f64 + value) / (leaf.visits as f64 + 1.0);
                leaf.visits += 1;
                for &n in above.iter().rev() {
                    let (mut num, mut den) = (0.0, 0.0);
                    for &c in &tree.nodes[n].children {
                        let child = &tree.nodes[c];
                        if child.kind == NodeKind::Step && child.visits > 0 {
                            let w = child.visits.max(1) as f64;
                            num += w * child.q;
                            den += w;
                        }
                    }
                    let node = &mut tree.nodes[n];
                    node.visits += 1;
                    if den > 0.0 {
                        node.q = gamma * num / den;
                    }
                }
            }
        }
    }

    /// Step 3: Agent Q's iterative ranking, batched over every expanded leaf: ask for the best remaining
    /// proposal, remove it, ask again; rank r gives `critic = 1/r`.
    fn critique<P: Policy>(&self, policy: &P, tree: &mut Tree, children: &[Vec<NodeId>]) -> Result<()> {
        let question = tree.messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone());
        let question = question.unwrap_or_else(|| tree.prompt().to_string());
        let mut remaining: Vec<Vec<NodeId>> = children.to_vec();
        let mut rank = 1usize;
        loop {
            let asking: Vec<usize> = (0..remaining.len()).filter(|&i| remaining[i].len() > 1).collect();
            for kids in remaining.iter_mut() {
                if kids.len() == 1 {
                    tree.nodes[kids[0]].critic = Some(1.0 / rank as f64);
                    kids.clear();
                }
            }
            if asking.is_empty() {
                break;
            }
            let requests: Vec<ChoiceRequest> = asking
                .iter()
                .map(|&i| {
                    let kids = &remaining[i];
                    let parent = tree.nodes[kids[0]].parent.expect("a proposal has a parent");
                    ChoiceRequest {
                        prompt: critic_prompt(
                            &question,
                            &tree.solution(parent),
                            kids.iter().map(|&c| tree.nodes[c].text.as_str()),
                        ),
                        options: kids.len(),
                        seed: seed::mix(seed::mix(tree.nodes[parent].seed, seed::CRITIC), rank as u64),
                    }
                })
                .collect();
            let picks = policy.choose_batch(&requests).map_err(|e| Error::policy("", e))?;
            for (&i, pick) in asking.iter().zip(picks) {
                // An answer naming no candidate ranks the remaining ones in order.
                let at = pick.filter(|&p| p < remaining[i].len()).unwrap_or(0);
                let chosen = remaining[i].remove(at);
                tree.nodes[chosen].critic = Some(1.0 / rank as f64);
            }
            rank += 1;
        }
        Ok(())
    }
}

/// The policy's extensions of `requests`, one each (none asked, no call).
fn extend_all<P: Policy>(policy: &P, requests: &[ExtendRequest]) -> Result<Vec<Extension>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let out = policy.extend_batch(requests).map_err(|e| Error::policy("", e))?;
    if out.len() != requests.len() {
        return Err(Error::Worker(format!(
            "the policy returned {} extensions for {} requests",
            out.len(),
            requests.len()
        )));
    }
    Ok(out)
}

/// The critic's question: the task, the solution so far and the numbered candidate next steps.
pub fn critic_prompt<'a>(question: &str, so_far: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let mut p = format!("Question:\n{question}\n\nSolution so far:\n{}\n\nCandidate next steps:\n", so_far.trim());
    for (i, c) in candidates.enumerate() {
        p.push_str(&format!("Candidate {}: {}\n", i + 1, c.trim()));
    }
    p.push_str("\nWhich candidate is most likely to lead to the correct answer? Reply with its number only.");
    p
}
