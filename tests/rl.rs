//! `orchard rl`: online RL on a tiny random model — a killed run resumes to the same weights and log as an
//! uninterrupted one; G = 1 is refused; completions whose reward errors are excluded and counted.

use std::path::{Path, PathBuf};

use crate::util::{orchard, tiny_hf};

fn tasks(dir: &Path, reference: bool) -> PathBuf {
    let body: String = (0..6)
        .map(|k| {
            let mut row = serde_json::json!({ "id": format!("q{k}"), "prompt": format!("What is {k} plus 1?") });
            // Without a numeric reference the math reward cannot score: every completion's reward is an error.
            row["reference"] = serde_json::json!(if reference { (k % 3).to_string() } else { "unknown".into() });
            format!("{row}\n")
        })
        .collect();
    let p = dir.join(if reference { "train.jsonl" } else { "noref.jsonl" });
    std::fs::write(&p, body).expect("write tasks");
    p
}

fn config(dir: &Path, model: &Path, tasks: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
model = "{model}"
reward = "math"
steps = 4
prompts_per_step = 2
group_size = 3
lr = 1e-3
checkpoint_every = 1
{extra}

[prompts]
task = "jsonl"
path = "{tasks}"
fields = {{ reference = "reference" }}

[sampling]
temperature = 1.0
max_new_tokens = 6
"#,
        model = model.display(),
        tasks = tasks.display()
    );
    let p = dir.join(format!("rl-{}.toml", extra.len()));
    std::fs::write(&p, text).expect("write config");
    p
}

fn steps(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            // Timings differ between runs; everything else must not.
            serde_json::json!({"step": v["step"], "loss": v["loss"], "reward": v["reward"], "grad_norm": v["grad_norm"],
                "clip": v["clip_ratio/region_mean"], "len": v["completions/mean_length"]})
        })
        .collect()
}

#[test]
fn rl_resumed_after_stops_and_kills_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let t = tasks(dir.path(), true);
    let cfg = config(dir.path(), &model, &t, "beta = 0.05");
    let run = |out: &Path, extra: &[&str]| {
        let o = orchard()
            .args(["rl", "--threads", "1", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let whole = dir.path().join("whole");
    run(&whole, &[]);
    let expected = steps(&whole);
    assert_eq!(expected.len(), 4);
    let parts = dir.path().join("parts");
    run(&parts, &["--stop-after", "1"]);
    run(&parts, &["--stop-after", "2"]);
    run(&parts, &[]);
    assert_eq!(steps(&parts), expected);
    let w = |out: &Path| std::fs::read(out.join("checkpoint-000004/trainable.safetensors")).expect("weights");
    assert_eq!(w(&parts), w(&whole), "resumed weights differ");
}

#[test]
fn rl_refuses_groups_of_one_and_excludes_failed_rewards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let t = tasks(dir.path(), true);
    let cfg = config(dir.path(), &model, &t, "group_size = 1");
    let text = std::fs::read_to_string(&cfg).expect("read").replace("group_size = 3\n", "");
    std::fs::write(&cfg, text).expect("write");
    let o = orchard().args(["rl", "--config"]).arg(&cfg).arg("--out").arg(dir.path().join("g1")).output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("group_size = 1") && err.contains("at least 2"), "{err}");

    // No reference answer: every reward is an error; the steps happen, nothing is trained on, and it is counted.
    let t = tasks(dir.path(), false);
    let cfg = config(dir.path(), &model, &t, "");
    // gsm8k compares numbers only: a reference without one cannot be scored.
    let text = std::fs::read_to_string(&cfg).expect("read").replace("reward = \"math\"", "reward = \"gsm8k\"");
    std::fs::write(&cfg, text).expect("write");
    let out = dir.path().join("noref");
    let o = orchard().args(["rl", "--config"]).arg(&cfg).arg("--out").arg(&out).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let first: serde_json::Value = serde_json::from_str(text.lines().next().expect("a step")).expect("json");
    assert_eq!(first["reward_errors"], 6);
    assert_eq!(first["excluded"], 6);
    assert!(first["loss"].as_f64().is_some_and(f64::is_finite), "{first}");
}

/// The example RL configurations parse (every key known) and name prompt sets that load.
#[test]
fn example_rl_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rl");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/rl") {
        let path = entry.expect("entry").path();
        let cfg = orchard_jobs::rl::RlConfig::from_toml(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(cfg.prompts.load().is_ok_and(|l| !l.tasks.is_empty()), "{}", path.display());
        n += 1;
    }
    assert!(n >= 1);
}
