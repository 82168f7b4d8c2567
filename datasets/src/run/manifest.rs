//! `manifest.json`: what a run is (config, model, shard), how far it got (counts, timings) and what it is made of.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::loaders::LoadReport;
use crate::record::{ModelRecord, PairFormat};
use crate::shard::Shard;

/// Version of the on-disk layout (manifest, journal, part schemas). Bumped on any incompatible change; readers
/// refuse runs with a newer version.
pub const SCHEMA_VERSION: u32 = 1;
/// The manifest's file name in a run directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Well-known timing keys (seconds). Jobs may add their own.
pub mod timing {
    /// Wall-clock time of the job loop, summed over sessions.
    pub const WALL: &str = "wall";
    /// Time inside the engine (generation, scoring).
    pub const ENGINE: &str = "engine";
    /// Time in the reward pool.
    pub const REWARD: &str = "reward";
    /// Time in pair selection.
    pub const SELECT: &str = "select";
    /// Time writing part files, journal and manifest (measured by the run itself).
    pub const WRITE: &str = "write";
    /// Time loading the dataset. Loading precedes opening the run, so it is not inside [`WALL`].
    pub const LOAD: &str = "load";
}

/// Row and task counts; summed over journal entries (and over runs by merge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Tasks completed.
    pub tasks: u64,
    /// Trajectory rows.
    pub trajectories: u64,
    /// Trajectories whose score reached the correctness threshold.
    pub correct: u64,
    /// Pair rows.
    pub pairs: u64,
    /// Tree-node rows.
    pub nodes: u64,
    /// Generated tokens (sum of trajectory lengths).
    pub completion_tokens: u64,
}

impl Counts {
    /// Field-wise sum.
    pub fn add(&mut self, other: &Counts) {
        self.tasks += other.tasks;
        self.trajectories += other.trajectories;
        self.correct += other.correct;
        self.pairs += other.pairs;
        self.nodes += other.nodes;
        self.completion_tokens += other.completion_tokens;
    }
}

/// Seconds per named phase (see [`timing`]).
pub type Timings = BTreeMap<String, f64>;

/// Add `other` into `into`, key by key.
pub fn add_timings(into: &mut Timings, other: &Timings) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Who a run is: the identity that resume and merge compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// `run-` + 16 hex digits of the config fingerprint: equal for all shards of one job (and in its rows).
    pub run_id: String,
    /// The job kind (`sample`, `fake-sample`, `mcts` ...).
    pub job: String,
    /// `sha256:` of the canonical JSON of `{job, config}` (shard excluded).
    pub fingerprint: String,
    /// The shard this run covers (`0/1`: all tasks).
    pub shard: Shard,
    /// How many tasks the job planned in this shard (after limit and sharding), when known.
    pub tasks_planned: Option<u64>,
}

/// One run merged into this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedSource {
    /// Its directory as given to `orchard merge`.
    pub path: String,
    /// Its shard.
    pub shard: Shard,
    /// Its counts.
    pub counts: Counts,
    /// Whether it had finished.
    pub complete: bool,
}

/// The manifest of a run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// Version of Orchard that last wrote the run.
    pub orchard_version: String,
    /// Job, config fingerprint, shard.
    pub identity: RunIdentity,
    /// The full job configuration as JSON.
    pub config: Value,
    /// The model, when the job has one.
    pub model: Option<ModelRecord>,
    /// Layout of the `pairs/` part files.
    pub pair_format: PairFormat,
    /// How the dataset was loaded (rows read, bad rows skipped ...).
    pub source: Option<LoadReport>,
    /// Totals over all committed parts.
    pub counts: Counts,
    /// Seconds per phase over all committed parts (and the current session's tail when written by a live run).
    pub timings: Timings,
    /// Bookkeeping: sessions, completion, times.
    pub status: RunStatus,
    /// The runs combined into this one by `orchard merge` (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<MergedSource>,
}

/// Progress bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunStatus {
    /// Every planned task is done and the job called `finish`.
    pub complete: bool,
    /// Times the job was started on this directory (1 + resumes).
    pub sessions: u32,
    /// Committed part groups (journal entries).
    pub parts: u64,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds of the last write.
    pub updated_at: u64,
}

impl Manifest {
    /// Read `dir/manifest.json`, refusing a newer schema version.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).at(&path)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::json(&path, e))?;
        let version = value.get("schema_version").and_then(Value::as_u64).unwrap_or(0);
        if version > u64::from(SCHEMA_VERSION) {
            return Err(Error::run(
                dir,
                format!("written with schema version {version}; this Orchard reads up to {SCHEMA_VERSION}: upgrade"),
            ));
        }
        serde_json::from_value(value).map_err(|e| Error::json(&path, e))
    }

    /// Share of the job's time spent outside the engine, `1 - engine / (wall + load)`, when `wall` and `engine`
    /// are recorded: the datasets, reward and orchestration overhead of a job.
    pub fn outside_engine_share(&self) -> Option<f64> {
        let total = *self.timings.get(timing::WALL)? + self.timings.get(timing::LOAD).copied().unwrap_or(0.0);
        let engine = *self.timings.get(timing::ENGINE)?;
        (total > 0.0).then(|| 1.0 - engine / total)
    }

    /// Write `dir/manifest.json` atomically (temporary file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(self).map_err(|e| Error::json(&path, e))?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())
    }
}

/// Write a small file atomically: `.{name}.tmp`, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = crate::part::tmp_path(path);
    let mut f = std::fs::File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).at(path)?;
    crate::part::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// JSON with object keys sorted at every level and no whitespace: the input of fingerprints. Written out rather
/// than relying on `serde_json`'s map order, which another crate in the build can switch to insertion order
/// (`preserve_order` feature unification).
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let body: Vec<String> =
                keys.into_iter().map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k]))).collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// `sha256:` + hex of SHA-256 over `canonical_json({"job": job, "config": config})`.
pub fn fingerprint(job: &str, config: &Value) -> String {
    let doc = serde_json::json!({ "job": job, "config": config });
    format!("sha256:{}", hex::encode(Sha256::digest(canonical_json(&doc).as_bytes())))
}

/// Lines `  path: old (existing) vs new (this command)` for every leaf where two JSON documents differ.
pub fn json_differences(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(old, new, String::new(), &mut out);
    out
}

fn diff(old: &Value, new: &Value, path: String, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), p, out);
            }
        }
        (a, b) if a != b => out.push(format!("  {}: {} (existing) vs {} (this command)", display_path(&path), a, b)),
        _ => {}
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(config)"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}});
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#);
        assert_eq!(
            fingerprint("sample", &a),
            fingerprint("sample", &json!({"a": {"x": "s", "y": [1, {"c": 3, "d": 2}]}, "b": 1}))
        );
        assert_ne!(fingerprint("sample", &a), fingerprint("mcts", &a));
    }

    #[test]
    fn differences_name_each_changed_leaf() {
        let old = json!({"n": 8, "source": {"task": "gsm8k", "limit": 50}});
        let new = json!({"n": 4, "source": {"task": "gsm8k", "limit": null}, "extra": true});
        let d = json_differences(&old, &new);
        assert_eq!(
            d,
            vec![
                "  extra: null (existing) vs true (this command)",
                "  n: 8 (existing) vs 4 (this command)",
                "  source.limit: 50 (existing) vs null (this command)",
            ]
        );
    }
}
