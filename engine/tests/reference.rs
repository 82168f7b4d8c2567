//! The default model (SmolLM2-135M-Instruct Q4_1) against HF transformers on the same GGUF dequantized to f32.
//! Reference values come from `tests/reference/hf_smollm2.py` (pasted there, run once, committed).

use orchard_engine::{Chunk, LogitRows, Precision, TokenId};
use serde::Deserialize;

use crate::util::{default_engine, log_softmax, max_abs_diff, ranked, reference_dir, top_gap};

#[derive(Deserialize)]
struct Reference {
    tokenizer: Vec<TokCase>,
    chat: Vec<ChatCase>,
    logprobs: Vec<LogprobCase>,
    score: Vec<ScoreCase>,
}
#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<TokenId>,
}
#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<orchard_engine::Message>,
    text: String,
    ids: Vec<TokenId>,
}
#[derive(Deserialize)]
struct LogprobCase {
    ids: Vec<TokenId>,
    top5_ids: Vec<usize>,
    top5_logprobs: Vec<f32>,
}
#[derive(Deserialize)]
struct ScoreCase {
    prompt_ids: Vec<TokenId>,
    completion_ids: Vec<TokenId>,
    logprob_sum: f64,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(reference_dir().join("hf_smollm2.json")).expect("reference json");
    serde_json::from_str(&text).expect("valid reference json")
}

fn reference_rows(vocab: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(reference_dir().join("hf_smollm2_logprobs.f32")).expect("reference rows");
    let vals: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    vals.chunks(vocab).map(<[f32]>::to_vec).collect()
}

#[test]
fn tokenizer_ids_equal_hf() {
    let e = default_engine();
    let r = reference();
    assert!(r.tokenizer.len() >= 30);
    for case in &r.tokenizer {
        let ids = e.tokenizer().encode(&case.text, true).expect("encode");
        assert_eq!(ids, case.ids, "{:?}", case.text);
        assert_eq!(e.tokenizer().decode(&ids, false).expect("decode"), case.text);
    }
    for case in &r.chat {
        let text = e.template().expect("template").render(&case.messages, true).expect("render");
        assert_eq!(text, case.text);
        assert_eq!(e.tokenizer().encode(&text, false).expect("encode"), case.ids);
    }
}

fn last_logprobs(ids: &[TokenId], p: Precision) -> Vec<f32> {
    let m = default_engine().model();
    let mut cache = m.new_cache();
    let mut chunks = [Chunk { cache: &mut cache, tokens: ids, logits: LogitRows::Last }];
    log_softmax(m.forward(&mut chunks, p).expect("forward").row(0, 0))
}

#[test]
fn f32_next_token_logprobs_match_hf() {
    let r = reference();
    let rows = reference_rows(default_engine().model().config().vocab_size);
    let mut worst = 0f32;
    assert_eq!(r.logprobs.len(), rows.len(), "reference cases vs rows");
    for (case, want) in r.logprobs.iter().zip(&rows) {
        let got = last_logprobs(&case.ids, Precision::F32);
        worst = worst.max(max_abs_diff(&got, want));
    }
    eprintln!("f32 path: max |Δ log-softmax| over the full vocabulary, {} prompts: {worst:.2e}", rows.len());
    assert!(worst <= 1e-3, "{worst}");
}

#[test]
fn quantized_top5_matches_hf() {
    let r = reference();
    let mut worst = 0f32;
    for case in &r.logprobs {
        let got = last_logprobs(&case.ids, Precision::Quantized);
        let order = ranked(&got);
        eprintln!("ours {:?}", order[..6].iter().map(|&i| (i, got[i])).collect::<Vec<_>>());
        eprintln!("hf   {:?}", case.top5_ids.iter().zip(&case.top5_logprobs).collect::<Vec<_>>());
        let mut ours: Vec<usize> = order[..5].to_vec();
        let mut theirs = case.top5_ids.clone();
        ours.sort_unstable();
        theirs.sort_unstable();
        if ours != theirs {
            eprintln!("top-5 set differs: {:?} vs {:?}", &order[..6], case.top5_ids);
        }
        eprintln!("ours {:?}", order[..6].iter().map(|&i| (i, got[i])).collect::<Vec<_>>());
        eprintln!("hf   {:?}", case.top5_ids.iter().zip(&case.top5_logprobs).collect::<Vec<_>>());
        worst = worst.max(top_gap(&got, &case.top5_ids, &case.top5_logprobs));
    }
    eprintln!("quantized path: max |Δ logp| over HF's top-5: {worst:.3}");
    assert!(worst <= 0.15, "{worst}");
}

