//! `orchard generate`, `orchard score`, `orchard tokenize` on tiny random models: output contract, determinism,
//! and clear failures on bad input.

use predicates::str::contains;

use crate::util::{json_lines, orchard, success_json, tiny_gguf, tiny_hf};

fn prompts_file(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write prompts");
    p
}

#[test]
fn generate_writes_one_row_per_sample_with_the_documented_fields() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let prompts = prompts_file(
        dir.path(),
        "p.jsonl",
        "{\"prompt\": \"the cat\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi there\"}]}\n",
    );
    let rows = success_json(
        orchard()
            .args(["generate", "--model", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()])
            .args(["--n", "3", "--max-new-tokens", "12", "--seed", "5"]),
    );
    assert_eq!(rows.len(), 6);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["prompt_index"], i / 3);
        assert_eq!(r["sample_index"], i % 3);
        let ids = r["token_ids"].as_array().expect("ids");
        let lps = r["token_logprobs"].as_array().expect("logprobs");
        assert!(!ids.is_empty() && ids.len() <= 12);
        assert_eq!(ids.len(), lps.len());
        assert!(lps.iter().all(|x| x.as_f64().expect("f64") <= 0.0));
        let reason = r["finish_reason"].as_str().expect("reason");
        assert!(reason == "stop" || reason == "length");
        assert!(r["text"].is_string());
    }
}

#[test]
fn a_seed_gives_the_same_samples_whatever_the_other_prompts() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    let alone = prompts_file(dir.path(), "a.jsonl", "{\"prompt\": \"in the end\"}\n");
    let mixed = prompts_file(
        dir.path(),
        "b.jsonl",
        "{\"prompt\": \"a longer prompt about many things\"}\n{\"prompt\": \"in the end\"}\n",
    );
    let run = |p: &std::path::Path| {
        let mut cmd = orchard();
        cmd.args(["generate", "--model", model.to_str().unwrap(), "--prompts", p.to_str().unwrap()]);
        cmd.args(["--n", "2", "--max-new-tokens", "16", "--ignore-eos"]);
        success_json(cmd.args(["--seed", "9", "--precision", "f32"]))
    };
    let a = run(&alone);
    let b = run(&mixed);
    assert_eq!(a[0]["token_ids"], b[2]["token_ids"]);
    assert_eq!(a[1]["token_ids"], b[3]["token_ids"]);
    assert_ne!(a[0]["token_ids"], a[1]["token_ids"]);
}

