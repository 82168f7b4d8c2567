//! [`TreeNode`]: one node of a search tree (defined now; the tree-search jobs fill `trees/`).
//!
//! A tree is the set of rows sharing `tree_id`. The root (depth 0, no parent) holds the prompt; every other node
//! holds one step (its text continues its parent's). Values are whatever the search backs up (MCTS mean reward,
//! Monte-Carlo correctness rate ...), the reward is set on scored (usually terminal) nodes.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{BooleanBuilder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::types::UInt32Type;
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::columns::{list_values, opt_f64, Columns};
use super::Record;
use crate::error::Result;

/// Column `run_id`.
pub const RUN_ID: &str = "run_id";
/// Column `task_id`.
pub const TASK_ID: &str = "task_id";
/// Column `tree_id`: unique in a run (`{task_id}/tree{k}`).
pub const TREE_ID: &str = "tree_id";
/// Column `node_id`: unique within the tree; the root is usually 0.
pub const NODE_ID: &str = "node_id";
/// Column `parent_id`: null for the root.
pub const PARENT_ID: &str = "parent_id";
/// Column `depth`: 0 for the root.
pub const DEPTH: &str = "depth";
/// Column `text`: the prompt (root) or this node's step.
pub const TEXT: &str = "text";
/// Column `token_ids`: the tokens of `text`.
pub const TOKEN_IDS: &str = "token_ids";
/// Column `logprob_sum`: the sampler's log-prob of `token_ids` given the path above (0 for the root).
pub const LOGPROB_SUM: &str = "logprob_sum";
/// Column `visits`.
pub const VISITS: &str = "visits";
/// Column `value`: the backed-up value.
pub const VALUE: &str = "value";
/// Column `reward`: the reward of a scored node, else null.
pub const REWARD: &str = "reward";
/// Column `terminal`: whether the node ends a solution.
pub const TERMINAL: &str = "terminal";

/// One node of a search tree.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TreeNode {
    /// The run.
    pub run_id: String,
    /// The task.
    pub task_id: String,
    /// The tree (a task may have several).
    pub tree_id: String,
    /// Unique within the tree.
    pub node_id: u64,
    /// `None` for the root.
    pub parent_id: Option<u64>,
    /// 0 for the root.
    pub depth: u32,
    /// The prompt (root) or this node's step text.
    pub text: String,
    /// Tokens of `text`.
    pub token_ids: Vec<u32>,
    /// Sampler log-prob of `token_ids` given the path above.
    pub logprob_sum: f64,
    /// Visit count.
    pub visits: u64,
    /// Backed-up value.
    pub value: f64,
    /// Reward of a scored node.
    pub reward: Option<f64>,
    /// Whether the node ends a solution.
    pub terminal: bool,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(RUN_ID, DataType::Utf8, false),
        Field::new(TASK_ID, DataType::Utf8, false),
        Field::new(TREE_ID, DataType::Utf8, false),
        Field::new(NODE_ID, DataType::UInt64, false),
        Field::new(PARENT_ID, DataType::UInt64, true),
        Field::new(DEPTH, DataType::UInt32, false),
        Field::new(TEXT, DataType::Utf8, false),
        Field::new_list(TOKEN_IDS, Field::new_list_field(DataType::UInt32, false), false),
        Field::new(LOGPROB_SUM, DataType::Float64, false),
        Field::new(VISITS, DataType::UInt64, false),
        Field::new(VALUE, DataType::Float64, false),
        Field::new(REWARD, DataType::Float64, true),
        Field::new(TERMINAL, DataType::Boolean, false),
    ]))
});

/// Typed row builder for [`TreeNode`] columns.
#[derive(Debug)]
pub struct TreeNodeBuilder {
    run_id: StringBuilder,
    task_id: StringBuilder,
    tree_id: StringBuilder,
    node_id: UInt64Builder,
    parent_id: UInt64Builder,
    depth: UInt32Builder,
    text: StringBuilder,
    token_ids: ListBuilder<UInt32Builder>,
    logprob_sum: Float64Builder,
    visits: UInt64Builder,
    value: Float64Builder,
    reward: Float64Builder,
    terminal: BooleanBuilder,
}

