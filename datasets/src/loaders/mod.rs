//! Task loaders: built-in GSM8K, SVAMP and HumanEval, and generic JSONL / JSON / Parquet files with a field mapping.
//!
//! Every row is validated. A bad row is reported with file, line and field ([`BadRow`]) and, by
//! [`OnBadRow`], either skipped (and counted in [`LoadReport`], which the run manifest records) or fatal.
//! Nothing is dropped silently.
//!
//! Order of operations (so that the same [`TaskSource`] always yields the same tasks): read and validate every row,
//! shuffle (if asked, with a documented, version-stable PRNG: see [`shuffle`]), then keep the first `limit`.
//! Sharding happens after this, in the job ([`crate::Shard`]), so that the union of all shards equals the
//! unsharded task list.

mod builtin;
mod fields;
mod generic;
mod gsm8k;
mod humaneval;
mod read;
mod svamp;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::task::Task;

pub use builtin::{builtin_names, builtin_splits};

/// How many bad rows a [`LoadReport`] keeps in full (all are counted).
pub const MAX_REPORTED_BAD_ROWS: usize = 100;

/// The dataset format of a source: a built-in dataset (whose files ship inside Orchard) or a generic file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// GSM8K: `question`, `answer` ending in `#### N`. Splits `train` (7473 rows), `test` (1319).
    Gsm8k,
    /// SVAMP: `ID`, `Body`, `Question`, `Answer` (number). Split `test` (1000 rows).
    Svamp,
    /// HumanEval: `task_id`, `prompt`, `test`, `entry_point`, `canonical_solution`. Split `test` (164 rows).
    #[serde(rename = "humaneval")]
    HumanEval,
    /// A JSON Lines file (`.jsonl`, optionally `.gz`) read through [`FieldMap`].
    Jsonl,
    /// A JSON file holding an array of objects (optionally `.gz`) read through [`FieldMap`].
    Json,
    /// A Parquet file read through [`FieldMap`].
    Parquet,
}

impl TaskKind {
    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Gsm8k => "gsm8k",
            TaskKind::Svamp => "svamp",
            TaskKind::HumanEval => "humaneval",
            TaskKind::Jsonl => "jsonl",
            TaskKind::Json => "json",
            TaskKind::Parquet => "parquet",
        }
    }

    /// Whether Orchard ships this dataset's files.
    pub fn is_builtin(self) -> bool {
        matches!(self, TaskKind::Gsm8k | TaskKind::Svamp | TaskKind::HumanEval)
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "gsm8k" => TaskKind::Gsm8k,
            "svamp" => TaskKind::Svamp,
            "humaneval" | "human_eval" | "human-eval" => TaskKind::HumanEval,
            "jsonl" => TaskKind::Jsonl,
            "json" => TaskKind::Json,
            "parquet" => TaskKind::Parquet,
            other => {
                return Err(Error::Source(format!(
                "unknown task {other:?}: expected one of gsm8k, svamp, humaneval (built in) or jsonl, json, parquet \
                     (a --path with a field mapping)"
            )))
            }
        })
    }
}

/// What to do with a row that fails validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRow {
    /// Report it (file, line, field), count it in the manifest, and go on. The default.
    #[default]
    Skip,
    /// Stop loading with [`Error::BadRow`].
    Fail,
}

impl FromStr for OnBadRow {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(OnBadRow::Skip),
            "fail" => Ok(OnBadRow::Fail),
            other => Err(Error::Source(format!("--on-bad-row {other:?}: expected skip or fail"))),
        }
    }
}

/// Which columns of a generic file hold what. Only `prompt` (or `messages`) is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMap {
    /// Column with a stable row id (string or integer). Default: none, the 0-based row index is used.
    pub id: Option<String>,
    /// Column with the prompt text. Default `"prompt"`.
    pub prompt: String,
    /// Column with chat messages (`list<{role, content}>`, ending in a user turn). Default: none.
    pub messages: Option<String>,
    /// Column with the reference answer (string or number). Default: none. When set, rows without it are bad.
    pub reference: Option<String>,
    /// Column with unit tests. Default: none. When set, rows without it are bad.
    pub tests: Option<String>,
    /// Column with the entry point the tests call. Default: none. When set, rows without it are bad.
    pub entry_point: Option<String>,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            id: None,
            prompt: "prompt".to_string(),
            messages: None,
            reference: None,
            tests: None,
            entry_point: None,
        }
    }
}

