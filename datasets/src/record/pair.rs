//! [`PreferencePair`]: a chosen and a rejected completion of one prompt, in TRL's DPO layout.
//!
//! TRL's `DPOTrainer` reads `prompt`, `chosen`, `rejected` in one of two forms, fixed per file ([`PairFormat`]):
//! *standard* (three strings) or *conversational* (`list<struct<role, content>>`, the prompt ending in a user turn,
//! `chosen`/`rejected` holding the assistant message). Everything else goes into `meta_*` columns, which TRL drops
//! (`remove_unused_columns`) and which never collide with TRL's own names (`ref_chosen_logps` …).
//!
//! A file is lossless in either form: the standard form keeps the prompt's messages in `meta_prompt_messages`, the
//! conversational form keeps the rendered prompt text in `meta_prompt_text`, so a run written in one form exports to
//! the other.
//!
//! **Step pairs** ([`PairKind::Step`]) share an assistant-side prefix (the solution so far) and differ in the next
//! step. The standard form folds the prefix into `prompt` (so `prompt` = prompt text + prefix and `chosen` is the
//! step); the conversational form puts prefix + step into the assistant message (the shared prefix contributes the
//! same log-probs to both sides, so DPO's margin is unchanged). `meta_terminal` says whether the chosen/rejected
//! continuations end the solution; non-terminal step pairs are a trap for TRL (it appends EOS / closes the turn) and
//! `orchard export` drops them unless asked otherwise (see `docs/FORMATS.md`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::columns::{Columns, MessagesBuilder};
use super::{message_list_type, Record};
use crate::error::{Error, Result};
use crate::task::Message;

/// Column `prompt` (TRL): string (standard) or `list<struct<role, content>>` (conversational).
pub const PROMPT: &str = "prompt";
/// Column `chosen` (TRL): string or a list with the assistant message.
pub const CHOSEN: &str = "chosen";
/// Column `rejected` (TRL): string or a list with the assistant message.
pub const REJECTED: &str = "rejected";
/// Column `meta_task_id`.
pub const META_TASK_ID: &str = "meta_task_id";
/// Column `meta_run_id`.
pub const META_RUN_ID: &str = "meta_run_id";
/// Column `meta_kind`: `outcome` or `step`.
pub const META_KIND: &str = "meta_kind";
/// Column `meta_terminal`: whether chosen and rejected end the solution (always true for outcome pairs).
pub const META_TERMINAL: &str = "meta_terminal";
/// Column `meta_score_chosen`.
pub const META_SCORE_CHOSEN: &str = "meta_score_chosen";
/// Column `meta_score_rejected`.
pub const META_SCORE_REJECTED: &str = "meta_score_rejected";
/// Column `meta_margin`: `meta_score_chosen - meta_score_rejected`.
pub const META_MARGIN: &str = "meta_margin";
/// Column `meta_behaviour_logp_chosen`: sum of the sampler's log-probs of the chosen continuation.
pub const META_BEHAVIOUR_LOGP_CHOSEN: &str = "meta_behaviour_logp_chosen";
/// Column `meta_behaviour_logp_rejected`.
pub const META_BEHAVIOUR_LOGP_REJECTED: &str = "meta_behaviour_logp_rejected";
/// Column `meta_chosen_id`: the chosen trajectory (or tree node) id.
pub const META_CHOSEN_ID: &str = "meta_chosen_id";
/// Column `meta_rejected_id`.
pub const META_REJECTED_ID: &str = "meta_rejected_id";
/// Column `meta_prefix`: the shared assistant prefix of a step pair (empty for outcome pairs).
pub const META_PREFIX: &str = "meta_prefix";
/// Column `meta_prompt_messages` (standard form only): the prompt as chat messages.
pub const META_PROMPT_MESSAGES: &str = "meta_prompt_messages";
/// Column `meta_prompt_text` (conversational form only): the prompt text as the model saw it.
pub const META_PROMPT_TEXT: &str = "meta_prompt_text";
/// Column `meta_weight`: the pair's weight in the loss (1 unless a pair policy says otherwise). Files written before
/// the column existed read as 1.
pub const META_WEIGHT: &str = "meta_weight";
/// Column `meta_label_smoothing`: the conservative-DPO flip rate ε for this pair (MCTS-DPO derives it from visit
/// counts; 0 = plain DPO). Files written before the column existed read as 0.
pub const META_LABEL_SMOOTHING: &str = "meta_label_smoothing";

