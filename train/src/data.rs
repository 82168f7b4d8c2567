//! Training examples from Parquet: preference pairs (TRL's DPO layout plus Orchard's `meta_*` columns,
//! `docs/FORMATS.md`) and trajectories (for TOPR), tokenized with the model's tokenizer and chat template.
//!
//! A path is a Parquet file, a directory of them, or an Orchard run directory (its committed `pairs/` or
//! `trajectories/` parts). Columns are checked once per file before any row is read, and every problem names the
//! file, the column and the (1-based) row.
//!
//! Tokenization mirrors how the sampler produced the text: the prompt (already rendered, or rendered here from
//! conversational messages with the generation prompt) and the completion are encoded separately; terminal
//! completions get the model's EOS appended (the sampler's stop token, which its log-probs include), step pairs
//! that are not terminal do not. Step pairs train on the step tokens only, the shared prefix joining the prompt.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch};
use arrow_schema::{DataType, Schema};
use orchard_engine::{Engine, Message, Prompt, TokenId};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The pair and trajectory columns the trainer reads: the datasets crate's names, declared once there
/// (`docs/FORMATS.md`). `meta_prefix` is the shared assistant prefix of a step pair; `meta_prompt_text` the prompt as
/// rendered for the model (conversational form); `meta_terminal` (default true) whether chosen/rejected end the
/// solution (EOS appended); `meta_behaviour_logp_*` the sampler's log-prob sums; a trajectory's `reward_error` marks
/// a row that was not scored (skipped); `finish_reason` = `stop` gets EOS when `token_ids` is absent.
pub use orchard_datasets::record::pair::{
    CHOSEN, META_BEHAVIOUR_LOGP_CHOSEN, META_BEHAVIOUR_LOGP_REJECTED, META_PREFIX, META_PROMPT_TEXT, META_TERMINAL,
    PROMPT, REJECTED,
};
pub use orchard_datasets::record::trajectory::{
    COMPLETION, FINISH_REASON, LOGPROB_SUM, REWARD, REWARD_ERROR, TOKEN_IDS,
};

/// What a pairs file must provide beyond prompt, chosen and rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairColumns {
    /// Read `meta_behaviour_logp_chosen` / `_rejected` (required: the reference comes from them).
    pub behaviour: bool,
    /// A float column with each pair's label smoothing ε (MCTS-DPO's visit-count smoothing), if any.
    pub label_smoothing: Option<String>,
}

/// Limits on what can be trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest prompt + completion, in tokens (at most the model's context).
    pub max_length: usize,
    /// Drop over-long examples (counted) instead of failing on the first.
    pub skip_long: bool,
}

/// One tokenized preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairExample {
    /// Prompt tokens (with a step pair's shared prefix).
    pub prompt: Vec<TokenId>,
    /// Chosen completion tokens.
    pub chosen: Vec<TokenId>,
    /// Rejected completion tokens.
    pub rejected: Vec<TokenId>,
    /// Behaviour log-prob sums `(chosen, rejected)`, when read.
    pub behaviour: Option<(f64, f64)>,
    /// Per-pair label smoothing, when read.
    pub label_smoothing: Option<f64>,
    /// Where it came from: `file:row`.
    pub origin: String,
}

/// One tokenized trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryExample {
    /// Prompt tokens.
    pub prompt: Vec<TokenId>,
    /// Completion tokens.
    pub completion: Vec<TokenId>,
    /// The sampler's log-prob of the completion.
    pub behaviour: f64,
    /// The reward.
    pub reward: f64,
    /// Where it came from: `file:row`.
    pub origin: String,
}

/// One tokenized SFT example: the loss is on `completion` only.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Prompt tokens (templated, with the generation prompt).
    pub prompt: Vec<TokenId>,
    /// Completion tokens (the stop token included when the completion ended).
    pub completion: Vec<TokenId>,
    /// Weight of the example's tokens in the loss (1 unless a weight column says otherwise).
    pub weight: f64,
    /// Where it came from: `file:row` or a task id.
    pub origin: String,
}

