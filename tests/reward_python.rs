//! Python reward functions through `orchard reward`, `orchard sample` and `--list` / `--explain`: the same scores
//! as calling the functions directly in Python (TRL's documented examples, a verl `compute_score`), contained
//! failures, bad files named before any work. Needs python3 and bubblewrap (CI installs both; missing → fails).

use std::path::{Path, PathBuf};
use std::process::Command;

use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use serde_json::{json, Value};

use crate::util::{jsonl_tasks, orchard, tiny_gguf};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/user_rewards.py")
}

fn rows() -> Vec<Value> {
    let completions = [
        "<think>6 * 7 = 42</think><answer>42</answer>",
        "The answer is 42.",
        "Natalia sold 48 + 24 = 72 clips.\n#### 72",
        "#### 1,000",
        "",
        "<think>no</think> <answer>1</answer>",
        "Short.",
        "#### 71",
    ];
    let answers = ["42", "42", "72", "1000", "3", "1", "5", "72"];
    completions
        .iter()
        .zip(answers)
        .enumerate()
        .map(|(i, (c, a))| json!({"prompt": format!("question {i}"), "completion": c, "answer": a}))
        .collect()
}

fn write_rows(dir: &Path, rows: &[Value]) -> anyhow::Result<PathBuf> {
    let p = dir.join("rows.jsonl");
    std::fs::write(&p, rows.iter().map(|r| format!("{r}\n")).collect::<String>())?;
    Ok(p)
}

fn direct(function: &str, input: &Path, conversational: bool) -> anyhow::Result<Vec<f64>> {
    let mut cmd = Command::new("python3");
    cmd.arg(reference()).arg(function).arg(input);
    if conversational {
        cmd.arg("conversational");
    }
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn through_orchard(args: &[&str], input: &Path) -> anyhow::Result<(Vec<Value>, i32)> {
    let out = orchard().arg("reward").args(args).arg("--input").arg(input).output()?;
    let rows = String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<Vec<Value>, _>>()?;
    Ok((rows, out.status.code().unwrap_or(-1)))
}

#[test]
fn trl_and_verl_examples_score_as_when_called_directly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rows = rows();
    let input = write_rows(dir.path(), &rows)?;
    let file = reference();
    let file = file.to_str().unwrap_or_default();
    let conversational = dir.path().join("format.toml");
    std::fs::write(
        &conversational,
        format!(
            "kind = \"python\"\nfile = {file:?}\nfunction = \"format_reward_func\"\ncompletions = \"conversational\"\n"
        ),
    )?;
    let cases: [(&str, Vec<String>, bool); 3] = [
        ("reward_len", vec!["--kind".into(), format!("python:{file}:reward_len")], false),
        ("format_reward_func", vec!["--config".into(), conversational.to_string_lossy().into()], true),
        ("compute_score", vec!["--kind".into(), format!("python:{file}:compute_score")], false),
    ];
    for (function, args, conv) in cases {
        let want = direct(function, &input, conv)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, code) = through_orchard(&args, &input)?;
        assert_eq!(code, 0, "{function}: {got:?}");
        let got: Vec<f64> = got.iter().map(|r| r["score"].as_f64().unwrap_or(f64::NAN)).collect();
        assert_eq!(got.len(), rows.len());
        assert_eq!(got, want, "{function}");
        assert!(want.iter().any(|s| *s != want[0]), "{function}: the rows must not all score alike");
    }
    Ok(())
}

const HOSTILE: &str = r#"
import os, sys, time
def hostile(completions, **kwargs):
    out = []
    for c in completions:
        if c == "raise":
            raise RuntimeError("bad row")
        if c == "hang":
            time.sleep(30)
        if c == "exit":
            os._exit(7)
        if c == "print":
            print("{\"results\": []}")
        if c == "write":
            open("/var/tmp/orchard-escaped-%d.txt" % os.getppid(), "w").write("x")
        out.append(float(len(c)))
    return out
"#;

#[test]
fn a_hostile_reward_marks_its_rows_and_the_job_finishes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sub = dir.path().join("rewards");
    std::fs::create_dir(&sub)?;
    std::fs::write(sub.join("hostile.py"), HOSTILE)?;
    let texts = ["ok", "raise", "hang", "exit", "print", "write", "fine"];
    let rows: Vec<Value> = texts.iter().map(|c| json!({"completion": c})).collect();
    let input = write_rows(dir.path(), &rows)?;
    let config = dir.path().join("r.toml");
    let file = sub.join("hostile.py");
    std::fs::write(
        &config,
        format!("kind = \"python\"\nfile = {:?}\nfunction = \"hostile\"\ntimeout = \"2s\"\n", file),
    )?;
    let (out, code) = through_orchard(&["--config", config.to_str().unwrap_or_default()], &input)?;
    assert_eq!(code, 1, "some rows are not scored");
    assert_eq!(out.len(), texts.len());
    let error = |i: usize| out[i]["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        (out[0]["score"].as_f64(), out[4]["score"].as_f64(), out[6]["score"].as_f64()),
        (Some(2.0), Some(5.0), Some(4.0))
    );
    assert!(error(1).contains("RuntimeError: bad row"), "{}", error(1));
    assert!(error(2).contains("timed out"), "{}", error(2));
    assert!(error(3).contains("exited with status 7"), "{}", error(3));
    assert!(error(5).contains("Read-only file system"), "{}", error(5));
    let escaped = std::fs::read_dir("/var/tmp")?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("orchard-escaped-"));
    assert!(!escaped, "the sandbox kept the write out");
    Ok(())
}

