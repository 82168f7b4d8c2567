//! [`Tree`]: the search tree every algorithm grows, and its rows in the `trees/` Parquet.
//!
//! Nodes live in one `Vec`, indexed by [`NodeId`] (the order they were created in, so ids are deterministic). The
//! root holds the rendered prompt; a `Step` node holds one step continuing its parent's text; a `Rollout` node holds
//! the rest of a solution sampled from its parent to estimate its value (it is never expanded); a `Program` node
//! (Tree-of-Code) holds a whole program written from its own prompt; a `Sample` node (best-of-N) a whole solution.
//!
//! [`Tree::to_rows`] and [`Tree::from_rows`] convert to and from [`TreeNode`] rows without loss, so pair policies
//! can run again on saved trees and give the same pairs.

use std::collections::BTreeMap;

use orchard_datasets::{Message, NodeDetail, TreeNode};
use orchard_rewards::Outcome;

use crate::error::{Error, Result};
use crate::policy::{Extension, TokenId};

/// A node's index in [`Tree::nodes`].
pub type NodeId = usize;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// The prompt.
    Root,
    /// One step of a solution (MCTS).
    Step,
    /// The rest of a solution sampled to value its parent (MCTS simulation); never expanded.
    Rollout,
    /// A whole program written for the whole task (Tree-of-Code).
    Program,
    /// A whole solution (best-of-N).
    Sample,
}

impl NodeKind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Root => "root",
            NodeKind::Step => "step",
            NodeKind::Rollout => "rollout",
            NodeKind::Program => "program",
            NodeKind::Sample => "sample",
        }
    }

    fn parse(s: &str) -> Option<NodeKind> {
        Some(match s {
            "root" => NodeKind::Root,
            "step" => NodeKind::Step,
            "rollout" => NodeKind::Rollout,
            "program" => NodeKind::Program,
            "sample" => NodeKind::Sample,
            _ => return None,
        })
    }

    /// Whether the node's text continues its parent's (false for programs, which restate the whole solution).
    pub fn continues_parent(self) -> bool {
        matches!(self, NodeKind::Step | NodeKind::Rollout | NodeKind::Sample)
    }
}

/// A reward's verdict on the solution ending at a node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// The score.
    pub score: f64,
    /// Named parts of it.
    pub components: BTreeMap<String, f64>,
    /// What the reward extracted.
    pub extracted: Option<String>,
    /// Why it lost points.
    pub failure: Option<String>,
    /// Set when the node could not be scored (the reward panicked, timed out, the sandbox failed): a failed node,
    /// never paired.
    pub error: Option<String>,
}

impl Verdict {
    /// Whether the verdict is usable (scored without error, finite).
    pub fn usable(&self) -> bool {
        self.error.is_none() && self.score.is_finite()
    }
}

impl From<Outcome> for Verdict {
    fn from(o: Outcome) -> Self {
        Verdict { score: o.score, components: o.components, extracted: o.extracted, failure: o.failure, error: o.error }
    }
}

/// Tree-of-Code's execution result of a program node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Execution {
    /// Whether it ran and produced a result (the node stops growing).
    pub ok: bool,
    /// What it produced (the majority vote's ballot).
    pub answer: Option<String>,
    /// Its error text (what its children reflect on).
    pub feedback: Option<String>,
}

/// One node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Its parent (`None` for the root).
    pub parent: Option<NodeId>,
    /// Its children, in creation order.
    pub children: Vec<NodeId>,
    /// 0 for the root.
    pub depth: u32,
    /// The prompt (root), the step, the rollout or the program.
    pub text: String,
    /// Tokens of `text`.
    pub tokens: Vec<TokenId>,
    /// The sampler's log-prob of each token.
    pub logprobs: Vec<f32>,
    /// The seed it was sampled with (the root: the tree's seed).
    pub seed: u64,
    /// Whether the solution ends here.
    pub terminal: bool,
    /// MCTS visit count N.
    pub visits: u64,
    /// Backed-up value Q_mcts (mean reward under [`crate::mcts::Backup::Mean`]).
    pub q: f64,
    /// The critic's value Q_critic (Agent Q: from its rank among its siblings), if a critic ran.
    pub critic: Option<f64>,
    /// Selections in flight through this node (virtual loss). Always 0 between search rounds.
    pub virtual_loss: u32,
    /// The reward's verdict on the solution ending here (terminal nodes).
    pub verdict: Option<Verdict>,
    /// Tree-of-Code's execution result.
    pub execution: Option<Execution>,
    /// How it was generated when that varies (Tree-of-Code: `prompt 2, model 0`).
    pub origin: Option<String>,
}

