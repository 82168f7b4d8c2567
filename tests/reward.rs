//! `orchard reward` on the real data in `tests/data/` (GSM8K, SVAMP, HumanEval) and on bad input.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::util::orchard;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// Write `rows` as JSONL, run `orchard reward --kind KIND`, return (rows out, exit code, stderr).
fn score(kind: &str, rows: &[Value]) -> anyhow::Result<(Vec<Value>, i32, String)> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&input, text)?;
    score_file(kind, &input)
}

fn score_file(kind: &str, input: &Path) -> anyhow::Result<(Vec<Value>, i32, String)> {
    let out = orchard().args(["reward", "--kind", kind, "--input"]).arg(input).output()?;
    let rows = String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<Vec<Value>, _>>()?;
    Ok((rows, out.status.code().unwrap_or(-1), String::from_utf8(out.stderr)?))
}

fn humaneval() -> anyhow::Result<Vec<Value>> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(data("humaneval.jsonl.gz"))?).read_to_string(&mut text)?;
    Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

#[test]
fn every_gsm8k_gold_solution_scores_one() -> anyhow::Result<()> {
    let rows: Vec<Value> = std::fs::read_to_string(data("gsm8k_test.jsonl"))?
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l)?;
            Ok(json!({ "question": r["question"], "answer": r["answer"], "completion": r["answer"] }))
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(rows.len(), 1319);
    let (out, code, _) = score("gsm8k", &rows)?;
    assert_eq!(code, 0);
    assert_eq!(out.len(), 1319);
    let bad: Vec<&Value> = out.iter().filter(|r| r["score"] != 1.0).collect();
    assert!(bad.is_empty(), "{} rows below 1.0, e.g. {:?}", bad.len(), bad.first());
    Ok(())
}

#[test]
fn every_svamp_answer_scores_one() -> anyhow::Result<()> {
    let svamp: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(data("svamp.json"))?)?;
    assert_eq!(svamp.len(), 1000);
    let rows: Vec<Value> = svamp
        .iter()
        .map(|r| {
            let q = format!("{} {}", r["Body"].as_str().unwrap_or(""), r["Question"].as_str().unwrap_or(""));
            json!({ "question": q, "answer": r["Answer"], "completion": format!("The answer is {}.", r["Answer"]) })
        })
        .collect();
    let (out, code, _) = score("svamp", &rows)?;
    assert_eq!(code, 0);
    assert_eq!(out.iter().filter(|r| r["score"] == 1.0).count(), 1000);
    Ok(())
}

#[test]
fn humaneval_canonical_solutions_pass_and_pass_bodies_fail() -> anyhow::Result<()> {
    let problems = humaneval()?;
    assert_eq!(problems.len(), 164);
    let row = |p: &Value, completion: &Value| json!({ "prompt": p["prompt"], "completion": completion, "test": p["test"], "entry_point": p["entry_point"] });
    let mut rows: Vec<Value> = problems.iter().map(|p| row(p, &p["canonical_solution"])).collect();
    rows.extend(problems.iter().map(|p| row(p, &json!("    pass\n"))));
    let (out, code, stderr) = score("humaneval", &rows)?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out.len(), 328);
    for (k, r) in out.iter().enumerate() {
        let id = problems[k % 164]["task_id"].as_str().unwrap_or("?");
        if k < 164 {
            assert_eq!(r["score"], 1.0, "canonical {id} failed: {}", r["failure"]);
        } else {
            assert_eq!(r["score"], 0.0, "`pass` body of {id} passed");
            assert!(r["failure"].as_str().is_some_and(|f| f.starts_with("error: ")), "{r}");
        }
    }
    Ok(())
}

#[test]
fn bad_rows_get_clear_errors_and_other_rows_are_still_scored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("mixed.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"{\"answer\": \"#### 5\", \"completion\": \"so #### 5\"}\n");
    bytes.extend_from_slice(b"{\"answer\": \"5\", \"completion\": \n");
    bytes.extend_from_slice(b"{\"answer\": \"5\"}\n");
    bytes.extend_from_slice(b"\xff\xfe\xfd\n");
    bytes.extend_from_slice(b"{\"answer\": \"5\", \"completion\": [1]}\n");
    bytes.extend_from_slice(b"{\"answer\": {\"x\": 1}, \"completion\": \"5\"}\n");
    bytes.extend_from_slice(b"\n[1, 2]\n");
    bytes.extend_from_slice(b"{\"completion\": \"#### 5\"}\n");
    bytes.extend_from_slice(b"{\"answer\": 7, \"completion\": \"The answer is 7\"}\n");
    std::fs::write(&input, bytes)?;
    let (out, code, stderr) = score_file("gsm8k", &input)?;
    assert_eq!(code, 1, "row errors make the exit status 1");
    assert!(stderr.contains("2 rows scored"), "{stderr}");
    assert_eq!(out.len(), 9, "every non-blank line gets a row");
    let err = |k: usize| out[k]["error"].as_str().unwrap_or("").to_string();
    let f = input.display().to_string();
    assert_eq!(out[0]["score"], 1.0);
    assert!(err(1).starts_with(&format!("{f}:2: malformed JSON")), "{}", err(1));
    assert_eq!(err(2), format!("{f}:3: field `completion`: missing"));
    assert_eq!(err(3), format!("{f}:4: not valid UTF-8 (at byte 0)"));
    assert_eq!(err(4), format!("{f}:5: field `completion`: expected a string, got an array"));
    assert!(err(5).starts_with(&format!("{f}:6: field `answer`")), "{}", err(5));
    assert_eq!((out[6]["line"].as_u64(), err(6)), (Some(8), format!("{f}:8: row is not a JSON object")));
    assert_eq!(err(7), "task has no reference `answer`");
    assert_eq!(out[7]["score"], Value::Null);
    assert_eq!(out[8]["score"], 1.0);
    for (k, r) in out.iter().enumerate() {
        assert_eq!(r["row"], k);
    }
    Ok(())
}

