//! `orchard loop`: rounds on a tiny random model — a killed loop resumes to the same result as an uninterrupted
//! one, a finished loop rerun does nothing, and bad configurations are refused with clear errors.

use std::path::{Path, PathBuf};

use crate::util::{orchard, tiny_hf};

/// `n` arithmetic tasks as JSONL, GSM8K-shaped (`answer` ends in `#### N`) so the warm-up has gold solutions.
fn tasks(dir: &Path, name: &str, n: usize, offset: usize) -> PathBuf {
    let body: String = (0..n)
        .map(|i| {
            let k = i + offset;
            let row = serde_json::json!({
                "id": format!("q{k}"),
                "prompt": format!("What is {k} plus 1?"),
                "reference": (k + 1).to_string(),
                "answer": format!("{k} + 1 = {}\n#### {}", k + 1, k + 1),
            });
            format!("{row}\n")
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write tasks");
    p
}

fn config(dir: &Path, model: &Path, train: &Path, eval: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
model = "{model}"
rounds = 2
reward = "math"
max_batch = 8

[train_tasks]
task = "jsonl"
path = "{train}"
fields = {{ reference = "reference" }}

[eval_tasks]
task = "jsonl"
path = "{eval}"
fields = {{ reference = "reference" }}

[eval]
max_new_tokens = 6

[warmup]
loss = "sft"
lr = 1e-3
epochs = 2
batch_size = 2
checkpoint_every = 1
keep_checkpoints = 2

[generate]
n = 2

[generate.sampling]
temperature = 1.0
max_new_tokens = 6

[train]
loss = "topr"
lr = 1e-3
batch_size = 2
checkpoint_every = 1
{extra}
"#,
        model = model.display(),
        train = train.display(),
        eval = eval.display()
    );
    let p = dir.join("loop.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// The parts of loop.json that must not depend on interruptions: per round its kind, counts, accuracy and the
/// identity of the evaluated weights.
fn outcome(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("loop.json")).expect("loop.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .map(|r| {
            serde_json::json!({
                "round": r["round"], "kind": r["kind"], "samples": r["samples"], "correct": r["correct"],
                "examples": r["examples"], "steps": r["train"]["steps"], "greedy": r["eval"]["greedy"],
                "model_hash": r["model_hash"],
            })
        })
        .collect()
}

#[test]
fn loop_killed_anywhere_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let train = tasks(dir.path(), "train.jsonl", 6, 0);
    let eval = tasks(dir.path(), "eval.jsonl", 4, 100);
    let cfg = config(dir.path(), &model, &train, &eval, "");
    let args = |out: &Path| -> Vec<String> {
        ["loop", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--threads", "1"]
            .map(String::from)
            .to_vec()
    };

    let whole = dir.path().join("whole");
    let o = orchard().args(args(&whole)).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = outcome(&whole);
    assert_eq!(expected.len(), 3, "round 0 + warm-up + one generation round");
    assert_eq!(expected[1]["kind"], "warmup");
    assert_eq!(expected[2]["kind"], "topr");
    assert_eq!(expected[1]["examples"], 6);
    assert_eq!(expected[2]["samples"], 12);
    // Each round changed the weights.
    assert_ne!(expected[0]["model_hash"], expected[1]["model_hash"]);
    assert_ne!(expected[1]["model_hash"], expected[2]["model_hash"]);
    assert!(whole.join("loop.svg").is_file() && whole.join("final/config.json").is_file());

    // SIGKILL at increasing delays, then let it finish.
    let killed = dir.path().join("killed");
    let mut kills = 0;
    for delay in [100u64, 180, 260, 340, 420, 500, 600, 700, 800, 950, 1100] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("orchard"))
            .args(args(&killed))
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(delay));
        kills += usize::from(child.try_wait().expect("wait").is_none());
        let _ = child.kill();
        let _ = child.wait();
    }
    let o = orchard().args(args(&killed)).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(kills > 0, "no kill landed while the loop ran");
    assert_eq!(outcome(&killed), expected, "{kills} kills");

    // A finished loop rerun changes nothing.
    let before = std::fs::read(killed.join("loop.json")).expect("loop.json");
    let o = orchard().args(args(&killed)).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(outcome(&killed), expected);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&before).ok().map(|v| v["rounds"].as_array().map(Vec::len)),
        Some(Some(3))
    );
}

