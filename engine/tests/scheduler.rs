//! The continuous-batching scheduler: same samples as `Engine::generate`, and outputs unchanged by prefix sharing,
//! batch limits, KV budgets, eviction and preemption.

use std::sync::Arc;

use orchard_engine::bench::{run_tree, TreeShape};
use orchard_engine::sampling::sample_seed;
use orchard_engine::{Arch, GenerateOptions, GenerateRequest, SamplingParams, Scheduler, SchedulerConfig, SeqRequest};

use crate::util::{tiny, Format};

fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 13 + salt * 7 + 3) % 280).collect()
}

#[test]
fn scheduler_samples_equal_engine_generate() {
    let t = tiny(Arch::Llama, Format::Gguf(candle_core::quantized::GgmlDType::Q4_1), 21);
    let engine = Arc::new(t.engine);
    let params = SamplingParams { max_new_tokens: 20, top_p: 0.9, ..Default::default() };
    let reqs: Vec<GenerateRequest> = (0..5)
        .map(|i| GenerateRequest { prompt: prompt(10 + 9 * i, i as u32), n: 2, params: params.clone(), seed: i as u64 })
        .collect();
    let want = engine.generate(&reqs, &GenerateOptions::default(), &mut |_| {}).expect("generate");
    let sched =
        Scheduler::start(engine.clone(), SchedulerConfig { max_batch: 3, step_tokens: 17, ..Default::default() });
    let mut sreqs = Vec::new();
    for r in &reqs {
        for j in 0..r.n {
            sreqs.push(SeqRequest {
                tokens: r.prompt.clone(),
                params: r.params.clone(),
                seed: sample_seed(r.seed, j as u64),
            });
        }
    }
    let got = sched.generate(sreqs).expect("scheduler");
    let flat: Vec<_> = want.into_iter().flatten().collect();
    assert_eq!(got, flat);
    let m = sched.metrics();
    assert!(m.prefix_tokens_hit > 0, "the second sample of each prompt reuses the first's blocks: {m:?}");
}

#[test]
fn generate_computes_a_prompt_once_for_all_its_samples() {
    let t = tiny(Arch::Llama, Format::Gguf(candle_core::quantized::GgmlDType::Q4_1), 23);
    let params = SamplingParams { max_new_tokens: 6, ignore_eos: true, ..Default::default() };
    let reqs: Vec<GenerateRequest> = [45, 18]
        .iter()
        .enumerate()
        .map(|(i, &len)| GenerateRequest { prompt: prompt(len, i as u32), n: 8, params: params.clone(), seed: 1 })
        .collect();
    let mut last = None;
    let out = t.engine.generate(&reqs, &GenerateOptions::default(), &mut |p| last = Some(*p)).expect("generate");
    let last = last.expect("progress was reported");
    assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [8, 8]);
    assert_eq!(last.samples_done, 16);
    assert_eq!(last.prompt_tokens, 45 + 18, "each prompt is prefilled once, its samples fork from it");
    assert_eq!(last.generated_tokens, 16 * 6);
}

fn tree(config: SchedulerConfig) -> orchard_engine::bench::TreeReport {
    let t = tiny(Arch::Llama, Format::Hf, 22);
    let engine = Arc::new(t.engine);
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| prompt(20 + 11 * i, i as u32)).collect();
    let shape = TreeShape { prompts: 3, branch: 3, child_tokens: 18, rollout_tokens: 24 };
    let sched = Scheduler::start(engine, config);
    run_tree(&sched, &prompts, shape, config.prefix_cache).expect("tree")
}

#[test]
fn sharing_eviction_and_preemption_change_no_output() {
    let f32 = Some(orchard_engine::Precision::F32);
    let shared = tree(SchedulerConfig { precision: f32, ..Default::default() });
    let unshared = tree(SchedulerConfig { prefix_cache: false, precision: f32, ..Default::default() });
    assert_eq!(shared.checksum, unshared.checksum);
    assert_eq!(shared.generated_tokens, 3 * (3 * 18 + 9 * 18 + 9 * 24));
    assert!(
        shared.metrics.prefill_tokens_computed * 3 < unshared.metrics.prefill_tokens_computed,
        "{} vs {}",
        shared.metrics.prefill_tokens_computed,
        unshared.metrics.prefill_tokens_computed
    );
    assert!(shared.prefix_hit_rate > 0.5, "{}", shared.prefix_hit_rate);
    // A budget far below the workload's needs: it finishes, with eviction and preemption, and the same tokens.
    let block = 2 * 2 * 2 * 16 * 16 * 4; // layers × {k,v} × kv_heads × tokens × head_dim × f32
    let budget = 12 * block;
    let tight = tree(SchedulerConfig { kv_budget: Some(budget), precision: f32, ..Default::default() });
    assert_eq!(tight.checksum, shared.checksum);
    assert!(tight.metrics.preemptions > 0 || tight.metrics.evicted_blocks > 0, "{:?}", tight.metrics);
    let quantized = tree(SchedulerConfig { kv_budget: Some(budget), max_batch: 4, ..Default::default() });
    let quantized_free = tree(SchedulerConfig::default());
    assert_eq!(quantized.checksum, quantized_free.checksum, "batch-invariant on the quantized path too");
}

#[test]
fn bad_requests_fail_alone() {
    let t = tiny(Arch::Llama, Format::Hf, 23);
    let sched = Scheduler::start(Arc::new(t.engine), SchedulerConfig::default());
    let ok = sched.submit(SeqRequest { tokens: prompt(5, 1), params: SamplingParams::greedy(3), seed: 0 });
    let empty = sched.submit(SeqRequest { tokens: vec![], params: SamplingParams::greedy(3), seed: 0 });
    let long = sched.submit(SeqRequest { tokens: vec![1; 600], params: SamplingParams::greedy(3), seed: 0 });
    assert!(empty.recv().expect("answer").is_err());
    assert!(long.recv().expect("answer").unwrap_err().to_string().contains("context"));
    assert_eq!(ok.recv().expect("answer").expect("sample").token_ids.len(), 3);
}
