//! `orchard export` through the binary.

use arrow_schema::DataType;
use orchard_datasets::part::read_file;
use orchard_datasets::record::message_list_type;
use orchard_datasets::testing::FakeJob;
use orchard_datasets::{KtoRow, PairKind, PreferencePair, PrmRow, RunReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use crate::runs::{job, make_run};
use crate::util::orchard;

fn schema_of(path: &std::path::Path) -> anyhow::Result<arrow_schema::SchemaRef> {
    Ok(ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path)?)?.schema().clone())
}

#[test]
fn trl_exports_hold_every_pair_in_either_form() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    make_run(&run, &job(20), "0/1")?;
    let pairs = RunReader::open(&run)?.pairs()?;
    assert!(!pairs.is_empty());
    for (format, want) in [("trl", DataType::Utf8), ("trl-conversational", message_list_type())] {
        let out = dir.path().join(format!("{format}.parquet"));
        orchard()
            .args(["export", "--format", format, "--run"])
            .arg(&run)
            .arg("--out")
            .arg(&out)
            .assert()
            .success()
            .stdout(contains(format!("wrote {} {format} rows", pairs.len())));
        let schema = schema_of(&out)?;
        for column in ["prompt", "chosen", "rejected"] {
            assert_eq!(schema.field_with_name(column)?.data_type(), &want, "{format} {column}");
        }
        // Lossless: the export reads back as the run's pairs, whichever form.
        assert_eq!(read_file::<PreferencePair>(&out)?, pairs);
    }
    Ok(())
}

#[test]
fn non_terminal_step_pairs_are_dropped_unless_kept_in_standard_form() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    make_run(&run, &FakeJob { trees: true, ..job(10) }, "0/1")?;
    let pairs = RunReader::open(&run)?.pairs()?;
    let non_terminal = pairs.iter().filter(|p| p.kind == PairKind::Step && !p.terminal).count();
    assert!(non_terminal > 0);
    let out = dir.path().join("dpo.parquet");
    let export = |extra: &[&str]| {
        let mut cmd = orchard();
        cmd.args(["export", "--run"]).arg(&run).arg("--out").arg(&out).args(extra);
        cmd
    };
    export(&["--format", "trl"])
        .assert()
        .success()
        .stderr(contains(format!("left out {non_terminal} non-terminal step pairs")));
    let rows = read_file::<PreferencePair>(&out)?;
    assert_eq!(rows.len(), pairs.len() - non_terminal);
    assert!(rows.iter().all(|p| p.terminal));
    // Terminal step pairs fold the shared prefix per form and round-trip.
    assert!(rows.iter().any(|p| p.kind == PairKind::Step));

    export(&["--format", "trl", "--step-pairs", "keep"]).assert().success();
    assert_eq!(read_file::<PreferencePair>(&out)?.len(), pairs.len());
    export(&["--format", "trl-conversational", "--step-pairs", "keep"])
        .assert()
        .failure()
        .stderr(contains("cannot be kept in the conversational form"));
    Ok(())
}

#[test]
fn kto_export_labels_deduplicated_trajectories() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    let manifest = make_run(&run, &job(20), "0/1")?;
    let out = dir.path().join("kto.parquet");
    orchard().args(["export", "--format", "kto", "--run"]).arg(&run).arg("--out").arg(&out).assert().success();
    let rows = read_file::<KtoRow>(&out)?;
    let schema = schema_of(&out)?;
    assert_eq!(schema.field_with_name("label")?.data_type(), &DataType::Boolean);
    assert_eq!(schema.field_with_name("completion")?.data_type(), &DataType::Utf8);
    assert!(rows.len() <= manifest.counts.trajectories as usize);
    assert!(rows.iter().all(|r| r.label == (r.score >= 1.0)));
    assert_eq!(rows.iter().filter(|r| r.label).count(), {
        // Correct trajectories, once per distinct completion.
        let traj = RunReader::open(&run)?.trajectories()?;
        let mut seen = std::collections::HashSet::new();
        traj.iter().filter(|t| t.reward.score >= 1.0 && seen.insert((t.task_id.clone(), t.completion.clone()))).count()
    });
    Ok(())
}

#[test]
fn prm_export_needs_trees_and_walks_root_to_leaf_paths() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let plain = dir.path().join("plain");
    make_run(&plain, &job(5), "0/1")?;
    let out = dir.path().join("prm.parquet");
    orchard()
        .args(["export", "--format", "prm", "--run"])
        .arg(&plain)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("has no trees").and(contains("plain sampling")));
    assert!(!out.exists());

    let trees = dir.path().join("trees");
    make_run(&trees, &FakeJob { trees: true, ..job(5) }, "0/1")?;
    orchard().args(["export", "--format", "prm", "--run"]).arg(&trees).arg("--out").arg(&out).assert().success();
    let rows = read_file::<PrmRow>(&out)?;
    let nodes = RunReader::open(&trees)?.nodes()?;
    let leaves = nodes.iter().filter(|n| n.terminal).count();
    assert_eq!(rows.len(), leaves);
    assert!(rows.iter().all(|r| r.completions.len() == 2 && r.labels.len() == 2));
    let schema = schema_of(&out)?;
    assert!(
        matches!(schema.field_with_name("labels")?.data_type(), DataType::List(f) if f.data_type() == &DataType::Float64)
    );
    Ok(())
}

#[test]
fn unknown_formats_and_missing_runs_are_clear_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    orchard()
        .args(["export", "--format", "csv", "--run", "nowhere", "--out", "x.parquet"])
        .assert()
        .failure()
        .stderr(contains("expected trl, trl-conversational, kto or prm"));
    orchard()
        .args(["export", "--format", "trl", "--run"])
        .arg(dir.path().join("missing"))
        .args(["--out", "x.parquet"])
        .assert()
        .failure()
        .stderr(contains("manifest.json"));
    Ok(())
}
