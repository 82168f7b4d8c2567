//! [`TreeNode`]: one node of a search tree, as `orchard search` writes it to `trees/`.
//!
//! A tree is the set of rows sharing `tree_id`. The root (depth 0, no parent) holds the prompt; every other node
//! holds one step (its text continues its parent's) or, for Tree-of-Code, a whole program. Values are whatever the
//! search backs up (MCTS mean reward, Monte-Carlo correctness rate ...), the reward is set on scored (usually
//! terminal) nodes. [`NodeDetail`] adds what a search knows beyond that (node kind, seed, per-token log-probs, critic
//! score, reward breakdown, execution result); its columns are optional on read, so files written before they
//! existed still load (with default details).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::columns::{list_values, named_value_list_type, opt_bool, opt_f64, opt_str, Columns, NamedValuesBuilder};
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
/// Column `kind`: what the node is (`root`, `step`, `rollout`, `program`, `sample`; empty in old files).
pub const KIND: &str = "kind";
/// Column `seed`: the seed its text was sampled with (0 for the root).
pub const SEED: &str = "seed";
/// Column `token_logprobs`: the sampler's log-prob of each token of `text`.
pub const TOKEN_LOGPROBS: &str = "token_logprobs";
/// Column `critic`: the critic's value of the node (Agent Q's ranking turned into a value), if a critic ran.
pub const CRITIC: &str = "critic";
/// Column `reward_components`: named parts of the reward.
pub const REWARD_COMPONENTS: &str = "reward_components";
/// Column `reward_extracted`: what the reward extracted (the final answer ...).
pub const REWARD_EXTRACTED: &str = "reward_extracted";
/// Column `reward_failure`: why the node's solution lost points.
pub const REWARD_FAILURE: &str = "reward_failure";
/// Column `reward_error`: set when the node could not be scored (reward panicked, timed out ...): a failed node.
pub const REWARD_ERROR: &str = "reward_error";
/// Column `exec_ok`: whether the node's program ran successfully (Tree-of-Code), else null.
pub const EXEC_OK: &str = "exec_ok";
/// Column `exec_answer`: what the program produced (`solution()`'s value ...), the ballot of the majority vote.
pub const EXEC_ANSWER: &str = "exec_answer";
/// Column `exec_feedback`: the execution's error text, shown to the children (execution-based reflection).
pub const EXEC_FEEDBACK: &str = "exec_feedback";
/// Column `origin`: how the node was generated when that varies (Tree-of-Code: prompt and model of the pools).
pub const ORIGIN: &str = "origin";

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
    /// What the search knows beyond the core columns (defaults when read from files written before it existed).
    #[serde(default)]
    pub detail: NodeDetail,
}

/// Search details of a [`TreeNode`] (flat columns in the file).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeDetail {
    /// `root`, `step`, `rollout`, `program` or `sample` (empty when unknown).
    pub kind: String,
    /// The seed the node's text was sampled with.
    pub seed: u64,
    /// The sampler's log-prob of each token.
    pub token_logprobs: Vec<f32>,
    /// The critic's value, if a critic ranked the node among its siblings.
    pub critic: Option<f64>,
    /// Named parts of the reward.
    pub reward_components: BTreeMap<String, f64>,
    /// What the reward extracted.
    pub reward_extracted: Option<String>,
    /// Why the solution lost points.
    pub reward_failure: Option<String>,
    /// Why the node could not be scored (a failed node: never paired).
    pub reward_error: Option<String>,
    /// Whether its program ran successfully (Tree-of-Code only).
    pub exec_ok: Option<bool>,
    /// What its program produced (the majority vote's ballot).
    pub exec_answer: Option<String>,
    /// The execution's error text (what the children reflect on).
    pub exec_feedback: Option<String>,
    /// How it was generated, when that varies (Tree-of-Code: `prompt 2, model 0`).
    pub origin: Option<String>,
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
        Field::new(KIND, DataType::Utf8, false),
        Field::new(SEED, DataType::UInt64, false),
        Field::new_list(TOKEN_LOGPROBS, Field::new_list_field(DataType::Float32, false), false),
        Field::new(CRITIC, DataType::Float64, true),
        Field::new(REWARD_COMPONENTS, named_value_list_type(), false),
        Field::new(REWARD_EXTRACTED, DataType::Utf8, true),
        Field::new(REWARD_FAILURE, DataType::Utf8, true),
        Field::new(REWARD_ERROR, DataType::Utf8, true),
        Field::new(EXEC_OK, DataType::Boolean, true),
        Field::new(EXEC_ANSWER, DataType::Utf8, true),
        Field::new(EXEC_FEEDBACK, DataType::Utf8, true),
        Field::new(ORIGIN, DataType::Utf8, true),
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
    detail: DetailBuilder,
}

/// The [`NodeDetail`] columns.
#[derive(Debug)]
struct DetailBuilder {
    kind: StringBuilder,
    seed: UInt64Builder,
    token_logprobs: ListBuilder<Float32Builder>,
    critic: Float64Builder,
    components: NamedValuesBuilder,
    extracted: StringBuilder,
    failure: StringBuilder,
    error: StringBuilder,
    exec_ok: BooleanBuilder,
    exec_answer: StringBuilder,
    exec_feedback: StringBuilder,
    origin: StringBuilder,
}