#[test]
fn score_sums_match_hf() {
    let r = reference();
    assert!(r.score.len() >= 20);
    let pairs: Vec<_> = r.score.iter().map(|c| (c.prompt_ids.clone(), c.completion_ids.clone())).collect();
    let scored = default_engine().score(&pairs).expect("score");
    let mut worst = 0f64;
    assert_eq!(scored.len(), r.score.len());
    for (s, c) in scored.iter().zip(&r.score) {
        assert_eq!(s.n_tokens, c.completion_ids.len());
        worst = worst.max((s.logprob_sum - c.logprob_sum).abs());
    }
    eprintln!("score: max |Δ logprob_sum| over {} pairs: {worst:.2e}", r.score.len());
    assert!(worst <= 1e-2, "{worst}");
}

/// One prompt of `tests/reference/hf_tiny_*.json`: its ids and transformers' full next-token log-softmax at the last
/// and the middle position.
#[derive(Deserialize)]
struct TinyCase {
    ids: Vec<TokenId>,
    mid: usize,
    last: Vec<f32>,
    middle: Vec<f32>,
}

/// A tiny model's reference: five prompts and the greedy continuation of the first.
#[derive(Deserialize)]
struct TinyReference {
    cases: Vec<TinyCase>,
    greedy: Vec<TokenId>,
}

/// `tests/reference/hf_tiny_{name}.json`, checked to hold at least five prompts, one longer than 300 tokens.
fn tiny_reference(name: &str) -> TinyReference {
    let text = std::fs::read_to_string(reference_dir().join(format!("hf_tiny_{name}.json"))).expect("reference json");
    let r: TinyReference = serde_json::from_str(&text).expect("valid json");
    assert!(r.cases.len() >= 5 && r.cases.iter().any(|c| c.ids.len() > 300));
    r
}

/// A tiny random model of `arch` against HF transformers on the same weights (`tests/reference/hf_tiny.py`): full
/// next-token log-softmax at two positions of five prompts, one longer than 300 tokens.
fn tiny_model_equals_transformers(arch: orchard_engine::Arch, seed: u64, keep_env: &str) {
    let cfg = orchard_engine::testing::tiny_config(arch);
    tiny_config_equals_transformers(&cfg, arch.name(), seed, keep_env)
}

/// [`tiny_model_equals_transformers`] for a given configuration, its reference `hf_tiny_{name}.json`.
fn tiny_config_equals_transformers(cfg: &orchard_engine::ModelConfig, name: &str, seed: u64, keep_env: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = orchard_engine::testing::random_weights(cfg, seed);
    orchard_engine::testing::write_hf_dir(dir.path(), cfg, &weights).expect("write");
    if let Some(keep) = std::env::var_os(keep_env) {
        orchard_engine::testing::write_hf_dir(std::path::Path::new(&keep), cfg, &weights).expect("write");
    }
    let engine = orchard_engine::Engine::load(dir.path().to_str().expect("utf-8")).expect("load");
    assert_eq!(engine.model().config(), cfg, "the HF directory reads back as written");
    let r = tiny_reference(name);
    let m = engine.model();
    let mut worst = 0f32;
    for c in &r.cases {
        let mut cache = m.new_cache();
        let mut chunks = [Chunk { cache: &mut cache, tokens: &c.ids, logits: LogitRows::From(0) }];
        let l = m.forward(&mut chunks, Precision::F32).expect("forward");
        for (pos, want) in [(c.ids.len() - 1, &c.last), (c.mid, &c.middle)] {
            let got = log_softmax(l.row(0, pos));
            let d = max_abs_diff(&got, want);
            assert!(d <= 1e-3, "{} tokens, position {pos}: {d}", c.ids.len());
            worst = worst.max(d);
        }
    }
    eprintln!("tiny {name} vs transformers: largest log-prob difference {worst:e}");
}

