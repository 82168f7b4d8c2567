//! `orchard export`: one Parquet file for a trainer, from a run's committed parts.
//!
//! | format | from | columns |
//! |---|---|---|
//! | `trl` | `pairs/` | `prompt`, `chosen`, `rejected` strings + `meta_*` |
//! | `trl-conversational` | `pairs/` | `prompt`, `chosen`, `rejected` as `list<struct<role, content>>` + `meta_*` |
//! | `kto` | `trajectories/` | `prompt`, `completion`, `label` (bool) + `meta_*` |
//! | `prm` | `trees/` | `prompt`, `completions` (`list<string>`), `labels` (`list<double>`) + `meta_*` |
//!
//! **Step pairs.** TRL appends EOS to standard-format `chosen`/`rejected` and closes the assistant turn in the
//! conversational form, which is wrong for a step that does not end the solution (EXPORT_FORMATS.md, the Step-DPO
//! trap). Terminal step pairs (the step plus a rollout to the end) export in both forms — the standard form with the
//! shared prefix folded into `prompt`, the conversational form with prefix + continuation as the assistant message.
//! Non-terminal step pairs are dropped by default ([`StepPairs::Drop`], counted in the summary); with
//! [`StepPairs::Keep`] they are kept in the standard form only, flagged `meta_terminal = false`, for trainers that do
//! not append EOS (Orchard's own). The conversational form cannot hold them.
//!
//! **KTO** rows are the run's scorable trajectories, identical completions of a task deduplicated, labelled
//! `score >= correct_threshold`. **PRM** rows are the root-to-leaf paths of the run's trees, labelled with the
//! nodes' backed-up values (soft labels); a run without trees (plain sampling) cannot give per-step labels and is
//! refused rather than faked.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::part::{AtomicWriter, ParquetOptions};
use crate::record::{KtoRow, PairFormat, PairKind, PreferencePair, PrmRow, Trajectory, TreeNode};
use crate::run::RunReader;
use crate::select::{dedup_scored, DEFAULT_CORRECT_THRESHOLD};

/// The trainer format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// TRL DPO, standard form.
    Trl,
    /// TRL DPO, conversational form.
    TrlConversational,
    /// TRL KTO (unpaired).
    Kto,
    /// TRL PRM (stepwise).
    Prm,
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Trl => "trl",
            ExportFormat::TrlConversational => "trl-conversational",
            ExportFormat::Kto => "kto",
            ExportFormat::Prm => "prm",
        })
    }
}

impl FromStr for ExportFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "trl" => Ok(ExportFormat::Trl),
            "trl-conversational" => Ok(ExportFormat::TrlConversational),
            "kto" => Ok(ExportFormat::Kto),
            "prm" => Ok(ExportFormat::Prm),
            other => Err(Error::Export(format!("format {other:?}: expected trl, trl-conversational, kto or prm"))),
        }
    }
}

/// What to do with non-terminal step pairs in a TRL export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepPairs {
    /// Leave them out (counted in [`ExportSummary::dropped`]). The default.
    #[default]
    Drop,
    /// Keep them, standard form only, with `meta_terminal = false`.
    Keep,
}

/// Options of [`export`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExportOptions {
    /// The format.
    pub format: ExportFormat,
    /// Non-terminal step pairs. Default [`StepPairs::Drop`].
    pub step_pairs: StepPairs,
    /// KTO label threshold. Default: the run config's `pairs.correct_threshold`, else
    /// [`DEFAULT_CORRECT_THRESHOLD`].
    pub correct_threshold: Option<f64>,
    /// Compression and row groups of the output.
    pub parquet: ParquetOptions,
}