#[test]
fn sql_scores_rows_and_reports_a_missing_database_per_row() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Build the database with Python's sqlite3 (the sandbox needs python3 anyway).
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('create table t(a int, b text)'); \
              c.executemany('insert into t values (?, ?)', [(1, 'x'), (2, 'y'), (3, 'z')]); c.commit()",
        )
        .arg(dir.path().join("db.sqlite"))
        .status()?;
    assert!(status.success());
    let gold = "SELECT a FROM t WHERE a > 1";
    let rows = [
        json!({ "sql": gold, "db": "db.sqlite", "completion": "<answer>SELECT a FROM t WHERE a >= 2</answer>" }),
        json!({ "sql": gold, "db": "db.sqlite", "completion": "SELECT a FROM t" }),
        json!({ "sql": gold, "db": "missing.sqlite", "completion": "SELECT 1" }),
        json!({ "sql": gold, "db": "db.sqlite", "completion": "DROP TABLE t" }),
        json!({ "sql": gold, "db": "db.sqlite", "completion": "SELECT a FROM t WHERE a > 1" }),
    ];
    let input = dir.path().join("sql.jsonl");
    std::fs::write(&input, rows.iter().map(|r| format!("{r}\n")).collect::<String>())?;
    let (out, code, _) = score_file("sql", &input)?;
    assert_eq!(code, 1);
    assert_eq!(out[0]["score"], 1.0);
    assert_eq!(out[1]["score"], 0.0);
    assert!((out[1]["components"]["cell_precision"].as_f64().unwrap_or(0.0) - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(out[1]["components"]["cell_recall"], 1.0);
    assert!(out[2]["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("database not found:") && e.ends_with("missing.sqlite")));
    assert_eq!(out[3]["score"], 0.0);
    assert_eq!(out[4]["score"], 1.0, "DROP TABLE did not run: the database is read-only");
    Ok(())
}

#[test]
fn pot_and_composites_from_toml() -> anyhow::Result<()> {
    let rows = [
        json!({ "answer": "#### 12", "completion": "```python\ndef solution():\n    return 3 * 4\n```" }),
        json!({ "answer": "#### 12", "completion": "def solution():\n    while True:\n        pass\n" }),
    ];
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("pot.jsonl");
    std::fs::write(&input, rows.iter().map(|r| format!("{r}\n")).collect::<String>())?;
    let out = orchard().args(["reward", "--kind", "pot", "--timeout", "1s", "--input"]).arg(&input).output()?;
    let out: Vec<Value> = String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(out[0]["score"], 1.0);
    assert_eq!(out[1]["score"], 0.0);
    assert!(out[1]["failure"].as_str().is_some_and(|f| f.starts_with("program timeout")), "{}", out[1]);

    let config = dir.path().join("reward.toml");
    std::fs::write(
        &config,
        "kind = \"weighted\"\n[[terms]]\nweight = 0.85\nreward = { kind = \"gsm8k\" }\n\
         [[terms]]\nweight = 0.15\nreward = { kind = \"format\", pattern = '.*<answer>.*</answer>' }\n",
    )?;
    let rows =
        [json!({ "answer": "3", "completion": "<answer>3</answer>" }), json!({ "answer": "3", "completion": "3" })];
    std::fs::write(&input, rows.iter().map(|r| format!("{r}\n")).collect::<String>())?;
    let out = orchard().args(["reward", "--config"]).arg(&config).arg("--input").arg(&input).output()?;
    let out: Vec<Value> = String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert!((out[0]["score"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-9, "{}", out[0]);
    assert!((out[1]["score"].as_f64().unwrap_or(0.0) - 0.85).abs() < 1e-9, "{}", out[1]);
    assert_eq!(out[1]["components"]["format"], 0.0);
    orchard().args(["reward", "--kind", "nope", "--input"]).arg(&input).assert().code(2);
    Ok(())
}
