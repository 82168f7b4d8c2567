//! Pair selection: a pure function from the scored trajectories of one task to preference pairs.
//!
//! Steps, in order: drop trajectories whose task could not be scored (`reward.error`) or whose score is not finite;
//! order the rest by `sample_index`; **deduplicate identical completions** (the first sample of each distinct
//! completion text is kept); then pair by [`PairStrategy`], keep pairs whose margin is at least `min_margin` (and
//! always > 0), and keep at most `max_per_prompt`. The output order is deterministic (documented per strategy).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{PairKind, PairSide, PreferencePair, Trajectory};

/// Default score at or above which a trajectory counts as correct: 1.0, what every verifiable outcome reward in
/// Orchard gives a verified answer.
pub use orchard_core::DEFAULT_CORRECT_THRESHOLD;
/// Default minimum score margin: 0 (any strictly positive margin).
pub const DEFAULT_MIN_MARGIN: f64 = 0.0;

/// How chosen and rejected completions are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairStrategy {
    /// Every correct completion (score ≥ `correct_threshold`) against every incorrect one. Ordered by margin
    /// (largest first), then along diagonals (correct #0 vs incorrect #0, #1 vs #1 ..., then #0 vs #1 ...) so that a
    /// `max_per_prompt` cut keeps distinct completions on both sides as long as possible. The default.
    #[default]
    AllCorrectIncorrect,
    /// The best completion against the worst, then the second best against the second worst, ... (disjoint pairs,
    /// largest margin first) while the margin stays > 0; `max_per_prompt` defaults to 1 here.
    BestVsWorst,
}

impl fmt::Display for PairStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PairStrategy::AllCorrectIncorrect => "all-correct-incorrect",
            PairStrategy::BestVsWorst => "best-vs-worst",
        })
    }
}

impl FromStr for PairStrategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all-correct-incorrect" | "all" => Ok(PairStrategy::AllCorrectIncorrect),
            "best-vs-worst" => Ok(PairStrategy::BestVsWorst),
            other => {
                Err(Error::Source(format!("pair strategy {other:?}: expected all-correct-incorrect or best-vs-worst")))
            }
        }
    }
}

/// Pair-selection options (TOML table `[pairs]`; flags `--pairs`, `--max-pairs-per-prompt`, `--min-margin`,
/// `--correct-threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairSelection {
    /// Matching rule. Default [`PairStrategy::AllCorrectIncorrect`].
    pub strategy: PairStrategy,
    /// At most this many pairs per prompt. Default: unlimited (1 for best-vs-worst).
    pub max_per_prompt: Option<usize>,
    /// Keep pairs with `chosen.score - rejected.score >= min_margin`. Default [`DEFAULT_MIN_MARGIN`].
    pub min_margin: f64,
    /// Score at or above which a completion is correct. Default [`DEFAULT_CORRECT_THRESHOLD`].
    pub correct_threshold: f64,
}

impl Default for PairSelection {
    fn default() -> Self {
        PairSelection {
            strategy: PairStrategy::default(),
            max_per_prompt: None,
            min_margin: DEFAULT_MIN_MARGIN,
            correct_threshold: DEFAULT_CORRECT_THRESHOLD,
        }
    }
}

/// The trajectories that enter pairing: scorable, in `sample_index` order, first of each distinct completion.
pub fn dedup_scored(trajectories: &[Trajectory]) -> Vec<&Trajectory> {
    let mut usable: Vec<&Trajectory> = trajectories.iter().filter(|t| t.reward.usable_score().is_some()).collect();
    usable.sort_by_key(|t| t.sample_index);
    let mut seen = HashSet::new();
    usable.retain(|t| seen.insert(t.completion.as_str()));
    usable
}

/// Preference pairs among the trajectories of one task (trajectories of other tasks, if any, are paired within
/// their own task, tasks in order of first appearance).
pub fn select_pairs(trajectories: &[Trajectory], policy: &PairSelection) -> Vec<PreferencePair> {
    let mut tasks: Vec<&str> = Vec::new();
    for t in trajectories {
        if !tasks.contains(&t.task_id.as_str()) {
            tasks.push(&t.task_id);
        }
    }
    if tasks.len() > 1 {
        return tasks
            .into_iter()
            .flat_map(|id| {
                let own: Vec<Trajectory> = trajectories.iter().filter(|t| t.task_id == id).cloned().collect();
                select_pairs(&own, policy)
            })
            .collect();
    }
    let usable = dedup_scored(trajectories);
    let score = |t: &Trajectory| t.reward.score;
    let keep = |c: &Trajectory, r: &Trajectory| {
        let margin = score(c) - score(r);
        margin > 0.0 && margin >= policy.min_margin
    };
    let pairs: Vec<(&Trajectory, &Trajectory)> = match policy.strategy {
        PairStrategy::AllCorrectIncorrect => {
            let (mut correct, mut incorrect): (Vec<&Trajectory>, Vec<&Trajectory>) =
                usable.iter().partition(|t| score(t) >= policy.correct_threshold);
            // Best correct first, worst incorrect first; ties by sample index (the sort is stable).
            correct.sort_by(|a, b| score(b).total_cmp(&score(a)));
            incorrect.sort_by(|a, b| score(a).total_cmp(&score(b)));
            let n = incorrect.len().max(1);
            let mut candidates = Vec::with_capacity(correct.len() * incorrect.len());
            for (ci, c) in correct.iter().enumerate() {
                for (ri, r) in incorrect.iter().enumerate().filter(|(_, r)| keep(c, r)) {
                    candidates.push((score(c) - score(r), (ri + n - ci % n) % n, ci, *c, *r));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let pairs = candidates.into_iter().map(|(_, _, _, c, r)| (c, r));
            pairs.take(policy.max_per_prompt.unwrap_or(usize::MAX)).collect()
        }
        PairStrategy::BestVsWorst => {
            let mut ranked = usable.clone();
            ranked.sort_by(|a, b| score(b).total_cmp(&score(a)));
            let k = policy.max_per_prompt.unwrap_or(1);
            // Margins shrink as i grows, so the first pair that fails the margin ends the list.
            (0..ranked.len() / 2)
                .map(|i| (ranked[i], ranked[ranked.len() - 1 - i]))
                .take_while(|(c, r)| keep(c, r))
                .take(k)
                .collect()
        }
    };
    pairs.into_iter().map(|(c, r)| outcome_pair(c, r)).collect()
}

/// An outcome pair from two trajectories of the same task.
pub fn outcome_pair(chosen: &Trajectory, rejected: &Trajectory) -> PreferencePair {
    let side = |t: &Trajectory| PairSide {
        trajectory_id: t.id.clone(),
        text: t.completion.clone(),
        score: t.reward.score,
        behaviour_logp: t.logprob_sum(),
    };
    PreferencePair {
        run_id: chosen.run_id.clone(),
        task_id: chosen.task_id.clone(),
        prompt: chosen.prompt.clone(),
        prompt_messages: chosen.prompt_messages.clone(),
        prefix: String::new(),
        chosen: side(chosen),
        rejected: side(rejected),
        kind: PairKind::Outcome,
        terminal: true,
        weight: crate::record::pair::DEFAULT_PAIR_WEIGHT,
        label_smoothing: 0.0,
    }
}

/// How many trajectories are correct under `threshold` (scorable ones only).
pub fn count_correct(trajectories: &[Trajectory], threshold: f64) -> usize {
    trajectories.iter().filter(|t| t.reward.usable_score().is_some_and(|s| s >= threshold)).count()
}

#[cfg(test)]
mod tests;
