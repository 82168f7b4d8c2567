//! Deterministic synthetic rows and a fake sampling job, for tests, benches and the kill -9 resume test.
//!
//! The fake job runs the same pieces a real job runs ([`TaskSource::load`], [`RunDir::open`], [`RunDir::plan`],
//! [`select_pairs`], [`RunDir::push`], [`RunDir::finish`]) with a deterministic stand-in for the engine and the
//! reward. Not a stable API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::loaders::{splitmix64, TaskSource};
use crate::record::{
    ModelRecord, PairFormat, PairKind, PairSide, PreferencePair, RewardRecord, SamplingRecord, Trajectory, TreeNode,
};
use crate::run::{timing, Manifest, RunDir, RunSpec, TaskOutput, WriterOptions};
use crate::select::{select_pairs, PairSelection};
use crate::shard::{task_seed, Shard};
use crate::task::{Message, Task};

const WORDS: [&str; 24] = [
    "the", "total", "is", "so", "she", "has", "apples", "each", "and", "then", "we", "add", "multiply", "by", "left",
    "after", "buying", "cost", "dollars", "per", "hour", "minutes", "half", "twice",
];

/// `n` words drawn from a small vocabulary (text-like, compressible).
fn words(state: &mut u64, n: usize) -> String {
    let mut out = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[(splitmix64(state) % WORDS.len() as u64) as usize]);
    }
    out
}

/// `n` synthetic pairs with realistic sizes (prompt ≈ 60 words, completions ≈ 100 words), deterministic in `seed`.
pub fn synthetic_pairs(n: usize, seed: u64) -> Vec<PreferencePair> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            let task_id = format!("gsm8k/train/{}", i / 4);
            let question = words(&mut s, 60);
            let side = |s: &mut u64, k: u32| PairSide {
                trajectory_id: format!("{task_id}#{k}"),
                text: words(s, 100),
                score: f64::from(k == 0),
                behaviour_logp: -((splitmix64(s) % 20_000) as f64) / 100.0,
            };
            let (chosen, rejected) = (side(&mut s, 0), side(&mut s, 1));
            PreferencePair {
                run_id: "run-synthetic".into(),
                prompt: format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"),
                prompt_messages: vec![Message::user(question)],
                task_id,
                prefix: String::new(),
                chosen,
                rejected,
                kind: PairKind::Outcome,
                terminal: true,
                weight: 1.0,
                label_smoothing: 0.0,
            }
        })
        .collect()
}

/// The fake engine + reward: `n` deterministic completions of `task`, scored against its reference.
/// About a third are correct; completions repeat often enough to exercise deduplication.
pub fn fake_trajectories(task: &Task, n: u32, seed: u64, run_id: &str) -> Vec<Trajectory> {
    let reference = task.reference.clone().unwrap_or_else(|| "0".into());
    let base: i64 = reference.parse::<f64>().map(|v| v as i64).unwrap_or(0);
    (0..n)
        .map(|k| {
            let sample_seed = task_seed(seed, &format!("{}#{k}", task.id));
            let mut s = sample_seed;
            let r = splitmix64(&mut s);
            let answer = if r.is_multiple_of(3) { reference.clone() } else { (base + (r % 4) as i64 + 1).to_string() };
            let completion = format!("{} so the answer is {answer}.", words(&mut s, 5 + (r % 3) as usize));
            let token_ids: Vec<u32> = completion.bytes().map(u32::from).collect();
            let token_logprobs = token_ids.iter().map(|_| -((splitmix64(&mut s) % 512) as f32) / 256.0).collect();
            let correct = answer == reference;
            Trajectory {
                id: Trajectory::make_id(&task.id, k),
                run_id: run_id.to_string(),
                task_id: task.id.clone(),
                sample_index: k,
                prompt: format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", task.prompt),
                prompt_messages: task.chat(None),
                completion,
                token_ids,
                token_logprobs,
                finish_reason: "stop".into(),
                reward: RewardRecord {
                    score: f64::from(correct),
                    components: BTreeMap::from([("correct".to_string(), f64::from(correct))]),
                    extracted: Some(answer),
                    failure: (!correct).then(|| "wrong answer".to_string()),
                    error: None,
                },
                sampling: SamplingRecord { temperature: 1.0, top_p: 1.0, top_k: 0, min_p: 0.0, max_new_tokens: 256 },
                seed: sample_seed,
                model: fake_model(),
            }
        })
        .collect()
}

/// The fake job's model record.
pub fn fake_model() -> ModelRecord {
    ModelRecord { id: "fake-model".into(), hash: "sha256:fake".into() }
}

