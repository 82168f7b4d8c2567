//! [`Trajectory`]: one sampled completion of one task, with its tokens, sampler log-probs and reward.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Float32Builder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::columns::{list_values, named_value_list_type, opt_str, Columns, MessagesBuilder, NamedValuesBuilder};
use super::{message_list_type, Record};
use crate::error::Result;
use crate::task::Message;

/// Column `id`: `{task_id}#{sample_index}`, unique in a run.
pub const ID: &str = "id";
/// Column `run_id`.
pub const RUN_ID: &str = "run_id";
/// Column `task_id`.
pub const TASK_ID: &str = "task_id";
/// Column `sample_index`: 0-based index among the task's samples.
pub const SAMPLE_INDEX: &str = "sample_index";
/// Column `prompt`: the prompt text exactly as the model saw it (chat template applied).
pub const PROMPT: &str = "prompt";
/// Column `prompt_messages`: the prompt as chat messages.
pub const PROMPT_MESSAGES: &str = "prompt_messages";
/// Column `completion`: the generated text.
pub const COMPLETION: &str = "completion";
/// Column `token_ids`: the generated token ids.
pub const TOKEN_IDS: &str = "token_ids";
/// Column `token_logprobs`: the sampler's log-probability of each generated token.
pub const TOKEN_LOGPROBS: &str = "token_logprobs";
/// Column `logprob_sum`: the sum of `token_logprobs` (in f64): the behaviour log-prob of the completion.
pub const LOGPROB_SUM: &str = "logprob_sum";
/// Column `num_tokens`: the length of `token_ids`.
pub const NUM_TOKENS: &str = "num_tokens";
/// Column `finish_reason`: `stop`, `length` ... as the engine reports it.
pub const FINISH_REASON: &str = "finish_reason";
/// Column `reward`: the scalar reward.
pub const REWARD: &str = "reward";
/// Column `reward_components`: named parts of the reward.
pub const REWARD_COMPONENTS: &str = "reward_components";
/// Column `reward_extracted`: what the reward extracted from the completion (the final answer ...).
pub const REWARD_EXTRACTED: &str = "reward_extracted";
/// Column `reward_failure`: why the completion lost points.
pub const REWARD_FAILURE: &str = "reward_failure";
/// Column `reward_error`: set when the task could not be scored; such rows are never paired.
pub const REWARD_ERROR: &str = "reward_error";
/// Column `sampling`: the sampling parameters.
pub const SAMPLING: &str = "sampling";
/// Column `seed`: the seed of this sample's RNG stream.
pub const SEED: &str = "seed";
/// Column `model_id`.
pub const MODEL_ID: &str = "model_id";
/// Column `model_hash`: content hash of the model weights.
pub const MODEL_HASH: &str = "model_hash";

/// Sampling parameters of a trajectory (the engine's `SamplingParams`, less stop lists which live in the manifest).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SamplingRecord {
    /// Softmax temperature (0 = greedy).
    pub temperature: f32,
    /// Nucleus threshold (1 = off).
    pub top_p: f32,
    /// Top-k (0 = off).
    pub top_k: u32,
    /// Min-p (0 = off).
    pub min_p: f32,
    /// Generation budget.
    pub max_new_tokens: u32,
}

/// The model that produced a trajectory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The model's id (`SmolLM2-135M-Instruct.Q4_1`).
    pub id: String,
    /// Content hash of its weights (`sha256:…`).
    pub hash: String,
}

/// A reward's verdict on a trajectory (mirrors the rewards crate's `Outcome`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardRecord {
    /// The scalar reward.
    pub score: f64,
    /// Named parts of the score (`correct`, `format` ...).
    pub components: BTreeMap<String, f64>,
    /// What was extracted from the completion.
    pub extracted: Option<String>,
    /// Why the completion did not get full marks.
    pub failure: Option<String>,
    /// Set when the task could not be scored: such a trajectory is kept but never paired.
    pub error: Option<String>,
}

impl RewardRecord {
    /// A reward with this score and nothing else.
    pub fn new(score: f64) -> Self {
        RewardRecord { score, ..Default::default() }
    }

    /// The score, unless the task could not be scored.
    pub fn usable_score(&self) -> Option<f64> {
        (self.error.is_none() && self.score.is_finite()).then_some(self.score)
    }
}

