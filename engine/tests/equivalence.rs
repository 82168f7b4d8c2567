//! Fast paths against slow ones on a tiny model, f32 weights: batched == one at a time, cached decode == full
//! recompute, forked branch == recomputed prefix, chunked prefill == one shot, and per-sequence seeds that do not
//! care about batch companions.

use orchard_engine::{
    Arch, Chunk, GenerateOptions, GenerateRequest, LogitRows, Precision, SamplingParams, TokenId, ARCHITECTURES,
};

use crate::util::{check_forks, full_logits, max_abs_diff, seq, tiny, Format};

const TOL: f32 = 1e-4;

#[test]
fn batched_ragged_forward_equals_one_at_a_time() {
    for arch in ARCHITECTURES.iter().map(|s| s.arch) {
        let t = tiny(arch, Format::Hf, 1);
        let m = t.engine.model();
        let seqs: Vec<Vec<TokenId>> = vec![seq(5, 1), seq(23, 2), seq(1, 3), seq(40, 4)];
        let mut caches: Vec<_> = seqs.iter().map(|_| m.new_cache()).collect();
        let mut chunks: Vec<Chunk<'_>> = caches
            .iter_mut()
            .zip(&seqs)
            .map(|(c, s)| Chunk { cache: c, tokens: s, logits: LogitRows::From(0) })
            .collect();
        let batched = m.forward(&mut chunks, Precision::F32).expect("forward");
        for (i, s) in seqs.iter().enumerate() {
            let alone = full_logits(m, s, Precision::F32);
            for (j, row) in alone.iter().enumerate() {
                let d = max_abs_diff(batched.row(i, j), row);
                assert!(d <= TOL, "{arch:?} seq {i} pos {j}: {d}");
            }
        }
    }
}

#[test]
fn cached_decode_equals_full_recompute() {
    let t = tiny(Arch::Llama, Format::Hf, 2);
    let m = t.engine.model();
    let tokens = seq(30, 7);
    let full = full_logits(m, &tokens, Precision::F32);
    let mut cache = m.new_cache();
    let mut chunks = [Chunk { cache: &mut cache, tokens: &tokens[..10], logits: LogitRows::Last }];
    let l = m.forward(&mut chunks, Precision::F32).expect("prefill");
    assert!(max_abs_diff(l.row(0, 0), &full[9]) <= TOL);
    for i in 10..tokens.len() {
        let mut chunks = [Chunk { cache: &mut cache, tokens: &tokens[i..i + 1], logits: LogitRows::Last }];
        let l = m.forward(&mut chunks, Precision::F32).expect("decode");
        let d = max_abs_diff(l.row(0, 0), &full[i]);
        assert!(d <= TOL, "pos {i}: {d}");
    }
}

#[test]
fn forked_branches_equal_recomputed_prefixes_and_do_not_alias() {
    let t = tiny(Arch::Llama, Format::Hf, 3);
    let m = t.engine.model();
    check_forks(m, m, TOL, |_, _| {});
}

#[test]
fn chunked_scoring_equals_one_shot() {
    let t = tiny(Arch::Qwen2, Format::Hf, 4);
    let pairs: Vec<(Vec<TokenId>, Vec<TokenId>)> =
        vec![(seq(7, 1), seq(30, 2)), (seq(50, 3), seq(5, 4)), (seq(1, 5), seq(1, 6)), (seq(3, 7), vec![])];
    let one = t.engine.score_with(&pairs, Precision::F32, 10_000).expect("one shot");
    for chunk in [1, 3, 16] {
        let chunked = t.engine.score_with(&pairs, Precision::F32, chunk).expect("chunked");
        assert_eq!(chunked.len(), one.len(), "chunk {chunk}");
        for (a, b) in one.iter().zip(&chunked) {
            assert_eq!(a.n_tokens, b.n_tokens);
            assert!(max_abs_diff(&a.token_logprobs, &b.token_logprobs) <= TOL, "chunk {chunk}");
        }
    }
    assert_eq!(one[3].n_tokens, 0);
    assert_eq!(one[0].token_logprobs.len(), 30);
}

fn sampling() -> SamplingParams {
    SamplingParams { max_new_tokens: 24, ignore_eos: true, top_p: 0.95, ..Default::default() }
}

#[test]
fn a_seed_gives_the_same_tokens_whatever_the_batch() {
    for precision in [Precision::F32, Precision::Quantized] {
        let t = tiny(Arch::Llama, Format::Gguf(candle_core::quantized::GgmlDType::Q4_1), 5);
        let e = &t.engine;
        let target = GenerateRequest { prompt: seq(12, 1), n: 3, params: sampling(), seed: 42 };
        let opts = GenerateOptions { precision: Some(precision), ..Default::default() };
        let alone = e.generate(std::slice::from_ref(&target), &opts, &mut |_| {}).expect("alone");
        let companions = vec![
            GenerateRequest { prompt: seq(40, 2), n: 2, params: sampling(), seed: 7 },
            target.clone(),
            GenerateRequest {
                prompt: seq(3, 3),
                n: 4,
                params: SamplingParams { temperature: 0.0, ..sampling() },
                seed: 9,
            },
        ];
        let small_batches = GenerateOptions { max_batch: 4, prefill_chunk: 7, ..opts };
        for o in [opts, small_batches] {
            let together = e.generate(&companions, &o, &mut |_| {}).expect("together");
            assert_eq!(together[1], alone[0], "{precision:?}");
        }
        // Different samples of one prompt differ (their seeds do).
        assert_ne!(alone[0][0].token_ids, alone[0][1].token_ids);
    }
}