/// Default [`PreferencePair::weight`].
pub const DEFAULT_PAIR_WEIGHT: f64 = 1.0;

fn default_weight() -> f64 {
    DEFAULT_PAIR_WEIGHT
}

/// Which of TRL's two DPO layouts a pairs file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairFormat {
    /// `prompt`, `chosen`, `rejected` are strings. The default.
    #[default]
    Standard,
    /// `prompt`, `chosen`, `rejected` are `list<struct<role, content>>`.
    Conversational,
}

impl FromStr for PairFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "standard" => Ok(PairFormat::Standard),
            "conversational" => Ok(PairFormat::Conversational),
            other => Err(Error::Source(format!("pair format {other:?}: expected standard or conversational"))),
        }
    }
}

/// Whether a pair compares whole solutions or next steps after a shared prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairKind {
    /// Two full completions of the prompt (trajectory-level DPO).
    Outcome,
    /// Two continuations of a shared prefix (step-level DPO, Agent Q / MCTS-DPO / Step-DPO).
    Step,
}

impl PairKind {
    /// `outcome` or `step`.
    pub fn name(self) -> &'static str {
        match self {
            PairKind::Outcome => "outcome",
            PairKind::Step => "step",
        }
    }
}

impl fmt::Display for PairKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One side of a pair.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PairSide {
    /// The trajectory (or tree node) it comes from.
    pub trajectory_id: String,
    /// The continuation text (after the prompt and the prefix).
    pub text: String,
    /// Its reward (or node value).
    pub score: f64,
    /// Sum of the sampler's log-probs of `text`: the behaviour policy's log-prob, for off-policy DPO and TOPR.
    pub behaviour_logp: f64,
}

/// A preference between two continuations of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The run that produced it.
    pub run_id: String,
    /// The task.
    pub task_id: String,
    /// The prompt text as the model saw it.
    pub prompt: String,
    /// The prompt as chat messages (must end in a user or tool turn for the conversational form).
    pub prompt_messages: Vec<Message>,
    /// Shared assistant prefix of a step pair; empty for outcome pairs.
    pub prefix: String,
    /// The preferred side.
    pub chosen: PairSide,
    /// The other side.
    pub rejected: PairSide,
    /// Outcome or step.
    pub kind: PairKind,
    /// Whether both continuations end the solution (always true for outcome pairs).
    pub terminal: bool,
    /// Weight of the pair in the loss. Default [`DEFAULT_PAIR_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Conservative-DPO label smoothing ε ∈ [0, 0.5] (MCTS-DPO: from visit counts). Default 0.
    #[serde(default)]
    pub label_smoothing: f64,
}

impl PreferencePair {
    /// `chosen.score - rejected.score`.
    pub fn margin(&self) -> f64 {
        self.chosen.score - self.rejected.score
    }

    /// Check the pair can be written in `format`.
    pub fn validate(&self, format: PairFormat) -> Result<()> {
        let invalid = |reason: String| Error::InvalidRecord { record: "pairs", task_id: self.task_id.clone(), reason };
        if format == PairFormat::Conversational {
            match self.prompt_messages.last().map(|m| m.role.as_str()) {
                Some("user" | "tool") => {}
                Some(role) => {
                    return Err(invalid(format!("conversational prompt must end with a user turn, ends with {role:?}")))
                }
                None => return Err(invalid("conversational prompt has no messages".into())),
            }
        }
        if self.kind == PairKind::Outcome && (!self.prefix.is_empty() || !self.terminal) {
            return Err(invalid("outcome pairs have no prefix and are terminal".into()));
        }
        Ok(())
    }
}