#[test]
fn bad_reward_files_are_named_before_any_work() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = write_rows(dir.path(), &rows())?;
    let kind = format!("python:{}:no_such", reference().display());
    orchard()
        .args(["reward", "--kind", &kind, "--input"])
        .arg(&input)
        .assert()
        .code(2)
        .stderr(contains("user_rewards.py").and(contains("no function `no_such`")).and(contains("reward_len")));
    let wrong = "def long(completions, **kw):\n    return [1.0] * (len(completions) + 1)\n\n\
                 def word(completions, **kw):\n    return ['high' if i == 3 else 1.0 for i in range(len(completions))]\n";
    std::fs::write(dir.path().join("wrong.py"), wrong)?;
    let kind = format!("python:{}:long", dir.path().join("wrong.py").display());
    let (out, code) = through_orchard(&["--kind", &kind], &input)?;
    assert_eq!(code, 1);
    for r in &out {
        assert!(r["error"].as_str().unwrap_or_default().contains("returned 9 scores for 8 completions"), "{r:?}");
    }
    let kind = format!("python:{}:word", dir.path().join("wrong.py").display());
    let (out, code) = through_orchard(&["--kind", &kind], &input)?;
    assert_eq!(code, 1);
    assert_eq!(out.iter().filter(|r| r["score"].is_null()).count(), 1, "only the bad row");
    let e = out[3]["error"].as_str().unwrap_or_default();
    assert!(e.contains("row 3") && e.contains("'high'"), "{e}");
    orchard()
        .args(["reward", "--kind", "python:rewards.py", "--input"])
        .arg(&input)
        .assert()
        .code(2)
        .stderr(contains("python:FILE:FUNCTION"));
    Ok(())
}

#[test]
fn sample_scores_with_a_python_reward_and_its_columns() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_gguf(dir.path());
    let tasks = jsonl_tasks(dir.path(), 3, |i| format!("Say {i}"));
    let reward = dir.path().join("mine.py");
    std::fs::write(&reward, "def has_ref(prompts, completions, reference, **kw):\n    return [2.0 if r in c else 0.5 for c, r in zip(completions, reference)]\n")?;
    let out = dir.path().join("run");
    orchard()
        .args(["sample", "--model"])
        .arg(&model)
        .args(["--task", "jsonl", "--path"])
        .arg(&tasks)
        .args([
            "--n",
            "2",
            "--max-new-tokens",
            "6",
            "--reward",
            &format!("python:{}:has_ref", reward.display()),
            "--out",
        ])
        .arg(&out)
        .assert()
        .success();
    let trajectories = orchard_datasets::RunReader::open(&out)?.trajectories()?;
    assert_eq!(trajectories.len(), 6);
    for t in &trajectories {
        let s = t.reward.score;
        assert!(s == 2.0 || s == 0.5, "scored by the Python function through the `reference` column: {s}");
    }
    Ok(())
}

#[test]
fn list_and_explain() -> anyhow::Result<()> {
    let out = orchard().args(["reward", "--list"]).output()?;
    let text = String::from_utf8(out.stdout)?;
    for name in [
        "gsm8k",
        "humaneval",
        "python",
        "judge",
        "weighted",
        "gate",
        "function = \"my_reward\"",
        "partial_credit = 0.1",
    ] {
        assert!(text.contains(name), "--list lacks {name}");
    }
    let dir = tempfile::tempdir()?;
    let input = write_rows(dir.path(), &rows())?;
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "kind = \"weighted\"\n[[terms]]\nweight = 0.8\nreward = { kind = \"gsm8k\" }\n[[terms]]\nname = \"fmt\"\nweight = 0.2\nreward = { kind = \"format\", tags = [\"answer\"] }\n",
    )?;
    orchard()
        .args(["reward", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .args(["--explain", "1"])
        .assert()
        .success()
        .stdout(
            contains("rows.jsonl:2 (row 1)")
                .and(contains("gsm8k (gsm8k) × 0.8: score 1"))
                .and(contains("extracted: \"42\""))
                .and(contains("fmt (format) × 0.2: score 0")),
        );
    orchard()
        .args(["reward", "--kind", "gsm8k", "--input"])
        .arg(&input)
        .args(["--explain", "99"])
        .assert()
        .code(2)
        .stderr(contains("no row 99"));
    Ok(())
}

#[test]
fn example_reward_configs_run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let model = tiny_gguf(dir.path());
    let rows = [
        json!({"prompt": "What is 6 * 7?", "completion": "<think>6 * 7 = 42</think> The answer is 42.", "answer": "42"}),
        json!({"prompt": "What is 6 * 7?", "completion": "I do not know.", "answer": "42"}),
    ];
    let input = write_rows(dir.path(), &rows)?;
    let out = orchard()
        .current_dir(root)
        .args(["reward", "--config", "examples/rewards/gsm8k_plus_format.toml", "--input"])
        .arg(&input)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scored: Vec<Value> =
        String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(scored[0]["score"].as_f64(), Some(1.0));
    assert_eq!(scored[0]["components"]["format"].as_f64(), Some(1.0));
    assert_eq!(scored[1]["score"].as_f64(), Some(0.0));
    // The judge example with a tiny model as --judge-model: every row judged, P(Yes) in [0, 1] where the gate
    // passes, 0 where it does not.
    let out = orchard()
        .current_dir(root)
        .args(["reward", "--config", "examples/rewards/judge.toml", "--judge-model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scored: Vec<Value> =
        String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let p_yes = scored[0]["components"]["p(Yes)"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&p_yes) && scored[0]["score"].as_f64() == Some(p_yes), "{:?}", scored[0]);
    assert_eq!(scored[1]["score"].as_f64(), Some(0.0));
    Ok(())
}
