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
    let name = extra.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let p = dir.join(format!("rl-{name:x}.toml"));
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

fn run_rl(cfg: &Path, out: &Path) -> Vec<serde_json::Value> {
    let o = orchard().args(["rl", "--threads", "1", "--config"]).arg(cfg).arg("--out").arg(out).output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    text.lines().map(|l| serde_json::from_str(l).expect("json")).collect()
}

/// A Python reward giving every completion of two of the six prompts `value` (their groups carry no signal) and the
/// others a score that varies with the completion.
fn constant_for_two_prompts(dir: &Path, value: &str) -> PathBuf {
    let reward = dir.join("r.py");
    std::fs::write(
        &reward,
        format!(
            "def r(prompts, completions, **kw):\n    return [{value} if ('What is 0' in p or 'What is 3' in p) else \
             float(len(c) % 7) for p, c in zip(prompts, completions)]\n"
        ),
    )
    .expect("write reward");
    reward
}

/// DAPO's dynamic sampling end to end: a Python reward gives every completion of two of the six prompts the same
/// score, so their groups carry no signal; they are dropped and refilled, every step trains on P groups.
#[test]
fn dynamic_sampling_refills_and_mu_two_and_online_topr_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let t = tasks(dir.path(), true);
    let reward = constant_for_two_prompts(dir.path(), "0.5");
    let dapo = config(dir.path(), &model, &t, "dynamic_sampling = true\nmax_refills = 4\nepsilon_high = 0.28");
    let text = std::fs::read_to_string(&dapo).expect("read");
    std::fs::write(&dapo, text.replace("reward = \"math\"", &format!("reward = \"python:{}:r\"", reward.display())))
        .expect("write");
    let rows = run_rl(&dapo, &dir.path().join("dapo"));
    assert_eq!(rows.len(), 4);
    let sampled: u64 = rows.iter().map(|r| r["groups_sampled"].as_u64().unwrap_or(0)).sum();
    assert!(sampled > 8, "zero-variance groups were refilled: {sampled} sampled for 8 trained");
    for r in &rows {
        assert!(r["groups_trained"].as_u64() <= Some(2), "{r}");
        let zero = r["frac_reward_zero_std"].as_f64().unwrap_or(-1.0);
        let expected = 1.0 - r["groups_trained"].as_f64().unwrap_or(0.0) / r["groups_sampled"].as_f64().unwrap_or(1.0);
        assert!((zero - expected).abs() < 1e-9, "dropped = zero-variance: {r}");
        assert!(r["entropy"].as_f64().is_some_and(|e| e > 0.0), "{r}");
    }
    assert!(dir.path().join("dapo/metrics.svg").is_file(), "the curves are drawn");

    // μ = 2: the second pass sees the importance ratio against the first pass's weights.
    let faster = |p: PathBuf| {
        let text = std::fs::read_to_string(&p).expect("read").replace("lr = 1e-3", "lr = 5e-3");
        std::fs::write(&p, text).expect("write");
        p
    };
    let mu = faster(config(dir.path(), &model, &t, "num_iterations = 2"));
    let rows = run_rl(&mu, &dir.path().join("mu2"));
    assert!(rows.iter().all(|r| r["loss"].as_f64().is_some_and(f64::is_finite)));
    assert!(rows.iter().any(|r| r["clip_ratio/region_mean"].as_f64() > Some(0.0)), "some ratio left the clip range");
    for r in &rows {
        // The math reward's components, as TRL names per-function rewards.
        let mean = r["rewards/extractable/mean"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&mean) && r["rewards/correct/std"].as_f64().is_some(), "{r}");
    }
    let one = faster(config(dir.path(), &model, &t, "num_iterations = 1"));
    run_rl(&one, &dir.path().join("mu1"));
    let w =
        |d: &str| std::fs::read(dir.path().join(d).join("checkpoint-000004/trainable.safetensors")).expect("weights");
    assert_ne!(w("mu2"), w("mu1"), "two passes per batch train differently from one");

    // Online TOPR: groups of one are fine (no group baseline), the truncated share is logged.
    let topr = config(dir.path(), &model, &t, "objective = { kind = \"topr\", baseline = 0.5 }\ngroup_size = 1");
    let text = std::fs::read_to_string(&topr).expect("read").replace("group_size = 3\n", "");
    std::fs::write(&topr, text).expect("write");
    let rows = run_rl(&topr, &dir.path().join("topr"));
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["loss"].as_f64().is_some_and(f64::is_finite)), "{rows:?}");
}

