//! The datasets that ship inside the binary (gzip, from `datasets/data/`, MIT licensed: see the LICENSE files there).
//!
//! Embedding them means `--task gsm8k` works on any machine, from any working directory, with no download.

use super::{read, TaskKind};
use crate::error::{Error, Result};

struct Split {
    name: &'static str,
    file: &'static str,
    gz: &'static [u8],
}

const GSM8K: &[Split] = &[
    Split { name: "train", file: "gsm8k_train.jsonl", gz: include_bytes!("../../data/gsm8k_train.jsonl.gz") },
    Split { name: "test", file: "gsm8k_test.jsonl", gz: include_bytes!("../../data/gsm8k_test.jsonl.gz") },
];
const SVAMP: &[Split] = &[Split { name: "test", file: "svamp.json", gz: include_bytes!("../../data/svamp.json.gz") }];
const HUMANEVAL: &[Split] =
    &[Split { name: "test", file: "humaneval.jsonl", gz: include_bytes!("../../data/humaneval.jsonl.gz") }];

fn splits(kind: TaskKind) -> &'static [Split] {
    match kind {
        TaskKind::Gsm8k => GSM8K,
        TaskKind::Svamp => SVAMP,
        TaskKind::HumanEval => HUMANEVAL,
        TaskKind::Jsonl | TaskKind::Json | TaskKind::Parquet => &[],
    }
}

/// Names of the built-in datasets.
pub fn builtin_names() -> [&'static str; 3] {
    ["gsm8k", "svamp", "humaneval"]
}

/// The splits of a built-in dataset; the first is its default.
pub fn builtin_splits(kind: TaskKind) -> Vec<&'static str> {
    splits(kind).iter().map(|s| s.name).collect()
}

/// (file label, split name, text) of a built-in split; `None` picks the default split.
pub(crate) fn open(kind: TaskKind, split: Option<&str>) -> Result<(String, &'static str, String)> {
    let all = splits(kind);
    let chosen = match split {
        None => all.first(),
        Some(name) => all.iter().find(|s| s.name == name),
    };
    let Some(split) = chosen else {
        return Err(Error::Source(format!(
            "{kind} has no split {:?}; available: {}",
            split.unwrap_or_default(),
            builtin_splits(kind).join(", ")
        )));
    };
    let label = format!("builtin:{}", split.file);
    let text = read::decode(split.gz, true).map_err(|e| Error::Source(format!("{label}: {e}")))?;
    Ok((label, split.name, text))
}
