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
const SVAMP_GZ: &[u8] = include_bytes!("../../data/svamp.json.gz");
/// SVAMP ships one file; `test` is all of it. Orchard's fixed split for training and held-out evaluation cuts it
/// by the parity of the `ID` number (`docs/SPLITS.md`): `train` = even (`chal-2`, `chal-4`, …, 500 rows),
/// `heldout` = odd (`chal-1`, `chal-3`, …, 500 rows). Never train on `test` or `heldout` and evaluate on the other.
const SVAMP: &[Split] = &[
    Split { name: "test", file: "svamp.json", gz: SVAMP_GZ },
    Split { name: "train", file: "svamp.json", gz: SVAMP_GZ },
    Split { name: "heldout", file: "svamp.json", gz: SVAMP_GZ },
];

/// Whether a raw SVAMP row belongs to `split` (see [`SVAMP`]); rows without a readable `ID` stay in every split
/// so that the loader reports them as bad rows.
pub(crate) fn svamp_in_split(split: &str, row: &serde_json::Map<String, serde_json::Value>) -> bool {
    let number = row.get("ID").and_then(|v| v.as_str()).and_then(|id| id.rsplit('-').next()?.parse::<u64>().ok());
    match (split, number) {
        ("train", Some(n)) => n % 2 == 0,
        ("heldout", Some(n)) => n % 2 == 1,
        _ => true,
    }
}
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
