//! Python rewards end to end through real workers (bubblewrap where the sandbox is on: these tests fail, never
//! skip, on a machine without it, as CI installs it).

use std::time::{Duration, Instant};

use super::*;

const REWARDS: &str = r#"
import os, re, sys, time

def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]

def format_reward_func(completions, **kwargs):
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]

def matches_answer(prompts, completions, answer, level=None, **kwargs):
    return [float(a is not None and a in c) + (0.5 if lv == "easy" else 0.0)
            for c, a, lv in zip(completions, answer, level or [None] * len(completions))]

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": 1.0 if str(ground_truth) in solution_str else 0.0, "has_digit": float(any(ch.isdigit() for ch in solution_str))}

def moody(completions, **kwargs):
    out = []
    for c in completions:
        if c == "raise":
            raise ValueError("I do not like " + c)
        if c == "hang":
            time.sleep(60)
        if c == "exit":
            os._exit(3)
        if c == "write":
            open("/etc/orchard-owned", "w").write("x")
        if c == "print":
            print("noise on stdout")
            sys.stdout.flush()
        if c == "none":
            out.append(None)
            continue
        out.append(1.0)
    return out

def wrong_length(completions, **kwargs):
    return [1.0]

def not_a_number(completions, **kwargs):
    return [1.0, "high"]
"#;

fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("my_rewards.py");
    std::fs::write(&p, text).expect("write the reward file");
    p
}

fn reward(path: &Path, function: &str, tweak: impl FnOnce(&mut PythonConfig)) -> Result<PythonReward> {
    let mut c = PythonConfig::new(path, function);
    c.workers = Some(2);
    tweak(&mut c);
    PythonReward::new(c)
}

fn scores(outcomes: &[Outcome]) -> Vec<Option<f64>> {
    outcomes.iter().map(|o| o.error.is_none().then_some(o.score)).collect()
}

#[test]
fn trl_examples_score_as_in_python() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = file(&dir, REWARDS);
    let r = reward(&path, "reward_len", |_| {})?;
    assert_eq!(r.style(), "trl");
    let t = Task::new("q");
    let rows = [(&t, "short"), (&t, "exactly twenty chars"), (&t, "a much longer completion than twenty")];
    assert_eq!(scores(&r.score_batch(&rows)), [Some(-15.0), Some(0.0), Some(-16.0)]);
    let f = reward(&path, "format_reward_func", |c| c.completions = CompletionFormat::Conversational)?;
    let rows = [(&t, "<think>x</think><answer>4</answer>"), (&t, "4")];
    assert_eq!(scores(&f.score_batch(&rows)), [Some(1.0), Some(0.0)]);
    assert!(r.functions().contains(&"moody".to_string()));
    Ok(())
}

#[test]
fn columns_and_verl_signature() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = file(&dir, REWARDS);
    let r = reward(&path, "matches_answer", |_| {})?;
    let easy = Task::new("q").with_answer("42").with_column("level", serde_json::json!("easy"));
    let plain = Task::new("q").with_answer("7");
    let rows = [(&easy, "it is 42"), (&plain, "it is 8"), (&plain, "7!")];
    assert_eq!(scores(&r.score_batch(&rows)), [Some(1.5), Some(0.0), Some(1.0)]);
    let v = reward(&path, "compute_score", |_| {})?;
    assert_eq!(v.style(), "verl");
    let o = v.score(&plain, "the answer is 7");
    assert_eq!((o.score, o.components["has_digit"]), (1.0, 1.0));
    assert_eq!(v.score(&plain, "no idea").score, 0.0);
    Ok(())
}

#[test]
fn failures_mark_only_their_rows() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = file(&dir, REWARDS);
    let r = reward(&path, "moody", |c| c.timeout = Duration::from_millis(1500))?;
    let t = Task::new("q");
    let texts = ["ok", "raise", "print", "hang", "exit", "write", "none", "ok"];
    let rows: Vec<(&Task, &str)> = texts.iter().map(|c| (&t, *c)).collect();
    let start = Instant::now();
    let out = r.score_batch(&rows);
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    assert_eq!(out.len(), texts.len());
    let err = |i: usize| out[i].error.clone().unwrap_or_default();
    assert_eq!(scores(&out)[0], Some(1.0));
    assert!(err(1).contains("ValueError: I do not like raise"), "{}", err(1));
    assert!(err(1).contains("Traceback"), "the traceback is kept: {}", err(1));
    assert_eq!(scores(&out)[2], Some(1.0), "prints do not reach the protocol");
    assert!(err(3).contains("timed out"), "{}", err(3));
    assert!(err(4).contains("exited with status 3"), "{}", err(4));
    assert!(err(5).contains("Read-only file system") || err(5).contains("Permission denied"), "{}", err(5));
    assert!(!Path::new("/etc/orchard-owned").exists());
    assert!(out[6].is_not_applicable(), "{:?}", out[6]);
    assert_eq!(scores(&out)[7], Some(1.0));
    // The pool still works after killing and replacing workers.
    assert_eq!(r.score(&t, "ok").score, 1.0);
    Ok(())
}

#[test]
fn bad_results_name_the_row() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = file(&dir, REWARDS);
    let t = Task::new("q");
    let r = reward(&path, "wrong_length", |_| {})?;
    let out = r.score_batch(&[(&t, "a"), (&t, "b")]);
    for o in &out {
        let e = o.error.as_deref().unwrap_or_default();
        assert!(e.contains("returned 1 scores for 2 completions"), "{e}");
    }
    let r = reward(&path, "not_a_number", |_| {})?;
    let out = r.score_batch(&[(&t, "a"), (&t, "b")]);
    assert_eq!(out[0].score, 1.0);
    let e = out[1].error.clone().unwrap_or_default();
    assert!(e.contains("row 1") && e.contains("'high'"), "{e}");
    Ok(())
}

#[test]
fn a_bad_file_is_reported_before_any_scoring() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = file(&dir, REWARDS);
    let e = reward(&path, "no_such_function", |_| {}).expect_err("missing function").to_string();
    assert!(e.contains("my_rewards.py") && e.contains("no_such_function"), "{e}");
    assert!(e.contains("reward_len") && e.contains("compute_score"), "lists the functions it has: {e}");
    let broken = file(&dir, "import not_a_module_anywhere\n");
    let e = reward(&broken, "f", |_| {}).expect_err("import error").to_string();
    assert!(e.contains("ModuleNotFoundError") && e.contains("not_a_module_anywhere"), "{e}");
    let e = reward(Path::new("/nonexistent/r.py"), "f", |_| {}).expect_err("missing file").to_string();
    assert!(e.contains("/nonexistent/r.py"), "{e}");
    let e = reward(&path, "reward_len", |c| c.python = Some("/nonexistent/python3".into()))
        .expect_err("missing interpreter")
        .to_string();
    assert!(e.contains("/nonexistent/python3"), "{e}");
    Ok(())
}

#[test]
fn unsandboxed_and_rlimits_workers_score_the_same() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = file(&dir, REWARDS);
    let t = Task::new("q");
    let rows = [(&t, "short"), (&t, "exactly twenty chars")];
    for sandbox in [PySandbox::None, PySandbox::Rlimits, PySandbox::Bwrap] {
        let r = reward(&path, "reward_len", |c| c.sandbox = sandbox)?;
        assert_eq!(scores(&r.score_batch(&rows)), [Some(-15.0), Some(0.0)], "{sandbox:?}");
    }
    Ok(())
}