#[test]
fn loop_refuses_overlapping_splits_and_unknown_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let train = tasks(dir.path(), "train.jsonl", 6, 0);
    // Two of the evaluation questions are train questions.
    let eval = tasks(dir.path(), "eval.jsonl", 4, 4);
    let cfg = config(dir.path(), &model, &train, &eval, "");
    let out = dir.path().join("out");
    let o = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("share 2 question(s)") && err.contains("train/4 = eval/0"), "{err}");

    let eval = tasks(dir.path(), "eval.jsonl", 4, 100);
    let cfg = config(dir.path(), &model, &train, &eval, "epochz = 3");
    let o = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("loop.toml") && err.contains("unknown field `epochz`"), "{err}");
}

/// A loop directory belongs to one configuration: a rerun with other settings is refused, naming them.
#[test]
fn loop_refuses_a_directory_of_another_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let train = tasks(dir.path(), "train.jsonl", 4, 0);
    let eval = tasks(dir.path(), "eval.jsonl", 2, 100);
    let out = dir.path().join("out");
    let cfg = config(dir.path(), &model, &train, &eval, "");
    let o =
        orchard().args(["loop", "--rounds", "1", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = config(dir.path(), &model, &train, &eval, "").to_path_buf();
    let text = std::fs::read_to_string(&cfg).expect("read").replace("reward = \"math\"", "reward = \"math\"\nseed = 5");
    std::fs::write(&cfg, text).expect("write");
    let o = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("other settings (seed)"), "{err}");
}

/// Search rounds (MCTS over the scheduler) train on the trees' pairs; the radix prefix cache on or off changes
/// nothing in what the loop produces, only how much prefill is recomputed.
#[test]
fn search_rounds_give_the_same_loop_with_prefix_sharing_on_and_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let train = tasks(dir.path(), "train.jsonl", 3, 0);
    let eval = tasks(dir.path(), "eval.jsonl", 2, 100);
    let run = |sharing: bool| -> (Vec<serde_json::Value>, serde_json::Value) {
        let extra = r#"
[generate.search]
algo = "mcts"
mcts = { k = 2, iterations = 3, max_depth = 2, step_tokens = 4, rollout_tokens = 6, max_tokens = 200 }
"#;
        let cfg = config(dir.path(), &model, &train, &eval, "");
        let text = std::fs::read_to_string(&cfg)
            .expect("read")
            .replace(
                "[generate]\nn = 2",
                &format!("[generate]\nn = 2\nkind = \"search\"\nworkers = 2\nprefix_cache = {sharing}"),
            )
            .replace("loss = \"topr\"", "loss = \"dpo\"\nbeta = 0.1")
            + extra;
        let cfg = dir.path().join(format!("search-{sharing}.toml"));
        std::fs::write(&cfg, text).expect("write");
        let out = dir.path().join(format!("search-{sharing}"));
        let o = orchard()
            .args(["loop", "--threads", "1", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("round-2/data/search_metrics.json")).expect("metrics"))
                .expect("json");
        (outcome(&out), metrics)
    };
    let (on, m_on) = run(true);
    let (off, m_off) = run(false);
    assert_eq!(on[2]["kind"], "dpo");
    assert_eq!(on, off);
    let hits = |m: &serde_json::Value| m["engine"]["prefix_tokens_hit"].as_u64().unwrap_or(0);
    assert!(hits(&m_on) > 0 && hits(&m_off) == 0, "{m_on} / {m_off}");
}

/// Every example loop in `examples/` is a valid configuration whose splits do not overlap.
#[test]
fn example_loops_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = orchard()
                .args(["loop", "--check", "--out", "/nonexistent", "--config"])
                .arg(&path)
                .output()
                .expect("run");
            assert!(o.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&o.stderr));
            n += 1;
        }
    }
    assert!(n >= 5, "{n} example loops");
}