/// One sampled completion of one task.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Trajectory {
    /// `{task_id}#{sample_index}` (see [`Trajectory::make_id`]).
    pub id: String,
    /// The run that produced it.
    pub run_id: String,
    /// The task.
    pub task_id: String,
    /// 0-based index among the task's samples.
    pub sample_index: u32,
    /// The prompt text exactly as the model saw it (chat template applied).
    pub prompt: String,
    /// The prompt as chat messages (ends in a user turn).
    pub prompt_messages: Vec<Message>,
    /// The generated text.
    pub completion: String,
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// The sampler's log-probability of each generated token.
    pub token_logprobs: Vec<f32>,
    /// Why generation stopped (`stop`, `length` ...).
    pub finish_reason: String,
    /// The reward.
    pub reward: RewardRecord,
    /// Sampling parameters.
    pub sampling: SamplingRecord,
    /// Seed of this sample's RNG stream.
    pub seed: u64,
    /// The model.
    pub model: ModelRecord,
}

impl Trajectory {
    /// The id of sample `index` of `task_id`.
    pub fn make_id(task_id: &str, index: u32) -> String {
        format!("{task_id}#{index}")
    }

    /// Sum of the per-token log-probs, accumulated in f64: the behaviour log-probability of the completion.
    pub fn logprob_sum(&self) -> f64 {
        self.token_logprobs.iter().map(|&l| f64::from(l)).sum()
    }
}

fn sampling_fields() -> Fields {
    Fields::from(vec![
        Field::new("temperature", DataType::Float32, false),
        Field::new("top_p", DataType::Float32, false),
        Field::new("top_k", DataType::UInt32, false),
        Field::new("min_p", DataType::Float32, false),
        Field::new("max_new_tokens", DataType::UInt32, false),
    ])
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(ID, DataType::Utf8, false),
        Field::new(RUN_ID, DataType::Utf8, false),
        Field::new(TASK_ID, DataType::Utf8, false),
        Field::new(SAMPLE_INDEX, DataType::UInt32, false),
        Field::new(PROMPT, DataType::Utf8, false),
        Field::new(PROMPT_MESSAGES, message_list_type(), false),
        Field::new(COMPLETION, DataType::Utf8, false),
        Field::new_list(TOKEN_IDS, Field::new_list_field(DataType::UInt32, false), false),
        Field::new_list(TOKEN_LOGPROBS, Field::new_list_field(DataType::Float32, false), false),
        Field::new(LOGPROB_SUM, DataType::Float64, false),
        Field::new(NUM_TOKENS, DataType::UInt32, false),
        Field::new(FINISH_REASON, DataType::Utf8, false),
        Field::new(REWARD, DataType::Float64, false),
        Field::new(REWARD_COMPONENTS, named_value_list_type(), false),
        Field::new(REWARD_EXTRACTED, DataType::Utf8, true),
        Field::new(REWARD_FAILURE, DataType::Utf8, true),
        Field::new(REWARD_ERROR, DataType::Utf8, true),
        Field::new_struct(SAMPLING, sampling_fields(), false),
        Field::new(SEED, DataType::UInt64, false),
        Field::new(MODEL_ID, DataType::Utf8, false),
        Field::new(MODEL_HASH, DataType::Utf8, false),
    ]))
});

/// Typed row builder for [`Trajectory`] columns.
#[derive(Debug)]
pub struct TrajectoryBuilder {
    id: StringBuilder,
    run_id: StringBuilder,
    task_id: StringBuilder,
    sample_index: UInt32Builder,
    prompt: StringBuilder,
    prompt_messages: MessagesBuilder,
    completion: StringBuilder,
    tokens: TokenColumns,
    finish_reason: StringBuilder,
    reward: RewardColumns,
    sampling: SamplingColumns,
    seed: UInt64Builder,
    model_id: StringBuilder,
    model_hash: StringBuilder,
}

#[derive(Debug)]
struct TokenColumns {
    ids: ListBuilder<UInt32Builder>,
    logprobs: ListBuilder<Float32Builder>,
    logprob_sum: Float64Builder,
    count: UInt32Builder,
}

impl Default for TokenColumns {
    fn default() -> Self {
        TokenColumns {
            ids: ListBuilder::new(UInt32Builder::new()).with_field(Field::new_list_field(DataType::UInt32, false)),
            logprobs: ListBuilder::new(Float32Builder::new())
                .with_field(Field::new_list_field(DataType::Float32, false)),
            logprob_sum: Float64Builder::new(),
            count: UInt32Builder::new(),
        }
    }
}

