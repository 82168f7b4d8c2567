//! `orchard merge`: combine the run directories of the shards of one job into one run.
//!
//! Checks, before anything is written: same schema version, job, config fingerprint, pair format and model hash;
//! the same shard count, no shard given twice; no task committed in two runs; every run complete (unless
//! [`MergeOptions::allow_incomplete`]). Part files keep their names (which carry the shard index, so they never
//! collide) and are hard-linked when possible, else copied; journals are concatenated; the manifest sums counts and
//! timings, lists the sources in `merged_from`, and covers shard `0/1` — so rerunning the unsharded job on the
//! merged directory resumes it (doing only tasks no shard committed).
//!
//! The result is built in a sibling `.{name}.merge.tmp` directory and renamed into place when complete.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::part;
use crate::run::{
    add_timings, json_differences, Manifest, MergedSource, RunReader, RunStatus, Timings, JOURNAL_FILE, PART_DIRS,
};
use crate::shard::Shard;

/// Options of [`merge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeOptions {
    /// Merge runs that have not finished (their committed tasks only). Default `false`.
    pub allow_incomplete: bool,
}

/// Merge `sources` into a new run directory `out` (which must not exist, or be empty).
pub fn merge(out: &Path, sources: &[PathBuf], opts: &MergeOptions) -> Result<Manifest> {
    let Some(first_path) = sources.first() else {
        return Err(Error::Merge("no runs given".into()));
    };
    let readers = sources.iter().map(|p| RunReader::open(p)).collect::<Result<Vec<_>>>()?;
    let first = readers[0].manifest();
    let mut covered: HashMap<u32, PathBuf> = HashMap::new();
    let mut merged_from = Vec::new();
    let mut task_owner: HashMap<&str, &Path> = HashMap::new();
    let shard_count = sources_of(&readers[0]).first().map_or(1, |s| s.shard.count());
    for r in &readers {
        let m = r.manifest();
        check_compatible(first_path, first, r.path(), m)?;
        if !m.status.complete && !opts.allow_incomplete {
            return Err(Error::Merge(format!(
                "{} is not complete ({} tasks done); finish it (rerun its command) or pass --allow-incomplete",
                r.path().display(),
                m.counts.tasks
            )));
        }
        for source in sources_of(r) {
            if source.shard.count() != shard_count {
                return Err(Error::Merge(format!(
                    "runs were sharded differently: {} is shard {} but {} has {} shards",
                    r.path().display(),
                    source.shard,
                    first_path.display(),
                    shard_count
                )));
            }
            if let Some(other) = covered.insert(source.shard.index(), r.path().to_path_buf()) {
                return Err(Error::Merge(format!(
                    "shard {} is in both {} and {}",
                    source.shard,
                    other.display(),
                    r.path().display()
                )));
            }
            merged_from.push(source);
        }
        for task in r.task_ids() {
            if let Some(other) = task_owner.insert(task, r.path()) {
                return Err(Error::Merge(format!(
                    "task {task} is in both {} and {}",
                    other.display(),
                    r.path().display()
                )));
            }
        }
    }
    let whole = covered.len() as u32 == shard_count;
    write_merged(out, &readers, merged_from, whole)
}

/// A run's own shard, or the shards it was merged from.
fn sources_of(r: &RunReader) -> Vec<MergedSource> {
    let m = r.manifest();
    if m.merged_from.is_empty() {
        vec![MergedSource {
            path: r.path().display().to_string(),
            shard: m.identity.shard,
            counts: m.counts,
            complete: m.status.complete,
        }]
    } else {
        m.merged_from.clone()
    }
}

fn check_compatible(a_path: &Path, a: &Manifest, b_path: &Path, b: &Manifest) -> Result<()> {
    let (ai, bi) = (&a.identity, &b.identity);
    let mismatch = |what: String| {
        Error::Merge(format!("{} and {} are different jobs: {what}", a_path.display(), b_path.display()))
    };
    if a.schema_version != b.schema_version {
        return Err(mismatch(format!("schema version {} vs {}", a.schema_version, b.schema_version)));
    }
    if ai.job != bi.job {
        return Err(mismatch(format!("job {} vs {}", ai.job, bi.job)));
    }
    if ai.fingerprint != bi.fingerprint {
        return Err(mismatch(format!("config differs:\n{}", json_differences(&a.config, &b.config).join("\n"))));
    }
    if a.pair_format != b.pair_format {
        return Err(mismatch(format!("pair format {:?} vs {:?}", a.pair_format, b.pair_format)));
    }
    if let (Some(am), Some(bm)) = (&a.model, &b.model) {
        if am.hash != bm.hash {
            return Err(mismatch(format!("model {} ({}) vs {} ({})", am.id, am.hash, bm.id, bm.hash)));
        }
    }
    Ok(())
}

fn write_merged(out: &Path, readers: &[RunReader], merged_from: Vec<MergedSource>, whole: bool) -> Result<Manifest> {
    if out.exists() && fs::read_dir(out).at(out)?.next().is_some() {
        return Err(Error::Merge(format!("{} exists and is not empty", out.display())));
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "merged".into());
    let staging = out.with_file_name(format!(".{name}.merge.tmp"));
    if staging.exists() {
        fs::remove_dir_all(&staging).at(&staging)?;
    }
    for dir in PART_DIRS {
        fs::create_dir_all(staging.join(dir)).at(&staging.join(dir))?;
    }
    let mut journal = String::new();
    let mut manifest = readers[0].manifest().clone();
    manifest.counts = Default::default();
    manifest.timings = Timings::new();
    let mut planned = Some(0u64);
    let mut sessions = 0;
    for r in readers {
        let m = r.manifest();
        manifest.counts.add(&m.counts);
        add_timings(&mut manifest.timings, &m.timings);
        planned = planned.zip(m.identity.tasks_planned).map(|(a, b)| a + b);
        sessions += m.status.sessions;
        for entry in r.entries() {
            for rel in &entry.files {
                link_or_copy(&r.path().join(rel), &staging.join(rel))?;
            }
            journal.push_str(&serde_json::to_string(entry).map_err(|e| Error::json(&staging, e))?);
            journal.push('\n');
        }
    }
    let parts: u64 = readers.iter().map(|r| r.entries().len() as u64).sum();
    let journal_path = staging.join(JOURNAL_FILE);
    fs::write(&journal_path, journal).at(&journal_path)?;
    fs::File::open(&journal_path).and_then(|f| f.sync_all()).at(&journal_path)?;
    manifest.identity.shard = Shard::default();
    manifest.identity.tasks_planned = planned.filter(|_| whole);
    manifest.status = RunStatus {
        complete: whole && merged_from.iter().all(|s| s.complete),
        sessions,
        parts,
        created_at: crate::run::manifest_now(),
        updated_at: crate::run::manifest_now(),
    };
    manifest.merged_from = merged_from;
    manifest.write(&staging)?;
    for dir in PART_DIRS {
        part::sync_dir(&staging.join(dir))?;
    }
    if out.exists() {
        fs::remove_dir(out).at(out)?;
    }
    fs::rename(&staging, out).at(out)?;
    part::sync_dir(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    Ok(manifest)
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        return Err(Error::Merge(format!("two runs have a part named {}", to.display())));
    }
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).at(to)?;
        fs::File::open(to).and_then(|f| f.sync_all()).at(to)?;
    }
    Ok(())
}
