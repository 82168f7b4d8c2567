//! The device engine (`device.rs`: paged KV, block tables, copy-on-write forks, attention over ragged groups) on
//! candle's CPU backend, against the CPU engine on the same weights — the same code a GPU runs, checked without one
//! (and on a GPU with `ORCHARD_TEST_DEVICE=cuda`).

use orchard_engine::device::{logprob_diff, DType, Placement, BF16_LOGPROB_BOUND, F32_LOGPROB_BOUND};
use orchard_engine::{
    Arch, Chunk, Engine, GenerateOptions, GenerateRequest, LogitRows, Model, Precision, SamplingParams, TokenId,
    ARCHITECTURES,
};

use crate::util::{check_forks, default_engine, max_abs_diff, seq, tiny, Format};

const TOL: f32 = 1e-4;

/// candle's CPU backend here; `ORCHARD_TEST_DEVICE=cuda` runs the same tests on a GPU (a `--features cuda` test
/// binary; `benches/compare/cuda_check.py --tests` does).
fn placement() -> Placement {
    match std::env::var("ORCHARD_TEST_DEVICE") {
        Ok(d) => d.parse().expect("ORCHARD_TEST_DEVICE: a --device value"),
        Err(_) => Placement::CpuCandle,
    }
}

/// Runs `steps` of batched forwards on `m`: each step a list of (sequence, new tokens, logit rows); returns every
/// requested logit row, step by step.
fn run_steps(m: &Model, n_seqs: usize, steps: &[Vec<(usize, Vec<TokenId>, LogitRows)>]) -> Vec<Vec<Vec<f32>>> {
    let mut caches: Vec<_> = (0..n_seqs).map(|_| m.new_cache()).collect();
    let mut out = Vec::new();
    for step in steps {
        let mut picked: Vec<_> = caches.iter_mut().enumerate().collect();
        let mut chunks = Vec::new();
        for (s, tokens, rows) in step {
            let i = picked.iter().position(|(j, _)| j == s).expect("each sequence once per step");
            let (_, cache) = picked.swap_remove(i);
            chunks.push(Chunk { cache, tokens, logits: *rows });
        }
        let l = m.forward(&mut chunks, Precision::F32).expect("forward");
        out.push(
            (0..chunks.len())
                .flat_map(|k| (0..l.rows(k)).map(move |r| (k, r)))
                .map(|(k, r)| l.row(k, r).to_vec())
                .collect(),
        );
    }
    out
}

#[test]
fn device_forward_equals_the_cpu_engine_on_every_architecture() {
    // Ragged prefills, then decode rows beside a new prefill and a chunk continuing mid-block — the groups of the
    // device's attention (one per row count) and block tables spanning several blocks.
    let steps = vec![
        vec![(0, seq(5, 1), LogitRows::From(0)), (1, seq(23, 2), LogitRows::From(0)), (2, seq(40, 3), LogitRows::Last)],
        vec![(0, seq(1, 4), LogitRows::Last), (1, seq(1, 5), LogitRows::Last), (3, seq(17, 6), LogitRows::From(0))],
        vec![(2, seq(9, 7), LogitRows::From(0)), (3, seq(1, 8), LogitRows::Last), (0, seq(1, 9), LogitRows::None)],
    ];
    for arch in ARCHITECTURES.iter().map(|s| s.arch) {
        let cpu = tiny(arch, Format::Hf, 11);
        let dev = tiny(arch, Format::Hf, 11).engine.on_device(placement(), DType::F32).expect("upload");
        let want = run_steps(cpu.engine.model(), 4, &steps);
        let got = run_steps(dev.model(), 4, &steps);
        for (s, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.len(), g.len(), "{arch:?} step {s}: rows");
            for (r, (a, b)) in w.iter().zip(g).enumerate() {
                let d = max_abs_diff(a, b);
                assert!(d <= TOL, "{arch:?} step {s} row {r}: |Δ| = {d}");
            }
        }
        // Every block went back to the slot table with its caches.
        let t = dev.model().device().expect("on a device").slot_table().clone();
        assert_eq!(t.live(), 0, "{arch:?}");
        assert!(t.high_water() >= 40usize.div_ceil(16), "a 40-token sequence holds three blocks");
    }
}

