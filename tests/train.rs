//! `orchard train`, `orchard eval` and `orchard convert` end to end on tiny models: outputs, exact resume, bad
//! input, exports that the engine loads again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use crate::util::{json_lines, orchard, tiny_gguf, tiny_hf};

/// A standard-form pairs file of `n` pairs (plus `extra` string columns).
fn pairs_file(dir: &Path, name: &str, n: usize, drop: Option<&str>) -> PathBuf {
    let prompts: Vec<String> = (0..n).map(|i| format!("question {i}: what is {i} plus {}?", i % 4)).collect();
    let chosen: Vec<String> = (0..n).map(|i| format!("The answer is {}.", i + i % 4)).collect();
    let rejected: Vec<String> = (0..n).map(|i| format!("I think it is {} or so", 2 * i + 7)).collect();
    let cols: Vec<(&str, ArrayRef)> = [("prompt", prompts), ("chosen", chosen), ("rejected", rejected)]
        .into_iter()
        .filter(|(c, _)| Some(*c) != drop)
        .map(|(c, v)| (c, Arc::new(StringArray::from(v)) as ArrayRef))
        .collect();
    let batch = RecordBatch::try_from_iter(cols).expect("batch");
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    path
}

fn train_cmd(model: &Path, pairs: &Path, out: &Path) -> assert_cmd::Command {
    let mut c = orchard();
    c.args(["train", "--model", model.to_str().unwrap(), "--pairs", pairs.to_str().unwrap()])
        .args(["--loss", "dpo", "--beta", "0.1", "--lora-rank", "4", "--lora-dropout", "0.1", "--lr", "1e-3"])
        .args(["--epochs", "2", "--batch-size", "4", "--micro-batch-size", "2", "--seed", "3"])
        .args(["--out", out.to_str().unwrap()]);
    c
}

fn newest_checkpoint(out: &Path) -> PathBuf {
    let latest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("latest.json")).expect("latest.json")).expect("json");
    out.join(latest["checkpoint"].as_str().expect("name"))
}

#[test]
fn train_writes_metrics_plot_checkpoint_and_exports_that_generate_loads() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    let pairs = pairs_file(dir.path(), "pairs.parquet", 10, None);
    let out = dir.path().join("run");
    train_cmd(&model, &pairs, &out).assert().success().stderr(contains("6 of 6 steps"));
    let rows = json_lines(&std::fs::read(out.join("metrics.jsonl")).expect("metrics"));
    assert_eq!(rows.len(), 6);
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "lr",
        "grad_norm",
        "tokens_per_s",
    ] {
        assert!(rows.iter().all(|r| r[key].as_f64().is_some_and(f64::is_finite)), "{key}: {rows:?}");
    }
    // DPO starts at log 2 (policy = reference) and the margins grow.
    assert!((rows[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{:?}", rows[0]);
    assert!(rows[5]["rewards/margins"].as_f64().unwrap() > 0.0, "{:?}", rows[5]);
    let svg = std::fs::read_to_string(out.join("metrics.svg")).expect("plot");
    assert!(svg.starts_with("<svg") && svg.contains("rewards/accuracies"));
    assert!(newest_checkpoint(&out).join("trainable.safetensors").is_file());
    assert!(
        out.join("adapter/adapter_config.json").is_file() && out.join("adapter/adapter_model.safetensors").is_file()
    );
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join("merged").join(f).is_file(), "merged/{f}");
    }
    let gen = orchard()
        .args(["generate", "--model", out.join("merged").to_str().unwrap(), "--prompt", "question 1: what is"])
        .args(["--max-new-tokens", "6", "--seed", "1"])
        .output()
        .expect("run");
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    assert_eq!(json_lines(&gen.stdout).len(), 1);
}

/// Every tensor of a safetensors file, as f32 bit patterns.
fn tensors(path: &Path) -> std::collections::HashMap<String, Vec<u32>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .expect("safetensors")
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()))
        .collect()
}