/// Where tasks come from and which of them to use. Every field has a TOML key of the same name (`[source]` table of a
/// job config) and a command-line flag (`--task`, `--split`, `--path`, `--limit`, `--shuffle`, `--seed`,
/// `--on-bad-row`, `--prompt-field` ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSource {
    /// Dataset format. Default [`TaskKind::Gsm8k`].
    pub task: TaskKind,
    /// Split of a built-in dataset (`train`, `test`). Default: the dataset's default split (`train` for GSM8K,
    /// `test` for SVAMP and HumanEval). For files it only enters task ids.
    pub split: Option<String>,
    /// A file to read instead of the built-in data (required for jsonl/json/parquet). Default: none.
    pub path: Option<PathBuf>,
    /// Column mapping for jsonl/json/parquet files. Default: [`FieldMap::default`].
    pub fields: FieldMap,
    /// Keep at most this many tasks (after shuffling). Default: all.
    pub limit: Option<usize>,
    /// Shuffle the tasks before `limit`. Default `false`.
    pub shuffle: bool,
    /// Seed of the shuffle. Default 0.
    pub seed: u64,
    /// Skip or fail on invalid rows. Default [`OnBadRow::Skip`].
    pub on_bad_row: OnBadRow,
}

impl Default for TaskSource {
    fn default() -> Self {
        TaskSource {
            task: TaskKind::Gsm8k,
            split: None,
            path: None,
            fields: FieldMap::default(),
            limit: None,
            shuffle: false,
            seed: 0,
            on_bad_row: OnBadRow::Skip,
        }
    }
}

impl TaskSource {
    /// A source for a built-in dataset's split (`None`: its default split).
    pub fn builtin(task: TaskKind, split: Option<&str>) -> Self {
        TaskSource { task, split: split.map(str::to_string), ..Default::default() }
    }

    /// A source reading `path` with `kind`'s format.
    pub fn file(task: TaskKind, path: impl Into<PathBuf>) -> Self {
        TaskSource { task, path: Some(path.into()), ..Default::default() }
    }

    /// Load, validate, shuffle and limit the tasks.
    pub fn load(&self) -> Result<Loaded> {
        load(self)
    }
}

/// A row that failed validation: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRow {
    /// The file (`builtin:gsm8k_train.jsonl` for shipped data).
    pub file: String,
    /// 1-based line of the row (JSON arrays: the line where the object starts; Parquet: the 1-based row number).
    pub line: usize,
    /// The offending field (`(row)` when the row itself does not parse).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: field `{}`: {}", self.file, self.line, self.field, self.reason)
    }
}

/// What a load read, kept and skipped. Stored in the run manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// The file read (`builtin:…` for shipped data).
    pub file: String,
    /// Rows read (blank lines are not rows).
    pub rows_read: usize,
    /// Rows that failed validation and were skipped.
    pub bad_rows_skipped: usize,
    /// Valid rows left out by `limit`.
    pub rows_beyond_limit: usize,
    /// Tasks kept.
    pub tasks: usize,
    /// The first [`MAX_REPORTED_BAD_ROWS`] bad rows in full.
    pub bad_rows: Vec<BadRow>,
}

/// Tasks and the report of how they were loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The tasks, in order.
    pub tasks: Vec<Task>,
    /// Counts and bad rows.
    pub report: LoadReport,
}

/// One row as parsed from the file, before dataset-specific validation.
pub(crate) struct RawRow {
    /// 1-based line (or row) number, for reports.
    pub line: usize,
    /// 0-based index among rows (blank lines excluded), used in task ids.
    pub index: usize,
    /// The object, or why the row did not parse as one.
    pub value: std::result::Result<Map<String, Value>, String>,
}

/// Why a row is bad: the field and the reason.
pub(crate) type FieldError = (String, String);

