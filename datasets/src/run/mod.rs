//! Run directories: create or resume, commit groups of finished tasks atomically, read them back.
//!
//! ```text
//! runs/NAME/
//!   manifest.json            what the run is and how far it got (rewritten atomically after each commit)
//!   journal.jsonl            one line per commit: its part files and task ids (the commit point)
//!   trajectories/part-SSSS-QQQQQQ.parquet
//!   pairs/part-SSSS-QQQQQQ.parquet
//!   trees/part-SSSS-QQQQQQ.parquet
//!   .lock                    held (flock) by the process writing the run
//! ```
//! Part names carry the shard index `SSSS` and the commit sequence `QQQQQQ`, so the parts of the n shards of one job
//! never collide and merge by plain concatenation.
//!
//! **Commit protocol** ([`RunDir::flush`]): (1) each part file is written as `.NAME.tmp`, fsynced and renamed, and
//! the directory fsynced; (2) one journal line naming the part files and task ids is appended and fsynced — the
//! commit point; (3) the manifest is rewritten atomically. On [`RunDir::open`] of an existing run: a torn journal
//! tail is truncated, temporary files and part files that no journal line names are deleted, and done tasks are
//! read from the journal. Whatever the moment of a `kill -9`, a task is either wholly in the run (all its rows, once)
//! or wholly absent (redone on resume), and every file under its final name is a complete Parquet file.

mod journal;
mod manifest;
mod reader;

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use journal::{Journal, JournalEntry, JOURNAL_FILE};
pub(crate) use manifest::now as manifest_now;
pub use manifest::{
    add_timings, canonical_json, fingerprint, json_differences, timing, Counts, Manifest, MergedSource, RunIdentity,
    RunStatus, Timings, MANIFEST_FILE, SCHEMA_VERSION,
};
pub use reader::RunReader;

use crate::error::{Error, IoContext, Result};
use crate::loaders::LoadReport;
use crate::part::{self, ParquetOptions};
use crate::record::{ModelRecord, PairFormat, PreferencePair, Record, Trajectory, TreeNode};
use crate::select::DEFAULT_CORRECT_THRESHOLD;
use crate::shard::Shard;
use crate::task::Task;

/// Default number of buffered rows (trajectories + pairs + nodes) that triggers a commit.
pub const DEFAULT_FLUSH_ROWS: usize = 4096;
/// Default time after which buffered tasks are committed even if few: bounds the work a kill can lose.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// The lock file's name in a run directory.
pub const LOCK_FILE: &str = ".lock";
/// The directories of part files, one per record.
pub const PART_DIRS: [&str; 3] = [Trajectory::NAME, PreferencePair::NAME, TreeNode::NAME];

/// What a job is: compared on resume (mismatch refused) and on merge.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// The job kind (`sample` ...).
    pub job: String,
    /// The full job configuration as JSON, **without** the shard, the output directory and settings that do not
    /// change results (progress bars, thread counts): resuming with a different value of anything here is refused.
    pub config: Value,
    /// The shard this process covers.
    pub shard: Shard,
    /// Layout of the pairs part files.
    pub pair_format: PairFormat,
    /// The model (a different hash on resume is refused).
    pub model: Option<ModelRecord>,
    /// How the dataset was loaded, recorded in the manifest.
    pub source: Option<LoadReport>,
}

impl RunSpec {
    /// A spec for `job` with `config`, whole task list, standard pairs, no model or source.
    pub fn new(job: impl Into<String>, config: Value) -> Self {
        RunSpec {
            job: job.into(),
            config,
            shard: Shard::default(),
            pair_format: PairFormat::default(),
            model: None,
            source: None,
        }
    }

    /// `run-` + 16 hex digits of the config fingerprint: the same for every shard of the job.
    pub fn run_id(&self) -> String {
        run_id_of(&fingerprint(&self.job, &self.config))
    }

    /// The JSON that resume compares: job, config, shard, pair format, model hash.
    fn identity_doc(job: &str, config: &Value, shard: Shard, format: PairFormat, model: Option<&ModelRecord>) -> Value {
        serde_json::json!({
            "job": job,
            "config": config,
            "shard": shard.to_string(),
            "pair_format": format,
            "model_hash": model.map(|m| m.hash.clone()),
        })
    }
}

pub(crate) fn run_id_of(fingerprint: &str) -> String {
    let hex = fingerprint.strip_prefix("sha256:").unwrap_or(fingerprint);
    format!("run-{}", &hex[..16.min(hex.len())])
}

