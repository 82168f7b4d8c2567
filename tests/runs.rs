//! Run directories for the merge and export tests, made with the datasets crate's own writer API (the fake job:
//! the real job's run-directory pieces with a deterministic stand-in engine), so no model is needed.

use std::path::Path;

use orchard_datasets::testing::{fake_job, FakeJob};
use orchard_datasets::{Manifest, Shard, TaskKind, TaskSource, WriterOptions};

/// The fake job on the first `limit` GSM8K train questions, n = 8.
pub fn job(limit: usize) -> FakeJob {
    FakeJob {
        source: TaskSource { limit: Some(limit), ..TaskSource::builtin(TaskKind::Gsm8k, Some("train")) },
        ..FakeJob::default()
    }
}

/// Run `job` (as shard `shard`) into `out` with small commits.
pub fn make_run(out: &Path, job: &FakeJob, shard: &str) -> anyhow::Result<Manifest> {
    let job = FakeJob { shard: shard.parse::<Shard>()?, ..job.clone() };
    Ok(fake_job(&job, out, WriterOptions { flush_rows: 50, ..WriterOptions::default() })?)
}
