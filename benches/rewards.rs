//! Rewards benches: math verifications per second on GSM8K's gold solutions (target ≥ 100k/s on one core), and
//! the cost of one sandboxed execution. The sandbox throughput comparison against human-eval's approach is
//! `benches/compare/sandbox_humaneval.py`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use orchard_rewards::sandbox::{self, Executor, SandboxChoice, SandboxConfig, SandboxLimits};
use orchard_rewards::{Reward, RewardSpec, Task};

fn gsm8k() -> Vec<(Task, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gsm8k_test.jsonl");
    let text = std::fs::read_to_string(&path).expect("tests/data/gsm8k_test.jsonl is in the repository");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("GSM8K rows are JSON");
            let answer = v["answer"].as_str().expect("GSM8K rows have an answer").to_string();
            // A typical completion: the worked solution, its final line rewritten the way models write it.
            let completion = answer.replace("#### ", "The answer is ");
            (Task::new(v["question"].as_str().unwrap_or_default()).with_answer(answer), completion)
        })
        .collect()
}

pub fn bench(c: &mut Criterion) {
    let rows = gsm8k();
    let reward = RewardSpec::from_name("gsm8k").and_then(|s| s.build_pure()).expect("gsm8k builds");
    let mut g = c.benchmark_group("rewards");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("math_verify_gsm8k_1319", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            for (task, completion) in &rows {
                sum += reward.score(black_box(task), black_box(completion)).score;
            }
            assert_eq!(sum, rows.len() as f64);
            sum
        })
    });
    g.finish();

    let Ok(sb) = sandbox::open(SandboxChoice::Auto, SandboxConfig::default()) else {
        eprintln!("no sandbox here: skipping sandbox benches");
        return;
    };
    let mut g = c.benchmark_group("sandbox");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    let ex = Arc::new(Executor::with_cache_capacity(sb, SandboxLimits::default(), 0));
    g.bench_function("exec_print_one_uncached", |b| b.iter(|| ex.run("print(1)").expect("runs")));
    // The same with a fresh sandbox and interpreter per run (no fork server).
    let one_shot = SandboxConfig { fork_server: false, ..SandboxConfig::default() };
    if let Ok(sb) = sandbox::open(SandboxChoice::Auto, one_shot) {
        let ex = Executor::with_cache_capacity(sb, SandboxLimits::default(), 0);
        g.bench_function("exec_print_one_uncached_one_shot", |b| b.iter(|| ex.run("print(1)").expect("runs")));
    }
    g.finish();
}
