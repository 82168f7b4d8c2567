//! Pair-extraction policies over grown (or saved) trees. Each is a pure function of a [`Tree`]; all deduplicate
//! identical or near-identical pairs (same prefix, chosen and rejected text after collapsing whitespace and case).
//!
//! | policy | rule | weight / margin |
//! |---|---|---|
//! | [`PairRule::Outcome`] | correct vs incorrect complete solutions (the `orchard sample` selection over the tree's trajectories) | margin = score gap |
//! | [`PairRule::AgentQ`] | at every node, every pair of explored step children with \|ΔQ\| ≥ θ (Agent Q Alg. 1, §5.2) | margin = ΔQ |
//! | [`PairRule::MctsDpo`] | along the chosen path (most-visited children), best vs worst explored sibling at each depth | label smoothing ε = min(1 − 1/(1 + N_l / max(1, N_w)), 0.5) |
//! | [`PairRule::ITool`] | at every node with ≥ 2 explored children: max vs min child, gap ≥ 0.1, chosen ≥ −0.3, word overlap ≤ 0.95 | margin = gap |
//! | [`PairRule::StepDpo`] | first wrong step (a child whose subtree reaches no correct solution, under a parent whose subtree does) vs the best correct continuation from the same prefix | margin = value gap |
//!
//! Node values are Agent Q's mixture `α·Q_mcts + (1−α)·Q_critic` ([`crate::tree::Node::value`]). Step pairs carry the
//! shared prefix (the solution up to the parent) and `kind = step`; they are `terminal` only when both sides end
//! the solution, so exporters fold the prefix into the prompt and flag the rest (`docs/FORMATS.md`, EXPORT_FORMATS).
//! Failed nodes (reward error) are never paired.

use std::collections::HashSet;

use orchard_datasets::record::{RewardRecord, SamplingRecord};
use orchard_datasets::{select_pairs, ModelRecord, PairKind, PairSelection, PairSide, PreferencePair, Trajectory};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tree::{NodeId, NodeKind, Tree};

/// Default Agent Q threshold θ (the paper reports none).
pub const DEFAULT_THETA: f64 = 0.1;
/// iTool's minimum value gap.
pub const ITOOL_MIN_GAP: f64 = 0.1;
/// iTool's minimum chosen value.
pub const ITOOL_MIN_CHOSEN: f64 = -0.3;
/// iTool's maximum word overlap.
pub const ITOOL_MAX_OVERLAP: f64 = 0.95;
/// Default score at or above which a solution is correct.
pub use orchard_core::DEFAULT_CORRECT_THRESHOLD;

/// Which policy (CLI `--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairRuleName {
    /// Outcome pairs.
    #[default]
    Outcome,
    /// Agent Q.
    Agentq,
    /// MCTS-DPO.
    MctsDpo,
    /// iTool.
    Itool,
    /// Step-DPO.
    StepDpo,
}

impl std::str::FromStr for PairRuleName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "outcome" => PairRuleName::Outcome,
            "agentq" => PairRuleName::Agentq,
            "mcts-dpo" => PairRuleName::MctsDpo,
            "itool" => PairRuleName::Itool,
            "step-dpo" => PairRuleName::StepDpo,
            other => {
                return Err(Error::Config(format!(
                    "pair policy {other:?}: expected outcome, agentq, mcts-dpo, itool or step-dpo"
                )))
            }
        })
    }
}

/// Pair-policy knobs (TOML table `[pairs]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairConfig {
    /// Which policy. Default [`PairRuleName::Outcome`].
    pub policy: PairRuleName,
    /// Agent Q's θ. Default [`DEFAULT_THETA`].
    pub theta: f64,
    /// α of the node value mixture. Default [`crate::mcts::DEFAULT_ALPHA`].
    pub alpha: f64,
    /// Score at or above which a solution is correct. Default [`DEFAULT_CORRECT_THRESHOLD`].
    pub correct_threshold: f64,
    /// Outcome pairs: at most this many per task. Default unlimited.
    pub max_per_prompt: Option<usize>,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            policy: PairRuleName::default(),
            theta: DEFAULT_THETA,
            alpha: crate::mcts::DEFAULT_ALPHA,
            correct_threshold: DEFAULT_CORRECT_THRESHOLD,
            max_per_prompt: None,
        }
    }
}