/// How a [`RunDir`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WriterOptions {
    /// Parquet compression and row groups.
    pub parquet: ParquetOptions,
    /// Commit once this many rows are buffered. Default [`DEFAULT_FLUSH_ROWS`].
    pub flush_rows: usize,
    /// Commit once this long has passed since the last commit. Default [`DEFAULT_FLUSH_INTERVAL`].
    pub flush_interval: Duration,
    /// Score at or above which a trajectory counts as correct in the manifest. Default
    /// [`DEFAULT_CORRECT_THRESHOLD`].
    pub correct_threshold: f64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            parquet: ParquetOptions::default(),
            flush_rows: DEFAULT_FLUSH_ROWS,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            correct_threshold: DEFAULT_CORRECT_THRESHOLD,
        }
    }
}

/// Everything a job produced for one task. Pushed once per task; rows of one task always land in the same commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutput {
    /// The task.
    pub task_id: String,
    /// Its trajectories.
    pub trajectories: Vec<Trajectory>,
    /// Its pairs.
    pub pairs: Vec<PreferencePair>,
    /// Its tree nodes.
    pub nodes: Vec<TreeNode>,
}

/// Where a simulated crash stops a commit (tests of the commit protocol).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashAfter {
    FirstPart,
    AllParts,
    Journal,
}

#[derive(Debug, Default)]
struct Pending {
    tasks: Vec<String>,
    trajectories: Vec<Trajectory>,
    pairs: Vec<PreferencePair>,
    nodes: Vec<TreeNode>,
    counts: Counts,
}

impl Pending {
    fn rows(&self) -> usize {
        self.trajectories.len() + self.pairs.len() + self.nodes.len()
    }
}

/// An open run directory, created or resumed, holding its lock. Push [`TaskOutput`]s; they are committed in groups.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
    manifest: Manifest,
    journal: Journal,
    done: HashSet<String>,
    next_seq: u64,
    opts: WriterOptions,
    pending: Pending,
    /// Timings since the last commit (go into the next journal entry).
    tail: Timings,
    last_commit: Instant,
    #[cfg(test)]
    crash_at: Option<CrashAfter>,
}

impl RunDir {
    /// Create the run at `path`, or resume the one there: refuse a different spec ([`Error::ConfigMismatch`]) or a
    /// directory another process holds ([`Error::Locked`]); repair the leftovers of an interrupted commit.
    pub fn open(path: &Path, spec: &RunSpec, opts: WriterOptions) -> Result<RunDir> {
        fs::create_dir_all(path).at(path)?;
        let lock = lock(path)?;
        let manifest = match Manifest::read(path) {
            Ok(existing) => {
                check_same(path, &existing, spec)?;
                existing
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                ensure_fresh(path)?;
                new_manifest(spec)
            }
            Err(e) => return Err(e),
        };
        for dir in PART_DIRS {
            fs::create_dir_all(path.join(dir)).at(&path.join(dir))?;
        }
        let journal = Journal::open(&path.join(JOURNAL_FILE))?;
        remove_uncommitted(path, journal.entries())?;
        let mut run = RunDir {
            path: path.to_path_buf(),
            _lock: lock,
            manifest,
            done: HashSet::new(),
            next_seq: 1,
            opts,
            pending: Pending::default(),
            tail: Timings::new(),
            last_commit: Instant::now(),
            journal,
            #[cfg(test)]
            crash_at: None,
        };
        run.rebuild_from_journal()?;
        run.manifest.source = spec.source.clone().or(run.manifest.source.take());
        run.manifest.status.sessions += 1;
        run.manifest.status.complete = false;
        run.write_manifest()?;
        Ok(run)
    }