/// How trajectories become SFT examples (rejection-sampling fine-tuning).
#[derive(Debug, Clone, PartialEq)]
pub struct SftFilter {
    /// Keep trajectories whose reward is at least this (the run's correctness threshold, 1.0 by default).
    pub min_reward: f64,
    /// Keep one copy of identical (prompt, completion) token sequences.
    pub dedup: bool,
    /// Use this float column as each example's weight.
    pub weight_column: Option<String>,
}

impl Default for SftFilter {
    fn default() -> Self {
        SftFilter { min_reward: 1.0, dedup: true, weight_column: None }
    }
}

/// What [`read_sft_trajectories`] left out, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SftCounts {
    /// Trajectories kept.
    pub kept: usize,
    /// Below `min_reward`.
    pub below_threshold: usize,
    /// Identical to one kept earlier.
    pub duplicates: usize,
    /// Unscored or too long.
    pub skipped: usize,
}

/// The correct trajectories at `path` as SFT examples (RFT): reward ≥ `filter.min_reward`, deduplicated.
pub fn read_sft_trajectories(
    path: &Path,
    filter: &SftFilter,
    limits: Limits,
    engine: &Engine,
) -> Result<(Vec<SftExample>, SftCounts)> {
    let loaded = read_trajectories(path, limits, engine)?;
    let weights = match &filter.weight_column {
        Some(col) => Some(read_float_column(&loaded.files, col)?),
        None => None,
    };
    let mut counts = SftCounts { skipped: loaded.skipped, ..SftCounts::default() };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in loaded.examples {
        if e.reward < filter.min_reward {
            counts.below_threshold += 1;
            continue;
        }
        if filter.dedup && !seen.insert((e.prompt.clone(), e.completion.clone())) {
            counts.duplicates += 1;
            continue;
        }
        let weight = match &weights {
            Some(w) => *w.get(&e.origin).ok_or_else(|| Error::schema(path, format!("{}: no weight", e.origin)))?,
            None => 1.0,
        };
        out.push(SftExample { prompt: e.prompt, completion: e.completion, weight, origin: e.origin });
    }
    counts.kept = out.len();
    if out.is_empty() {
        return Err(Error::schema(
            path,
            format!(
                "no trajectory reaches reward {} ({} below it, {} unscored or too long): nothing to fine-tune on",
                filter.min_reward, counts.below_threshold, counts.skipped
            ),
        ));
    }
    Ok((out, counts))
}

/// `origin → value` of a float column over `files` (origins as [`read_trajectories`] names rows).
fn read_float_column(files: &[PathBuf], name: &str) -> Result<std::collections::HashMap<String, f64>> {
    let mut out = std::collections::HashMap::new();
    for file in files {
        let (schema, batches) = read_batches(file)?;
        require(file, &schema, name, "the weight column")?;
        let mut row0 = 0;
        for batch in &batches {
            let c = Columns { file, batch, row0 };
            for i in 0..batch.num_rows() {
                let v = c.float(i, name)?.ok_or_else(|| c.bad(i, format!("{name} is null")))?;
                if !v.is_finite() || v < 0.0 {
                    return Err(c.bad(i, format!("{name} = {v}: a weight must be finite and not negative")));
                }
                out.insert(format!("{}:row {}", file.display(), row0 + i + 1), v);
            }
            row0 += batch.num_rows();
        }
    }
    Ok(out)
}

/// One SFT example from a prompt (rendered with the chat template) and a finished completion text (the model's
/// EOS appended, as the sampler ends a completion); `None` when it is longer than `limits` and `skip_long` is set.
pub fn sft_example(
    engine: &Engine,
    prompt: &Prompt,
    completion: &str,
    origin: String,
    limits: Limits,
) -> Result<Option<SftExample>> {
    let prompt = engine.prompt_tokens(prompt, None, false)?;
    let mut ids = engine.tokenizer().encode(completion, false)?;
    if let Some(e) = engine.tokenizer().eos().first().copied() {
        ids.push(e);
    }
    if prompt.len() + ids.len() > limits.max_length {
        if limits.skip_long {
            return Ok(None);
        }
        return Err(Error::Config(format!(
            "{origin}: prompt + completion is {} tokens, longer than the limit of {}",
            prompt.len() + ids.len(),
            limits.max_length
        )));
    }
    Ok(Some(SftExample { prompt, completion: ids, weight: 1.0, origin }))
}