impl PairConfig {
    /// The rule these knobs describe.
    pub fn rule(&self) -> PairRule {
        match self.policy {
            PairRuleName::Outcome => {
                PairRule::Outcome { correct_threshold: self.correct_threshold, max_per_prompt: self.max_per_prompt }
            }
            PairRuleName::Agentq => PairRule::AgentQ { theta: self.theta, alpha: self.alpha },
            PairRuleName::MctsDpo => PairRule::MctsDpo { alpha: self.alpha },
            PairRuleName::Itool => PairRule::ITool {
                min_gap: ITOOL_MIN_GAP,
                min_chosen: ITOOL_MIN_CHOSEN,
                max_overlap: ITOOL_MAX_OVERLAP,
                alpha: self.alpha,
            },
            PairRuleName::StepDpo => PairRule::StepDpo { correct_threshold: self.correct_threshold, alpha: self.alpha },
        }
    }
}

/// A pair-extraction rule (see the module table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PairRule {
    /// Correct vs incorrect complete solutions.
    Outcome {
        /// Score at or above which a solution is correct.
        correct_threshold: f64,
        /// At most this many pairs.
        max_per_prompt: Option<usize>,
    },
    /// Agent Q: every explored sibling pair with |ΔQ| ≥ θ.
    AgentQ {
        /// θ.
        theta: f64,
        /// Value mixture α.
        alpha: f64,
    },
    /// MCTS-DPO: best vs worst sibling at each depth of the chosen path.
    MctsDpo {
        /// Value mixture α.
        alpha: f64,
    },
    /// iTool: max vs min child.
    ITool {
        /// Least value gap.
        min_gap: f64,
        /// Least chosen value.
        min_chosen: f64,
        /// Most word overlap.
        max_overlap: f64,
        /// Value mixture α.
        alpha: f64,
    },
    /// Step-DPO: first wrong step vs a correct continuation from the same prefix.
    StepDpo {
        /// Score at or above which a solution is correct.
        correct_threshold: f64,
        /// Value mixture α (orders the correct continuations).
        alpha: f64,
    },
}

/// What a tree's trajectories record about how they were made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrajectoryMeta {
    /// The run id stamped on rows.
    pub run_id: String,
    /// The model.
    pub model: ModelRecord,
    /// Sampling parameters.
    pub sampling: SamplingRecord,
}

/// The complete solutions of a tree as trajectories: one per terminal node with a verdict (failed ones included,
/// with their error), `sample_index` = node id, completion = the solution text (for programs: the program).
pub fn trajectories(tree: &Tree, meta: &TrajectoryMeta) -> Vec<Trajectory> {
    (0..tree.nodes.len())
        .filter(|&i| tree.nodes[i].terminal && tree.nodes[i].verdict.is_some())
        .map(|i| {
            let v = tree.nodes[i].verdict.clone().expect("filtered on verdicts");
            let path = tree.path(i);
            Trajectory {
                id: Trajectory::make_id(&tree.task_id, i as u32),
                run_id: meta.run_id.clone(),
                task_id: tree.task_id.clone(),
                sample_index: i as u32,
                prompt: tree.prompt().to_string(),
                prompt_messages: tree.messages.clone(),
                completion: tree.solution(i),
                token_ids: path.iter().flat_map(|&n| tree.nodes[n].tokens.iter().copied()).collect(),
                token_logprobs: path.iter().flat_map(|&n| tree.nodes[n].logprobs.iter().copied()).collect(),
                finish_reason: "stop".into(),
                reward: RewardRecord {
                    score: v.score,
                    components: v.components,
                    extracted: v.extracted,
                    failure: v.failure,
                    error: v.error,
                },
                sampling: meta.sampling,
                seed: tree.nodes[i].seed,
                model: meta.model.clone(),
            }
        })
        .collect()
}