/// The schema of a pairs file in `format`.
pub fn schema(format: PairFormat) -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let (lead, other) = match format {
        PairFormat::Standard => {
            ([text(PROMPT), text(CHOSEN), text(REJECTED)], Field::new(META_PROMPT_MESSAGES, message_list_type(), false))
        }
        PairFormat::Conversational => (
            [
                Field::new(PROMPT, message_list_type(), false),
                Field::new(CHOSEN, message_list_type(), false),
                Field::new(REJECTED, message_list_type(), false),
            ],
            text(META_PROMPT_TEXT),
        ),
    };
    let f64 = |name: &str| Field::new(name, DataType::Float64, false);
    let mut fields = lead.to_vec();
    fields.extend([
        text(META_TASK_ID),
        text(META_RUN_ID),
        text(META_KIND),
        Field::new(META_TERMINAL, DataType::Boolean, false),
        f64(META_SCORE_CHOSEN),
        f64(META_SCORE_REJECTED),
        f64(META_MARGIN),
        f64(META_BEHAVIOUR_LOGP_CHOSEN),
        f64(META_BEHAVIOUR_LOGP_REJECTED),
        text(META_CHOSEN_ID),
        text(META_REJECTED_ID),
        text(META_PREFIX),
        other,
        f64(META_WEIGHT),
        f64(META_LABEL_SMOOTHING),
    ]);
    Arc::new(Schema::new(fields))
}

/// Typed row builder for pairs in one [`PairFormat`]. Rows should be [`PreferencePair::validate`]d first
/// ([`Record::to_batch`] does).
#[derive(Debug)]
pub struct PairBuilder {
    format: PairFormat,
    prompt_text: StringBuilder,
    prompt_messages: MessagesBuilder,
    chosen_text: StringBuilder,
    rejected_text: StringBuilder,
    chosen_messages: MessagesBuilder,
    rejected_messages: MessagesBuilder,
    meta: MetaColumns,
}

/// The `meta_*` columns common to both forms.
#[derive(Debug, Default)]
struct MetaColumns {
    task_id: StringBuilder,
    run_id: StringBuilder,
    kind: StringBuilder,
    terminal: BooleanBuilder,
    score_chosen: Float64Builder,
    score_rejected: Float64Builder,
    margin: Float64Builder,
    logp_chosen: Float64Builder,
    logp_rejected: Float64Builder,
    chosen_id: StringBuilder,
    rejected_id: StringBuilder,
    prefix: StringBuilder,
    weight: Float64Builder,
    label_smoothing: Float64Builder,
}

impl MetaColumns {
    fn append(&mut self, p: &PreferencePair) {
        self.task_id.append_value(&p.task_id);
        self.run_id.append_value(&p.run_id);
        self.kind.append_value(p.kind.name());
        self.terminal.append_value(p.terminal);
        self.score_chosen.append_value(p.chosen.score);
        self.score_rejected.append_value(p.rejected.score);
        self.margin.append_value(p.margin());
        self.logp_chosen.append_value(p.chosen.behaviour_logp);
        self.logp_rejected.append_value(p.rejected.behaviour_logp);
        self.chosen_id.append_value(&p.chosen.trajectory_id);
        self.rejected_id.append_value(&p.rejected.trajectory_id);
        self.prefix.append_value(&p.prefix);
        self.weight.append_value(p.weight);
        self.label_smoothing.append_value(p.label_smoothing);
    }

    /// The columns after the form-specific one, in schema order.
    fn finish_tail(&mut self) -> [ArrayRef; 2] {
        [Arc::new(self.weight.finish()), Arc::new(self.label_smoothing.finish())]
    }