/// SFT examples from a JSON-lines file: each line `{"prompt": "…" | [messages], "completion": "…"}` or
/// `{"messages": [… , {"role": "assistant", "content": "…"}]}` (the last assistant turn is the completion).
pub fn read_sft_jsonl(path: &Path, limits: Limits, engine: &Engine) -> Result<Loaded<SftExample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut examples = Vec::new();
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::BadRow { path: path.to_path_buf(), row: i + 1, reason };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let messages = |v: &serde_json::Value| -> Result<Vec<Message>> {
            serde_json::from_value(v.clone()).map_err(|e| bad(format!("messages: {e}")))
        };
        let (prompt, completion) = match (v.get("prompt"), v.get("completion"), v.get("messages")) {
            (Some(p), Some(c), _) => {
                let c = c.as_str().ok_or_else(|| bad("completion must be a string".into()))?.to_string();
                let p = match p {
                    serde_json::Value::String(s) => Prompt::Text(s.clone()),
                    other => Prompt::Messages(messages(other)?),
                };
                (p, c)
            }
            (None, None, Some(m)) => {
                let mut m = messages(m)?;
                let last = m.pop().filter(|x| x.role == "assistant");
                let last = last.ok_or_else(|| bad("messages must end with an assistant turn".into()))?;
                (Prompt::Messages(m), last.content)
            }
            _ => return Err(bad("expected `prompt` and `completion`, or `messages`".into())),
        };
        if completion.is_empty() {
            return Err(bad("empty completion".into()));
        }
        let origin = format!("{}:line {}", path.display(), i + 1);
        match sft_example(engine, &prompt, &completion, origin, limits).map_err(|e| bad(e.to_string()))? {
            Some(e) => examples.push(e),
            None => skipped += 1,
        }
    }
    if examples.is_empty() {
        return Err(Error::schema(path, "no examples to fine-tune on"));
    }
    Ok(Loaded { examples, files: vec![path.to_path_buf()], skipped })
}

/// SHA-256 over the tokenized SFT examples and their weights.
pub fn hash_sft(examples: &[SftExample]) -> String {
    let mut h = Sha256::new();
    for e in examples {
        for ids in [&e.prompt, &e.completion] {
            h.update((ids.len() as u64).to_le_bytes());
            ids.iter().for_each(|t| h.update(t.to_le_bytes()));
        }
        h.update(e.weight.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Examples and what was left out.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The examples, in file and row order.
    pub examples: Vec<T>,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Rows dropped for length (`skip_long`) or for not having been scored (trajectories).
    pub skipped: usize,
}

/// The Parquet files behind `path`, for records of kind `kind` (`pairs` or `trajectories`).
pub fn input_files(path: &Path, kind: &str) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")));
    }
    let files = if path.join("manifest.json").is_file() {
        // A run directory: only committed parts.
        let reader = orchard_datasets::RunReader::open(path).map_err(|e| Error::run(path, e))?;
        match kind {
            "pairs" => reader.parts::<orchard_datasets::PreferencePair>(),
            _ => reader.parts::<orchard_datasets::Trajectory>(),
        }
    } else {
        let sub = path.join(kind);
        let dir = if sub.is_dir() { sub } else { path.to_path_buf() };
        orchard_datasets::part::parquet_files(&dir).map_err(|e| Error::run(&dir, e))?
    };
    if files.is_empty() {
        return Err(Error::schema(path, format!("no {kind} Parquet files here")));
    }
    Ok(files)
}