impl TokenColumns {
    fn append(&mut self, t: &Trajectory) {
        self.ids.values().append_slice(&t.token_ids);
        self.ids.append(true);
        self.logprobs.values().append_slice(&t.token_logprobs);
        self.logprobs.append(true);
        self.logprob_sum.append_value(t.logprob_sum());
        self.count.append_value(u32::try_from(t.token_ids.len()).unwrap_or(u32::MAX));
    }

    /// `token_ids`, `token_logprobs`, `logprob_sum`, `num_tokens`, in schema order.
    fn finish(&mut self) -> [ArrayRef; 4] {
        [
            Arc::new(self.ids.finish()),
            Arc::new(self.logprobs.finish()),
            Arc::new(self.logprob_sum.finish()),
            Arc::new(self.count.finish()),
        ]
    }
}

#[derive(Debug, Default)]
struct RewardColumns {
    score: Float64Builder,
    components: NamedValuesBuilder,
    extracted: StringBuilder,
    failure: StringBuilder,
    error: StringBuilder,
}

#[derive(Debug, Default)]
struct SamplingColumns {
    temperature: Float32Builder,
    top_p: Float32Builder,
    top_k: UInt32Builder,
    min_p: Float32Builder,
    max_new_tokens: UInt32Builder,
}

impl SamplingColumns {
    fn append(&mut self, s: &SamplingRecord) {
        self.temperature.append_value(s.temperature);
        self.top_p.append_value(s.top_p);
        self.top_k.append_value(s.top_k);
        self.min_p.append_value(s.min_p);
        self.max_new_tokens.append_value(s.max_new_tokens);
    }

    fn finish(&mut self) -> Result<StructArray> {
        Ok(StructArray::try_new(
            sampling_fields(),
            vec![
                Arc::new(self.temperature.finish()) as ArrayRef,
                Arc::new(self.top_p.finish()),
                Arc::new(self.top_k.finish()),
                Arc::new(self.min_p.finish()),
                Arc::new(self.max_new_tokens.finish()),
            ],
            None,
        )?)
    }
}

impl Default for TrajectoryBuilder {
    fn default() -> Self {
        TrajectoryBuilder {
            id: StringBuilder::new(),
            run_id: StringBuilder::new(),
            task_id: StringBuilder::new(),
            sample_index: UInt32Builder::new(),
            prompt: StringBuilder::new(),
            prompt_messages: MessagesBuilder::default(),
            completion: StringBuilder::new(),
            tokens: TokenColumns::default(),
            finish_reason: StringBuilder::new(),
            reward: RewardColumns::default(),
            sampling: SamplingColumns::default(),
            seed: UInt64Builder::new(),
            model_id: StringBuilder::new(),
            model_hash: StringBuilder::new(),
        }
    }
}

impl TrajectoryBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one row.
    pub fn append(&mut self, t: &Trajectory) {
        self.id.append_value(&t.id);
        self.run_id.append_value(&t.run_id);
        self.task_id.append_value(&t.task_id);
        self.sample_index.append_value(t.sample_index);
        self.prompt.append_value(&t.prompt);
        self.prompt_messages.append(t.prompt_messages.iter().map(|m| (m.role.as_str(), m.content.as_str())));
        self.completion.append_value(&t.completion);
        self.tokens.append(t);
        self.finish_reason.append_value(&t.finish_reason);
        self.reward.score.append_value(t.reward.score);
        self.reward.components.append(&t.reward.components);
        self.reward.extracted.append_option(t.reward.extracted.as_deref());
        self.reward.failure.append_option(t.reward.failure.as_deref());
        self.reward.error.append_option(t.reward.error.as_deref());
        self.sampling.append(&t.sampling);
        self.seed.append_value(t.seed);
        self.model_id.append_value(&t.model.id);
        self.model_hash.append_value(&t.model.hash);
    }

    /// The rows appended so far as one struct array with [`Trajectory::schema`]'s fields; the builder is reset.
    pub fn finish(&mut self) -> Result<StructArray> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.run_id.finish()),
            Arc::new(self.task_id.finish()),
            Arc::new(self.sample_index.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.prompt_messages.finish()?),
            Arc::new(self.completion.finish()),
        ];
        columns.extend(self.tokens.finish());
        columns.extend([
            Arc::new(self.finish_reason.finish()) as ArrayRef,
            Arc::new(self.reward.score.finish()),
            Arc::new(self.reward.components.finish()?),
            Arc::new(self.reward.extracted.finish()),
            Arc::new(self.reward.failure.finish()),
            Arc::new(self.reward.error.finish()),
            Arc::new(self.sampling.finish()?),
            Arc::new(self.seed.finish()),
            Arc::new(self.model_id.finish()),
            Arc::new(self.model_hash.finish()),
        ]);
        Ok(StructArray::try_new(SCHEMA.fields().clone(), columns, None)?)
    }
}