impl ExportOptions {
    /// Defaults for `format`.
    pub fn new(format: ExportFormat) -> Self {
        ExportOptions {
            format,
            step_pairs: StepPairs::Drop,
            correct_threshold: None,
            parquet: ParquetOptions::default(),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExportSummary {
    /// Rows written.
    pub rows: usize,
    /// Rows left out, by reason.
    pub dropped: BTreeMap<String, usize>,
}

/// Write `run`'s committed rows to the single file `out` (atomically) in `opts.format`.
pub fn export(run: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportSummary> {
    let reader = RunReader::open(run)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io { path: parent.to_path_buf(), source })?;
    }
    match opts.format {
        ExportFormat::Trl => export_pairs(&reader, out, PairFormat::Standard, opts),
        ExportFormat::TrlConversational => export_pairs(&reader, out, PairFormat::Conversational, opts),
        ExportFormat::Kto => export_kto(&reader, out, opts),
        ExportFormat::Prm => export_prm(&reader, out, opts),
    }
}

fn export_pairs(reader: &RunReader, out: &Path, format: PairFormat, opts: &ExportOptions) -> Result<ExportSummary> {
    if format == PairFormat::Conversational && opts.step_pairs == StepPairs::Keep {
        return Err(Error::Export(
            "non-terminal step pairs cannot be kept in the conversational form (TRL closes the assistant turn); \
             use --format trl or drop them"
                .into(),
        ));
    }
    let mut summary = ExportSummary::default();
    let mut writer = AtomicWriter::<PreferencePair>::create(out, format, &opts.parquet)?;
    reader.for_each_part::<PreferencePair>(|pairs| {
        let before = pairs.len();
        let kept: Vec<PreferencePair> = pairs
            .into_iter()
            .filter(|p| p.kind == PairKind::Outcome || p.terminal || opts.step_pairs == StepPairs::Keep)
            .collect();
        if kept.len() < before {
            *summary.dropped.entry("non-terminal step pairs".into()).or_default() += before - kept.len();
        }
        summary.rows += kept.len();
        writer.write(&kept)
    })?;
    writer.commit()?;
    Ok(summary)
}

/// The KTO threshold: the option, else the run config's `pairs.correct_threshold`, else the default.
fn threshold(reader: &RunReader, opts: &ExportOptions) -> f64 {
    opts.correct_threshold
        .or_else(|| reader.manifest().config.pointer("/pairs/correct_threshold").and_then(serde_json::Value::as_f64))
        .unwrap_or(DEFAULT_CORRECT_THRESHOLD)
}

fn export_kto(reader: &RunReader, out: &Path, opts: &ExportOptions) -> Result<ExportSummary> {
    let threshold = threshold(reader, opts);
    let mut summary = ExportSummary::default();
    let mut writer = AtomicWriter::<KtoRow>::create(out, (), &opts.parquet)?;
    reader.for_each_part::<Trajectory>(|trajectories| {
        // A task's rows are always in one part (one commit), so per-part grouping is per-task grouping.
        let mut by_task: Vec<(&str, Vec<Trajectory>)> = Vec::new();
        for t in &trajectories {
            match by_task.iter_mut().find(|(id, _)| *id == t.task_id) {
                Some((_, v)) => v.push(t.clone()),
                None => by_task.push((&t.task_id, vec![t.clone()])),
            }
        }
        let mut rows = Vec::new();
        for (_, group) in &by_task {
            let kept = dedup_scored(group);
            *summary.dropped.entry("unscorable or duplicate completions".into()).or_default() +=
                group.len() - kept.len();
            rows.extend(kept.into_iter().map(|t| KtoRow {
                prompt: t.prompt.clone(),
                completion: t.completion.clone(),
                label: t.reward.score >= threshold,
                task_id: t.task_id.clone(),
                trajectory_id: t.id.clone(),
                score: t.reward.score,
                behaviour_logp: t.logprob_sum(),
            }));
        }
        summary.rows += rows.len();
        writer.write(&rows)
    })?;
    writer.commit()?;
    Ok(summary)
}

fn export_prm(reader: &RunReader, out: &Path, opts: &ExportOptions) -> Result<ExportSummary> {
    if reader.manifest().counts.nodes == 0 {
        return Err(Error::Export(format!(
            "{} has no trees: PRM labels are per-step values from a tree search, which plain sampling does not produce",
            reader.path().display()
        )));
    }
    let mut summary = ExportSummary::default();
    let mut writer = AtomicWriter::<PrmRow>::create(out, (), &opts.parquet)?;
    reader.for_each_part::<TreeNode>(|nodes| {
        let rows = prm_rows(&nodes)?;
        summary.rows += rows.len();
        writer.write(&rows)
    })?;
    writer.commit()?;
    Ok(summary)
}

/// One PRM row per root-to-leaf path of each tree in `nodes` (trees in order of first appearance, leaves by id).
pub fn prm_rows(nodes: &[TreeNode]) -> Result<Vec<PrmRow>> {
    let mut trees: Vec<&str> = Vec::new();
    let mut by_tree: HashMap<&str, Vec<&TreeNode>> = HashMap::new();
    for n in nodes {
        let entry = by_tree.entry(&n.tree_id).or_default();
        if entry.is_empty() {
            trees.push(&n.tree_id);
        }
        entry.push(n);
    }
    let mut rows = Vec::new();
    for tree in trees {
        let members = &by_tree[tree];
        let by_id: HashMap<u64, &TreeNode> = members.iter().map(|n| (n.node_id, *n)).collect();
        let has_child: std::collections::HashSet<u64> = members.iter().filter_map(|n| n.parent_id).collect();
        let broken = |why: String| Error::Export(format!("tree {tree}: {why}"));
        let roots: Vec<&&TreeNode> = members.iter().filter(|n| n.parent_id.is_none()).collect();
        let [root] = roots.as_slice() else {
            return Err(broken(format!("{} roots", roots.len())));
        };
        let mut leaves: Vec<&&TreeNode> =
            members.iter().filter(|n| n.parent_id.is_some() && !has_child.contains(&n.node_id)).collect();
        leaves.sort_by_key(|n| n.node_id);
        for leaf in leaves {
            let leaf: &TreeNode = leaf;
            let mut path: Vec<&TreeNode> = vec![leaf];
            let mut cur: &TreeNode = leaf;
            while let Some(parent) = cur.parent_id {
                cur = by_id
                    .get(&parent)
                    .copied()
                    .ok_or_else(|| broken(format!("node {} has no parent {parent}", cur.node_id)))?;
                if path.len() > members.len() {
                    return Err(broken("cycle".into()));
                }
                path.push(cur);
            }
            path.pop(); // the root
            path.reverse();
            rows.push(PrmRow {
                prompt: root.text.clone(),
                completions: path.iter().map(|n| n.text.clone()).collect(),
                labels: path.iter().map(|n| n.value).collect(),
                task_id: leaf.task_id.clone(),
                tree_id: tree.to_string(),
                leaf_id: leaf.node_id,
            });
        }
    }
    Ok(rows)
}