/// Reads and tokenizes the preference pairs at `path`.
pub fn read_pairs(path: &Path, columns: &PairColumns, limits: Limits, engine: &Engine) -> Result<Loaded<PairExample>> {
    let files = input_files(path, "pairs")?;
    let mut examples = Vec::new();
    let mut skipped = 0;
    for file in &files {
        let rows = read_pair_rows(file, columns, engine)?;
        let tokenized: Vec<Result<PairExample>> = rows.into_par_iter().map(|r| r.tokenize(file, engine)).collect();
        for ex in tokenized {
            let ex = ex?;
            let longest = ex.prompt.len() + ex.chosen.len().max(ex.rejected.len());
            if longest > limits.max_length {
                if limits.skip_long {
                    skipped += 1;
                    continue;
                }
                return Err(Error::Config(format!(
                    "{}: prompt + completion is {longest} tokens, longer than the limit of {} (--max-length, at \
                     most the model's context); pass --skip-long to drop such pairs",
                    ex.origin, limits.max_length
                )));
            }
            examples.push(ex);
        }
    }
    if examples.is_empty() {
        return Err(Error::schema(path, "no pairs to train on"));
    }
    Ok(Loaded { examples, files, skipped })
}

/// One pair row's fields before tokenization.
struct PairRow {
    row: usize,
    prompt: PromptField,
    chosen: String,
    rejected: String,
    terminal: bool,
    behaviour: Option<(f64, f64)>,
    label_smoothing: Option<f64>,
}

enum PromptField {
    Text(String),
    Messages(Vec<Message>),
}

impl PairRow {
    fn tokenize(self, file: &Path, engine: &Engine) -> Result<PairExample> {
        let origin = format!("{}:row {}", file.display(), self.row);
        let bad = |reason: String| Error::BadRow { path: file.to_path_buf(), row: self.row, reason };
        let prompt_text = match self.prompt {
            PromptField::Text(t) => t,
            PromptField::Messages(m) => {
                engine.render_prompt(&Prompt::Messages(m), None, false).map_err(|e| bad(format!("prompt: {e}")))?
            }
        };
        let tok = engine.tokenizer();
        let prompt = tok.encode(&prompt_text, false)?;
        if prompt.is_empty() {
            return Err(bad("the prompt is empty".into()));
        }
        let eos = tok.eos().first().copied();
        let completion = |text: &str, side: &str| -> Result<Vec<TokenId>> {
            if text.is_empty() {
                return Err(bad(format!("the {side} completion is empty")));
            }
            let mut ids = tok.encode(text, false)?;
            if let (true, Some(e)) = (self.terminal, eos) {
                ids.push(e);
            }
            Ok(ids)
        };
        Ok(PairExample {
            prompt,
            chosen: completion(&self.chosen, "chosen")?,
            rejected: completion(&self.rejected, "rejected")?,
            behaviour: self.behaviour,
            label_smoothing: self.label_smoothing,
            origin,
        })
    }
}