#[test]
fn an_interrupted_run_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    let pairs = pairs_file(dir.path(), "pairs.parquet", 10, None);
    let whole = dir.path().join("whole");
    train_cmd(&model, &pairs, &whole).arg("--no-export").assert().success();
    let parts = dir.path().join("parts");
    train_cmd(&model, &pairs, &parts)
        .args(["--no-export", "--stop-after", "2"])
        .assert()
        .success()
        .stderr(contains("2 of 6 steps"));
    train_cmd(&model, &pairs, &parts)
        .args(["--no-export", "--stop-after", "3"])
        .assert()
        .success()
        .stderr(contains("resuming"));
    train_cmd(&model, &pairs, &parts).arg("--no-export").assert().success().stderr(contains("6 of 6 steps"));
    for file in ["trainable.safetensors", "optimizer.safetensors"] {
        let (a, b) = (tensors(&newest_checkpoint(&whole).join(file)), tensors(&newest_checkpoint(&parts).join(file)));
        assert_eq!(a.len(), b.len());
        for (name, values) in &a {
            assert!(b.get(name) == Some(values), "{file}: {name} differs after resuming");
        }
    }
    let losses = |out: &Path| -> Vec<(u64, f64)> {
        json_lines(&std::fs::read(out.join("metrics.jsonl")).expect("metrics"))
            .iter()
            .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(losses(&whole), losses(&parts));
}

#[test]
fn bad_inputs_fail_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    // A pairs file without `rejected`: the file and column are named, --out is not created.
    let bad = pairs_file(dir.path(), "no-rejected.parquet", 4, Some("rejected"));
    let out = dir.path().join("never");
    train_cmd(&model, &bad, &out)
        .assert()
        .code(2)
        .stderr(contains("no-rejected.parquet").and(contains("missing column `rejected`")));
    assert!(!out.exists());
    // Longer than the context (--max-length): the row is named.
    let pairs = pairs_file(dir.path(), "pairs.parquet", 4, None);
    train_cmd(&model, &pairs, &out)
        .args(["--max-length", "12"])
        .assert()
        .code(2)
        .stderr(contains("pairs.parquet:row 1"));
    train_cmd(&model, &pairs, &out).args(["--max-length", "100000"]).assert().code(2).stderr(contains("context"));
    assert!(!out.exists());
    // A run directory trained from another model is refused; its checkpoint and metrics are untouched.
    let run = dir.path().join("run");
    train_cmd(&model, &pairs, &run).arg("--no-export").assert().success();
    let ckpt = newest_checkpoint(&run);
    let before =
        (std::fs::read(ckpt.join("trainable.safetensors")).unwrap(), std::fs::read(run.join("metrics.jsonl")).unwrap());
    let other = tiny_gguf(dir.path());
    train_cmd(&other, &pairs, &run).arg("--no-export").assert().code(2).stderr(contains("another model"));
    // Same model, other settings: the differing key is named.
    let mut changed = orchard();
    changed
        .args(["train", "--model", model.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--loss", "ipo"])
        .args(["--lora-rank", "4", "--lora-dropout", "0.1", "--lr", "1e-3", "--epochs", "2", "--batch-size", "4"])
        .args(["--micro-batch-size", "2", "--seed", "3", "--no-export", "--out", run.to_str().unwrap()]);
    changed.assert().code(2).stderr(contains("objective"));
    let after =
        (std::fs::read(ckpt.join("trainable.safetensors")).unwrap(), std::fs::read(run.join("metrics.jsonl")).unwrap());
    assert!(before == after, "a refused run changed the checkpoint or metrics");
}

#[test]
fn topr_trains_on_the_trajectories_of_a_sample_run_and_eval_reports_intervals() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let tasks = dir.path().join("tasks.jsonl");
    let body: String = (0..4)
        .map(|i| format!("{{\"id\": \"t{i}\", \"prompt\": \"what is {i} plus one?\", \"answer\": \"{}\"}}\n", i % 3))
        .collect();
    std::fs::write(&tasks, body).expect("tasks");
    let sample = dir.path().join("sample");
    orchard()
        .args(["sample", "--model", model.to_str().unwrap(), "--task", "jsonl", "--path", tasks.to_str().unwrap()])
        .args(["--reference-field", "answer", "--id-field", "id", "--n", "3", "--reward", "math"])
        .args(["--max-new-tokens", "6", "--seed", "2", "--out", sample.to_str().unwrap()])
        .assert()
        .success();
    let out = dir.path().join("topr");
    orchard()
        .args(["train", "--model", model.to_str().unwrap(), "--trajectories", sample.to_str().unwrap()])
        .args(["--loss", "topr", "--baseline", "0.5", "--lr", "1e-4", "--batch-size", "6", "--epochs", "1"])
        .args(["--out", out.to_str().unwrap()])
        .assert()
        .success()
        .stderr(contains("2 of 2 steps"));
    let rows = json_lines(&std::fs::read(out.join("metrics.jsonl")).expect("metrics"));
    assert!(rows.iter().all(|r| r["topr/weight"].as_f64().is_some() && r["loss"].as_f64().unwrap().is_finite()));

    // Eval of the trained model (merged HF dir): greedy and maj@3 with Wilson intervals.
    let eval = orchard()
        .args([
            "eval",
            "--model",
            out.join("merged").to_str().unwrap(),
            "--task",
            "jsonl",
            "--path",
            tasks.to_str().unwrap(),
        ])
        .args([
            "--reference-field",
            "answer",
            "--id-field",
            "id",
            "--reward",
            "math",
            "--n",
            "3",
            "--max-new-tokens",
            "6",
        ])
        .output()
        .expect("run");
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let report = &json_lines(&eval.stdout)[0];
    assert_eq!(report["tasks"], 4);
    for key in ["greedy", "maj@3"] {
        let (acc, lo, hi) = (
            report[key]["accuracy"].as_f64().unwrap(),
            report[key]["ci95"][0].as_f64().unwrap(),
            report[key]["ci95"][1].as_f64().unwrap(),
        );
        assert!(lo <= acc && acc <= hi && 0.0 <= lo && hi <= 1.0 && hi - lo > 0.2, "{key}: {report}");
    }
}