    /// Recompute done tasks, counts, timings and the next sequence number from the journal.
    fn rebuild_from_journal(&mut self) -> Result<()> {
        let mut counts = Counts::default();
        let mut timings = Timings::new();
        for entry in self.journal.entries() {
            for task in &entry.tasks {
                if !self.done.insert(task.clone()) {
                    return Err(Error::run(&self.path, format!("task {task} is committed twice in the journal")));
                }
            }
            counts.add(&entry.counts);
            add_timings(&mut timings, &entry.timings);
            self.next_seq = self.next_seq.max(entry.seq + 1);
        }
        self.manifest.counts = counts;
        self.manifest.timings = timings;
        self.manifest.status.parts = self.journal.entries().len() as u64;
        Ok(())
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run id stamped on every row.
    pub fn run_id(&self) -> &str {
        &self.manifest.identity.run_id
    }

    /// The manifest as of the last write.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether `task_id` is committed.
    pub fn is_done(&self, task_id: &str) -> bool {
        self.done.contains(task_id)
    }

    /// Number of committed tasks.
    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Counts of committed plus buffered rows (for a progress bar: tasks done, pairs found ...).
    pub fn counts(&self) -> Counts {
        let mut c = self.manifest.counts;
        c.add(&self.pending.counts);
        c
    }

    /// The tasks still to do: those in this run's shard, not yet committed, in the given order. Records the shard's
    /// task count as planned (for `complete` in the manifest).
    pub fn plan(&mut self, tasks: Vec<Task>) -> Vec<Task> {
        let shard = self.manifest.identity.shard;
        let mine: Vec<Task> = tasks.into_iter().filter(|t| shard.contains(&t.id)).collect();
        self.manifest.identity.tasks_planned = Some(mine.len() as u64);
        mine.into_iter().filter(|t| !self.done.contains(&t.id)).collect()
    }

    /// Add seconds to a timing (see [`timing`]); recorded with the next commit.
    pub fn add_timing(&mut self, key: &str, seconds: f64) {
        *self.tail.entry(key.to_string()).or_default() += seconds;
    }

    /// Buffer one task's rows; commits when the buffer reaches `flush_rows` or `flush_interval` has passed.
    /// Refuses a task already committed or buffered, and pairs that do not fit the run's pair format.
    pub fn push(&mut self, output: TaskOutput) -> Result<()> {
        if self.done.contains(&output.task_id) || self.pending.tasks.contains(&output.task_id) {
            return Err(Error::run(&self.path, format!("task {} pushed twice", output.task_id)));
        }
        for pair in &output.pairs {
            pair.validate(self.manifest.pair_format)?;
        }
        let p = &mut self.pending;
        p.counts.tasks += 1;
        p.counts.trajectories += output.trajectories.len() as u64;
        p.counts.pairs += output.pairs.len() as u64;
        p.counts.nodes += output.nodes.len() as u64;
        p.counts.completion_tokens += output.trajectories.iter().map(|t| t.token_ids.len() as u64).sum::<u64>();
        p.counts.correct += crate::select::count_correct(&output.trajectories, self.opts.correct_threshold) as u64;
        p.tasks.push(output.task_id);
        p.trajectories.extend(output.trajectories);
        p.pairs.extend(output.pairs);
        p.nodes.extend(output.nodes);
        if p.rows() >= self.opts.flush_rows || self.last_commit.elapsed() >= self.opts.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Commit the buffered tasks now (part files, then the journal line, then the manifest). No-op when empty.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.tasks.is_empty() {
            return Ok(());
        }
        let _span = tracing::debug_span!("commit", seq = self.next_seq, tasks = self.pending.tasks.len()).entered();
        let started = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        let name = format!("part-{:04}-{seq:06}.{}", self.manifest.identity.shard.index(), part::PARQUET_EXT);
        let mut files = Vec::new();
        self.write_part(&name, &pending.trajectories, (), &mut files)?;
        #[cfg(test)]
        self.crash_if(CrashAfter::FirstPart)?;
        self.write_part(&name, &pending.pairs, self.manifest.pair_format, &mut files)?;
        self.write_part(&name, &pending.nodes, (), &mut files)?;
        #[cfg(test)]
        self.crash_if(CrashAfter::AllParts)?;

        let mut timings = std::mem::take(&mut self.tail);
        *timings.entry(timing::WALL.to_string()).or_default() += self.last_commit.elapsed().as_secs_f64();
        *timings.entry(timing::WRITE.to_string()).or_default() += started.elapsed().as_secs_f64();
        let mark = Instant::now();
        let entry = JournalEntry { seq, files, tasks: pending.tasks, counts: pending.counts, timings };
        self.journal.append(entry.clone())?;
        self.last_commit = mark;
        self.next_seq = seq + 1;
        self.done.extend(entry.tasks);
        self.manifest.counts.add(&entry.counts);
        add_timings(&mut self.manifest.timings, &entry.timings);
        self.manifest.status.parts += 1;
        #[cfg(test)]
        self.crash_if(CrashAfter::Journal)?;
        self.write_manifest()?;
        self.add_timing(timing::WRITE, mark.elapsed().as_secs_f64());
        Ok(())
    }

    fn write_part<R: Record>(&self, name: &str, rows: &[R], layout: R::Layout, files: &mut Vec<String>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rel = format!("{}/{name}", R::NAME);
        part::write_file(&self.path.join(&rel), rows, layout, &self.opts.parquet)?;
        files.push(rel);
        Ok(())
    }

    /// Commit what is buffered, mark the run complete if every planned task is done, write and return the manifest.
    pub fn finish(mut self) -> Result<Manifest> {
        self.flush()?;
        let planned = self.manifest.identity.tasks_planned;
        self.manifest.status.complete = planned.is_none_or(|p| self.done.len() as u64 >= p);
        self.write_manifest()?;
        Ok(self.manifest)
    }

    /// Write the manifest with the current session's uncommitted timings included.
    fn write_manifest(&mut self) -> Result<()> {
        let mut m = self.manifest.clone();
        add_timings(&mut m.timings, &self.tail);
        *m.timings.entry(timing::WALL.to_string()).or_default() += self.last_commit.elapsed().as_secs_f64();
        m.orchard_version = env!("CARGO_PKG_VERSION").to_string();
        m.status.updated_at = manifest::now();
        m.write(&self.path)?;
        self.manifest.status.updated_at = m.status.updated_at;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn crash_at(&mut self, point: CrashAfter) {
        self.crash_at = Some(point);
    }

    #[cfg(test)]
    fn crash_if(&self, point: CrashAfter) -> Result<()> {
        if self.crash_at == Some(point) {
            return Err(Error::run(&self.path, format!("simulated crash {point:?}")));
        }
        Ok(())
    }
}

fn lock(path: &Path) -> Result<File> {
    let lock_path = path.join(LOCK_FILE);
    let file = File::options().create(true).truncate(false).write(true).open(&lock_path).at(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked { path: path.to_path_buf() }),
        Err(fs::TryLockError::Error(e)) => Err(e).at(&lock_path),
    }
}

fn new_manifest(spec: &RunSpec) -> Manifest {
    let fp = fingerprint(&spec.job, &spec.config);
    let now = manifest::now();
    Manifest {
        schema_version: SCHEMA_VERSION,
        orchard_version: env!("CARGO_PKG_VERSION").to_string(),
        identity: RunIdentity {
            run_id: run_id_of(&fp),
            job: spec.job.clone(),
            fingerprint: fp,
            shard: spec.shard,
            tasks_planned: None,
        },
        config: spec.config.clone(),
        model: spec.model.clone(),
        pair_format: spec.pair_format,
        source: spec.source.clone(),
        counts: Counts::default(),
        timings: Timings::new(),
        status: RunStatus { created_at: now, updated_at: now, ..Default::default() },
        merged_from: Vec::new(),
    }
}

/// Refuse to resume a run made with a different spec, listing every difference.
fn check_same(path: &Path, existing: &Manifest, spec: &RunSpec) -> Result<()> {
    // A model hash is only compared when both sides know it (a job may open the run before loading the model).
    let both = existing.model.is_some() && spec.model.is_some();
    let id = &existing.identity;
    let old = RunSpec::identity_doc(
        &id.job,
        &existing.config,
        id.shard,
        existing.pair_format,
        existing.model.as_ref().filter(|_| both),
    );
    let new = RunSpec::identity_doc(
        &spec.job,
        &spec.config,
        spec.shard,
        spec.pair_format,
        spec.model.as_ref().filter(|_| both),
    );
    let differences = json_differences(&old, &new);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::ConfigMismatch { path: path.to_path_buf(), differences })
    }
}

