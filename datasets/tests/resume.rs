//! Resume under `kill -9`: the fake sampling job (the real job's run-directory pieces with a deterministic stand-in
//! engine, `orchard-datasets-tool fake-sample`) is killed with SIGKILL at 20 random moments, each followed by a
//! rerun of the same command; the final output must hold each task exactly once and equal, as a set, an
//! uninterrupted run with the same seed. After every kill every Parquet file left under its final name must read.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orchard_datasets::part::{parquet_files, read_file};
use orchard_datasets::{Manifest, PreferencePair, Record, RunReader, Trajectory, TreeNode};

const KILLS: usize = 20;

fn job(out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchard-datasets-tool"));
    // Commit after every task (flush-rows 1) so that kills land between, inside and around commits.
    cmd.args(["fake-sample", "--limit", "30", "--n", "4", "--group", "1", "--sleep-ms", "2", "--flush-rows", "1"])
        .args(["--seed", "11", "--trees", "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Every `*.parquet` under its final name reads completely.
fn all_files_read(run: &Path) -> anyhow::Result<()> {
    fn check<R: Record>(run: &Path) -> anyhow::Result<()> {
        for f in parquet_files(&run.join(R::NAME))? {
            read_file::<R>(&f).map_err(|e| anyhow::anyhow!("{} unreadable after kill: {e}", f.display()))?;
        }
        Ok(())
    }
    check::<Trajectory>(run)?;
    check::<PreferencePair>(run)?;
    check::<TreeNode>(run)
}

/// A run's rows, in a canonical order.
#[derive(Debug, PartialEq)]
struct Contents {
    trajectories: BTreeMap<String, Trajectory>,
    pairs: Vec<PreferencePair>,
    nodes: Vec<TreeNode>,
}

fn contents(run: &Path) -> anyhow::Result<Contents> {
    let reader = RunReader::open(run)?;
    let trajectories = reader.trajectories()?;
    let n = trajectories.len();
    let by_id: BTreeMap<String, Trajectory> = trajectories.into_iter().map(|t| (t.id.clone(), t)).collect();
    assert_eq!(by_id.len(), n, "a trajectory appears twice");
    let mut pairs = reader.pairs()?;
    pairs.sort_by(|a, b| {
        (&a.chosen.trajectory_id, &a.rejected.trajectory_id, a.terminal).cmp(&(
            &b.chosen.trajectory_id,
            &b.rejected.trajectory_id,
            b.terminal,
        ))
    });
    let mut nodes = reader.nodes()?;
    nodes.sort_by(|a, b| (&a.tree_id, a.node_id).cmp(&(&b.tree_id, b.node_id)));
    Ok(Contents { trajectories: by_id, pairs, nodes })
}

/// What kills left behind for the next session to repair (evidence of where they landed).
#[derive(Debug, Default)]
struct Leftovers {
    temporary_files: usize,
    uncommitted_parts: usize,
    torn_journal_tails: usize,
}

impl Leftovers {
    fn add(&mut self, run: &Path, reader: &RunReader) -> anyhow::Result<()> {
        let committed: std::collections::HashSet<&String> = reader.entries().iter().flat_map(|e| &e.files).collect();
        for dir in ["trajectories", "pairs", "trees"] {
            for entry in std::fs::read_dir(run.join(dir))? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    self.temporary_files += 1;
                } else if !committed.contains(&format!("{dir}/{name}")) {
                    self.uncommitted_parts += 1;
                }
            }
        }
        let journal = std::fs::read(run.join("journal.jsonl"))?;
        self.torn_journal_tails += usize::from(journal.last().is_some_and(|&b| b != b'\n'));
        Ok(())
    }
}

#[test]
fn twenty_random_kills_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let reference = dir.path().join("reference");
    let started = Instant::now();
    assert!(job(&reference).status()?.success());
    let full = started.elapsed();
    // A rerun of a finished run does no work: its time is the start-up (load, open, repair, plan).
    let started = Instant::now();
    assert!(job(&reference).status()?.success());
    let startup = started.elapsed();
    let work = full.saturating_sub(startup);

    let run = dir.path().join("killed");
    // Kill moments: uniform over start-up plus a tenth of the work, so that kills land during start-up (journal
    // repair, cleanup), sampling and commits alike and 20 sessions do not finish the job; drawn from a fixed-seed
    // SplitMix64, so a failure reproduces.
    let mut state = 0x5eed_u64;
    let window = (startup + work / 10).as_micros().max(1) as u64;
    let mut interrupted = 0;
    let mut leftovers = Leftovers::default();
    for _ in 0..KILLS {
        let at = Duration::from_micros(orchard_datasets::loaders::splitmix64(&mut state) % window);
        let mut child = job(&run).spawn()?;
        std::thread::sleep(at);
        let finished = child.try_wait()?.is_some();
        child.kill().ok(); // SIGKILL
        child.wait()?;
        if !finished && run.join("manifest.json").exists() {
            interrupted += usize::from(!Manifest::read(&run)?.status.complete);
        }
        if run.join("manifest.json").exists() {
            all_files_read(&run)?;
            let reader = RunReader::open(&run)?; // journal and manifest parse
            leftovers.add(&run, &reader)?;
        }
    }
    eprintln!("state left by the kills: {leftovers:?}");
    eprintln!(
        "{interrupted} of {KILLS} kills interrupted an unfinished run (reference run {full:?}, start-up {startup:?})"
    );
    assert!(
        interrupted >= KILLS / 2,
        "too few kills landed mid-job ({interrupted}); the test is not exercising resume"
    );

    assert!(job(&run).status()?.success(), "the rerun after the last kill completes");
    let (want, got) = (contents(&reference)?, contents(&run)?);
    assert_eq!(got.trajectories.keys().collect::<Vec<_>>(), want.trajectories.keys().collect::<Vec<_>>());
    assert_eq!(got, want);
    let (m_ref, m_run) = (Manifest::read(&reference)?, Manifest::read(&run)?);
    assert_eq!(m_run.counts, m_ref.counts);
    assert_eq!(m_run.counts.tasks, 30);
    assert!(m_run.status.complete && m_run.status.sessions > 1);
    Ok(())
}