#[test]
fn eval_runs_the_builtin_gsm8k_test_split() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let eval = orchard()
        .args(["eval", "--model", model.to_str().unwrap(), "--task", "gsm8k", "--split", "test", "--limit", "3"])
        .args(["--max-new-tokens", "4"])
        .output()
        .expect("run");
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let report = &json_lines(&eval.stdout)[0];
    assert_eq!((report["task"].as_str(), report["tasks"].as_u64()), (Some("gsm8k"), Some(3)));
    assert_eq!(report["greedy"]["total"], 3);
    assert!(report.get("maj@1").is_none());
}

#[test]
fn convert_writes_an_hf_directory_the_engine_loads() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let out = dir.path().join("hf");
    orchard().args(["convert", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()]).assert().success();
    let score = |m: &Path| {
        let input = dir.path().join("score.jsonl");
        std::fs::write(&input, "{\"prompt\": \"what is 2\", \"completion\": \" plus 2\"}\n").unwrap();
        let o = orchard()
            .args(["score", "--model", m.to_str().unwrap(), "--input", input.to_str().unwrap()])
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json_lines(&o.stdout)[0]["logprob_sum"].as_f64().unwrap()
    };
    let (a, b) = (score(&model), score(&out));
    assert!((a - b).abs() < 1e-3, "{a} vs {b}");
}

/// `orchard train --loss sft` on JSONL prompt/completion rows and on a TOML settings file (a flag with a
/// non-default value overrides the file's key); the per-token NLL falls.
#[test]
fn sft_trains_from_jsonl_and_a_settings_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let rows: String = (0..8)
        .map(|i| format!("{}\n", serde_json::json!({"prompt": format!("What is {i} plus 1?"), "completion": format!("{} The answer is {}.", i, i + 1)})))
        .collect();
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, rows).expect("write");
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, "loss = \"sft\"\nlr = 1e-2\nepochs = 3\nbatch_size = 4\nmask_ratio = 0.2\n").expect("write");
    let out = dir.path().join("out");
    orchard()
        .args(["train", "--model", model.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .args([
            "--sft-data",
            data.to_str().unwrap(),
            "--batch-size",
            "2",
            "--no-export",
            "--out",
            out.to_str().unwrap(),
        ])
        .assert()
        .success();
    let steps = json_lines(&std::fs::read(out.join("metrics.jsonl")).expect("metrics"));
    // 8 rows, batch 2 (the flag) × 3 epochs (the file) = 12 steps; Masked Thought on (the file).
    assert_eq!(steps.len(), 12);
    assert!(steps.iter().any(|s| s["sft/masked_tokens"].as_u64().unwrap_or(0) > 0));
    let nll = |s: &serde_json::Value| s["sft/nll"].as_f64().expect("nll");
    assert!(nll(&steps[11]) < nll(&steps[0]), "{} → {}", nll(&steps[0]), nll(&steps[11]));
    // A bad row is named with its line.
    std::fs::write(&data, "{\"prompt\": \"q\"}\n").expect("write");
    orchard()
        .args(["train", "--model", model.to_str().unwrap(), "--loss", "sft", "--sft-data", data.to_str().unwrap()])
        .args(["--out", dir.path().join("bad").to_str().unwrap()])
        .assert()
        .failure()
        .stderr(contains("sft.jsonl: row 1").and(contains("prompt` and `completion")));
}