/// A group whose rewards are all equal (0.1 each: their float mean is not 0.1) has zero advantage everywhere: with
/// β = 0 its forward and backward are skipped (counted in `groups_skipped`), and the weights and logged values are
/// the same bit for bit as when it is run (`skip_zero_advantage = false`), with μ = 2 (the importance ratio's second
/// pass) as well.
#[test]
fn zero_advantage_groups_are_skipped_without_changing_the_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let t = tasks(dir.path(), true);
    let reward = constant_for_two_prompts(dir.path(), "0.1");
    let cfg = |name: &str, extra: &str| {
        let p = config(dir.path(), &model, &t, &format!("num_iterations = 2\nsteps = 6\n{extra}"));
        let text = std::fs::read_to_string(&p)
            .expect("read")
            .replace("steps = 4\n", "")
            .replace("lr = 1e-3", "lr = 5e-3")
            .replace("reward = \"math\"", &format!("reward = \"python:{}:r\"", reward.display()));
        let named = dir.path().join(name);
        std::fs::write(&named, text).expect("write");
        named
    };
    let skip = dir.path().join("skip");
    let rows = run_rl(&cfg("skip.toml", ""), &skip);
    let run = dir.path().join("run");
    let no_skip = cfg("run.toml", "skip_zero_advantage = false");
    let all = run_rl(&no_skip, &run);
    let skipped: u64 = rows.iter().map(|r| r["groups_skipped"].as_u64().unwrap_or(0)).sum();
    assert!(skipped > 0, "the constant-reward prompts were skipped: {rows:?}");
    assert!(all.iter().all(|r| r["groups_skipped"] == 0), "{all:?}");
    assert!(rows.iter().any(|r| r["grad_norm"].as_f64() > Some(0.0)), "some step trained: {rows:?}");
    assert_eq!(steps(&skip), steps(&run));
    let w = |out: &Path| std::fs::read(out.join("checkpoint-000006/trainable.safetensors")).expect("weights");
    assert_eq!(w(&skip), w(&run), "skipping zero-advantage groups changed the weights");
    // The setting changes no update, so a run continues across it.
    assert_eq!(run_rl(&no_skip, &skip).len(), 6);
}

/// A sandboxed code reward (program of thought: `solution()` run in bubblewrap) in online RL: the steps happen,
/// programs that do not run score 0 (a failure, not an error).
#[test]
fn rl_runs_with_a_sandboxed_code_reward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let t = tasks(dir.path(), true);
    let cfg = config(dir.path(), &model, &t, "steps = 2");
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("reward = \"math\"", "reward = \"pot\"")
        .replace("steps = 4\n", "");
    std::fs::write(&cfg, text).expect("write");
    let rows = run_rl(&cfg, &dir.path().join("pot"));
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["reward_errors"], 0, "{r}");
        assert!(r["reward"].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{r}");
    }
}

/// `steps` may grow between runs: a 2-step run rerun with `steps = 4` continues from its checkpoint to the same
/// log and weights as a straight 4-step run, and re-exports `final/` (an HF directory `orchard generate` loads);
/// shrinking below the steps taken is refused.
#[test]
fn rl_steps_grow_between_runs_and_final_is_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_hf(dir.path());
    let t = tasks(dir.path(), true);
    let four = config(dir.path(), &model, &t, "");
    let two_text = std::fs::read_to_string(&four).expect("read").replace("steps = 4", "steps = 2");
    let two = dir.path().join("two.toml");
    std::fs::write(&two, two_text).expect("write");
    let whole = dir.path().join("whole");
    let expected = run_rl(&four, &whole);
    let grown = dir.path().join("grown");
    assert_eq!(run_rl(&two, &grown).len(), 2);
    let before = std::fs::read(grown.join("final/model.safetensors")).expect("final after 2 steps");
    run_rl(&four, &grown);
    assert_eq!(steps(&grown), steps(&whole));
    assert_eq!(expected.len(), 4);
    let w = |out: &Path| std::fs::read(out.join("checkpoint-000004/trainable.safetensors")).expect("weights");
    assert_eq!(w(&grown), w(&whole), "grown weights differ");
    let after = std::fs::read(grown.join("final/model.safetensors")).expect("final after 4 steps");
    assert_ne!(before, after, "final/ is the policy after the last step");
    assert_eq!(after, std::fs::read(whole.join("final/model.safetensors")).expect("whole final"));
    orchard()
        .args(["generate", "--max-new-tokens", "3", "--prompt", "hi", "--model"])
        .arg(grown.join("final"))
        .assert()
        .success();
    let o = orchard().args(["rl", "--config"]).arg(&two).arg("--out").arg(&grown).output().expect("run");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("steps can only grow"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