#[test]
fn out_file_is_written_whole_and_bad_lines_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let good = prompts_file(dir.path(), "good.jsonl", "{\"prompt\": \"x\"}\n");
    let out = dir.path().join("out.jsonl");
    orchard()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompts", good.to_str().unwrap()])
        .args(["--max-new-tokens", "4", "--out", out.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(json_lines(&std::fs::read(&out).expect("out")).len(), 1);

    let bad = prompts_file(dir.path(), "bad.jsonl", "{\"prompt\": \"x\"}\n{\"prompt\": \n");
    let out2 = dir.path().join("out2.jsonl");
    orchard()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompts", bad.to_str().unwrap()])
        .args(["--out", out2.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(contains("bad.jsonl:2"));
    assert!(!out2.exists(), "nothing half-written");

    let missing = prompts_file(dir.path(), "missing.jsonl", "{\"text\": \"x\"}\n");
    orchard()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompts", missing.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(contains("missing.jsonl:1"));

    let role = prompts_file(dir.path(), "role.jsonl", "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}\n");
    orchard()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompts", role.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(contains("wizard"));
}

#[test]
fn model_errors_are_clear_and_do_not_panic() {
    let dir = tempfile::tempdir().expect("tmp");
    orchard()
        .args(["generate", "--model", "/no/such/model.gguf", "--prompt", "x"])
        .assert()
        .code(2)
        .stderr(contains("/no/such/model.gguf"));
    let model = tiny_gguf(dir.path());
    let bytes = std::fs::read(&model).expect("read");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    orchard()
        .args(["generate", "--model", cut.to_str().unwrap(), "--prompt", "x"])
        .assert()
        .code(2)
        .stderr(contains("cut.gguf"))
        .stderr(contains("panicked").not());
    let long = "word ".repeat(2000);
    orchard()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", &long])
        .assert()
        .code(2)
        .stderr(contains("context"));
}

#[test]
fn score_returns_one_row_per_pair_and_names_bad_fields() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_hf(dir.path());
    let input = prompts_file(
        dir.path(),
        "pairs.jsonl",
        "{\"prompt\": \"the cat\", \"completion\": \" is in there\"}\n{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"completion\": \"hello<|im_end|>\"}\n",
    );
    let rows =
        success_json(orchard().args(["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()]));
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let lps = r["token_logprobs"].as_array().expect("logprobs");
        assert_eq!(lps.len() as u64, r["n_tokens"].as_u64().expect("n"));
        let sum: f64 = lps.iter().map(|x| x.as_f64().expect("f64")).sum();
        assert!((sum - r["logprob_sum"].as_f64().expect("sum")).abs() < 1e-3);
    }
    let bad =
        prompts_file(dir.path(), "bad.jsonl", "{\"prompt\": \"x\", \"completion\": \"y\"}\n{\"prompt\": \"x\"}\n");
    orchard()
        .args(["score", "--model", model.to_str().unwrap(), "--input", bad.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(contains("bad.jsonl:2"))
        .stderr(contains("completion"));
}

#[test]
fn tokenize_shows_ids_and_pieces() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let row = &success_json(orchard().args(["tokenize", "--model", model.to_str().unwrap(), "--text", "the cat"]))[0];
    let ids = row["ids"].as_array().expect("ids");
    assert_eq!(ids.len(), row["pieces"].as_array().expect("pieces").len());
    let text: String = row["pieces"].as_array().expect("pieces").iter().map(|p| p.as_str().expect("str")).collect();
    assert_eq!(text.replace('Ġ', " "), "the cat");
    let chat =
        &success_json(orchard().args(["tokenize", "--model", model.to_str().unwrap(), "--text", "the cat", "--chat"]))
            [0];
    assert_eq!(chat["ids"][0], 1, "the template opens with <|im_start|>");
    assert!(chat["ids"].as_array().expect("ids").len() > ids.len());
}

use predicates::prelude::PredicateBooleanExt;

/// Without the `cuda` feature, `--device cuda` says how to get it instead of failing obscurely.
#[cfg(not(feature = "cuda"))]
#[test]
fn bench_on_cuda_without_the_feature_says_how_to_build_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    orchard()
        .args(["bench", "--model", model.to_str().unwrap(), "--device", "cuda"])
        .assert()
        .failure()
        .stderr(contains("--features cuda"));
}

/// `--log-format json --log-level debug`: log events on stderr are JSON objects (beside the command's own
/// `orchard: …` lines), and the generate call's span reports its timing when it closes; stdout (the samples) is
/// unchanged.
#[test]
fn json_logs_carry_span_timings_on_stderr() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = tiny_gguf(dir.path());
    let args = ["generate", "--model", model.to_str().unwrap(), "--prompt", "the cat", "--max-new-tokens", "4"];
    let plain = orchard().args(args).env_remove("RUST_LOG").assert().success().get_output().clone();
    let logged = orchard()
        .args(args)
        .args(["--log-format", "json", "--log-level", "debug"])
        .env_remove("RUST_LOG")
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(plain.stdout, logged.stdout);
    let stderr = String::from_utf8_lossy(&logged.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    let closed: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["fields"]["message"] == "close" && l["span"]["name"] == "generate").collect();
    assert_eq!(closed.len(), 1, "{lines:?}");
    assert!(closed[0]["fields"]["time.busy"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(closed[0]["span"]["requests"], 1);
}
