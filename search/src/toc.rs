//! Tree-of-Code (`docs/ALGORITHMS.md`, Search): every node is a whole program for the whole task; the tree grows
//! breadth-first, `m` children per node, `depth` layers. A program that runs and produces a result stops growing;
//! a failed one spawns children whose prompt shows every ancestor's code and error (execution-based reflection).
//! Each child's prompt is drawn from a prompt pool (and its model from a model pool; Orchard's engine serves one
//! model, so the model pool has one entry and `origin` records `model 0`). The answer is a majority vote over the
//! results of the successful programs.
//!
//! Execution is the reward's: program-of-thought math (`pot`: `solution()`'s return value) or unit tests
//! (`humaneval`). A node succeeds when the reward scored it without error, its `executed` component is 1 and, for
//! rewards that extract a result, it extracted one; its `exec_answer` is that result.

use std::collections::BTreeMap;

use orchard_datasets::Message;
use orchard_rewards::{score_caught, Reward, Task};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{ExtendRequest, Policy, Sampling, Until};
use crate::seed;
use crate::tree::{Execution, NodeId, NodeKind, Tree, Verdict};

/// Default children per node M (the paper's "3-3" tree, known from secondary sources).
pub const DEFAULT_M: usize = 3;
/// Default layers L.
pub const DEFAULT_DEPTH: u32 = 3;
/// Default sampling temperature (the paper's 0.1).
pub const DEFAULT_TEMPERATURE: f32 = 0.1;
/// Default most tokens of one program.
pub const DEFAULT_PROGRAM_TOKENS: usize = 320;

/// Prompt pool for program-of-thought math: each asks for `solution()` returning the answer. `{question}` is
/// replaced by the task.
pub const POT_PROMPTS: [&str; 3] = [
    "Solve the following problem by writing a Python function `solution()` that returns the final numeric answer. Reply with the code only.\n\n{question}",
    "Write Python code that defines `def solution():`, computes the answer to this math word problem step by step and returns it.\n\nProblem: {question}",
    "{question}\n\nAnswer with a Python program: explain your reasoning in comments, then define `solution()` returning the answer as a number.",
];

/// Prompt pool for HumanEval-style tasks: complete the function.
pub const CODE_PROMPTS: [&str; 2] = [
    "Complete the following Python function. Reply with the complete function in a ```python block.\n\n{question}",
    "{question}\n\nWrite the full implementation of this function in Python, in a ```python code block.",
];

/// Tree-of-Code knobs (TOML table `[toc]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TocConfig {
    /// Children per node. Default [`DEFAULT_M`].
    pub m: usize,
    /// Layers. Default [`DEFAULT_DEPTH`].
    pub depth: u32,
    /// Most tokens of one program. Default [`DEFAULT_PROGRAM_TOKENS`].
    pub program_tokens: usize,
    /// Generated-token budget per tree: a layer writes only as many programs as fit what is left at full length
    /// (at least one); 0 = none. Default 0.
    pub max_tokens: usize,
    /// Prompt pool (`{question}` is replaced by the task). Default [`POT_PROMPTS`].
    pub prompts: Vec<String>,
    /// Sampling (temperature default [`DEFAULT_TEMPERATURE`]).
    pub sampling: Sampling,
}

impl Default for TocConfig {
    fn default() -> Self {
        TocConfig {
            m: DEFAULT_M,
            depth: DEFAULT_DEPTH,
            program_tokens: DEFAULT_PROGRAM_TOKENS,
            max_tokens: 0,
            prompts: POT_PROMPTS.iter().map(|s| s.to_string()).collect(),
            sampling: Sampling { temperature: DEFAULT_TEMPERATURE, ..Sampling::default() },
        }
    }
}

impl TocConfig {
    /// Checks every value once.
    pub fn validate(&self) -> Result<()> {
        if self.m == 0 || self.depth == 0 || self.program_tokens == 0 {
            return Err(Error::Config("toc: m, depth and program_tokens must be at least 1".into()));
        }
        if self.prompts.is_empty() || self.prompts.iter().any(|p| !p.contains("{question}")) {
            return Err(Error::Config(
                "toc: the prompt pool must be non-empty and every prompt hold {question}".into(),
            ));
        }
        Ok(())
    }
}