/// Mistral with a sliding window (16 positions on every layer; prompts up to 333 tokens): the window slides instead of
/// capping the context.
#[test]
fn tiny_mistral_logprobs_equal_transformers() {
    let cfg = orchard_engine::testing::tiny_mistral_config();
    tiny_config_equals_transformers(&cfg, "mistral", 43, "ORCHARD_WRITE_TINY_MISTRAL");
}

/// A tiny random Phi-3 — an architecture the native engine lacks — on the generic candle-transformers backend against
/// transformers' `Phi3ForCausalLM` on the same weights: full next-token log-softmax at two positions of five prompts
/// (≤ 1e-3), `score` equal to those rows, greedy `generate` equal token for token.
#[test]
fn tiny_phi3_on_the_generic_backend_equals_transformers() {
    let dir = tempfile::tempdir().expect("tempdir");
    orchard_engine::testing::write_tiny_phi3(dir.path(), 41).expect("write");
    if let Some(keep) = std::env::var_os("ORCHARD_WRITE_TINY_PHI3") {
        orchard_engine::testing::write_tiny_phi3(std::path::Path::new(&keep), 41).expect("write");
    }
    let any = orchard_engine::AnyEngine::load(dir.path().to_str().expect("utf-8")).expect("load");
    let orchard_engine::AnyEngine::Generic(g) = &any else { panic!("phi3 must load on the generic backend") };
    assert_eq!(g.info().architecture, "phi3");
    let r = tiny_reference("phi3");
    let mut worst = 0f32;
    for c in &r.cases {
        for (pos, want) in [(c.ids.len() - 1, &c.last), (c.mid, &c.middle)] {
            let got = g.next_token_logprobs(&c.ids[..=pos]).expect("forward");
            let d = max_abs_diff(&got, want);
            assert!(d <= 1e-3, "{} tokens, position {pos}: {d}", c.ids.len());
            worst = worst.max(d);
        }
        // Teacher forcing from the middle: its first token's log-prob is the middle row's entry.
        if c.mid + 1 < c.ids.len() {
            let scored = g.score(&[(c.ids[..=c.mid].to_vec(), c.ids[c.mid + 1..].to_vec())]).expect("score");
            assert_eq!(scored[0].n_tokens, c.ids.len() - c.mid - 1);
            let want = c.middle[c.ids[c.mid + 1] as usize];
            assert!((scored[0].token_logprobs[0] - want).abs() <= 1e-3, "{} vs {want}", scored[0].token_logprobs[0]);
        }
    }
    let greedy = orchard_engine::SamplingParams { temperature: 0.0, max_new_tokens: 12, ..Default::default() };
    let req = orchard_engine::GenerateRequest { prompt: r.cases[0].ids.clone(), n: 2, params: greedy, seed: 0 };
    let out = any.generate(std::slice::from_ref(&req), &Default::default(), &mut |_| {}).expect("generate");
    assert_eq!(out[0].len(), 2);
    for s in &out[0] {
        assert_eq!(s.token_ids, r.greedy, "greedy tokens");
    }
    eprintln!("tiny phi3 (generic backend) vs transformers: largest log-prob difference {worst:e}");
}

/// Qwen3: q/k norms, head_dim ≠ width / heads.
#[test]
fn tiny_qwen3_logprobs_equal_transformers() {
    tiny_model_equals_transformers(orchard_engine::Arch::Qwen3, 31, "ORCHARD_WRITE_TINY_QWEN3");
}

/// Gemma 3: embedding scale, norms around both blocks, GeGLU, a sliding-window layer (window 16, far shorter than the
/// 333-token prompt) beside a global one with another rotary base, query_pre_attn_scalar ≠ head_dim.
#[test]
fn tiny_gemma3_logprobs_equal_transformers() {
    tiny_model_equals_transformers(orchard_engine::Arch::Gemma3, 37, "ORCHARD_WRITE_TINY_GEMMA3");
}