/// The pairs `rule` gives on `tree`, deduplicated, in a deterministic order.
pub fn extract(tree: &Tree, rule: &PairRule, run_id: &str) -> Vec<PreferencePair> {
    let pairs = match *rule {
        PairRule::Outcome { correct_threshold, max_per_prompt } => {
            let meta = TrajectoryMeta { run_id: run_id.to_string(), ..Default::default() };
            let policy = PairSelection { correct_threshold, max_per_prompt, ..PairSelection::default() };
            select_pairs(&trajectories(tree, &meta), &policy)
        }
        PairRule::AgentQ { theta, alpha } => agentq(tree, theta, alpha, run_id),
        PairRule::MctsDpo { alpha } => mcts_dpo(tree, alpha, run_id),
        PairRule::ITool { min_gap, min_chosen, max_overlap, alpha } => {
            itool(tree, min_gap, min_chosen, max_overlap, alpha, run_id)
        }
        PairRule::StepDpo { correct_threshold, alpha } => step_dpo(tree, correct_threshold, alpha, run_id),
    };
    dedup(pairs)
}

/// Drops pairs whose prefix, chosen and rejected texts equal an earlier pair's after collapsing whitespace and
/// case.
pub fn dedup(pairs: Vec<PreferencePair>) -> Vec<PreferencePair> {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let mut seen = HashSet::new();
    pairs
        .into_iter()
        .filter(|p| seen.insert((p.task_id.clone(), norm(&p.prefix), norm(&p.chosen.text), norm(&p.rejected.text))))
        .collect()
}

/// Share of the longer text's words that the other also has (word multisets): iTool's overlap filter.
pub fn word_overlap(a: &str, b: &str) -> f64 {
    let (wa, wb): (Vec<&str>, Vec<&str>) = (a.split_whitespace().collect(), b.split_whitespace().collect());
    let longest = wa.len().max(wb.len());
    if longest == 0 {
        return 1.0;
    }
    let mut rest = wb.clone();
    let mut shared = 0;
    for w in &wa {
        if let Some(i) = rest.iter().position(|x| x == w) {
            rest.swap_remove(i);
            shared += 1;
        }
    }
    shared as f64 / longest as f64
}

/// Explored, unfailed step children of `n` (visited at least once).
fn explored(tree: &Tree, n: NodeId) -> Vec<NodeId> {
    tree.nodes[n]
        .children
        .iter()
        .copied()
        .filter(|&c| {
            let node = &tree.nodes[c];
            node.kind == NodeKind::Step && node.visits > 0 && node.verdict.as_ref().is_none_or(|v| v.error.is_none())
        })
        .collect()
}

fn side(tree: &Tree, n: NodeId, alpha: f64) -> PairSide {
    let node = &tree.nodes[n];
    PairSide {
        trajectory_id: format!("{}/{n}", tree.tree_id()),
        text: node.text.clone(),
        score: node.value(alpha),
        behaviour_logp: node.logprob_sum(),
    }
}

/// A step pair between two children of the same node.
fn step_pair(tree: &Tree, chosen: NodeId, rejected: NodeId, alpha: f64, run_id: &str) -> PreferencePair {
    PreferencePair {
        run_id: run_id.to_string(),
        task_id: tree.task_id.clone(),
        prompt: tree.prompt().to_string(),
        prompt_messages: tree.messages.clone(),
        prefix: tree.prefix(chosen),
        chosen: side(tree, chosen, alpha),
        rejected: side(tree, rejected, alpha),
        kind: PairKind::Step,
        terminal: tree.nodes[chosen].terminal && tree.nodes[rejected].terminal,
        weight: orchard_datasets::record::pair::DEFAULT_PAIR_WEIGHT,
        label_smoothing: 0.0,
    }
}

fn agentq(tree: &Tree, theta: f64, alpha: f64, run_id: &str) -> Vec<PreferencePair> {
    let mut out = Vec::new();
    for n in 0..tree.nodes.len() {
        let kids = explored(tree, n);
        for (i, &a) in kids.iter().enumerate() {
            for &b in &kids[i + 1..] {
                let (qa, qb) = (tree.nodes[a].value(alpha), tree.nodes[b].value(alpha));
                if (qa - qb).abs() >= theta && qa != qb {
                    let (w, l) = if qa > qb { (a, b) } else { (b, a) };
                    out.push(step_pair(tree, w, l, alpha, run_id));
                }
            }
        }
    }
    out
}

