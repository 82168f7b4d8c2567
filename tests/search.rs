//! `orchard search`, `orchard pairs` and `orchard tree show` end to end on a tiny model: outputs, resume after
//! kill -9, re-extracting the run's pairs from its saved trees.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use crate::util::{jsonl_tasks, kill_mid_job, orchard, tiny_gguf};

fn tasks(dir: &Path, n: usize) -> PathBuf {
    jsonl_tasks(dir, n, |i| format!("what is {i} plus one?"))
}

fn search_args(model: &Path, tasks: &Path, out: &Path, algo: &str) -> Vec<String> {
    let mut a = vec!["search", "--algo", algo, "--model", model.to_str().unwrap(), "--task", "jsonl"];
    a.extend(["--path", tasks.to_str().unwrap(), "--reference-field", "reference", "--id-field", "id"]);
    a.extend(["--reward", "math", "--seed", "5", "--out", out.to_str().unwrap()]);
    a.extend(["--iterations", "6", "--k", "3", "--parallel", "2", "--max-depth", "3", "--step", "tokens:3"]);
    a.extend(["--max-new-tokens", "6", "--n", "4", "--m", "2", "--depth", "2", "--workers", "3"]);
    a.into_iter().map(String::from).collect()
}

fn search_cmd(model: &Path, tasks: &Path, out: &Path, algo: &str) -> assert_cmd::Command {
    let mut c = orchard();
    c.args(search_args(model, tasks, out, algo));
    c
}

/// (task, node, parent, text, visits) of every saved node.
fn nodes(run: &Path) -> BTreeSet<(String, u64, Option<u64>, String, u64)> {
    let reader = orchard_datasets::RunReader::open(run).expect("open run");
    reader.nodes().expect("nodes").into_iter().map(|n| (n.task_id, n.node_id, n.parent_id, n.text, n.visits)).collect()
}

fn pair_keys(pairs: Vec<orchard_datasets::PreferencePair>) -> Vec<(String, String, String, String)> {
    let mut keys: Vec<_> = pairs.into_iter().map(|p| (p.task_id, p.prefix, p.chosen.text, p.rejected.text)).collect();
    keys.sort();
    keys
}

#[test]
fn mcts_search_writes_trees_and_pairs_that_orchard_pairs_reproduces() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let tasks = tasks(dir.path(), 5);
    let out = dir.path().join("mcts");
    search_cmd(&model, &tasks, &out, "mcts")
        .args(["--policy", "agentq", "--theta", "0"])
        .assert()
        .success()
        .stderr(contains("5 trees"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["counts"]["tasks"], 5);
    assert_eq!(manifest["identity"]["job"], "search");
    let saved = nodes(&out);
    // Each tree: root + 6 iterations, every one adding a rollout or steps.
    let ids: BTreeSet<&String> = saved.iter().map(|n| &n.0).collect();
    assert_eq!(ids.len(), 5);
    for id in &ids {
        let count = saved.iter().filter(|n| &n.0 == *id).count();
        assert!(count > 7, "task {id} has {count} nodes");
    }
    let first = ids.iter().next().expect("a task").to_string();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("search_metrics.json")).expect("metrics")).expect("json");
    assert!(metrics["engine/prefix_hit_rate"].as_f64().expect("hit rate") > 0.0, "siblings share the prompt");

    // Rerunning does nothing new.
    search_cmd(&model, &tasks, &out, "mcts").args(["--policy", "agentq", "--theta", "0"]).assert().success();
    assert_eq!(nodes(&out), saved);

    // `orchard pairs` with the run's own policy reproduces pairs/; another policy reads the same trees.
    let reader = orchard_datasets::RunReader::open(&out).expect("open");
    let original = pair_keys(reader.pairs().expect("pairs"));
    let again = dir.path().join("again.parquet");
    orchard().args(["pairs", "--run", out.to_str().unwrap(), "--out", again.to_str().unwrap()]).assert().success();
    let reread = pair_keys(orchard_datasets::part::read_file(&again).expect("read"));
    assert_eq!(reread, original);
    for policy in ["mcts-dpo", "itool", "step-dpo", "outcome"] {
        let p = dir.path().join(format!("{policy}.parquet"));
        orchard()
            .args(["pairs", "--run", out.to_str().unwrap(), "--policy", policy, "--out", p.to_str().unwrap()])
            .assert()
            .success()
            .stderr(contains("from 5 trees"));
    }

    // `orchard tree show` prints the tree.
    orchard()
        .args(["tree", "show", "--run", out.to_str().unwrap(), "--task", &first])
        .assert()
        .success()
        .stdout(contains(format!("task {first}")).and(contains("#1 step N=")));
    orchard().args(["tree", "show", "--run", out.to_str().unwrap(), "--task", "nope"]).assert().code(2);
}

#[test]
fn toc_and_bon_grow_their_tree_shapes() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let tasks = tasks(dir.path(), 3);
    let bon = dir.path().join("bon");
    search_cmd(&model, &tasks, &bon, "bon").assert().success().stderr(contains("3 trees (15 nodes), 12 solutions"));
    // The math reward never reports execution, so every program fails and grows: 2 + 4 programs per tree.
    let toc = dir.path().join("toc");
    search_cmd(&model, &tasks, &toc, "toc").assert().success().stderr(contains("3 trees (21 nodes), 18 solutions"));
}

#[test]
fn a_killed_search_resumes_without_losing_finished_trees() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let tasks = tasks(dir.path(), 40);
    let whole = dir.path().join("whole");
    search_cmd(&model, &tasks, &whole, "mcts").assert().success();
    let want = nodes(&whole);
    let killed = dir.path().join("killed");
    let interrupted = kill_mid_job(&search_args(&model, &tasks, &killed, "mcts"), &killed, &[100, 250, 600], || {
        // Whatever was committed is a subset of the uninterrupted run: no finished tree is lost or altered.
        if killed.join("manifest.json").exists() {
            assert!(nodes(&killed).is_subset(&want));
        }
    });
    eprintln!("{interrupted} of 3 kills landed mid-job");
    assert!(interrupted >= 1, "a kill should land mid-job");
    search_cmd(&model, &tasks, &killed, "mcts").assert().success();
    assert_eq!(nodes(&killed), want);
}
