//! `orchard sample` end to end on a tiny model: outputs, resume, config mismatch, sharding + merge, kill -9.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use predicates::str::contains;

use crate::util::{jsonl_tasks, kill_mid_job, orchard, tiny_gguf};

fn tasks(dir: &Path, n: usize) -> PathBuf {
    jsonl_tasks(dir, n, |i| format!("question {i}: what is {i} plus one?"))
}

fn sample_args(model: &Path, tasks: &Path, out: &Path) -> Vec<String> {
    let mut a =
        vec!["sample", "--model", model.to_str().unwrap(), "--task", "jsonl", "--path", tasks.to_str().unwrap()];
    a.extend(["--reference-field", "reference", "--id-field", "id", "--n", "4", "--reward", "math"]);
    a.extend(["--max-new-tokens", "8", "--seed", "3", "--out", out.to_str().unwrap()]);
    a.into_iter().map(String::from).collect()
}

fn sample_cmd(model: &Path, tasks: &Path, out: &Path) -> assert_cmd::Command {
    let mut c = orchard();
    c.args(sample_args(model, tasks, out));
    c
}

/// (task id, sample index, completion, score) of every trajectory in a run, read with the datasets crate.
fn trajectories(run: &Path) -> BTreeSet<(String, u32, String, String)> {
    let reader = orchard_datasets::RunReader::open(run).expect("open run");
    reader
        .trajectories()
        .expect("read trajectories")
        .into_iter()
        .map(|t| (t.task_id, t.sample_index, t.completion, format!("{:.3}", t.reward.score)))
        .collect()
}

#[test]
fn sample_writes_trajectories_pairs_and_a_manifest_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let tasks = tasks(dir.path(), 6);
    let out = dir.path().join("run");
    sample_cmd(&model, &tasks, &out).assert().success().stderr(contains("6 tasks, 24 trajectories"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["counts"]["tasks"], 6);
    assert_eq!(manifest["counts"]["trajectories"], 24);
    assert!(manifest["timings"]["engine"].as_f64().expect("engine time") > 0.0);
    assert_eq!(manifest["model"]["id"], "tiny");
    let first = trajectories(&out);
    assert_eq!(first.len(), 24);

    // Rerunning the same command does no new work and changes nothing.
    sample_cmd(&model, &tasks, &out).assert().success();
    assert_eq!(trajectories(&out), first);

    // A different configuration on the same directory is refused, naming the key.
    sample_cmd(&model, &tasks, &out).args(["--temperature", "0.5"]).assert().code(2).stderr(contains("temperature"));
}

#[test]
fn shards_merge_into_the_unsharded_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let tasks = tasks(dir.path(), 8);
    let whole = dir.path().join("whole");
    sample_cmd(&model, &tasks, &whole).assert().success();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    sample_cmd(&model, &tasks, &a).args(["--shard", "0/2"]).assert().success();
    sample_cmd(&model, &tasks, &b).args(["--shard", "1/2"]).assert().success();
    let merged = dir.path().join("merged");
    orchard()
        .args(["merge", "--out", merged.to_str().unwrap(), a.to_str().unwrap(), b.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(trajectories(&merged), trajectories(&whole));
}

#[test]
fn a_killed_job_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    // Enough tasks that the job outlasts several kills (the tiny model decodes a 300-task job in well under a second).
    let tasks = tasks(dir.path(), 800);
    let whole = dir.path().join("whole");
    sample_cmd(&model, &tasks, &whole).args(["--group", "4"]).assert().success();
    let want = trajectories(&whole);
    let killed = dir.path().join("killed");
    let mut args = sample_args(&model, &tasks, &killed);
    args.extend(["--group".to_string(), "4".to_string()]);
    let interrupted = kill_mid_job(&args, &killed, &[150, 300, 500, 800, 1200], || {});
    eprintln!("{interrupted} of 5 kills landed mid-job");
    assert!(interrupted >= 2, "the kills should land mid-job ({interrupted} did)");
    sample_cmd(&model, &tasks, &killed).args(["--group", "4"]).assert().success();
    assert_eq!(trajectories(&killed), want);
}

/// `--commit-every` commits finished tasks at least that often: with one task per engine call and a tiny interval
/// every task gets its own journal entry; by default (60 s) this short run commits once.
#[test]
fn commit_every_sets_how_often_tasks_are_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_gguf(dir.path());
    let tasks = jsonl_tasks(dir.path(), 5, |i| format!("Say {i}"));
    let lines = |out: &Path| std::fs::read_to_string(out.join("journal.jsonl")).expect("journal").lines().count();
    let often = dir.path().join("often");
    sample_cmd(&model, &tasks, &often).args(["--group", "1", "--commit-every", "1ms"]).assert().success();
    assert_eq!(lines(&often), 5);
    let default = dir.path().join("default");
    sample_cmd(&model, &tasks, &default).args(["--group", "1"]).assert().success();
    assert_eq!(lines(&default), 1);
    assert_eq!(trajectories(&often), trajectories(&default), "the same rows either way");
    sample_cmd(&model, &tasks, &dir.path().join("bad")).args(["--commit-every", "soon"]).assert().code(2);
}

/// The Kubernetes Indexed Job's container command (`examples/k8s/shard.sh`) run by hand with each
/// `JOB_COMPLETION_INDEX` of 4, as the pods would: the merged shards equal the unsharded run, and a pod restarted
/// with the same index finds nothing left to do. Without the index the script says what is missing.
#[test]
fn the_k8s_indexed_job_command_shards_like_the_cli() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let tasks = tasks(dir.path(), 9);
    let job = dir.path().join("job.toml");
    let text = format!(
        "model = {:?}\nn = 3\nreward = \"math\"\nseed = 3\n[source]\ntask = \"jsonl\"\npath = {:?}\n\
         fields = {{ reference = \"reference\", id = \"id\" }}\n[sampling]\nmax_new_tokens = 8\n",
        model.display().to_string(),
        tasks.display().to_string()
    );
    std::fs::write(&job, text).expect("write job");
    let whole = dir.path().join("whole");
    orchard().args(["sample", "--config"]).arg(&job).arg("--out").arg(&whole).assert().success();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/k8s/shard.sh");
    let runs = dir.path().join("runs");
    let pod = |index: Option<usize>| {
        let mut c = std::process::Command::new(&script);
        c.env("ORCHARD", assert_cmd::cargo::cargo_bin("orchard"))
            .env("ORCHARD_SHARDS", "4")
            .env("ORCHARD_JOB", &job)
            .env("ORCHARD_RUNS", &runs)
            .env_remove("JOB_COMPLETION_INDEX");
        if let Some(i) = index {
            c.env("JOB_COMPLETION_INDEX", i.to_string());
        }
        c.output().expect("run shard.sh")
    };
    for i in 0..4 {
        let o = pod(Some(i));
        assert!(o.status.success(), "pod {i}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let again = pod(Some(2));
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 to go"), "{}", String::from_utf8_lossy(&again.stderr));
    let merged = dir.path().join("merged");
    let mut merge = orchard();
    merge.args(["merge", "--out"]).arg(&merged);
    for i in 0..4 {
        merge.arg(runs.join(format!("shard-{i}")));
    }
    merge.assert().success();
    assert_eq!(trajectories(&merged), trajectories(&whole));
    let o = pod(None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("JOB_COMPLETION_INDEX is unset"));
}
