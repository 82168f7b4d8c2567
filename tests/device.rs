//! `--device` on the model-running commands: the device path (`cpu-candle`, the GPU code on candle's CPU backend)
//! gives the CPU engine's tokens and log-probs in f32; sample and search jobs run end to end on it; `cuda` on a
//! build without CUDA and an unknown device fail with a clear message.

use predicates::str::contains;

use crate::util::{jsonl_tasks, orchard, success_json, tiny_hf};

const ON_DEVICE: [&str; 4] = ["--device", "cpu-candle", "--dtype", "f32"];

#[test]
fn generate_and_score_on_the_device_equal_the_cpu_engine() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    let m = model.to_str().unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"the cat sat\"}\n{\"prompt\": \"a much longer prompt about many things\"}\n",
    )
    .expect("write");
    let generate = |device: &[&str]| {
        success_json(
            orchard()
                .args(["generate", "--model", m, "--prompts", prompts.to_str().unwrap(), "--precision", "f32"])
                .args(["--n", "3", "--max-new-tokens", "12", "--ignore-eos", "--seed", "4"])
                .args(device),
        )
    };
    let (cpu, dev) = (generate(&[]), generate(&ON_DEVICE));
    assert_eq!(cpu.len(), 6);
    for (a, b) in cpu.iter().zip(&dev) {
        assert_eq!(a["token_ids"], b["token_ids"]);
        let (x, y) = (a["token_logprobs"].as_array().expect("lp"), b["token_logprobs"].as_array().expect("lp"));
        for (x, y) in x.iter().zip(y) {
            assert!((x.as_f64().expect("f") - y.as_f64().expect("f")).abs() < 1e-4, "{x} vs {y}");
        }
    }
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, "{\"prompt\": \"the cat\", \"completion\": \" sat on the mat\"}\n").expect("write");
    let score = |device: &[&str]| {
        let rows =
            success_json(orchard().args(["score", "--model", m, "--input", pairs.to_str().unwrap()]).args(device));
        rows[0]["logprob_sum"].as_f64().expect("logprob")
    };
    assert!((score(&[]) - score(&ON_DEVICE)).abs() < 1e-3);
}

#[test]
fn sample_and_search_jobs_run_on_the_device() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    let tasks = jsonl_tasks(dir.path(), 2, |i| format!("what is {i} plus one?"));
    let common = |cmd: &str, out: &str| {
        let mut a =
            vec![cmd.to_string(), "--model".into(), model.display().to_string(), "--task".into(), "jsonl".into()];
        a.extend(["--path".into(), tasks.display().to_string(), "--reference-field".into(), "reference".into()]);
        a.extend(["--id-field", "id", "--reward", "math", "--seed", "5", "--max-new-tokens", "6"].map(String::from));
        a.extend(["--out".into(), dir.path().join(out).display().to_string()]);
        a
    };
    orchard().args(common("sample", "s")).args(["--n", "3"]).args(ON_DEVICE).assert().success();
    let reader = orchard_datasets::RunReader::open(&dir.path().join("s")).expect("open sample run");
    assert_eq!(reader.trajectories().expect("trajectories").len(), 6);
    orchard()
        .args(common("search", "t"))
        .args(["--algo", "mcts", "--iterations", "4", "--k", "2", "--max-depth", "2", "--step", "tokens:3"])
        .args(ON_DEVICE)
        .assert()
        .success();
    let reader = orchard_datasets::RunReader::open(&dir.path().join("t")).expect("open search run");
    assert!(!reader.nodes().expect("nodes").is_empty());
}

#[test]
fn an_unavailable_or_unknown_device_fails_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    let m = model.to_str().unwrap();
    if !cfg!(feature = "cuda") {
        for args in [
            vec!["generate", "--model", m, "--prompt", "hi", "--device", "cuda"],
            vec!["bench", "--model", m, "--device", "cuda:1", "--batch", "1"],
            vec!["eval", "--model", m, "--task", "gsm8k", "--limit", "1", "--device", "cuda"],
        ] {
            orchard().args(&args).assert().failure().stderr(contains("built without CUDA support"));
        }
    }
    orchard()
        .args(["generate", "--model", m, "--prompt", "hi", "--device", "gpu"])
        .assert()
        .failure()
        .stderr(contains("`gpu` is not a device"));
}