    /// In schema order.
    fn finish(&mut self) -> [ArrayRef; 12] {
        [
            Arc::new(self.task_id.finish()),
            Arc::new(self.run_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.terminal.finish()),
            Arc::new(self.score_chosen.finish()),
            Arc::new(self.score_rejected.finish()),
            Arc::new(self.margin.finish()),
            Arc::new(self.logp_chosen.finish()),
            Arc::new(self.logp_rejected.finish()),
            Arc::new(self.chosen_id.finish()),
            Arc::new(self.rejected_id.finish()),
            Arc::new(self.prefix.finish()),
        ]
    }
}

impl PairBuilder {
    /// An empty builder for `format`.
    pub fn new(format: PairFormat) -> Self {
        PairBuilder {
            format,
            prompt_text: StringBuilder::new(),
            prompt_messages: MessagesBuilder::default(),
            chosen_text: StringBuilder::new(),
            rejected_text: StringBuilder::new(),
            chosen_messages: MessagesBuilder::default(),
            rejected_messages: MessagesBuilder::default(),
            meta: MetaColumns::default(),
        }
    }

    /// Append one row.
    pub fn append(&mut self, p: &PreferencePair) {
        let messages = p.prompt_messages.iter().map(|m| (m.role.as_str(), m.content.as_str()));
        match self.format {
            PairFormat::Standard => {
                self.prompt_text.append_value(format!("{}{}", p.prompt, p.prefix));
                self.chosen_text.append_value(&p.chosen.text);
                self.rejected_text.append_value(&p.rejected.text);
                self.prompt_messages.append(messages);
            }
            PairFormat::Conversational => {
                self.prompt_messages.append(messages);
                let chosen = format!("{}{}", p.prefix, p.chosen.text);
                let rejected = format!("{}{}", p.prefix, p.rejected.text);
                self.chosen_messages.append([("assistant", chosen.as_str())]);
                self.rejected_messages.append([("assistant", rejected.as_str())]);
                self.prompt_text.append_value(&p.prompt);
            }
        }
        self.meta.append(p);
    }

    /// The rows appended so far, as columns of `schema(format)`; the builder is reset.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = match self.format {
            PairFormat::Standard => vec![
                Arc::new(self.prompt_text.finish()),
                Arc::new(self.chosen_text.finish()),
                Arc::new(self.rejected_text.finish()),
            ],
            PairFormat::Conversational => vec![
                Arc::new(self.prompt_messages.finish()?),
                Arc::new(self.chosen_messages.finish()?),
                Arc::new(self.rejected_messages.finish()?),
            ],
        };
        columns.extend(self.meta.finish());
        columns.push(match self.format {
            PairFormat::Standard => Arc::new(self.prompt_messages.finish()?),
            PairFormat::Conversational => Arc::new(self.prompt_text.finish()),
        });
        columns.extend(self.meta.finish_tail());
        Ok(RecordBatch::try_new(schema(self.format), columns)?)
    }
}

impl Record for PreferencePair {
    type Layout = PairFormat;
    const NAME: &'static str = "pairs";

    fn schema(format: PairFormat) -> SchemaRef {
        schema(format)
    }