/// A two-level tree per task (root = prompt; children = first half of each distinct completion; grandchildren =
/// the rest, terminal, valued by reward) and its step pairs: one terminal (chosen/rejected continue to the end) and
/// one non-terminal (first halves only), when the task has both a correct and an incorrect completion.
pub fn fake_tree(task: &Task, trajectories: &[Trajectory]) -> (Vec<TreeNode>, Vec<PreferencePair>) {
    let Some(first) = trajectories.first() else {
        return (vec![], vec![]);
    };
    let tree_id = format!("{}/tree0", task.id);
    let node = |id: u64, parent: Option<u64>, depth: u32, text: &str, value: f64, terminal: bool| TreeNode {
        run_id: first.run_id.clone(),
        task_id: task.id.clone(),
        tree_id: tree_id.clone(),
        node_id: id,
        parent_id: parent,
        depth,
        text: text.to_string(),
        token_ids: text.bytes().map(u32::from).collect(),
        logprob_sum: -(text.len() as f64) / 8.0,
        visits: 1,
        value,
        reward: terminal.then_some(value),
        terminal,
        detail: Default::default(),
    };
    let mut nodes = vec![node(0, None, 0, &first.prompt, 0.0, false)];
    for t in crate::select::dedup_scored(trajectories) {
        let (head, tail) = t.completion.split_at(t.completion.len() / 2);
        let id = 1 + 2 * u64::from(t.sample_index);
        nodes.push(node(id, Some(0), 1, head, t.reward.score, false));
        nodes.push(node(id + 1, Some(id), 2, tail, t.reward.score, true));
    }
    let good = trajectories.iter().find(|t| t.reward.score >= 1.0);
    let bad = trajectories.iter().find(|t| t.reward.score < 1.0);
    let mut pairs = Vec::new();
    if let (Some(g), Some(b)) = (good, bad) {
        let side = |t: &Trajectory, text: &str| PairSide {
            trajectory_id: format!("{tree_id}/{}", 1 + 2 * t.sample_index),
            text: text.to_string(),
            score: t.reward.score,
            behaviour_logp: -(text.len() as f64) / 8.0,
        };
        let (gh, _) = g.completion.split_at(g.completion.len() / 2);
        let (bh, _) = b.completion.split_at(b.completion.len() / 2);
        let base = PreferencePair {
            run_id: g.run_id.clone(),
            task_id: task.id.clone(),
            prompt: g.prompt.clone(),
            prompt_messages: g.prompt_messages.clone(),
            prefix: String::new(),
            chosen: side(g, gh),
            rejected: side(b, bh),
            kind: PairKind::Step,
            terminal: false,
            weight: 1.0,
            label_smoothing: 0.0,
        };
        let terminal = PreferencePair {
            chosen: side(g, &g.completion),
            rejected: side(b, &b.completion),
            terminal: true,
            ..base.clone()
        };
        pairs.extend([base, terminal]);
    }
    (nodes, pairs)
}

/// Configuration of [`fake_job`]: everything that identifies the job goes into the run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FakeJob {
    /// Tasks.
    pub source: TaskSource,
    /// Samples per task.
    pub n: u32,
    /// Job seed.
    pub seed: u64,
    /// Pair selection.
    pub pairs: PairSelection,
    /// Pairs file layout.
    pub pair_format: PairFormat,
    /// Also write trees and step pairs.
    pub trees: bool,
    /// Shard (not part of the config fingerprint).
    #[serde(skip)]
    pub shard: Shard,
    /// Tasks per engine batch (not part of the config).
    #[serde(skip)]
    pub group: usize,
    /// Simulated engine time per sample (not part of the config).
    #[serde(skip)]
    pub sleep: Duration,
}

impl Default for FakeJob {
    fn default() -> Self {
        FakeJob {
            source: TaskSource::default(),
            n: 8,
            seed: 0,
            pairs: PairSelection::default(),
            pair_format: PairFormat::default(),
            trees: false,
            shard: Shard::default(),
            group: 4,
            sleep: Duration::ZERO,
        }
    }
}

/// Run the fake job into `out` (created or resumed) and return the final manifest.
pub fn fake_job(job: &FakeJob, out: &std::path::Path, opts: WriterOptions) -> Result<Manifest> {
    let started = Instant::now();
    let loaded = job.source.load()?;
    let config = serde_json::to_value(job).map_err(|e| crate::Error::json(out, e))?;
    let spec = RunSpec {
        shard: job.shard,
        pair_format: job.pair_format,
        model: Some(fake_model()),
        source: Some(loaded.report.clone()),
        ..RunSpec::new("fake-sample", config)
    };
    let mut run = RunDir::open(out, &spec, opts)?;
    run.add_timing(timing::LOAD, started.elapsed().as_secs_f64());
    let run_id = run.run_id().to_string();
    let todo = run.plan(loaded.tasks);
    for group in todo.chunks(job.group.max(1)) {
        let engine = Instant::now();
        std::thread::sleep(job.sleep * job.n * group.len() as u32);
        let sampled: Vec<Vec<Trajectory>> =
            group.iter().map(|t| fake_trajectories(t, job.n, job.seed, &run_id)).collect();
        run.add_timing(timing::ENGINE, engine.elapsed().as_secs_f64());
        for (task, trajectories) in group.iter().zip(sampled) {
            let select = Instant::now();
            let mut pairs = select_pairs(&trajectories, &job.pairs);
            let nodes = if job.trees {
                let (nodes, step_pairs) = fake_tree(task, &trajectories);
                pairs.extend(step_pairs);
                nodes
            } else {
                vec![]
            };
            run.add_timing(timing::SELECT, select.elapsed().as_secs_f64());
            run.push(TaskOutput { task_id: task.id.clone(), trajectories, pairs, nodes })?;
        }
    }
    run.finish()
}
