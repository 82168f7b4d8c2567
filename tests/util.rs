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

/// Parses JSON lines.
pub fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}