impl Node {
    fn new(kind: NodeKind, parent: Option<NodeId>, depth: u32, seed: u64) -> Node {
        Node {
            kind,
            parent,
            children: Vec::new(),
            depth,
            text: String::new(),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            seed,
            terminal: false,
            visits: 0,
            q: 0.0,
            critic: None,
            virtual_loss: 0,
            verdict: None,
            execution: None,
            origin: None,
        }
    }

    /// Sum of the token log-probs: the behaviour log-prob of the node's text.
    pub fn logprob_sum(&self) -> f64 {
        self.logprobs.iter().map(|&l| f64::from(l)).sum()
    }

    /// Agent Q's node value, Eq. 10: `α·Q_mcts + (1−α)·Q_critic` (just `Q_mcts` when no critic ran).
    pub fn value(&self, alpha: f64) -> f64 {
        match self.critic {
            Some(c) => alpha * self.q + (1.0 - alpha) * c,
            None => self.q,
        }
    }

    /// The usable score of its verdict.
    pub fn score(&self) -> Option<f64> {
        self.verdict.as_ref().filter(|v| v.usable()).map(|v| v.score)
    }
}

/// One task's search tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// The task.
    pub task_id: String,
    /// The prompt as chat messages.
    pub messages: Vec<Message>,
    /// Every node; `nodes[0]` is the root.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// A tree holding only its root: the rendered prompt.
    pub fn new(task_id: &str, messages: Vec<Message>, prompt: &str, prompt_tokens: Vec<TokenId>, seed: u64) -> Tree {
        let mut root = Node::new(NodeKind::Root, None, 0, seed);
        root.text = prompt.to_string();
        root.tokens = prompt_tokens;
        Tree { task_id: task_id.to_string(), messages, nodes: vec![root] }
    }

    /// The tree id written to `tree_id` (one tree per task).
    pub fn tree_id(&self) -> String {
        format!("{}/tree0", self.task_id)
    }

    /// The root.
    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    /// The rendered prompt.
    pub fn prompt(&self) -> &str {
        &self.nodes[0].text
    }

    /// Adds a child of `parent` from an extension; returns its id.
    pub fn add_child(&mut self, parent: NodeId, kind: NodeKind, ext: Extension, seed: u64) -> NodeId {
        let id = self.nodes.len();
        let mut node = Node::new(kind, Some(parent), self.nodes[parent].depth + 1, seed);
        node.terminal = ext.ended() || kind == NodeKind::Rollout;
        node.text = ext.text;
        node.tokens = ext.tokens;
        node.logprobs = ext.logprobs;
        self.nodes.push(node);
        self.nodes[parent].children.push(id);
        id
    }

    /// The nodes from the root's child down to `id` whose text continues the solution (for a program node: the
    /// program alone).
    pub fn path(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut at = Some(id);
        while let Some(n) = at {
            if self.nodes[n].kind == NodeKind::Root {
                break;
            }
            out.push(n);
            if !self.nodes[n].kind.continues_parent() {
                break;
            }
            at = self.nodes[n].parent;
        }
        out.reverse();
        out
    }

    /// Every node from the root down to `id` (root first).
    pub fn ancestry(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = vec![id];
        let mut at = self.nodes[id].parent;
        while let Some(n) = at {
            out.push(n);
            at = self.nodes[n].parent;
        }
        out.reverse();
        out
    }

    /// The solution text from the start to the end of `id` (its path's texts concatenated).
    pub fn solution(&self, id: NodeId) -> String {
        self.path(id).iter().map(|&n| self.nodes[n].text.as_str()).collect()
    }

    /// The solution text before `id` (the shared prefix of `id` and its siblings).
    pub fn prefix(&self, id: NodeId) -> String {
        match self.nodes[id].parent {
            Some(p) if self.nodes[id].kind.continues_parent() => self.solution(p),
            _ => String::new(),
        }
    }

    /// What the model sees before continuing after `id`: the prompt's tokens, then every step's on the path.
    pub fn context(&self, id: NodeId) -> Vec<TokenId> {
        let mut out = self.nodes[0].tokens.clone();
        for n in self.path(id) {
            out.extend_from_slice(&self.nodes[n].tokens);
        }
        out
    }

    /// Generated tokens in the whole tree.
    pub fn generated_tokens(&self) -> usize {
        self.nodes[1..].iter().map(|n| n.tokens.len()).sum()
    }

    /// Scored, usable terminal nodes (the ends of complete trajectories), in id order.
    pub fn scored_leaves(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].terminal && self.nodes[i].score().is_some())
    }

    /// Whether the subtree of `id` (itself included) holds a solution scoring at least `threshold`.
    pub fn reaches_correct(&self, id: NodeId, threshold: f64) -> bool {
        self.nodes[id].score().is_some_and(|s| s >= threshold)
            || self.nodes[id].children.iter().any(|&c| self.reaches_correct(c, threshold))
    }

    /// Rows for the `trees/` Parquet. The root's `origin` holds the prompt messages as JSON, so pairs can be
    /// re-extracted from the rows alone.
    pub fn to_rows(&self, run_id: &str) -> Vec<TreeNode> {
        let tree_id = self.tree_id();
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v = n.verdict.clone().unwrap_or_default();
                let origin = if i == 0 {
                    Some(serde_json::to_string(&self.messages).expect("messages serialise"))
                } else {
                    n.origin.clone()
                };
                TreeNode {
                    run_id: run_id.to_string(),
                    task_id: self.task_id.clone(),
                    tree_id: tree_id.clone(),
                    node_id: i as u64,
                    parent_id: n.parent.map(|p| p as u64),
                    depth: n.depth,
                    text: n.text.clone(),
                    token_ids: n.tokens.clone(),
                    logprob_sum: n.logprob_sum(),
                    visits: n.visits,
                    value: n.q,
                    reward: n.verdict.as_ref().map(|v| v.score),
                    terminal: n.terminal,
                    detail: NodeDetail {
                        kind: n.kind.as_str().to_string(),
                        seed: n.seed,
                        token_logprobs: n.logprobs.clone(),
                        critic: n.critic,
                        reward_components: v.components,
                        reward_extracted: v.extracted,
                        reward_failure: v.failure,
                        reward_error: v.error,
                        exec_ok: n.execution.as_ref().map(|e| e.ok),
                        exec_answer: n.execution.as_ref().and_then(|e| e.answer.clone()),
                        exec_feedback: n.execution.as_ref().and_then(|e| e.feedback.clone()),
                        origin,
                    },
                }
            })
            .collect()
    }

    /// Rebuilds a tree from its rows (any order). Rows must form one tree with ids `0..n`.
    pub fn from_rows(rows: &[TreeNode]) -> Result<Tree> {
        let broken = |tree_id: &str, reason: String| Error::BrokenTree { tree_id: tree_id.to_string(), reason };
        let first = rows.first().ok_or_else(|| broken("?", "no rows".into()))?;
        let tree_id = first.tree_id.clone();
        let mut sorted: Vec<&TreeNode> = rows.iter().collect();
        sorted.sort_by_key(|r| r.node_id);
        let mut nodes = Vec::with_capacity(sorted.len());
        for (i, r) in sorted.iter().enumerate() {
            if r.node_id != i as u64 || r.tree_id != tree_id {
                return Err(broken(&tree_id, format!("node ids are not 0..{} (found {})", rows.len(), r.node_id)));
            }
            let parent = match r.parent_id {
                Some(p) if p < r.node_id => Some(p as usize),
                None if i == 0 => None,
                other => return Err(broken(&tree_id, format!("node {i} has parent {other:?}"))),
            };
            let d = &r.detail;
            let kind =
                NodeKind::parse(&d.kind).ok_or_else(|| broken(&tree_id, format!("node {i} has kind {:?}", d.kind)))?;
            let verdict = r.reward.map(|score| Verdict {
                score,
                components: d.reward_components.clone(),
                extracted: d.reward_extracted.clone(),
                failure: d.reward_failure.clone(),
                error: d.reward_error.clone(),
            });
            let execution =
                d.exec_ok.map(|ok| Execution { ok, answer: d.exec_answer.clone(), feedback: d.exec_feedback.clone() });
            nodes.push(Node {
                kind,
                parent,
                children: Vec::new(),
                depth: r.depth,
                text: r.text.clone(),
                tokens: r.token_ids.clone(),
                logprobs: d.token_logprobs.clone(),
                seed: d.seed,
                terminal: r.terminal,
                visits: r.visits,
                q: r.value,
                critic: d.critic,
                virtual_loss: 0,
                verdict,
                execution,
                origin: if i == 0 { None } else { d.origin.clone() },
            });
        }
        for i in 1..nodes.len() {
            let p = nodes[i].parent.expect("checked above: only the root has no parent");
            nodes[p].children.push(i);
        }
        let messages = match sorted[0].detail.origin.as_deref() {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| broken(&tree_id, format!("root origin is not the prompt messages: {e}")))?,
            None => Vec::new(),
        };
        Ok(Tree { task_id: first.task_id.clone(), messages, nodes })
    }

    /// Groups rows by tree and rebuilds every tree (ordered by tree id).
    pub fn all_from_rows(rows: Vec<TreeNode>) -> Result<Vec<Tree>> {
        let mut by_tree: BTreeMap<String, Vec<TreeNode>> = BTreeMap::new();
        for r in rows {
            by_tree.entry(r.tree_id.clone()).or_default().push(r);
        }
        by_tree.values().map(|rows| Tree::from_rows(rows)).collect()
    }
}