/// Load, validate, shuffle and limit the tasks of `source`.
pub fn load(source: &TaskSource) -> Result<Loaded> {
    let (file, rows, id_prefix) = read_rows(source)?;
    let mut report = LoadReport { file: file.clone(), ..Default::default() };
    let mut tasks = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for row in rows {
        report.rows_read += 1;
        let line = row.line;
        let result = row
            .value
            .map_err(|reason| ("(row)".to_string(), reason))
            .and_then(|map| to_task(source, &id_prefix, row.index, map))
            .and_then(|task| match seen.get(&task.id) {
                Some(first) => {
                    Err(("id".to_string(), format!("duplicate task id {:?} (first at line {first})", task.id)))
                }
                None => Ok(task),
            });
        match result {
            Ok(task) => {
                seen.insert(task.id.clone(), line);
                tasks.push(task);
            }
            Err((field, reason)) => {
                let bad = BadRow { file: file.clone(), line, field, reason };
                if source.on_bad_row == OnBadRow::Fail {
                    return Err(Error::BadRow(bad));
                }
                tracing::warn!("skipping bad row {bad}");
                report.bad_rows_skipped += 1;
                if report.bad_rows.len() < MAX_REPORTED_BAD_ROWS {
                    report.bad_rows.push(bad);
                }
            }
        }
    }
    if source.shuffle {
        shuffle(&mut tasks, source.seed);
    }
    if let Some(limit) = source.limit {
        report.rows_beyond_limit = tasks.len().saturating_sub(limit);
        tasks.truncate(limit);
    }
    report.tasks = tasks.len();
    Ok(Loaded { tasks, report })
}

/// Read the raw rows of a source: (file label, rows, task-id prefix).
fn read_rows(source: &TaskSource) -> Result<(String, Vec<RawRow>, String)> {
    match (&source.path, source.task.is_builtin()) {
        (None, true) => {
            let (label, split, text) = builtin::open(source.task, source.split.as_deref())?;
            let rows = match source.task {
                TaskKind::Svamp => read::json_array_rows(&text)
                    .into_iter()
                    .filter(|r| r.value.as_ref().map_or(true, |m| builtin::svamp_in_split(split, m)))
                    .collect(),
                _ => read::jsonl_rows(&text),
            };
            Ok((label, rows, format!("{}/{}", source.task, split)))
        }
        (None, false) => Err(Error::Source(format!("task {} needs a --path to read", source.task))),
        (Some(path), _) => {
            let label = path.display().to_string();
            let rows = match source.task {
                TaskKind::Parquet => generic::parquet_rows(path)?,
                TaskKind::Svamp | TaskKind::Json => read::json_array_rows(&read::read_text(path)?),
                TaskKind::Gsm8k | TaskKind::HumanEval | TaskKind::Jsonl => read::jsonl_rows(&read::read_text(path)?),
            };
            Ok((label, rows, file_id_prefix(path, source.split.as_deref())))
        }
    }
}

/// `{file stem}` or `{file stem}/{split}`: the id prefix of a user file's tasks.
fn file_id_prefix(path: &Path, split: Option<&str>) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tasks");
    let stem = name.split('.').next().filter(|s| !s.is_empty()).unwrap_or("tasks");
    match split {
        Some(split) => format!("{stem}/{split}"),
        None => stem.to_string(),
    }
}

fn to_task(
    source: &TaskSource,
    prefix: &str,
    index: usize,
    row: Map<String, Value>,
) -> std::result::Result<Task, FieldError> {
    match source.task {
        TaskKind::Gsm8k => gsm8k::to_task(prefix, index, row),
        TaskKind::Svamp => svamp::to_task(prefix, row),
        TaskKind::HumanEval => humaneval::to_task(prefix, row),
        TaskKind::Jsonl | TaskKind::Json | TaskKind::Parquet => generic::to_task(&source.fields, prefix, index, row),
    }
}

/// Shuffle in place with Fisher–Yates driven by SplitMix64 seeded with `seed`.
///
/// Written out rather than taken from `rand` because the order must never change across versions or platforms:
/// a resumed or sharded run recomputes it and must get the same task list (rand's `shuffle` changed its algorithm
/// between 0.8 and 0.9).
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        let r = splitmix64(&mut state);
        // Multiply-shift maps r onto 0..=i without modulo bias worth caring about at dataset sizes.
        let j = ((u128::from(r) * (i as u128 + 1)) >> 64) as usize;
        items.swap(i, j);
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014), the reference constants: advances `state`, returns the next value.
pub fn splitmix64(state: &mut u64) -> u64 {
    orchard_core::seed::splitmix64_next(state)
}

#[cfg(test)]
mod tests;
