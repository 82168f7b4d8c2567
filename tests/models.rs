//! Every native architecture through the user-visible commands: `orchard generate`, `orchard score`, one
//! `orchard train` step with an export that loads back, on tiny random models (HF directory and GGUF; Gemma 3 from
//! an HF directory — its GGUF path runs on the real 270M file in the engine's tests).

use std::path::{Path, PathBuf};

use orchard_engine::Arch;

use crate::util::{json_lines, orchard};

fn write_model(dir: &Path, arch: Arch, gguf: bool) -> PathBuf {
    let cfg = orchard_engine::testing::tiny_config(arch);
    let w = orchard_engine::testing::random_weights(&cfg, 21);
    if gguf {
        let p = dir.join(format!("{}.gguf", arch.name()));
        orchard_engine::testing::write_gguf(&p, &cfg, &w, candle_core::quantized::GgmlDType::Q8_0).expect("gguf");
        p
    } else {
        let p = dir.join(arch.name());
        orchard_engine::testing::write_hf_dir(&p, &cfg, &w).expect("hf dir");
        p
    }
}

/// `orchard generate` of two samples of one prompt succeeds with two non-empty rows (`what` names the model).
fn generates_two_samples(model: &Path, what: &str) {
    let out = orchard()
        .args(["generate", "--model"])
        .arg(model)
        .args(["--prompt", "What is 2 + 2?", "--n", "2", "--max-new-tokens", "6", "--seed", "3"])
        .output()
        .expect("generate");
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    let rows = json_lines(&out.stdout);
    assert_eq!(rows.len(), 2, "{what}");
    assert!(rows.iter().all(|r| r["token_ids"].as_array().is_some_and(|t| !t.is_empty())), "{what}: {rows:?}");
}

/// `orchard score` of one pair (written to `dir/pairs.jsonl`, returned) gives a finite negative log-prob sum.
fn scores_a_pair(model: &Path, dir: &Path, what: &str) -> (PathBuf, f64) {
    let input = dir.join("pairs.jsonl");
    std::fs::write(&input, "{\"prompt\": \"What is 2 + 2?\", \"completion\": \"The answer is 4.\"}\n").expect("write");
    let out = orchard().args(["score", "--model"]).arg(model).arg("--input").arg(&input).output().expect("score");
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    let scored = json_lines(&out.stdout);
    let sum = scored[0]["logprob_sum"].as_f64().unwrap_or(f64::NAN);
    assert!(sum < 0.0 && sum.is_finite(), "{what}: {scored:?}");
    (input, sum)
}

#[test]
fn every_architecture_generates_scores_and_trains_end_to_end() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3] {
        let dir = tempfile::tempdir().expect("tempdir");
        let formats: &[bool] = if arch == Arch::Gemma3 { &[false] } else { &[false, true] };
        for &gguf in formats {
            generates_two_samples(&write_model(dir.path(), arch, gguf), &format!("{arch:?}"));
        }
        let model = write_model(dir.path(), arch, false);
        let (input, before) = scores_a_pair(&model, dir.path(), &format!("{arch:?}"));

        let data = dir.path().join("sft.jsonl");
        let rows: String = (0..4)
            .map(|i| format!("{}\n", serde_json::json!({"prompt": format!("What is {i} plus 1?"), "completion": format!("It is {}.", i + 1)})))
            .collect();
        std::fs::write(&data, rows).expect("write");
        let trained = dir.path().join(format!("train-{}", arch.name()));
        let out = orchard()
            .args(["train", "--model"])
            .arg(&model)
            .args(["--loss", "sft", "--sft-data"])
            .arg(&data)
            .args(["--batch-size", "4", "--lr", "1e-2", "--out"])
            .arg(&trained)
            .output()
            .expect("train");
        assert!(out.status.success(), "{arch:?}: {}", String::from_utf8_lossy(&out.stderr));
        let steps = json_lines(&std::fs::read(trained.join("metrics.jsonl")).expect("metrics"));
        assert_eq!(steps.len(), 1, "{arch:?}");
        // The merged export is an HF directory of the same architecture that the engine (and transformers) load.
        let merged = trained.join("merged");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).expect("config")).expect("json");
        let model_type = if arch == Arch::Gemma3 { "gemma3_text" } else { arch.name() };
        assert_eq!(config["model_type"], model_type);
        let out = orchard().args(["score", "--model"]).arg(&merged).arg("--input").arg(&input).output().expect("score");
        assert!(out.status.success(), "{arch:?}: {}", String::from_utf8_lossy(&out.stderr));
        let after = json_lines(&out.stdout)[0]["logprob_sum"].as_f64().unwrap_or(f64::NAN);
        assert!(after.is_finite() && after != before, "{arch:?}: trained");
    }
}

#[test]
fn an_unsupported_architecture_names_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = write_model(dir.path(), Arch::Qwen3, false);
    let cfg = model.join("config.json");
    let text = std::fs::read_to_string(&cfg).expect("read").replace("\"qwen3\"", "\"mamba\"");
    std::fs::write(&cfg, text).expect("write");
    let out = orchard().args(["generate", "--model"]).arg(&model).args(["--prompt", "hi"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mamba") && err.contains("qwen3") && err.contains("phi3"), "{err}");
}

/// An architecture only the generic candle-transformers backend runs (a tiny Phi-3): `info` names the backend,
/// `generate` and `score` work, a job it cannot run (`train`) says so.
#[test]
fn a_generic_backend_model_generates_scores_and_says_what_it_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("phi3");
    orchard_engine::testing::write_tiny_phi3(&model, 3).expect("phi3");
    let out = orchard().args(["info", "--model"]).arg(&model).output().expect("info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((v["backend"].as_str(), v["architecture"].as_str()), (Some("candle-transformers"), Some("phi3")));
    generates_two_samples(&model, "phi3");
    scores_a_pair(&model, dir.path(), "phi3");
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, "{\"prompt\": \"a\", \"completion\": \"b\"}\n").expect("write");
    let out = orchard()
        .args(["train", "--model"])
        .arg(&model)
        .args(["--loss", "sft", "--sft-data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("t"))
        .output()
        .expect("train");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("generic candle-transformers backend"), "{err}");
}

#[test]
fn info_describes_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = write_model(dir.path(), Arch::Qwen3, true);
    let out = orchard().args(["info", "--model"]).arg(&model).output().expect("info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["architecture"].as_str(), v["format"].as_str(), v["backend"].as_str()),
        (Some("qwen3"), Some("gguf"), Some("native"))
    );
    assert_eq!(v["head_dim"], 32);
    assert_eq!(v["qk_norm"], true);
    assert!(v["stored"]["Q8_0"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["chat_template"]["renders_user_hi_as"].as_str().is_some_and(|s| s.contains("Hi")), "{v}");
    let hf = write_model(dir.path(), Arch::Qwen2, false);
    let out = orchard().args(["info", "--model"]).arg(&hf).output().expect("info");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["architecture"].as_str(), v["format"].as_str(), v["held_as"].as_str()),
        (Some("qwen2"), Some("hf"), Some("f32"))
    );
}