#[test]
fn device_forks_equal_recompute_and_never_alias() {
    let cpu = tiny(Arch::Llama, Format::Hf, 12);
    let dev = tiny(Arch::Llama, Format::Hf, 12).engine.on_device(placement(), DType::F32).expect("upload");
    let slots = dev.model().device().expect("device").slot_table().clone();
    check_forks(dev.model(), cpu.engine.model(), TOL, |parent, forks| {
        // The 21-token prefix holds two slots; every slot in use belongs to some cache's block table.
        assert_eq!(parent.block_table().len(), 2);
        let tables = std::iter::once(parent).chain(forks).flat_map(|c| c.block_table());
        assert_eq!(slots.live(), tables.collect::<std::collections::BTreeSet<_>>().len());
        // Four forks share the first block; each holds its own copy of the partial one (and more as it grows).
        assert!(forks.iter().all(|f| f.block_table()[0] == parent.block_table()[0]));
        assert!(forks.iter().all(|f| f.block_table()[1] != parent.block_table()[1]));
    });
    assert_eq!(slots.live(), 0);
}

#[test]
fn a_cache_of_another_placement_is_refused() {
    let cpu = tiny(Arch::Llama, Format::Hf, 13);
    let dev = tiny(Arch::Llama, Format::Hf, 13).engine.on_device(placement(), DType::F32).expect("upload");
    let tokens = seq(3, 1);
    for (model, cache) in [(dev.model(), cpu.engine.model().new_cache()), (cpu.engine.model(), dev.model().new_cache())]
    {
        let mut cache = cache;
        let mut chunks = [Chunk { cache: &mut cache, tokens: &tokens, logits: LogitRows::Last }];
        let e = model.forward(&mut chunks, Precision::F32).unwrap_err().to_string();
        assert!(e.contains("another model"), "{e}");
    }
}

/// Generation through the scheduler (prefix cache, samples of one prompt forked from its cache, ragged batches,
/// small batches that admit and retire sequences) gives the CPU engine's tokens; scoring its log-probs.
#[test]
fn device_generation_and_scoring_equal_the_cpu_engine() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let cpu = tiny(arch, Format::Hf, 14);
        let dev = tiny(arch, Format::Hf, 14).engine.on_device(placement(), DType::F32).expect("upload");
        let params = SamplingParams { max_new_tokens: 20, ignore_eos: true, ..Default::default() };
        let reqs = vec![
            GenerateRequest { prompt: seq(12, 1), n: 3, params: params.clone(), seed: 1 },
            GenerateRequest {
                prompt: seq(30, 2),
                n: 2,
                params: SamplingParams { temperature: 0.0, ..params },
                seed: 2,
            },
        ];
        for opts in [
            GenerateOptions { precision: Some(Precision::F32), ..Default::default() },
            GenerateOptions { precision: Some(Precision::F32), max_batch: 2, prefill_chunk: 7 },
        ] {
            let want = cpu.engine.generate(&reqs, &opts, &mut |_| {}).expect("cpu");
            let got = dev.generate(&reqs, &opts, &mut |_| {}).expect("device");
            for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
                assert_eq!(w.token_ids, g.token_ids, "{arch:?}");
                assert!(max_abs_diff(&w.token_logprobs, &g.token_logprobs) <= TOL, "{arch:?}");
            }
        }
        let pairs: Vec<_> = vec![(seq(9, 3), seq(14, 4)), (seq(9, 3), seq(5, 5)), (seq(40, 6), seq(3, 7))];
        let (w, g) = (cpu.engine.score(&pairs).expect("cpu"), dev.score(&pairs).expect("device"));
        for (a, b) in w.iter().zip(&g) {
            assert!(max_abs_diff(&a.token_logprobs, &b.token_logprobs) <= TOL, "{arch:?}");
        }
        assert_eq!(dev.model().device().expect("device").slot_table().live(), 0, "{arch:?}");
    }
}

/// The real default model on the device, f32 and bf16, against the CPU engine in f32: the parity check's stated
/// bounds (`orchard bench --device …` prints the same figure on a GPU).
#[test]
fn default_model_on_the_device_within_the_stated_bounds() {
    let cpu = default_engine();
    let text = ["What is 17 times 23?", "Write a haiku about autumn leaves falling on a quiet pond.", "Hi"];
    let prompts: Vec<Vec<TokenId>> = text.iter().map(|t| cpu.tokenizer().encode(t, false).expect("encode")).collect();
    let on = |dtype| Engine::load("default").expect("default model").on_device(placement(), dtype);
    let d = logprob_diff(cpu.model(), on(DType::F32).expect("f32").model(), &prompts).expect("diff");
    assert!(d.all > 0.0 && d.all < F32_LOGPROB_BOUND, "f32: {d:?}");
    let d = logprob_diff(cpu.model(), on(DType::BF16).expect("bf16").model(), &prompts).expect("diff");
    assert!(d.likely > 0.0 && d.likely < BF16_LOGPROB_BOUND, "bf16: {d:?}");
    eprintln!("bf16: {d:?}");
}
