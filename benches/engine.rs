//! Engine benches: the quantized (15-bit activations × Q4) and f32 matmul kernels on the default model's shapes, and prefill / one decode step
//! of the default model at B = 1 and 16 (tokens per second). The comparison against llama.cpp is
//! `benches/compare/engine_llamacpp.py`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use orchard_engine::bench::prompt_ids;
use orchard_engine::kernels::dense::{self, PackedMatrix};
use orchard_engine::kernels::quant::{self, QActs, QRows};
use orchard_engine::{Chunk, Engine, LogitRows, Precision, TokenId};

/// Deterministic pseudo-random values in [−1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// GGUF Q4_1 bytes of an `n × k` matrix.
fn q4_1(n: usize, k: usize) -> Vec<u8> {
    let v = values(n * k / 2, 3);
    let mut raw = Vec::with_capacity(n * k / 32 * 20);
    for (b, chunk) in v.chunks(16).enumerate() {
        raw.extend_from_slice(&half::f16::from_f32(0.01 + b as f32 % 7.0 * 1e-3).to_le_bytes());
        raw.extend_from_slice(&half::f16::from_f32(-0.08).to_le_bytes());
        raw.extend(chunk.iter().map(|x| ((x + 1.0) * 127.9) as u8));
    }
    raw
}

