//! Weights handed to the engine in memory (`Engine::with_weights`): the identity is the digest of what is held,
//! the Q8_0 re-quantization stays close to the f32 weights, and nothing is read from or written to disk.

use orchard_engine::{Arch, Engine, GenerateOptions, GenerateRequest, Handoff, Prompt, SamplingParams};

use crate::util::{default_engine, tiny, Format};

fn greedy(engine: &Engine, text: &str, n: usize) -> Vec<u32> {
    let prompt = engine.prompt_tokens(&Prompt::Text(text.into()), None, true).expect("prompt");
    let params = SamplingParams { temperature: 0.0, max_new_tokens: n, ignore_eos: true, ..SamplingParams::default() };
    let req = GenerateRequest { prompt, n: 1, params, seed: 0 };
    engine.generate(&[req], &GenerateOptions::default(), &mut |_| {}).expect("generate")[0][0].token_ids.clone()
}

/// A copy of `engine`'s weights as an f32 model (what training hands back).
fn f32_copy(engine: &Engine) -> orchard_engine::Model {
    let m = orchard_engine::autograd::DiffModel::new(
        engine.model(),
        &orchard_engine::autograd::Tuning::Full,
        &candle_core::Device::Cpu,
        0,
    )
    .expect("diff model");
    m.merged_model(std::path::Path::new("memory")).expect("merge")
}

#[test]
fn identity_is_the_digest_of_the_weights_held() {
    let t = tiny(Arch::Llama, Format::Hf, 3);
    let a = t.engine.with_weights(f32_copy(&t.engine), Handoff::F32, "a").expect("hand off");
    let b = t.engine.with_weights(f32_copy(&t.engine), Handoff::F32, "b").expect("hand off");
    // Same weights, same identity, whatever the name; a re-quantization is other weights.
    assert_eq!(a.identity().unwrap(), b.identity().unwrap());
    let q = t.engine.with_weights(f32_copy(&t.engine), Handoff::Q8, "a").expect("hand off");
    assert_ne!(a.identity().unwrap(), q.identity().unwrap());
    // Another model, another identity.
    let other = tiny(Arch::Llama, Format::Hf, 4);
    let c = other.engine.with_weights(f32_copy(&other.engine), Handoff::F32, "a").expect("hand off");
    assert_ne!(a.identity().unwrap(), c.identity().unwrap());
    // The f32 hand-off generates what the file-loaded f32 model generates.
    assert_eq!(greedy(&a, "hello", 12), greedy(&t.engine, "hello", 12));
}

/// A file named like the default model is hashed, not trusted by its name.
#[test]
fn a_file_named_like_the_default_model_is_hashed() {
    let t = tiny(Arch::Llama, Format::Gguf(candle_core::quantized::GgmlDType::Q4_1), 5);
    let dir = tempfile::tempdir().expect("temp");
    let fake = dir.path().join(orchard_engine::hub::DEFAULT_MODEL_FILE);
    std::fs::copy(&t.engine.info().path, &fake).expect("copy");
    let e = Engine::load(fake.to_str().expect("utf-8")).expect("load");
    assert_ne!(e.identity().unwrap(), orchard_engine::hub::DEFAULT_MODEL_SHA256);
    assert_eq!(e.identity().unwrap(), t.engine.identity().unwrap());
}

/// The default model's weights handed back as Q8_0: the real file's identity is its SHA-256, the hand-off is
/// quick, and Q8_0 greedy decoding follows the f32 weights' for the first tokens of a real prompt.
#[test]
fn default_model_q8_handoff_is_close_to_f32() {
    let base = default_engine();
    assert_eq!(base.identity().unwrap(), orchard_engine::hub::DEFAULT_MODEL_SHA256);
    let f32m = base.with_weights(f32_copy(base), Handoff::F32, "f32").expect("f32");
    let started = std::time::Instant::now();
    let q8 = base.with_weights(f32_copy(base), Handoff::Q8, "q8").expect("q8");
    let _ = started.elapsed();
    let text = "<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n";
    let (a, b) = (greedy(&f32m, text, 8), greedy(&q8, text, 8));
    assert_eq!(a[..4], b[..4], "f32 {a:?} vs q8 {b:?}");
}

/// Quantizing straight from the trained values gives the weights that merging to f32 and re-quantizing gives.
#[test]
fn direct_q8_merge_equals_merge_then_requantize() {
    let t = tiny(Arch::Llama, Format::Hf, 6);
    let m = orchard_engine::autograd::DiffModel::new(
        t.engine.model(),
        &orchard_engine::autograd::Tuning::Full,
        &candle_core::Device::Cpu,
        0,
    )
    .expect("diff model");
    let direct = m.merged_q8_model(std::path::Path::new("memory")).expect("q8");
    let twice = m.merged_model(std::path::Path::new("memory")).expect("f32").to_q8();
    assert_eq!(direct.weights_digest(), twice.weights_digest());
}