impl Default for TreeNodeBuilder {
    fn default() -> Self {
        TreeNodeBuilder {
            run_id: StringBuilder::new(),
            task_id: StringBuilder::new(),
            tree_id: StringBuilder::new(),
            node_id: UInt64Builder::new(),
            parent_id: UInt64Builder::new(),
            depth: UInt32Builder::new(),
            text: StringBuilder::new(),
            token_ids: ListBuilder::new(UInt32Builder::new())
                .with_field(Field::new_list_field(DataType::UInt32, false)),
            logprob_sum: Float64Builder::new(),
            visits: UInt64Builder::new(),
            value: Float64Builder::new(),
            reward: Float64Builder::new(),
            terminal: BooleanBuilder::new(),
        }
    }
}

impl TreeNodeBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one row.
    pub fn append(&mut self, n: &TreeNode) {
        self.run_id.append_value(&n.run_id);
        self.task_id.append_value(&n.task_id);
        self.tree_id.append_value(&n.tree_id);
        self.node_id.append_value(n.node_id);
        self.parent_id.append_option(n.parent_id);
        self.depth.append_value(n.depth);
        self.text.append_value(&n.text);
        self.token_ids.values().append_slice(&n.token_ids);
        self.token_ids.append(true);
        self.logprob_sum.append_value(n.logprob_sum);
        self.visits.append_value(n.visits);
        self.value.append_value(n.value);
        self.reward.append_option(n.reward);
        self.terminal.append_value(n.terminal);
    }

    /// The rows appended so far as one struct array with [`TreeNode::schema`]'s fields; the builder is reset.
    pub fn finish(&mut self) -> Result<StructArray> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.run_id.finish()),
            Arc::new(self.task_id.finish()),
            Arc::new(self.tree_id.finish()),
            Arc::new(self.node_id.finish()),
            Arc::new(self.parent_id.finish()),
            Arc::new(self.depth.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.token_ids.finish()),
            Arc::new(self.logprob_sum.finish()),
            Arc::new(self.visits.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.reward.finish()),
            Arc::new(self.terminal.finish()),
        ];
        Ok(StructArray::try_new(SCHEMA.fields().clone(), columns, None)?)
    }
}

impl<'a> Extend<&'a TreeNode> for TreeNodeBuilder {
    fn extend<I: IntoIterator<Item = &'a TreeNode>>(&mut self, iter: I) {
        iter.into_iter().for_each(|n| self.append(n));
    }
}

impl Record for TreeNode {
    type Layout = ();
    const NAME: &'static str = "trees";

    fn schema((): ()) -> SchemaRef {
        SCHEMA.clone()
    }

    fn to_batch(rows: &[Self], (): ()) -> Result<RecordBatch> {
        let mut b = TreeNodeBuilder::new();
        b.extend(rows);
        Ok(RecordBatch::from(b.finish()?))
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns::new(Self::NAME, batch);
        let (run_id, task_id, tree_id) = (c.string(RUN_ID)?, c.string(TASK_ID)?, c.string(TREE_ID)?);
        let (node_id, parent_id, depth, text) = (c.u64(NODE_ID)?, c.u64(PARENT_ID)?, c.u32(DEPTH)?, c.string(TEXT)?);
        let (token_ids, logprob_sum, visits) = (c.list(TOKEN_IDS)?, c.f64(LOGPROB_SUM)?, c.u64(VISITS)?);
        let (value, reward, terminal) = (c.f64(VALUE)?, c.f64(REWARD)?, c.bool(TERMINAL)?);
        (0..batch.num_rows())
            .map(|i| {
                Ok(TreeNode {
                    run_id: run_id.value(i).to_string(),
                    task_id: task_id.value(i).to_string(),
                    tree_id: tree_id.value(i).to_string(),
                    node_id: node_id.value(i),
                    parent_id: parent_id.is_valid(i).then(|| parent_id.value(i)),
                    depth: depth.value(i),
                    text: text.value(i).to_string(),
                    token_ids: list_values::<UInt32Type>(Self::NAME, token_ids, i)?,
                    logprob_sum: logprob_sum.value(i),
                    visits: visits.value(i),
                    value: value.value(i),
                    reward: opt_f64(reward, i),
                    terminal: terminal.value(i),
                })
            })
            .collect()
    }
}