/// Whether a scored program succeeded, and what it produced (see the module docs).
pub fn execution(v: &Verdict) -> Execution {
    let executed = v.components.get(orchard_rewards::code::EXECUTED).copied() == Some(1.0);
    let ok = v.error.is_none() && executed && (v.extracted.is_some() || v.score > 0.0);
    let answer = if ok { Some(v.extracted.clone().unwrap_or_else(|| "passed".into())) } else { None };
    let feedback = if ok { None } else { v.error.clone().or_else(|| v.failure.clone()) };
    Execution { ok, answer, feedback }
}

/// The majority vote over successful programs: the most frequent answer (ties: the one seen first).
pub fn majority_vote(tree: &Tree) -> Option<String> {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, n) in tree.nodes.iter().enumerate() {
        if let Some(Execution { ok: true, answer: Some(a), .. }) = &n.execution {
            let e = counts.entry(a.as_str()).or_insert((0, i));
            e.0 += 1;
        }
    }
    counts.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1))).map(|(a, _)| a.to_string())
}

/// The user message a child of `parent` is written from: pool prompt `prompt` and every ancestor's program and
/// error.
pub fn reflection_prompt(tree: &Tree, parent: NodeId, template: &str, question: &str) -> String {
    let mut text = template.replace("{question}", question);
    let attempts: Vec<NodeId> =
        tree.ancestry(parent).into_iter().filter(|&n| tree.nodes[n].kind == NodeKind::Program).collect();
    for (i, &a) in attempts.iter().enumerate() {
        let n = &tree.nodes[a];
        let err = n.execution.as_ref().and_then(|e| e.feedback.as_deref()).unwrap_or("no result");
        text.push_str(&format!(
            "\n\nAttempt {} was:\n```python\n{}\n```\nIt failed: {}",
            i + 1,
            orchard_rewards::code::extract_code(&n.text).trim(),
            err.trim()
        ));
    }
    if !attempts.is_empty() {
        text.push_str("\n\nWrite a corrected program.");
    }
    text
}

/// Grows a Tree-of-Code tree; the root's `execution.answer` is the majority vote.
pub fn grow<P: Policy>(
    cfg: &TocConfig,
    policy: &P,
    reward: &dyn Reward,
    task: &Task,
    question: &str,
    tree: &mut Tree,
) -> Result<usize> {
    let mut generated = 0;
    let mut frontier = vec![0];
    for _ in 0..cfg.depth {
        if frontier.is_empty() || (cfg.max_tokens > 0 && generated >= cfg.max_tokens) {
            break;
        }
        let mut requests = Vec::new();
        let mut origins = Vec::new();
        // Children that fit the budget left even at full length (at least one), in breadth-first order.
        let mut room = if cfg.max_tokens > 0 {
            (cfg.max_tokens.saturating_sub(generated) / cfg.program_tokens).max(1)
        } else {
            usize::MAX
        };
        for &parent in &frontier {
            for j in 0..cfg.m {
                if room == 0 {
                    break;
                }
                room -= 1;
                let s = seed::child(tree.nodes[parent].seed, j);
                let p = (seed::mix(s, seed::PROMPT_POOL) % cfg.prompts.len() as u64) as usize;
                let user = reflection_prompt(tree, parent, &cfg.prompts[p], question);
                let mut messages: Vec<Message> = tree.messages.iter().filter(|m| m.role == "system").cloned().collect();
                messages.push(Message::user(user));
                let start = policy.start(&messages).map_err(|e| Error::policy(&tree.task_id, e))?;
                requests.push(ExtendRequest {
                    context: start.tokens,
                    until: Until::End,
                    max_new: cfg.program_tokens,
                    sampling: cfg.sampling,
                    seed: s,
                });
                origins.push((parent, format!("prompt {p}, model 0")));
            }
        }
        let programs = policy.extend_batch(&requests).map_err(|e| Error::policy(&tree.task_id, e))?;
        let mut next = Vec::new();
        for ((ext, req), (parent, origin)) in programs.into_iter().zip(&requests).zip(origins) {
            generated += ext.generated;
            let id = tree.add_child(parent, NodeKind::Program, ext, req.seed);
            let verdict = Verdict::from(score_caught(reward, task, &tree.nodes[id].text));
            let exec = execution(&verdict);
            let node = &mut tree.nodes[id];
            node.terminal = true;
            node.visits = 1;
            node.q = if verdict.usable() { verdict.score } else { 0.0 };
            node.origin = Some(origin);
            if !exec.ok {
                next.push(id);
            }
            node.execution = Some(exec);
            node.verdict = Some(verdict);
        }
        frontier = next;
    }
    let vote = majority_vote(tree);
    tree.nodes[0].execution = Some(Execution { ok: vote.is_some(), answer: vote, feedback: None });
    Ok(generated)
}
