use serde_json::json;

use super::*;
use crate::record::RewardRecord;
use crate::select::{select_pairs, PairSelection};
use crate::task::Message;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn spec() -> RunSpec {
    RunSpec::new("test-job", json!({"n": 2, "source": {"task": "gsm8k"}}))
}

fn tasks(n: usize) -> Vec<Task> {
    (0..n).map(|i| Task::new(format!("t/{i}"), format!("question {i}"))).collect()
}

fn output(run_id: &str, task: &Task) -> TaskOutput {
    let trajectories: Vec<Trajectory> = (0..2u32)
        .map(|k| Trajectory {
            id: Trajectory::make_id(&task.id, k),
            run_id: run_id.into(),
            task_id: task.id.clone(),
            sample_index: k,
            prompt: task.prompt.clone(),
            prompt_messages: vec![Message::user(task.prompt.clone())],
            completion: format!("answer {k}"),
            token_ids: vec![k, k + 1],
            token_logprobs: vec![-0.5, -0.5],
            reward: RewardRecord::new(f64::from(1 - k)),
            ..Default::default()
        })
        .collect();
    let pairs = select_pairs(&trajectories, &PairSelection::default());
    TaskOutput { task_id: task.id.clone(), trajectories, pairs, nodes: vec![] }
}

fn small() -> WriterOptions {
    WriterOptions { flush_rows: 6, ..Default::default() } // two tasks (2 trajectories + 1 pair each) per commit
}

/// Files under the run's part dirs.
fn part_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in PART_DIRS {
        for e in fs::read_dir(dir.join(d)).into_iter().flatten().flatten() {
            out.push(format!("{d}/{}", e.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

/// Run the job to the end on `dir` and check every task is there exactly once.
fn finish_and_check(dir: &Path, n: usize) -> TestResult {
    let mut run = RunDir::open(dir, &spec(), small())?;
    let run_id = run.run_id().to_string();
    for task in run.plan(tasks(n)) {
        run.push(output(&run_id, &task))?;
    }
    let manifest = run.finish()?;
    assert!(manifest.status.complete);
    let reader = RunReader::open(dir)?;
    let traj = reader.trajectories()?;
    let mut ids: Vec<String> = traj.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..n).flat_map(|i| [format!("t/{i}#0"), format!("t/{i}#1")]).collect();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(reader.pairs()?.len(), n);
    assert_eq!(manifest.counts.tasks as usize, n);
    assert_eq!(manifest.counts.trajectories as usize, 2 * n);
    assert_eq!(manifest.counts.correct as usize, n);
    // Every file present is committed and readable; nothing temporary is left.
    let committed: HashSet<String> = reader.entries().iter().flat_map(|e| e.files.clone()).collect();
    for f in part_files(dir) {
        assert!(committed.contains(&f), "uncommitted file {f}");
        part::read_file::<Trajectory>(&dir.join(&f))
            .map(|_| ())
            .or_else(|_| part::read_file::<PreferencePair>(&dir.join(&f)).map(|_| ()))?;
    }
    Ok(())
}

#[test]
fn a_fresh_run_commits_groups_and_reads_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    finish_and_check(dir.path(), 5)?;
    let m = Manifest::read(dir.path())?;
    assert_eq!(m.status.parts, 3); // 2 + 2 + 1 tasks
    assert_eq!(m.schema_version, SCHEMA_VERSION);
    assert!(m.identity.run_id.starts_with("run-"));
    assert!(m.timings.contains_key(timing::WRITE) && m.timings.contains_key(timing::WALL));
    assert_eq!(
        part_files(dir.path()),
        [
            "pairs/part-0000-000001.parquet",
            "pairs/part-0000-000002.parquet",
            "pairs/part-0000-000003.parquet",
            "trajectories/part-0000-000001.parquet",
            "trajectories/part-0000-000002.parquet",
            "trajectories/part-0000-000003.parquet"
        ]
    );
    Ok(())
}

#[test]
fn resuming_skips_committed_tasks_and_counts_sessions() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let mut run = RunDir::open(dir.path(), &spec(), small())?;
        let run_id = run.run_id().to_string();
        for task in run.plan(tasks(5)).into_iter().take(3) {
            run.push(output(&run_id, &task))?;
        }
        // Dropped without finish: tasks 0, 1 are committed, task 2 is only buffered and is lost.
    }
    let mut run = RunDir::open(dir.path(), &spec(), small())?;
    assert_eq!(run.done_count(), 2);
    let todo: Vec<String> = run.plan(tasks(5)).into_iter().map(|t| t.id).collect();
    assert_eq!(todo, ["t/2", "t/3", "t/4"]);
    assert_eq!(run.manifest().status.sessions, 2);
    drop(run);
    finish_and_check(dir.path(), 5)
}

