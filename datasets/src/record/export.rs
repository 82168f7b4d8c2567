//! Rows of the single-file exports that are not pairs: KTO (unpaired) and PRM (stepwise).

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{BooleanBuilder, Float64Builder, ListBuilder, StringBuilder};
use arrow_array::types::Float64Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::columns::{list_values, Columns};
use super::Record;
use crate::error::{Error, Result};

/// One row of TRL's `KTOTrainer` unpaired format: `prompt`, `completion`, `label` (bool), plus `meta_*` columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KtoRow {
    /// The prompt text as the model saw it.
    pub prompt: String,
    /// One completion.
    pub completion: String,
    /// Whether it is desirable (its reward reached the correctness threshold).
    pub label: bool,
    /// `meta_task_id`.
    pub task_id: String,
    /// `meta_trajectory_id`.
    pub trajectory_id: String,
    /// `meta_score`: its reward.
    pub score: f64,
    /// `meta_behaviour_logp`: the sampler's log-prob of the completion.
    pub behaviour_logp: f64,
}

static KTO_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::Utf8, false),
        Field::new("completion", DataType::Utf8, false),
        Field::new("label", DataType::Boolean, false),
        Field::new("meta_task_id", DataType::Utf8, false),
        Field::new("meta_trajectory_id", DataType::Utf8, false),
        Field::new("meta_score", DataType::Float64, false),
        Field::new("meta_behaviour_logp", DataType::Float64, false),
    ]))
});

impl Record for KtoRow {
    type Layout = ();
    const NAME: &'static str = "kto";

    fn schema((): ()) -> SchemaRef {
        KTO_SCHEMA.clone()
    }

    fn to_batch(rows: &[Self], (): ()) -> Result<RecordBatch> {
        let (mut prompt, mut completion, mut label) =
            (StringBuilder::new(), StringBuilder::new(), BooleanBuilder::new());
        let (mut task, mut traj, mut score, mut logp) =
            (StringBuilder::new(), StringBuilder::new(), Float64Builder::new(), Float64Builder::new());
        for r in rows {
            prompt.append_value(&r.prompt);
            completion.append_value(&r.completion);
            label.append_value(r.label);
            task.append_value(&r.task_id);
            traj.append_value(&r.trajectory_id);
            score.append_value(r.score);
            logp.append_value(r.behaviour_logp);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(prompt.finish()),
            Arc::new(completion.finish()),
            Arc::new(label.finish()),
            Arc::new(task.finish()),
            Arc::new(traj.finish()),
            Arc::new(score.finish()),
            Arc::new(logp.finish()),
        ];
        Ok(RecordBatch::try_new(KTO_SCHEMA.clone(), columns)?)
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns::new(Self::NAME, batch);
        let (prompt, completion, label) = (c.string("prompt")?, c.string("completion")?, c.bool("label")?);
        let (task, traj) = (c.string("meta_task_id")?, c.string("meta_trajectory_id")?);
        let (score, logp) = (c.f64("meta_score")?, c.f64("meta_behaviour_logp")?);
        Ok((0..batch.num_rows())
            .map(|i| KtoRow {
                prompt: prompt.value(i).to_string(),
                completion: completion.value(i).to_string(),
                label: label.value(i),
                task_id: task.value(i).to_string(),
                trajectory_id: traj.value(i).to_string(),
                score: score.value(i),
                behaviour_logp: logp.value(i),
            })
            .collect())
    }
}

/// One row of TRL's `PRMTrainer` stepwise format: `prompt`, `completions` (`list<string>`, the steps), `labels`
/// (`list<double>`, soft per-step labels: the tree's backed-up node values), plus `meta_*` columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrmRow {
    /// The prompt text.
    pub prompt: String,
    /// The steps, root to leaf.
    pub completions: Vec<String>,
    /// One label per step.
    pub labels: Vec<f64>,
    /// `meta_task_id`.
    pub task_id: String,
    /// `meta_tree_id`.
    pub tree_id: String,
    /// `meta_leaf_id`: the node the path ends at.
    pub leaf_id: u64,
}

static PRM_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::Utf8, false),
        Field::new_list("completions", Field::new_list_field(DataType::Utf8, false), false),
        Field::new_list("labels", Field::new_list_field(DataType::Float64, false), false),
        Field::new("meta_task_id", DataType::Utf8, false),
        Field::new("meta_tree_id", DataType::Utf8, false),
        Field::new("meta_leaf_id", DataType::UInt64, false),
    ]))
});

impl Record for PrmRow {
    type Layout = ();
    const NAME: &'static str = "prm";

    fn schema((): ()) -> SchemaRef {
        PRM_SCHEMA.clone()
    }

    fn to_batch(rows: &[Self], (): ()) -> Result<RecordBatch> {
        let mut prompt = StringBuilder::new();
        let mut completions =
            ListBuilder::new(StringBuilder::new()).with_field(Field::new_list_field(DataType::Utf8, false));
        let mut labels =
            ListBuilder::new(Float64Builder::new()).with_field(Field::new_list_field(DataType::Float64, false));
        let (mut task, mut tree) = (StringBuilder::new(), StringBuilder::new());
        let mut leaf = arrow_array::builder::UInt64Builder::new();
        for r in rows {
            if r.completions.len() != r.labels.len() {
                return Err(Error::InvalidRecord {
                    record: Self::NAME,
                    task_id: r.task_id.clone(),
                    reason: format!("{} steps but {} labels", r.completions.len(), r.labels.len()),
                });
            }
            prompt.append_value(&r.prompt);
            for s in &r.completions {
                completions.values().append_value(s);
            }
            completions.append(true);
            labels.values().append_slice(&r.labels);
            labels.append(true);
            task.append_value(&r.task_id);
            tree.append_value(&r.tree_id);
            leaf.append_value(r.leaf_id);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(prompt.finish()),
            Arc::new(completions.finish()),
            Arc::new(labels.finish()),
            Arc::new(task.finish()),
            Arc::new(tree.finish()),
            Arc::new(leaf.finish()),
        ];
        Ok(RecordBatch::try_new(PRM_SCHEMA.clone(), columns)?)
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns::new(Self::NAME, batch);
        let (prompt, completions, labels) = (c.string("prompt")?, c.list("completions")?, c.list("labels")?);
        let (task, tree, leaf) = (c.string("meta_task_id")?, c.string("meta_tree_id")?, c.u64("meta_leaf_id")?);
        (0..batch.num_rows())
            .map(|i| {
                let steps = completions.value(i);
                let steps = arrow_array::cast::AsArray::as_string_opt::<i32>(steps.as_ref())
                    .ok_or_else(|| Error::Schema {
                        record: Self::NAME,
                        reason: "completions is not list<string>".into(),
                    })?
                    .iter()
                    .map(|s| s.unwrap_or_default().to_string())
                    .collect();
                Ok(PrmRow {
                    prompt: prompt.value(i).to_string(),
                    completions: steps,
                    labels: list_values::<Float64Type>(Self::NAME, labels, i)?,
                    task_id: task.value(i).to_string(),
                    tree_id: tree.value(i).to_string(),
                    leaf_id: leaf.value(i),
                })
            })
            .collect()
    }
}