    fn to_batch(rows: &[Self], format: PairFormat) -> Result<RecordBatch> {
        let mut b = PairBuilder::new(format);
        for row in rows {
            row.validate(format)?;
            b.append(row);
        }
        b.finish()
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let c = Columns::new(Self::NAME, batch);
        let format = detect_format(&c)?;
        let (task_id, run_id, kind, terminal) =
            (c.string(META_TASK_ID)?, c.string(META_RUN_ID)?, c.string(META_KIND)?, c.bool(META_TERMINAL)?);
        let (score_c, score_r) = (c.f64(META_SCORE_CHOSEN)?, c.f64(META_SCORE_REJECTED)?);
        let (logp_c, logp_r) = (c.f64(META_BEHAVIOUR_LOGP_CHOSEN)?, c.f64(META_BEHAVIOUR_LOGP_REJECTED)?);
        let (id_c, id_r, prefix) = (c.string(META_CHOSEN_ID)?, c.string(META_REJECTED_ID)?, c.string(META_PREFIX)?);
        // Optional: absent from files written before they existed.
        let weight = c.opt_f64(META_WEIGHT)?;
        let smoothing = c.opt_f64(META_LABEL_SMOOTHING)?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let texts = PairTexts::read(&c, format, i, prefix.value(i))?;
            let kind = match kind.value(i) {
                "outcome" => PairKind::Outcome,
                "step" => PairKind::Step,
                other => return Err(bad_row(&c, i, &format!("unknown meta_kind {other:?}"))),
            };
            out.push(PreferencePair {
                run_id: run_id.value(i).to_string(),
                task_id: task_id.value(i).to_string(),
                prompt: texts.prompt,
                prompt_messages: texts.prompt_messages,
                prefix: prefix.value(i).to_string(),
                chosen: PairSide {
                    trajectory_id: id_c.value(i).to_string(),
                    text: texts.chosen,
                    score: score_c.value(i),
                    behaviour_logp: logp_c.value(i),
                },
                rejected: PairSide {
                    trajectory_id: id_r.value(i).to_string(),
                    text: texts.rejected,
                    score: score_r.value(i),
                    behaviour_logp: logp_r.value(i),
                },
                kind,
                terminal: terminal.value(i),
                weight: weight.map_or(DEFAULT_PAIR_WEIGHT, |w| w.value(i)),
                label_smoothing: smoothing.map_or(0.0, |w| w.value(i)),
            });
        }
        Ok(out)
    }
}

/// The text fields of one row, unfolded from either form.
struct PairTexts {
    prompt: String,
    prompt_messages: Vec<Message>,
    chosen: String,
    rejected: String,
}

impl PairTexts {
    fn read(c: &Columns<'_>, format: PairFormat, i: usize, prefix: &str) -> Result<Self> {
        match format {
            PairFormat::Standard => {
                let folded = c.string(PROMPT)?.value(i);
                let prompt =
                    folded.strip_suffix(prefix).ok_or_else(|| bad_row(c, i, "prompt does not end with meta_prefix"))?;
                Ok(PairTexts {
                    prompt: prompt.to_string(),
                    prompt_messages: c.messages(c.list(META_PROMPT_MESSAGES)?, i)?,
                    chosen: c.string(CHOSEN)?.value(i).into(),
                    rejected: c.string(REJECTED)?.value(i).into(),
                })
            }
            PairFormat::Conversational => {
                let side = |name: &str| -> Result<String> {
                    let m = c.messages(c.list(name)?, i)?;
                    let [only] = m.as_slice() else {
                        return Err(bad_row(c, i, "expected one assistant message"));
                    };
                    let text = only.content.strip_prefix(prefix).ok_or_else(|| bad_row(c, i, "missing meta_prefix"))?;
                    Ok(text.to_string())
                };
                Ok(PairTexts {
                    prompt: c.string(META_PROMPT_TEXT)?.value(i).to_string(),
                    prompt_messages: c.messages(c.list(PROMPT)?, i)?,
                    chosen: side(CHOSEN)?,
                    rejected: side(REJECTED)?,
                })
            }
        }
    }
}

/// A schema error naming row `i` and its task.
fn bad_row(c: &Columns<'_>, i: usize, what: &str) -> Error {
    let task = c.string(META_TASK_ID).map(|t| t.value(i).to_string()).unwrap_or_default();
    Error::Schema { record: "pairs", reason: format!("row {i} (task {task}): {what}") }
}

/// The form of a pairs batch, from the type of its `prompt` column.
fn detect_format(c: &Columns<'_>) -> Result<PairFormat> {
    match c.column(PROMPT)?.data_type() {
        DataType::Utf8 => Ok(PairFormat::Standard),
        DataType::List(_) => Ok(PairFormat::Conversational),
        other => Err(Error::Schema { record: "pairs", reason: format!("column `prompt` is {other}") }),
    }
}