#[test]
fn a_different_config_is_refused_with_each_difference() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(RunDir::open(dir.path(), &spec(), small())?);
    let other = RunSpec::new("test-job", json!({"n": 4, "source": {"task": "gsm8k"}}));
    let err = RunDir::open(dir.path(), &other, small()).unwrap_err().to_string();
    assert!(err.contains("refusing to resume"), "{err}");
    assert!(err.contains("config.n: 2 (existing) vs 4 (this command)"), "{err}");
    let sharded = RunSpec { shard: "1/2".parse()?, ..spec() };
    let err = RunDir::open(dir.path(), &sharded, small()).unwrap_err().to_string();
    assert!(err.contains("shard: \"0/1\" (existing) vs \"1/2\" (this command)"), "{err}");
    let model = |h: &str| Some(ModelRecord { id: "m".into(), hash: h.into() });
    // A model hash is adopted when first known, and compared from then on.
    drop(RunDir::open(dir.path(), &RunSpec { model: model("sha256:1"), ..spec() }, small())?);
    Ok(())
}

#[test]
fn a_model_hash_change_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let model = |h: &str| Some(ModelRecord { id: "m".into(), hash: h.into() });
    drop(RunDir::open(dir.path(), &RunSpec { model: model("sha256:1"), ..spec() }, small())?);
    let err = RunDir::open(dir.path(), &RunSpec { model: model("sha256:2"), ..spec() }, small()).unwrap_err();
    assert!(err.to_string().contains("model_hash"), "{err}");
    Ok(())
}

#[test]
fn a_second_writer_is_locked_out() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _first = RunDir::open(dir.path(), &spec(), small())?;
    let err = RunDir::open(dir.path(), &spec(), small()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    Ok(())
}

#[test]
fn a_foreign_directory_is_not_written_into() -> TestResult {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("notes.txt"), "mine")?;
    let err = RunDir::open(dir.path(), &spec(), small()).unwrap_err().to_string();
    assert!(err.contains("not an Orchard run"), "{err}");
    Ok(())
}

#[test]
fn a_task_pushed_twice_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut run = RunDir::open(dir.path(), &spec(), small())?;
    let t = &tasks(1)[0];
    run.push(output("r", t))?;
    assert!(run.push(output("r", t)).is_err());
    run.flush()?;
    assert!(run.push(output("r", t)).is_err());
    Ok(())
}

/// Crash at each point of a commit, reopen, finish: every task exactly once, no stray file.
#[test]
fn every_crash_point_of_a_commit_recovers_without_loss_or_duplicates() -> TestResult {
    for point in [CrashAfter::FirstPart, CrashAfter::AllParts, CrashAfter::Journal] {
        let dir = tempfile::tempdir()?;
        let mut run = RunDir::open(dir.path(), &spec(), small())?;
        let run_id = run.run_id().to_string();
        let todo = run.plan(tasks(5));
        run.push(output(&run_id, &todo[0]))?;
        run.push(output(&run_id, &todo[1]))?; // first commit: t/0, t/1
        run.push(output(&run_id, &todo[2]))?;
        run.crash_at(point);
        assert!(run.push(output(&run_id, &todo[3])).is_err(), "{point:?}");
        drop(run);
        let committed_before = Journal::read(&dir.path().join(JOURNAL_FILE))?.len();
        assert_eq!(committed_before, if point == CrashAfter::Journal { 2 } else { 1 }, "{point:?}");
        let reopened = RunDir::open(dir.path(), &spec(), small())?;
        assert_eq!(reopened.done_count(), 2 * committed_before, "{point:?}");
        drop(reopened);
        finish_and_check(dir.path(), 5)?;
    }
    Ok(())
}