#[test]
fn generated_logprobs_equal_scored_logprobs() {
    let t = tiny(Arch::Llama, Format::Hf, 6);
    let e = &t.engine;
    let req = GenerateRequest { prompt: seq(9, 4), n: 2, params: sampling(), seed: 3 };
    let opts = GenerateOptions { precision: Some(Precision::F32), ..Default::default() };
    let out = e.generate(std::slice::from_ref(&req), &opts, &mut |_| {}).expect("generate");
    for s in &out[0] {
        let scored = e.score(&[(req.prompt.clone(), s.token_ids.clone())]).expect("score");
        let d = max_abs_diff(&scored[0].token_logprobs, &s.token_logprobs);
        assert!(d <= TOL, "{d}");
    }
}

/// Pairs that share a prompt run it once (a forked cache): their log-probs equal each pair scored alone, with the
/// shared prompt longer than one forward's budget too.
#[test]
fn scored_pairs_sharing_a_prompt_equal_pairs_scored_alone() {
    for arch in ARCHITECTURES.iter().map(|s| s.arch) {
        let t = tiny(arch, Format::Hf, 6);
        let e = &t.engine;
        let (a, b) = (seq(40, 1), seq(7, 2));
        let pairs: Vec<(Vec<TokenId>, Vec<TokenId>)> = vec![
            (a.clone(), seq(12, 3)),
            (b.clone(), seq(5, 4)),
            (a.clone(), seq(1, 5)),
            (seq(9, 6), seq(8, 7)),
            (a.clone(), seq(20, 8)),
            (b.clone(), seq(3, 9)),
        ];
        let shared = e.score_with(&pairs, Precision::F32, 16).expect("score");
        for (pair, got) in pairs.iter().zip(&shared) {
            let alone = e.score_with(std::slice::from_ref(pair), Precision::F32, 512).expect("score alone");
            assert_eq!(got.token_logprobs.len(), pair.1.len());
            let d = max_abs_diff(&got.token_logprobs, &alone[0].token_logprobs);
            assert!(d <= TOL, "{arch:?}: {d}");
        }
    }
}

#[test]
fn next_token_logprobs_equal_scored_single_token_completions() {
    let t = tiny(Arch::Llama, Format::Hf, 6);
    let e = &t.engine;
    // More prompt tokens than one forward's budget (512): the last prompt is split across two forwards.
    let prompts: Vec<Vec<TokenId>> = vec![seq(9, 4), seq(1, 2), seq(300, 3), seq(300, 5)];
    let candidates: [TokenId; 3] = [5, 17, 200];
    let got = e.next_token_logprobs(&prompts, &candidates, Precision::F32).expect("next-token log-probs");
    assert_eq!(got.len(), prompts.len());
    for (p, row) in prompts.iter().zip(&got) {
        let pairs: Vec<_> = candidates.iter().map(|&c| (p.clone(), vec![c])).collect();
        let scored: Vec<f32> = e.score(&pairs).expect("score").iter().map(|s| s.token_logprobs[0]).collect();
        let d = max_abs_diff(row, &scored);
        assert!(d <= TOL, "{d}: {row:?} vs {scored:?}");
    }
    assert!(e.next_token_logprobs(&[vec![]], &candidates, Precision::F32).is_err(), "empty prompt");
    assert!(e.next_token_logprobs(&prompts, &[1_000_000], Precision::F32).is_err(), "token outside the vocabulary");
}

#[test]
fn stop_strings_cut_the_text_and_finish_with_stop() {
    let t = tiny(Arch::Llama, Format::Hf, 8);
    let e = &t.engine;
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: 40, ignore_eos: true, ..Default::default() };
    let req = GenerateRequest { prompt: seq(6, 1), n: 1, params: greedy.clone(), seed: 0 };
    let full = e.generate(std::slice::from_ref(&req), &Default::default(), &mut |_| {}).expect("generate");
    let text = &full[0][0].text;
    // Pick a stop string from the middle of the greedy text.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 12, "greedy text too short: {text:?}");
    let stop: String = chars[8..10].iter().collect();
    let cut = text.find(&stop).expect("stop occurs");
    let req = GenerateRequest { params: SamplingParams { stop: vec![stop.clone()], ..greedy }, ..req };
    let out = e.generate(std::slice::from_ref(&req), &Default::default(), &mut |_| {}).expect("generate");
    assert_eq!(out[0][0].text, text[..cut]);
    assert_eq!(out[0][0].finish_reason, orchard_engine::FinishReason::Stop);
}

#[test]
fn max_new_tokens_and_eos_end_samples() {
    let t = tiny(Arch::Llama, Format::Hf, 9);
    let e = &t.engine;
    let p = SamplingParams { max_new_tokens: 5, ignore_eos: true, ..Default::default() };
    let req = GenerateRequest { prompt: seq(4, 2), n: 2, params: p, seed: 1 };
    let out = e.generate(std::slice::from_ref(&req), &Default::default(), &mut |_| {}).expect("generate");
    for s in &out[0] {
        assert_eq!(s.token_ids.len(), 5);
        assert_eq!(s.token_logprobs.len(), 5);
        assert_eq!(s.finish_reason, orchard_engine::FinishReason::Length);
    }
    // Every token is a stop token: the first draw ends the sample.
    let all: Vec<u32> = (0..288).collect();
    let p = SamplingParams { stop_token_ids: all, ..Default::default() };
    let req = GenerateRequest { prompt: seq(4, 2), n: 1, params: p, seed: 1 };
    let out = e.generate(std::slice::from_ref(&req), &Default::default(), &mut |_| {}).expect("generate");
    assert_eq!(out[0][0].token_ids.len(), 1);
    assert_eq!(out[0][0].finish_reason, orchard_engine::FinishReason::Stop);
}