impl<'a> Extend<&'a Trajectory> for TrajectoryBuilder {
    fn extend<I: IntoIterator<Item = &'a Trajectory>>(&mut self, iter: I) {
        iter.into_iter().for_each(|t| self.append(t));
    }
}

impl Record for Trajectory {
    type Layout = ();
    const NAME: &'static str = "trajectories";

    fn schema((): ()) -> SchemaRef {
        SCHEMA.clone()
    }

    fn to_batch(rows: &[Self], (): ()) -> Result<RecordBatch> {
        let mut b = TrajectoryBuilder::new();
        b.extend(rows);
        Ok(RecordBatch::from(b.finish()?))
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns::new(Self::NAME, batch);
        let (id, run_id, task_id) = (c.string(ID)?, c.string(RUN_ID)?, c.string(TASK_ID)?);
        let (sample_index, prompt, messages) = (c.u32(SAMPLE_INDEX)?, c.string(PROMPT)?, c.list(PROMPT_MESSAGES)?);
        let (completion, token_ids, logprobs) = (c.string(COMPLETION)?, c.list(TOKEN_IDS)?, c.list(TOKEN_LOGPROBS)?);
        let (finish, reward, components) = (c.string(FINISH_REASON)?, c.f64(REWARD)?, c.list(REWARD_COMPONENTS)?);
        let (extracted, failure, error) =
            (c.string(REWARD_EXTRACTED)?, c.string(REWARD_FAILURE)?, c.string(REWARD_ERROR)?);
        let sampling = c.structs(SAMPLING)?;
        let s = Columns::new(Self::NAME, &RecordBatch::from(sampling.clone())).sampling_columns()?;
        let (seed, model_id, model_hash) = (c.u64(SEED)?, c.string(MODEL_ID)?, c.string(MODEL_HASH)?);
        (0..batch.num_rows())
            .map(|i| {
                Ok(Trajectory {
                    id: id.value(i).to_string(),
                    run_id: run_id.value(i).to_string(),
                    task_id: task_id.value(i).to_string(),
                    sample_index: sample_index.value(i),
                    prompt: prompt.value(i).to_string(),
                    prompt_messages: c.messages(messages, i)?,
                    completion: completion.value(i).to_string(),
                    token_ids: list_values::<UInt32Type>(Self::NAME, token_ids, i)?,
                    token_logprobs: list_values::<Float32Type>(Self::NAME, logprobs, i)?,
                    finish_reason: finish.value(i).to_string(),
                    reward: RewardRecord {
                        score: reward.value(i),
                        components: c.named_values(components, i)?.into_iter().collect(),
                        extracted: opt_str(extracted, i),
                        failure: opt_str(failure, i),
                        error: opt_str(error, i),
                    },
                    sampling: s[i],
                    seed: seed.value(i),
                    model: ModelRecord { id: model_id.value(i).to_string(), hash: model_hash.value(i).to_string() },
                })
            })
            .collect()
    }
}

impl Columns<'_> {
    fn sampling_columns(&self) -> Result<Vec<SamplingRecord>> {
        let (t, p, k) = (self.f32("temperature")?, self.f32("top_p")?, self.u32("top_k")?);
        let (m, n) = (self.f32("min_p")?, self.u32("max_new_tokens")?);
        Ok((0..self.batch.num_rows())
            .map(|i| SamplingRecord {
                temperature: t.value(i),
                top_p: p.value(i),
                top_k: k.value(i),
                min_p: m.value(i),
                max_new_tokens: n.value(i),
            })
            .collect())
    }
}