#[test]
fn a_torn_journal_tail_and_temporary_files_are_cleaned_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let mut run = RunDir::open(dir.path(), &spec(), small())?;
        for task in run.plan(tasks(2)) {
            run.push(output("r", &task))?;
        }
    }
    // A kill during the second commit: half a part file, an orphan renamed part, half a journal line.
    fs::write(dir.path().join("trajectories/.part-0000-000002.parquet.tmp"), b"PAR1 torn")?;
    fs::copy(dir.path().join("pairs/part-0000-000001.parquet"), dir.path().join("pairs/part-0000-000002.parquet"))?;
    let mut journal = fs::OpenOptions::new().append(true).open(dir.path().join(JOURNAL_FILE))?;
    std::io::Write::write_all(&mut journal, br#"{"seq":2,"files":["pairs/part-0000-000002.parquet"],"tas"#)?;
    drop(journal);
    assert_eq!(RunReader::open(dir.path())?.entries().len(), 1, "readers skip the torn line");
    let run = RunDir::open(dir.path(), &spec(), small())?;
    assert_eq!(run.done_count(), 2);
    assert_eq!(run.counts().tasks, 2);
    assert!(fs::read_to_string(dir.path().join(JOURNAL_FILE))?.ends_with('\n'));
    assert_eq!(part_files(dir.path()), ["pairs/part-0000-000001.parquet", "trajectories/part-0000-000001.parquet"]);
    drop(run);
    finish_and_check(dir.path(), 4)
}

#[test]
fn a_corrupt_line_before_the_end_is_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(RunDir::open(dir.path(), &spec(), small())?);
    fs::write(dir.path().join(JOURNAL_FILE), "garbage\n{\"seq\":1,\"files\":[],\"tasks\":[],\"counts\":{}}\n")?;
    let err = RunDir::open(dir.path(), &spec(), small()).unwrap_err();
    assert!(matches!(err, Error::Journal { line: 1, .. }), "{err}");
    Ok(())
}

#[test]
fn a_missing_committed_part_is_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let mut run = RunDir::open(dir.path(), &spec(), small())?;
        for task in run.plan(tasks(2)) {
            run.push(output("r", &task))?;
        }
    }
    fs::remove_file(dir.path().join("pairs/part-0000-000001.parquet"))?;
    let err = RunDir::open(dir.path(), &spec(), small()).unwrap_err().to_string();
    assert!(err.contains("committed part pairs/part-0000-000001.parquet is missing"), "{err}");
    Ok(())
}

#[test]
fn shards_partition_the_plan_and_name_their_parts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut seen = Vec::new();
    for i in 0..3 {
        let spec = RunSpec { shard: Shard::new(i, 3)?, ..spec() };
        let mut run = RunDir::open(&dir.path().join(format!("s{i}")), &spec, small())?;
        let todo = run.plan(tasks(30));
        seen.extend(todo.iter().map(|t| t.id.clone()));
        for t in todo {
            run.push(output("r", &t))?;
        }
        run.finish()?;
        assert!(part_files(&dir.path().join(format!("s{i}"))).iter().all(|f| f.contains(&format!("part-{i:04}-"))));
    }
    seen.sort();
    let mut all: Vec<String> = tasks(30).into_iter().map(|t| t.id).collect();
    all.sort();
    assert_eq!(seen, all);
    Ok(())
}