/// A directory without a manifest may only hold what an interrupted creation leaves (lock, temporary files, empty
/// part directories): anything else is not ours to write into.
fn ensure_fresh(path: &Path) -> Result<()> {
    for entry in fs::read_dir(path).at(path)? {
        let entry = entry.at(path)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let empty_dir = |p: &Path| fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false);
        let harmless = name == LOCK_FILE
            || part::is_tmp_name(&name)
            || (name == JOURNAL_FILE && entry.metadata().map(|m| m.len() == 0).unwrap_or(false))
            || (PART_DIRS.contains(&name.as_str()) && empty_dir(&entry.path()));
        if !harmless {
            return Err(Error::run(
                path,
                format!("not an Orchard run (no {MANIFEST_FILE}) and not empty ({name}): refusing to write into it"),
            ));
        }
    }
    Ok(())
}

/// Delete temporary files and part files that no journal entry names; fail if a named part is missing.
fn remove_uncommitted(path: &Path, entries: &[JournalEntry]) -> Result<()> {
    let committed: HashSet<&str> = entries.iter().flat_map(|e| e.files.iter().map(String::as_str)).collect();
    for dir in PART_DIRS {
        let dir_path = path.join(dir);
        for entry in fs::read_dir(&dir_path).at(&dir_path)? {
            let entry = entry.at(&dir_path)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{dir}/{name}");
            if part::is_tmp_name(&name) || (name.ends_with(part::PARQUET_EXT) && !committed.contains(rel.as_str())) {
                tracing::info!("{}: removing uncommitted {rel}", path.display());
                fs::remove_file(entry.path()).at(&entry.path())?;
            }
        }
        part::sync_dir(&dir_path)?;
    }
    for file in fs::read_dir(path).at(path)? {
        let file = file.at(path)?;
        if part::is_tmp_name(&file.file_name().to_string_lossy()) {
            fs::remove_file(file.path()).at(&file.path())?;
        }
    }
    for rel in committed {
        if !path.join(rel).is_file() {
            return Err(Error::run(path, format!("committed part {rel} is missing")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
