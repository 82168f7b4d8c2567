//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use assert_cmd::Command;

/// The `orchard` binary under test.
pub fn orchard() -> Command {
    Command::cargo_bin("orchard").expect("the orchard binary is built for tests")
}

/// A tiny random llama written as a Q4_1 GGUF (fast; exercises the quantized path and the GGUF tokenizer).
pub fn tiny_gguf(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = orchard_engine::testing::tiny_config(orchard_engine::Arch::Llama);
    let path = dir.join("tiny.gguf");
    orchard_engine::testing::write_gguf(
        &path,
        &cfg,
        &orchard_engine::testing::random_weights(&cfg, 7),
        candle_core::quantized::GgmlDType::Q4_1,
    )
    .expect("write tiny gguf");
    path
}

/// A tiny random qwen2 written as an HF directory.
pub fn tiny_hf(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = orchard_engine::testing::tiny_config(orchard_engine::Arch::Qwen2);
    let path = dir.join("tiny-hf");
    orchard_engine::testing::write_hf_dir(&path, &cfg, &orchard_engine::testing::random_weights(&cfg, 8))
        .expect("write tiny hf dir");
    path
}

/// Runs `cmd`, which must succeed, and parses its standard output as JSON lines.
pub fn success_json(cmd: &mut assert_cmd::Command) -> Vec<serde_json::Value> {
    json_lines(&cmd.assert().success().get_output().stdout)
}

/// Parses JSON lines.
pub fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A JSONL task file of `n` rows `{id: "t{i}", prompt: prompt(i), reference: i % 3}`: references the tiny model
/// sometimes says, so some samples are correct.
pub fn jsonl_tasks(dir: &std::path::Path, n: usize, prompt: impl Fn(usize) -> String) -> std::path::PathBuf {
    let p = dir.join("tasks.jsonl");
    let body: String = (0..n)
        .map(|i| {
            let row = serde_json::json!({"id": format!("t{i}"), "prompt": prompt(i), "reference": (i % 3).to_string()});
            format!("{row}\n")
        })
        .collect();
    std::fs::write(&p, body).expect("write tasks");
    p
}

/// Run `orchard ARGS` (a job writing the run directory `run`) once per delay, SIGKILLing it after that many
/// milliseconds, and call `after_kill` after each kill. Returns how many kills landed before the run was complete.
pub fn kill_mid_job(args: &[String], run: &std::path::Path, delays_ms: &[u64], mut after_kill: impl FnMut()) -> usize {
    let mut interrupted = 0;
    for &delay_ms in delays_ms {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("orchard"))
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let complete = std::fs::read(run.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|m| m["status"]["complete"] == true);
        interrupted += usize::from(!complete);
        after_kill();
    }
    interrupted
}