/// `mode = "online"`: the held-out set before, online RL steps on the train questions, the held-out set after —
/// and an `[online]` table without the mode is refused.
#[test]
fn an_online_loop_evaluates_before_and_after_rl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let train = tasks(dir.path(), "train.jsonl", 6, 0);
    let eval = tasks(dir.path(), "eval.jsonl", 4, 100);
    let text = format!(
        r#"
model = "{model}"
reward = "math"
mode = "online"

[train_tasks]
task = "jsonl"
path = "{train}"
fields = {{ reference = "reference" }}

[eval_tasks]
task = "jsonl"
path = "{eval}"
fields = {{ reference = "reference" }}

[eval]
max_new_tokens = 6

[online]
steps = 2
prompts_per_step = 2
group_size = 3
lr = 1e-3
sampling = {{ temperature = 1.0, max_new_tokens = 6 }}
"#,
        model = model.display(),
        train = train.display(),
        eval = eval.display()
    );
    let cfg = dir.path().join("online.toml");
    std::fs::write(&cfg, &text).expect("write");
    let out = dir.path().join("online");
    let o = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("online.json")).expect("online.json")).expect("json");
    assert_eq!(report["base"]["total"], 4);
    assert_eq!(report["trained"]["total"], 4);
    assert_eq!(report["rl"]["steps"], 2);
    assert_eq!(std::fs::read_to_string(out.join("online/metrics.jsonl")).expect("metrics").lines().count(), 2);
    // Rerunning a finished online loop trains nothing more.
    let again = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(out.join("online/metrics.jsonl")).expect("metrics").lines().count(), 2);

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("mode = \"online\"\n", "")).expect("write");
    let o = orchard()
        .args(["loop", "--check", "--config"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .expect("run");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("[online] table is read only"));
}

/// `mode = "online"` with a `[warmup]` (ReFT): rounds 0–1 of the iterative loop (the base evaluation, SFT on the
/// gold solutions), then online RL that starts from the warmed-up weights — its checkpoints name the warmed-up
/// policy's identity, not the starting model's — and a rerun resumes nothing twice.
#[test]
fn an_online_loop_with_a_warmup_starts_rl_from_the_warmed_up_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let train = tasks(dir.path(), "train.jsonl", 6, 0);
    let eval = tasks(dir.path(), "eval.jsonl", 4, 100);
    let text = format!(
        r#"
model = "{model}"
reward = "math"
mode = "online"
handoff = "f32"

[train_tasks]
task = "jsonl"
path = "{train}"
fields = {{ reference = "reference" }}

[eval_tasks]
task = "jsonl"
path = "{eval}"
fields = {{ reference = "reference" }}

[eval]
max_new_tokens = 6

[warmup]
loss = "sft"
lr = 1e-3
epochs = 1
batch_size = 2
checkpoint_every = 1

[online]
steps = 2
prompts_per_step = 2
group_size = 3
lr = 1e-3
checkpoint_every = 1
sampling = {{ temperature = 1.0, max_new_tokens = 6 }}
"#,
        model = model.display(),
        train = train.display(),
        eval = eval.display()
    );
    let cfg = dir.path().join("reft.toml");
    std::fs::write(&cfg, &text).expect("write");
    let out = dir.path().join("reft");
    let o = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("after the SFT warm-up"));
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .expect("json")
    };
    let report = read(out.join("online.json"));
    let round0 = read(out.join("round-0/eval/eval.json"));
    let round1 = read(out.join("round-1/eval/eval.json"));
    assert_eq!(round1["kind"], "warmup");
    assert_eq!(report["base"], round0["eval"]["greedy"]);
    assert_eq!(report["warmup"], round1["eval"]["greedy"]);
    assert_eq!(report["trained"]["total"], 4);
    assert_eq!(report["rl"]["steps"], 2);
    // With the f32 hand-off the round-1 evaluation ran on the warmed-up master weights: RL starts from them.
    let rl_state = read(out.join("online/checkpoint-000002/state.json"));
    assert_eq!(rl_state["model_hash"], round1["model_hash"]);
    assert_ne!(rl_state["model_hash"], round0["model_hash"]);
    // A finished run rerun trains nothing more (the warm-up replays from its checkpoint).
    let again = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read_to_string(out.join("online/metrics.jsonl")).expect("metrics").lines().count(), 2);
    assert_eq!(read(out.join("online.json"))["trained"], report["trained"]);
    // Online `steps` may grow: the same loop with one more step continues RL from its checkpoint.
    std::fs::write(&cfg, text.replace("steps = 2", "steps = 3")).expect("write");
    let more = orchard().args(["loop", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    assert!(more.status.success(), "{}", String::from_utf8_lossy(&more.stderr));
    assert_eq!(std::fs::read_to_string(out.join("online/metrics.jsonl")).expect("metrics").lines().count(), 3);
    assert_eq!(read(out.join("online.json"))["rl"]["steps"], 3);
}
