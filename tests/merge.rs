//! `orchard merge` through the binary.

use std::collections::BTreeMap;

use orchard_datasets::{RunReader, Trajectory};
use predicates::str::contains;

use crate::runs::{job, make_run};
use crate::util::orchard;

fn rows_by_id(run: &std::path::Path) -> anyhow::Result<BTreeMap<String, Trajectory>> {
    Ok(RunReader::open(run)?.trajectories()?.into_iter().map(|t| (t.id.clone(), t)).collect())
}

#[test]
fn shards_merge_into_exactly_the_unsharded_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let job = job(30);
    let whole = make_run(&dir.path().join("whole"), &job, "0/1")?;
    for i in 0..3 {
        make_run(&dir.path().join(format!("s{i}")), &job, &format!("{i}/3"))?;
    }
    let all = dir.path().join("all");
    orchard()
        .args(["merge", "--out"])
        .arg(&all)
        .args(["s2", "s0", "s1"].map(|s| dir.path().join(s)))
        .assert()
        .success()
        .stdout(contains("merged 3 runs").and(contains("30 tasks")));
    let merged = RunReader::open(&all)?;
    let m = merged.manifest();
    assert!(m.status.complete);
    assert_eq!(m.counts, whole.counts);
    assert_eq!(m.merged_from.len(), 3);
    assert_eq!(m.identity.shard.to_string(), "0/1");
    assert_eq!(m.identity.run_id, whole.identity.run_id, "shards share the run id");
    // Same rows as the unsharded run (as a set: order depends on the shard split).
    assert_eq!(rows_by_id(&all)?, rows_by_id(&dir.path().join("whole"))?);
    let mut pairs = merged.pairs()?;
    let mut want = RunReader::open(&dir.path().join("whole"))?.pairs()?;
    let key = |p: &orchard_datasets::PreferencePair| (p.chosen.trajectory_id.clone(), p.rejected.trajectory_id.clone());
    pairs.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(pairs, want);
    // The merged directory is a run of the unsharded job: rerunning it finds nothing left to do.
    let again = make_run(&all, &job, "0/1")?;
    assert_eq!(again.counts, whole.counts);
    Ok(())
}

use predicates::prelude::PredicateBooleanExt;

#[test]
fn merge_refuses_incompatible_or_overlapping_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |s: &str| dir.path().join(s);
    make_run(&p("s0"), &job(12), "0/2")?;
    make_run(&p("s1"), &job(12), "1/2")?;
    make_run(&p("other"), &orchard_datasets::testing::FakeJob { n: 4, ..job(12) }, "1/2")?;
    make_run(&p("s0of3"), &job(12), "0/3")?;

    orchard()
        .args(["merge", "--out"])
        .arg(p("x"))
        .arg(p("s0"))
        .arg(p("s0"))
        .assert()
        .failure()
        .stderr(contains("shard 0/2 is in both"));
    orchard()
        .args(["merge", "--out"])
        .arg(p("x"))
        .arg(p("s0"))
        .arg(p("other"))
        .assert()
        .failure()
        .stderr(contains("different jobs: config differs").and(contains("n: 8 (existing) vs 4 (this command)")));
    orchard()
        .args(["merge", "--out"])
        .arg(p("x"))
        .arg(p("s1"))
        .arg(p("s0of3"))
        .assert()
        .failure()
        .stderr(contains("runs were sharded differently"));
    std::fs::create_dir(p("full"))?;
    std::fs::write(p("full/file"), "x")?;
    orchard()
        .args(["merge", "--out"])
        .arg(p("full"))
        .arg(p("s0"))
        .arg(p("s1"))
        .assert()
        .failure()
        .stderr(contains("not empty"));
    assert!(!p("x").exists(), "nothing is written when checks fail");
    Ok(())
}

#[test]
fn incomplete_runs_merge_only_when_allowed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |s: &str| dir.path().join(s);
    make_run(&p("s0"), &job(12), "0/2")?;
    make_run(&p("s1"), &job(12), "1/2")?;
    // Mark s1 as interrupted, as a killed job leaves it.
    let mut m = orchard_datasets::Manifest::read(&p("s1"))?;
    m.status.complete = false;
    m.write(&p("s1"))?;
    orchard()
        .args(["merge", "--out"])
        .arg(p("x"))
        .arg(p("s0"))
        .arg(p("s1"))
        .assert()
        .failure()
        .stderr(contains("is not complete"));
    orchard()
        .args(["merge", "--allow-incomplete", "--out"])
        .arg(p("x"))
        .arg(p("s0"))
        .arg(p("s1"))
        .assert()
        .success()
        .stdout(contains("not every shard is complete"));
    Ok(())
}