/// Batches of one Parquet file, with the file's schema.
fn read_batches(file: &Path) -> Result<(std::sync::Arc<Schema>, Vec<RecordBatch>)> {
    let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| Error::schema(file, format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let batches = builder.build()?.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

fn require(file: &Path, schema: &Schema, name: &str, what: &str) -> Result<()> {
    if schema.field_with_name(name).is_err() {
        let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(Error::schema(
            file,
            format!("missing column `{name}` ({what}); columns found: {}", found.join(", ")),
        ));
    }
    Ok(())
}

fn read_pair_rows(file: &Path, columns: &PairColumns, engine: &Engine) -> Result<Vec<PairRow>> {
    let (schema, batches) = read_batches(file)?;
    let needs = "a pairs file needs prompt, chosen and rejected";
    for name in [PROMPT, CHOSEN, REJECTED] {
        require(file, &schema, name, needs)?;
    }
    if columns.behaviour {
        for name in [META_BEHAVIOUR_LOGP_CHOSEN, META_BEHAVIOUR_LOGP_REJECTED] {
            require(file, &schema, name, "the reference log-probs come from the behaviour policy")?;
        }
    }
    if let Some(name) = &columns.label_smoothing {
        require(file, &schema, name, "per-pair label smoothing was asked for")?;
    }
    if engine.template().is_none()
        && matches!(schema.field_with_name(PROMPT).map(|f| f.data_type()), Ok(DataType::List(_)))
    {
        return Err(Error::schema(file, "conversational prompts need a chat template, and the model has none"));
    }
    let mut rows = Vec::new();
    let mut row0 = 0;
    for batch in &batches {
        let cols = Columns { file, batch, row0 };
        for i in 0..batch.num_rows() {
            rows.push(cols.pair_row(i, columns)?);
        }
        row0 += batch.num_rows();
    }
    Ok(rows)
}

/// Typed access to a batch's columns, with errors naming file, column and row.
struct Columns<'a> {
    file: &'a Path,
    batch: &'a RecordBatch,
    row0: usize,
}

impl Columns<'_> {
    fn bad(&self, i: usize, reason: String) -> Error {
        Error::BadRow { path: self.file.to_path_buf(), row: self.row0 + i + 1, reason }
    }

    fn column(&self, name: &str) -> Option<&ArrayRef> {
        self.batch.column_by_name(name)
    }

    fn null(&self, i: usize, name: &str) -> Error {
        self.bad(i, format!("column `{name}` is null"))
    }

    fn wrong_type(&self, name: &str, want: &str) -> Error {
        let got = self.column(name).map(|c| c.data_type().to_string()).unwrap_or_default();
        Error::schema(self.file, format!("column `{name}` is {got}, expected {want}"))
    }

    fn text(&self, i: usize, name: &str) -> Result<Option<String>> {
        let Some(col) = self.column(name) else { return Ok(None) };
        if col.is_null(i) {
            return Err(self.null(i, name));
        }
        let v = match col.data_type() {
            DataType::Utf8 => col.as_string::<i32>().value(i),
            DataType::LargeUtf8 => col.as_string::<i64>().value(i),
            DataType::Utf8View => col.as_string_view().value(i),
            _ => return Err(self.wrong_type(name, "a string")),
        };
        Ok(Some(v.to_string()))
    }

    fn float(&self, i: usize, name: &str) -> Result<Option<f64>> {
        let Some(col) = self.column(name) else { return Ok(None) };
        if col.is_null(i) {
            return Err(self.null(i, name));
        }
        let v = match col.data_type() {
            DataType::Float64 => col.as_primitive::<Float64Type>().value(i),
            DataType::Float32 => col.as_primitive::<Float32Type>().value(i) as f64,
            _ => return Err(self.wrong_type(name, "a float")),
        };
        if !v.is_finite() {
            return Err(self.bad(i, format!("column `{name}` is {v}")));
        }
        Ok(Some(v))
    }

    fn boolean(&self, i: usize, name: &str) -> Result<Option<bool>> {
        let Some(col) = self.column(name) else { return Ok(None) };
        match col.data_type() {
            DataType::Boolean if col.is_null(i) => Err(self.null(i, name)),
            DataType::Boolean => Ok(Some(col.as_boolean().value(i))),
            _ => Err(self.wrong_type(name, "a boolean")),
        }
    }

    fn messages(&self, i: usize, name: &str) -> Result<Vec<Message>> {
        let col = self.column(name).ok_or_else(|| Error::schema(self.file, format!("missing column `{name}`")))?;
        if col.is_null(i) {
            return Err(self.null(i, name));
        }
        let list: &ListArray = col.as_list_opt::<i32>().ok_or_else(|| self.wrong_type(name, "a list of messages"))?;
        let values = list.value(i);
        let s = values.as_struct_opt().ok_or_else(|| self.wrong_type(name, "list<struct<role, content>>"))?;
        let field = |f: &str| -> Result<Vec<String>> {
            let c = s.column_by_name(f).ok_or_else(|| self.wrong_type(name, "list<struct<role, content>>"))?;
            let text = |j: usize| match c.data_type() {
                DataType::Utf8 => Ok(c.as_string::<i32>().value(j).to_string()),
                DataType::LargeUtf8 => Ok(c.as_string::<i64>().value(j).to_string()),
                _ => Err(self.wrong_type(name, "list<struct<role: string, content: string>>")),
            };
            (0..c.len()).map(text).collect()
        };
        let (roles, contents) = (field("role")?, field("content")?);
        Ok(roles.into_iter().zip(contents).map(|(r, c)| Message { role: r, content: c }).collect())
    }

    /// A chosen/rejected cell: a string, or a conversational list whose single assistant message is the text.
    fn completion(&self, i: usize, name: &str) -> Result<String> {
        match self.column(name).map(|c| c.data_type()) {
            Some(DataType::List(_)) => {
                let m = self.messages(i, name)?;
                match m.as_slice() {
                    [only] if only.role == "assistant" => Ok(only.content.clone()),
                    _ => Err(self.bad(i, format!("column `{name}` must hold one assistant message, has {}", m.len()))),
                }
            }
            _ => self.text(i, name)?.ok_or_else(|| Error::schema(self.file, format!("missing column `{name}`"))),
        }
    }

    fn pair_row(&self, i: usize, columns: &PairColumns) -> Result<PairRow> {
        let prefix = self.text(i, META_PREFIX)?.unwrap_or_default();
        let (mut chosen, mut rejected) = (self.completion(i, CHOSEN)?, self.completion(i, REJECTED)?);
        let prompt = match self.column(PROMPT).map(|c| c.data_type()) {
            // Standard form: the prompt text already ends with the prefix (docs/FORMATS.md).
            Some(DataType::List(_)) => {
                // Conversational form: the assistant messages start with the prefix; it joins the prompt.
                let strip = |side: &mut String, name: &str| -> Result<()> {
                    *side = side
                        .strip_prefix(prefix.as_str())
                        .ok_or_else(|| self.bad(i, format!("`{name}` does not start with `{META_PREFIX}`")))?
                        .to_string();
                    Ok(())
                };
                strip(&mut chosen, CHOSEN)?;
                strip(&mut rejected, REJECTED)?;
                match self.text(i, META_PROMPT_TEXT)? {
                    Some(text) => PromptField::Text(format!("{text}{prefix}")),
                    None if prefix.is_empty() => PromptField::Messages(self.messages(i, PROMPT)?),
                    None => {
                        return Err(
                            self.bad(i, format!("a step pair in conversational form needs `{META_PROMPT_TEXT}`"))
                        )
                    }
                }
            }
            _ => PromptField::Text(self.text(i, PROMPT)?.unwrap_or_default()),
        };
        let behaviour = match (self.float(i, META_BEHAVIOUR_LOGP_CHOSEN)?, self.float(i, META_BEHAVIOUR_LOGP_REJECTED)?)
        {
            (Some(c), Some(r)) if columns.behaviour => Some((c, r)),
            _ => None,
        };
        let label_smoothing = match &columns.label_smoothing {
            Some(name) => {
                let e = self.float(i, name)?.unwrap_or_default();
                if !(0.0..0.5).contains(&e) {
                    return Err(self.bad(i, format!("label smoothing `{name}` = {e} is outside [0, 0.5)")));
                }
                Some(e)
            }
            None => None,
        };
        Ok(PairRow {
            row: self.row0 + i + 1,
            prompt,
            chosen,
            rejected,
            terminal: self.boolean(i, META_TERMINAL)?.unwrap_or(true),
            behaviour,
            label_smoothing,
        })
    }

    fn token_ids(&self, i: usize) -> Result<Option<Vec<TokenId>>> {
        let Some(col) = self.column(TOKEN_IDS) else { return Ok(None) };
        if col.is_null(i) {
            return Ok(None);
        }
        let list = col.as_list_opt::<i32>().ok_or_else(|| self.wrong_type(TOKEN_IDS, "a list of token ids"))?;
        let v = list.value(i);
        let ids: Vec<u64> = match v.data_type() {
            DataType::UInt32 => v.as_primitive::<UInt32Type>().values().iter().map(|&x| x as u64).collect(),
            DataType::UInt64 => v.as_primitive::<UInt64Type>().values().to_vec(),
            DataType::Int32 => v.as_primitive::<Int32Type>().values().iter().map(|&x| x.max(-1) as u64).collect(),
            DataType::Int64 => v.as_primitive::<Int64Type>().values().iter().map(|&x| x.max(-1) as u64).collect(),
            _ => return Err(self.wrong_type(TOKEN_IDS, "a list of integers")),
        };
        ids.into_iter()
            .map(|x| TokenId::try_from(x).map_err(|_| self.bad(i, format!("token id {x} is out of range"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Reads and tokenizes trajectories at `path` (rows whose reward could not be computed are skipped).
pub fn read_trajectories(path: &Path, limits: Limits, engine: &Engine) -> Result<Loaded<TrajectoryExample>> {
    let files = input_files(path, "trajectories")?;
    let mut examples = Vec::new();
    let mut skipped = 0;
    let eos = engine.tokenizer().eos().first().copied();
    for file in &files {
        let (schema, batches) = read_batches(file)?;
        let needs = "a trajectories file needs prompt, completion, logprob_sum and reward";
        for name in [PROMPT, COMPLETION, LOGPROB_SUM, REWARD] {
            require(file, &schema, name, needs)?;
        }
        let mut row0 = 0;
        for batch in &batches {
            let c = Columns { file, batch, row0 };
            for i in 0..batch.num_rows() {
                let errored = c.column(REWARD_ERROR).is_some_and(|col| !col.is_null(i));
                if errored {
                    skipped += 1;
                    continue;
                }
                let text = |name: &str| c.text(i, name).map(Option::unwrap_or_default);
                let prompt = engine.tokenizer().encode(&text(PROMPT)?, false)?;
                let completion = match c.token_ids(i)? {
                    Some(ids) => ids,
                    None => {
                        let mut ids = engine.tokenizer().encode(&text(COMPLETION)?, false)?;
                        if let (true, Some(e)) = (text(FINISH_REASON)? != "length", eos) {
                            ids.push(e);
                        }
                        ids
                    }
                };
                if completion.is_empty() || prompt.is_empty() {
                    return Err(c.bad(i, "empty prompt or completion".into()));
                }
                if prompt.len() + completion.len() > limits.max_length {
                    if limits.skip_long {
                        skipped += 1;
                        continue;
                    }
                    return Err(c.bad(
                        i,
                        format!(
                            "prompt + completion is {} tokens, longer than the limit of {}",
                            prompt.len() + completion.len(),
                            limits.max_length
                        ),
                    ));
                }
                examples.push(TrajectoryExample {
                    prompt,
                    completion,
                    behaviour: c.float(i, LOGPROB_SUM)?.unwrap_or_default(),
                    reward: c.float(i, REWARD)?.unwrap_or_default(),
                    origin: format!("{}:row {}", file.display(), row0 + i + 1),
                });
            }
            row0 += batch.num_rows();
        }
    }
    if examples.is_empty() {
        return Err(Error::schema(path, "no scored trajectories to train on"));
    }
    Ok(Loaded { examples, files, skipped })
}

/// SHA-256 over the tokenized pairs (and their behaviour log-probs and smoothing): identifies the training data
/// whatever the file names.
pub fn hash_pairs(examples: &[PairExample]) -> String {
    let mut h = Sha256::new();
    for e in examples {
        for ids in [&e.prompt, &e.chosen, &e.rejected] {
            h.update((ids.len() as u64).to_le_bytes());
            ids.iter().for_each(|t| h.update(t.to_le_bytes()));
        }
        if let Some((c, r)) = e.behaviour {
            h.update(c.to_le_bytes());
            h.update(r.to_le_bytes());
        }
        if let Some(s) = e.label_smoothing {
            h.update(s.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// SHA-256 over the tokenized trajectories with their behaviour log-probs and rewards.
pub fn hash_trajectories(examples: &[TrajectoryExample]) -> String {
    let mut h = Sha256::new();
    for e in examples {
        for ids in [&e.prompt, &e.completion] {
            h.update((ids.len() as u64).to_le_bytes());
            ids.iter().for_each(|t| h.update(t.to_le_bytes()));
        }
        h.update(e.behaviour.to_le_bytes());
        h.update(e.reward.to_le_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests;