fn kernels(c: &mut Criterion) {
    let (n, k) = (1536, 576); // gate/up projection of SmolLM2-135M
    let w = QRows::from_q4_1(&q4_1(n, k), n, k).expect("valid blocks").pack();
    let wd = PackedMatrix::pack(&values(n * k, 5), n, k);
    let mut g = c.benchmark_group("engine/matmul_1536x576");
    for m in [1usize, 16, 64] {
        let x = values(m * k, 7);
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((m * n * k) as u64)); // multiply-adds
        g.bench_with_input(BenchmarkId::new("q4_int8", m), &m, |b, &m| {
            b.iter(|| {
                let acts = QActs::quantize(&x, m, k);
                quant::qmatmul(&w, &acts, &mut out);
                black_box(&out);
            })
        });
        g.bench_with_input(BenchmarkId::new("f32", m), &m, |b, &m| {
            b.iter(|| {
                dense::matmul(&wd, &x, m, &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn default_model(c: &mut Criterion) {
    orchard_engine::init_threads(None);
    let engine = Engine::load("default").expect("the default model (run `orchard fetch-model`)");
    let model = engine.model();
    let base = engine.tokenizer().encode("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?", false).expect("tokenize");
    let mut g = c.benchmark_group("engine/default_model");
    g.sample_size(10);
    let prompt = prompt_ids(&base, 200, 0);
    g.throughput(Throughput::Elements(200));
    g.bench_function("prefill_200", |b| {
        b.iter(|| {
            let mut cache = model.new_cache();
            let mut chunks = [Chunk { cache: &mut cache, tokens: &prompt, logits: LogitRows::Last }];
            black_box(model.forward(&mut chunks, Precision::Quantized).expect("forward"));
        })
    });
    for batch in [1usize, 16] {
        let prompts: Vec<_> = (0..batch).map(|i| prompt_ids(&base, 200, i)).collect();
        let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
        {
            let mut chunks: Vec<Chunk<'_>> = caches
                .iter_mut()
                .zip(&prompts)
                .map(|(c, p)| Chunk { cache: c, tokens: p, logits: LogitRows::None })
                .collect();
            model.forward(&mut chunks, Precision::Quantized).expect("prefill");
        }
        let next = [[42u32]; 64];
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("decode_step", batch), &batch, |b, _| {
            b.iter(|| {
                // Fork so every iteration decodes at the same context length (the fork copies one block).
                let mut forks: Vec<_> = caches.to_vec();
                let mut chunks: Vec<Chunk<'_>> = forks
                    .iter_mut()
                    .zip(&next)
                    .map(|(c, t)| Chunk { cache: c, tokens: t, logits: LogitRows::Last })
                    .collect();
                black_box(model.forward(&mut chunks, Precision::Quantized).expect("decode"));
            })
        });
    }
    g.finish();
}

/// The loop's weight hand-off on the default model: trained f32 weights (a full-fine-tuning `DiffModel`) merged
/// into an engine model and re-quantized to Q8_0 for generation, all in memory — what `orchard loop` does between
/// training and the next round (TRL needs 0.15–0.6 s per sync at 0.5B on a GPU; the target here is ≤ 0.5 s).
fn handoff(c: &mut Criterion) {
    use orchard_engine::autograd::{DiffModel, Tuning};
    use orchard_engine::Handoff;
    orchard_engine::init_threads(None);
    let engine = Engine::load("default").expect("the default model (run `orchard fetch-model`)");
    let diff = DiffModel::new(engine.model(), &Tuning::Full, &candle_core::Device::Cpu, 0).expect("diff model");
    let mut g = c.benchmark_group("engine/handoff");
    g.sample_size(10);
    g.bench_function("merge_f32", |b| {
        b.iter(|| black_box(diff.merged_model(std::path::Path::new("memory")).expect("merge")))
    });
    g.bench_function("merge_q8_direct", |b| {
        b.iter(|| {
            let q8 = diff.merged_q8_model(std::path::Path::new("memory")).expect("merge");
            black_box(engine.with_weights(q8, Handoff::F32, "q8").expect("q8"));
        })
    });
    g.bench_function("merge_and_q8", |b| {
        b.iter(|| {
            let merged = diff.merged_model(std::path::Path::new("memory")).expect("merge");
            let master = engine.with_weights(merged, Handoff::F32, "master").expect("f32");
            black_box(master.with_weights(master.model().to_q8(), Handoff::F32, "q8").expect("q8"));
        })
    });
    g.finish();
}

/// Online RL's training forward + backward of one group on the default model (full fine-tuning, f32): a GSM8K-sized
/// prompt (120 tokens) with G = 4 sampled completions of 64 tokens, packed as one sequence with the prompt once
/// (`Packed::groups`, what `orchard rl` does) or as G separate prompt ‖ completion sequences (what TRL does).
fn rl_group(c: &mut Criterion) {
    use orchard_engine::autograd::{DiffModel, Mode, Packed, Tuning};
    orchard_engine::init_threads(None);
    let engine = Engine::load("default").expect("the default model (run `orchard fetch-model`)");
    let diff = DiffModel::new(engine.model(), &Tuning::Full, &candle_core::Device::Cpu, 0).expect("diff model");
    let prompt: Vec<TokenId> = (0..120u32).map(|i| 100 + (i * 37) % 20_000).collect();
    let completions: Vec<Vec<TokenId>> =
        (0..4u32).map(|g| (0..64u32).map(|i| 200 + (i * 53 + g * 991) % 20_000).collect()).collect();
    let p = prompt.len();
    // Rows and targets of every completion token, in both layouts.
    let (mut shared_rows, mut separate_rows, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    let (mut start, mut seq_start) = (p, 0);
    for c in &completions {
        for (j, &t) in c.iter().enumerate() {
            shared_rows.push(if j == 0 { p - 1 } else { start + j - 1 });
            separate_rows.push(seq_start + p - 1 + j);
            targets.push(t);
        }
        start += c.len();
        seq_start += p + c.len();
    }
    let branches: Vec<&[TokenId]> = completions.iter().map(Vec::as_slice).collect();
    let shared = Packed::groups(&[(&prompt[..], branches)]);
    let separate = Packed::new(&completions.iter().map(|c| [prompt.as_slice(), c].concat()).collect::<Vec<_>>());
    let mut g = c.benchmark_group("train/rl_group");
    g.sample_size(10);
    for (name, batch, rows) in
        [("prompt_once", &shared, &shared_rows), ("prompt_per_completion", &separate, &separate_rows)]
    {
        g.bench_function(name, |b| {
            b.iter(|| {
                let lp = diff.token_logprobs(batch, rows, &targets, Mode::Train { dropout_seed: 0 }).expect("logprobs");
                black_box(lp.sum_all().and_then(|l| l.backward()).expect("backward"));
            })
        });
    }
    g.finish();
}

pub fn bench(c: &mut Criterion) {
    kernels(c);
    default_model(c);
    handoff(c);
    rl_group(c);
}