/// MCTS-DPO's chosen path: from the root, the most visited explored child (ties: higher value, then lower id).
pub fn chosen_path(tree: &Tree, alpha: f64) -> Vec<NodeId> {
    let mut path = vec![0];
    let mut at = 0;
    loop {
        let kids = explored(tree, at);
        let best = kids.into_iter().reduce(|best, c| {
            let (b, x) = (&tree.nodes[best], &tree.nodes[c]);
            if x.visits > b.visits || (x.visits == b.visits && x.value(alpha) > b.value(alpha)) {
                c
            } else {
                best
            }
        });
        match best {
            Some(c) => {
                path.push(c);
                at = c;
            }
            None => return path,
        }
    }
}

/// (max, min) of `kids` by value (ties: the lower id for the max, the higher id for the min).
fn extremes(tree: &Tree, kids: &[NodeId], alpha: f64) -> Option<(NodeId, NodeId)> {
    let v = |c: NodeId| tree.nodes[c].value(alpha);
    let max = kids.iter().copied().reduce(|a, b| if v(b) > v(a) { b } else { a })?;
    let min = kids.iter().copied().reduce(|a, b| if v(b) <= v(a) { b } else { a })?;
    Some((max, min))
}

fn mcts_dpo(tree: &Tree, alpha: f64, run_id: &str) -> Vec<PreferencePair> {
    let mut out = Vec::new();
    for n in chosen_path(tree, alpha) {
        let kids = explored(tree, n);
        let Some((w, l)) = extremes(tree, &kids, alpha) else { continue };
        if tree.nodes[w].value(alpha) <= tree.nodes[l].value(alpha) {
            continue;
        }
        let (nw, nl) = (tree.nodes[w].visits as f64, tree.nodes[l].visits as f64);
        let confidence = 1.0 / (1.0 + nl / nw.max(1.0));
        let mut p = step_pair(tree, w, l, alpha, run_id);
        p.label_smoothing = (1.0 - confidence).min(0.5);
        out.push(p);
    }
    out
}

fn itool(
    tree: &Tree,
    min_gap: f64,
    min_chosen: f64,
    max_overlap: f64,
    alpha: f64,
    run_id: &str,
) -> Vec<PreferencePair> {
    let mut out = Vec::new();
    for n in 0..tree.nodes.len() {
        let kids = explored(tree, n);
        if kids.len() < 2 {
            continue;
        }
        let Some((w, l)) = extremes(tree, &kids, alpha) else { continue };
        let (vw, vl) = (tree.nodes[w].value(alpha), tree.nodes[l].value(alpha));
        if vw - vl >= min_gap
            && vw >= min_chosen
            && word_overlap(&tree.nodes[w].text, &tree.nodes[l].text) <= max_overlap
        {
            out.push(step_pair(tree, w, l, alpha, run_id));
        }
    }
    out
}

fn step_dpo(tree: &Tree, threshold: f64, alpha: f64, run_id: &str) -> Vec<PreferencePair> {
    let mut out = Vec::new();
    for n in 0..tree.nodes.len() {
        if !tree.reaches_correct(n, threshold) {
            continue;
        }
        let kids = explored(tree, n);
        let good: Vec<NodeId> = kids.iter().copied().filter(|&c| tree.reaches_correct(c, threshold)).collect();
        let Some((win, _)) = extremes(tree, &good, alpha) else { continue };
        for &lose in &kids {
            // A wrong step: its subtree was scored and holds no correct solution.
            let scored = subtree_scored(tree, lose);
            if scored && !tree.reaches_correct(lose, threshold) {
                out.push(step_pair(tree, win, lose, alpha, run_id));
            }
        }
    }
    out
}

fn subtree_scored(tree: &Tree, n: NodeId) -> bool {
    tree.nodes[n].score().is_some() || tree.nodes[n].children.iter().any(|&c| subtree_scored(tree, c))
}