impl Default for DetailBuilder {
    fn default() -> Self {
        DetailBuilder {
            kind: StringBuilder::new(),
            seed: UInt64Builder::new(),
            token_logprobs: ListBuilder::new(Float32Builder::new())
                .with_field(Field::new_list_field(DataType::Float32, false)),
            critic: Float64Builder::new(),
            components: NamedValuesBuilder::default(),
            extracted: StringBuilder::new(),
            failure: StringBuilder::new(),
            error: StringBuilder::new(),
            exec_ok: BooleanBuilder::new(),
            exec_answer: StringBuilder::new(),
            exec_feedback: StringBuilder::new(),
            origin: StringBuilder::new(),
        }
    }
}

impl DetailBuilder {
    fn append(&mut self, d: &NodeDetail) {
        self.kind.append_value(&d.kind);
        self.seed.append_value(d.seed);
        self.token_logprobs.values().append_slice(&d.token_logprobs);
        self.token_logprobs.append(true);
        self.critic.append_option(d.critic);
        self.components.append(&d.reward_components);
        self.extracted.append_option(d.reward_extracted.as_deref());
        self.failure.append_option(d.reward_failure.as_deref());
        self.error.append_option(d.reward_error.as_deref());
        self.exec_ok.append_option(d.exec_ok);
        self.exec_answer.append_option(d.exec_answer.as_deref());
        self.exec_feedback.append_option(d.exec_feedback.as_deref());
        self.origin.append_option(d.origin.as_deref());
    }

    /// In schema order.
    fn finish(&mut self) -> Result<[ArrayRef; 12]> {
        Ok([
            Arc::new(self.kind.finish()),
            Arc::new(self.seed.finish()),
            Arc::new(self.token_logprobs.finish()),
            Arc::new(self.critic.finish()),
            Arc::new(self.components.finish()?),
            Arc::new(self.extracted.finish()),
            Arc::new(self.failure.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.exec_ok.finish()),
            Arc::new(self.exec_answer.finish()),
            Arc::new(self.exec_feedback.finish()),
            Arc::new(self.origin.finish()),
        ])
    }
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
            detail: DetailBuilder::default(),
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
        self.detail.append(&n.detail);
    }

    /// The rows appended so far as one struct array with [`TreeNode::schema`]'s fields; the builder is reset.
    pub fn finish(&mut self) -> Result<StructArray> {
        let mut columns: Vec<ArrayRef> = vec![
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
        columns.extend(self.detail.finish()?);
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
        let details = DetailColumns::new(&c)?;
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
                    detail: details.row(&c, i)?,
                })
            })
            .collect()
    }
}

/// The [`NodeDetail`] columns of a batch being read; each may be missing (files from before it existed).
struct DetailColumns<'a> {
    kind: Option<&'a arrow_array::StringArray>,
    seed: Option<&'a arrow_array::UInt64Array>,
    token_logprobs: Option<&'a arrow_array::ListArray>,
    critic: Option<&'a arrow_array::Float64Array>,
    components: Option<&'a arrow_array::ListArray>,
    texts: [Option<&'a arrow_array::StringArray>; 6],
    exec_ok: Option<&'a arrow_array::BooleanArray>,
}

impl<'a> DetailColumns<'a> {
    fn new(c: &Columns<'a>) -> Result<Self> {
        let text = |name| c.optional(name, Columns::string);
        Ok(DetailColumns {
            kind: c.optional(KIND, Columns::string)?,
            seed: c.optional(SEED, Columns::u64)?,
            token_logprobs: c.optional(TOKEN_LOGPROBS, Columns::list)?,
            critic: c.optional(CRITIC, Columns::f64)?,
            components: c.optional(REWARD_COMPONENTS, Columns::list)?,
            texts: [
                text(REWARD_EXTRACTED)?,
                text(REWARD_FAILURE)?,
                text(REWARD_ERROR)?,
                text(EXEC_ANSWER)?,
                text(EXEC_FEEDBACK)?,
                text(ORIGIN)?,
            ],
            exec_ok: c.optional(EXEC_OK, Columns::bool)?,
        })
    }

    fn row(&self, c: &Columns<'_>, i: usize) -> Result<NodeDetail> {
        let text = |k: usize| self.texts[k].and_then(|a| opt_str(a, i));
        Ok(NodeDetail {
            kind: self.kind.map(|a| a.value(i).to_string()).unwrap_or_default(),
            seed: self.seed.map_or(0, |a| a.value(i)),
            token_logprobs: match self.token_logprobs {
                Some(l) => list_values::<Float32Type>(TreeNode::NAME, l, i)?,
                None => Vec::new(),
            },
            critic: self.critic.and_then(|a| opt_f64(a, i)),
            reward_components: match self.components {
                Some(l) => c.named_values(l, i)?.into_iter().collect(),
                None => BTreeMap::new(),
            },
            reward_extracted: text(0),
            reward_failure: text(1),
            reward_error: text(2),
            exec_ok: self.exec_ok.and_then(|a| opt_bool(a, i)),
            exec_answer: text(3),
            exec_feedback: text(4),
            origin: text(5),
        })
    }
}
