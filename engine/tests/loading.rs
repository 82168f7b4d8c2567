//! Loading GGUF files of every supported tensor type and HF directories, and refusing bad ones clearly.

use candle_core::quantized::GgmlDType;
use orchard_engine::testing::{random_weights, tiny_config, write_gguf, write_hf_dir};
use orchard_engine::{Arch, Engine, LogitRows, Precision, Prompt, Step, TokenId};

use crate::util::{max_abs_diff, tiny, Format};

fn last_logits(e: &Engine, tokens: &[TokenId], p: Precision) -> Vec<f32> {
    let m = e.model();
    let mut cache = m.new_cache();
    let mut steps = [Step { cache: &mut cache, tokens, logits: LogitRows::Last }];
    m.forward(&mut steps, p).expect("forward").row(0, 0).to_vec()
}

const PROMPT: [TokenId; 12] = [1, 40, 77, 3, 120, 250, 9, 18, 64, 200, 2, 99];

#[test]
fn gguf_f32_equals_hf_directory_for_both_architectures() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let hf = tiny(arch, Format::Hf, 11);
        let gguf = tiny(arch, Format::Gguf(GgmlDType::F32), 11);
        let a = last_logits(&hf.engine, &PROMPT, Precision::F32);
        let b = last_logits(&gguf.engine, &PROMPT, Precision::F32);
        let d = max_abs_diff(&a, &b);
        assert!(d <= 1e-4, "{arch:?}: GGUF (un-permuted q/k) vs HF: {d}");
        assert_eq!(hf.engine.model().config(), gguf.engine.model().config());
    }
}

#[test]
fn every_block_format_loads_close_to_f32() {
    let reference = tiny(Arch::Llama, Format::Hf, 12);
    let want = last_logits(&reference.engine, &PROMPT, Precision::F32);
    let spread = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (dt, tol) in [
        (GgmlDType::F16, 0.01),
        (GgmlDType::BF16, 0.05),
        (GgmlDType::Q8_0, 0.05),
        (GgmlDType::Q4_1, 0.35),
        (GgmlDType::Q4_0, 0.35),
    ] {
        let t = tiny(Arch::Llama, Format::Gguf(dt), 12);
        for p in [Precision::F32, Precision::Quantized] {
            let got = last_logits(&t.engine, &PROMPT, p);
            let d = max_abs_diff(&got, &want);
            assert!(d <= tol * spread.max(1.0), "{dt:?} {p:?}: max |Δ| {d} (logit scale {spread})");
        }
        let quantized = matches!(dt, GgmlDType::Q8_0 | GgmlDType::Q4_1 | GgmlDType::Q4_0);
        assert_eq!(t.engine.model().has_quantized_weights(), quantized, "{dt:?}");
    }
}

#[test]
fn quantized_kernels_equal_their_own_dequantized_weights() {
    // Q4_1 weights are kept exactly: the f32 path (dequantized) and the int8 path differ only by activation
    // quantization, far less than the weight quantization error above.
    let t = tiny(Arch::Llama, Format::Gguf(GgmlDType::Q4_1), 13);
    let a = last_logits(&t.engine, &PROMPT, Precision::F32);
    let b = last_logits(&t.engine, &PROMPT, Precision::Quantized);
    let spread = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(max_abs_diff(&a, &b) <= 0.05 * spread.max(1.0), "{}", max_abs_diff(&a, &b));
}

#[test]
fn gguf_and_hf_tokenizers_agree() {
    let hf = tiny(Arch::Llama, Format::Hf, 14);
    let gguf = tiny(Arch::Llama, Format::Gguf(GgmlDType::Q8_0), 14);
    for text in ["the cat is in there", "12345 and 6", "<|im_start|>user\nhi<|im_end|>", "emoji 😀 ok", "  two  spaces"]
    {
        let a = hf.engine.tokenizer().encode(text, true).expect("hf");
        let b = gguf.engine.tokenizer().encode(text, true).expect("gguf");
        assert_eq!(a, b, "{text:?}");
        assert_eq!(hf.engine.tokenizer().decode(&a, false).expect("decode"), text);
    }
    let p = Prompt::Text("hello".into());
    assert_eq!(
        hf.engine.prompt_tokens(&p, Some("be brief"), false).expect("hf chat"),
        gguf.engine.prompt_tokens(&p, Some("be brief"), false).expect("gguf chat")
    );
}

fn err_of(spec: &str) -> String {
    match Engine::load(spec) {
        Ok(_) => panic!("{spec} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_truncated_and_corrupt_files_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope.gguf");
    let e = err_of(missing.to_str().expect("utf-8"));
    assert!(e.contains("nope.gguf"), "{e}");

    let cfg = tiny_config(Arch::Llama);
    let good = dir.path().join("good.gguf");
    write_gguf(&good, &cfg, &random_weights(&cfg, 1), GgmlDType::Q4_1).expect("write");
    let bytes = std::fs::read(&good).expect("read");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).expect("write");
    let e = err_of(cut.to_str().expect("utf-8"));
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");

    let header = dir.path().join("header.gguf");
    std::fs::write(&header, &bytes[..100]).expect("write");
    let e = err_of(header.to_str().expect("utf-8"));
    assert!(e.contains("header.gguf"), "{e}");
}

#[test]
fn unsupported_architectures_and_bad_configs_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = tiny_config(Arch::Llama);
    let hf = dir.path().join("m");
    write_hf_dir(&hf, &cfg, &random_weights(&cfg, 1)).expect("write");
    let config_path = hf.join("config.json");
    let text = std::fs::read_to_string(&config_path).expect("read");
    std::fs::write(&config_path, text.replace("\"llama\"", "\"gpt_neox\"")).expect("write");
    let e = err_of(hf.to_str().expect("utf-8"));
    assert!(e.contains("gpt_neox") && e.contains("config.json"), "{e}");

    std::fs::write(&config_path, text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3")).expect("write");
    let e = err_of(hf.to_str().expect("utf-8"));
    assert!(e.contains("model.layers.2"), "{e}");

    std::fs::remove_file(hf.join("model.safetensors")).expect("rm");
    std::fs::write(&config_path, &text).expect("write");
    let e = err_of(hf.to_str().expect("utf-8"));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn over_long_prompts_and_unknown_roles_are_request_errors() {
    let t = tiny(Arch::Llama, Format::Hf, 15);
    let long: Vec<TokenId> = vec![5; 600];
    let req = orchard_engine::GenerateRequest { prompt: long, n: 1, params: Default::default(), seed: 0 };
    let e = t.engine.generate(&[req], &Default::default(), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("600 tokens") && e.contains("512"), "{e}");
    let p = Prompt::Messages(vec![orchard_engine::Message::new("narrator", "x")]);
    let e = t.engine.prompt_tokens(&p, None, false).unwrap_err().to_string();
    assert!(e.contains("narrator"), "{e}");
}
