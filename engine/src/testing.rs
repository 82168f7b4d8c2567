//! Tiny randomly initialised models for fast tests: written as GGUF files (any supported tensor type) and HF
//! directories, with a small byte-level BPE tokenizer and a ChatML template. Used by this crate's tests and by
//! the tests of the crates above it; no downloads.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::config::{Arch, ModelConfig, SlidingWindow};
use crate::error::{Error, Result};
use crate::gguf::unpermute_order;

/// ChatML, as SmolLM2 uses it (with a default system prompt).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Special tokens of the tiny tokenizer (ids 0, 1, 2).
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

const MERGES: [(&str, &str); 16] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "s"),
    ("r", "e"),
    ("a", "t"),
    ("Ġ", "w"),
    ("e", "n"),
    ("Ġ", "i"),
    ("Ġi", "s"),
    ("o", "r"),
    ("a", "n"),
];

/// A small configuration of `arch`: 2 layers, width 64, GQA 4/2, vocab 288. Architectures with q/k norms get
/// 32-wide heads (attention wider than the model, as their `head_dim` is independent of the width). Gemma 3's
/// first layer is a 16-position sliding window with rotary base 10 000, its second global with base 10⁶, and its
/// queries are scaled by 24^-1/2 (≠ head_dim^-1/2); Mistral's layers are both 16-position windows.
pub fn tiny_config(arch: Arch) -> ModelConfig {
    let spec = arch.spec();
    let gemma = arch == Arch::Gemma3;
    let window = |layers: Vec<bool>, rope_theta| SlidingWindow { window: 16, layers, rope_theta };
    ModelConfig {
        arch,
        vocab_size: 288,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: if spec.qk_norm { 32 } else { 16 },
        rms_norm_eps: 1e-5,
        rope_theta: if gemma { 1_000_000.0 } else { 10_000.0 },
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: arch != Arch::Qwen2,
        attention_bias: spec.attention_bias,
        hidden_act: spec.activation,
        sliding_window: match arch {
            Arch::Gemma3 => Some(window(vec![true, false], 10_000.0)),
            Arch::Mistral => Some(window(vec![true, true], 10_000.0)),
            _ => None,
        },
        query_pre_attn_scalar: gemma.then_some(24.0),
    }
}

/// A tiny Mistral: the llama configuration with a 16-position sliding window on every layer.
pub fn tiny_mistral_config() -> ModelConfig {
    tiny_config(Arch::Mistral)
}

/// GPT-2's byte → printable character map.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        map[*b as usize] = char::from_u32(c).expect("valid code point");
    }
    map
}

/// The tiny tokenizer's vocabulary (specials, 256 byte symbols, merged tokens) and merges.
pub fn tiny_vocab() -> (Vec<String>, Vec<(String, String)>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(bytes_to_unicode().into_iter().map(String::from));
    let merges: Vec<(String, String)> = MERGES.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
    }
    (tokens, merges)
}

/// The tiny tokenizer as an HF `tokenizers::Tokenizer` (smollm-style pre-tokenizer).
pub fn tiny_hf_tokenizer() -> Result<tokenizers::Tokenizer> {
    let (tokens, merges) = tiny_vocab();
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    vocab.extend(tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)));
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]))));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.add_special_tokens(SPECIALS.iter().map(|s| AddedToken::from(*s, true)))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(tok)
}

/// Deterministic pseudo-random weights in HF naming: name → (shape, row-major values).
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut w = BTreeMap::new();
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (nq, nk) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let mat = |w: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
               name: String,
               shape: Vec<usize>,
               scale: f32,
               offset: f32,
               rng: &mut XorShift| {
        let data: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| offset + rng.next() * scale).collect();
        w.insert(name, (shape, data));
    };
    mat(&mut w, "model.embed_tokens.weight".into(), vec![v, d], 1.0, 0.0, &mut rng);
    if !cfg.tie_word_embeddings {
        mat(&mut w, "lm_head.weight".into(), vec![v, d], 0.3, 0.0, &mut rng);
    }
    for i in 0..cfg.num_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        mat(&mut w, p("self_attn.q_proj.weight"), vec![nq, d], 0.25, 0.0, &mut rng);
        mat(&mut w, p("self_attn.k_proj.weight"), vec![nk, d], 0.25, 0.0, &mut rng);
        mat(&mut w, p("self_attn.v_proj.weight"), vec![nk, d], 0.25, 0.0, &mut rng);
        mat(&mut w, p("self_attn.o_proj.weight"), vec![d, nq], 0.2, 0.0, &mut rng);
        mat(&mut w, p("mlp.gate_proj.weight"), vec![f, d], 0.2, 0.0, &mut rng);
        mat(&mut w, p("mlp.up_proj.weight"), vec![f, d], 0.2, 0.0, &mut rng);
        mat(&mut w, p("mlp.down_proj.weight"), vec![d, f], 0.15, 0.0, &mut rng);
        if cfg.attention_bias {
            for (n, len) in [("q", nq), ("k", nk), ("v", nk)] {
                mat(&mut w, p(&format!("self_attn.{n}_proj.bias")), vec![len], 0.1, 0.0, &mut rng);
            }
        }
        if cfg.arch.sandwich_norms() {
            // Gemma stores its norms as offsets from one.
            for n in [
                "input_layernorm.weight",
                "post_attention_layernorm.weight",
                "pre_feedforward_layernorm.weight",
                "post_feedforward_layernorm.weight",
            ] {
                mat(&mut w, p(n), vec![d], 0.1, 0.0, &mut rng);
            }
        } else {
            for n in ["input_layernorm.weight", "post_attention_layernorm.weight"] {
                mat(&mut w, p(n), vec![d], 0.1, 1.0, &mut rng);
            }
        }
        if cfg.arch.qk_norm() {
            for n in ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] {
                mat(&mut w, p(n), vec![cfg.head_dim], 0.3, 1.0, &mut rng);
            }
        }
    }
    let offset = if cfg.arch.norm_weights_offset() { 0.0 } else { 1.0 };
    mat(&mut w, "model.norm.weight".into(), vec![d], 0.1, offset, &mut rng);
    w
}

/// A tiny xorshift generator: deterministic weights without a dependency.
struct XorShift(u64);

impl XorShift {
    /// Uniform in [−1, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes an HF model directory (config, safetensors, tokenizer files, chat template).
pub fn write_hf_dir(dir: &Path, cfg: &ModelConfig, weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = cfg.to_hf_json(Some(1), Some(2));
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    write("config.json", serde_json::to_string_pretty(&config).expect("json"))?;
    write_safetensors(dir, weights)?;
    write_tokenizer_files(dir)
}

/// `model.safetensors` of `weights` (f32) in `dir`.
fn write_safetensors(dir: &Path, weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(n, (shape, data))| (n.clone(), shape.clone(), data.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, shape, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .expect("shape matches data");
            (n.clone(), view)
        })
        .collect();
    let st = safetensors::serialize(views, None).map_err(|e| Error::bad_model(dir, e.to_string()))?;
    let p = dir.join("model.safetensors");
    std::fs::write(&p, st).map_err(io(&p))
}

/// The tiny tokenizer's `tokenizer.json`, `tokenizer_config.json` (ChatML template) and `generation_config.json`.
fn write_tokenizer_files(dir: &Path) -> Result<()> {
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    let tok = tiny_hf_tokenizer()?;
    let p = dir.join("tokenizer.json");
    tok.save(&p, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tc = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "chat_template": CHATML_TEMPLATE,
    });
    write("tokenizer_config.json", serde_json::to_string_pretty(&tc).expect("json"))?;
    write("generation_config.json", serde_json::json!({"bos_token_id": 1, "eos_token_id": 2}).to_string())?;
    Ok(())
}

/// Writes a tiny random Phi-3 HF directory (the generic backend's architecture: fused `qkv_proj` and `gate_up_proj`,
/// untied head; 2 layers, width 64, GQA 4/2, vocab 288, the tiny tokenizer and chat template).
pub fn write_tiny_phi3(dir: &Path, seed: u64) -> Result<()> {
    let mut cfg = tiny_config(Arch::Llama);
    cfg.tie_word_embeddings = false;
    let w = random_weights(&cfg, seed);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_tokenizer_files(dir)?;
    // Phi-3 stores q ‖ k ‖ v and gate ‖ up as one matrix each.
    let mut fused: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let separate = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"];
    for (name, tensor) in &w {
        if !separate.iter().any(|s| name.contains(&format!(".{s}."))) {
            fused.insert(name.clone(), tensor.clone());
        }
    }
    for i in 0..cfg.num_layers {
        for (target, parts) in [
            ("self_attn.qkv_proj", &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..]),
            ("mlp.gate_up_proj", &["mlp.gate_proj", "mlp.up_proj"][..]),
        ] {
            let (mut rows, mut values, mut cols) = (0, Vec::new(), 0);
            for part in parts {
                let (shape, data) = &w[&format!("model.layers.{i}.{part}.weight")];
                rows += shape[0];
                cols = shape[1];
                values.extend_from_slice(data);
            }
            fused.insert(format!("model.layers.{i}.{target}.weight"), (vec![rows, cols], values));
        }
    }
    write_safetensors(dir, &fused)?;
    let config = serde_json::json!({
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": null,
        "max_position_embeddings": cfg.max_position_embeddings,
        "original_max_position_embeddings": cfg.max_position_embeddings,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    });
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&config).expect("json")).map_err(io(&p))
}

/// Writes a GGUF file holding the same model, its 2-D weights stored as `dtype` (norms stay F32).
pub fn write_gguf(
    path: &Path,
    cfg: &ModelConfig,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    dtype: GgmlDType,
) -> Result<()> {
    let a = cfg.arch.name();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let permute = cfg.arch.spec().gguf_permuted_qk;
    for (name, (shape, data)) in weights {
        let gguf_name = gguf_name(name);
        let mut values = data.clone();
        if permute && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight")) {
            let heads = shape[0] / cfg.head_dim;
            let order = unpermute_order(heads, cfg.head_dim);
            let cols = shape[1];
            for (hf_row, &g) in order.iter().enumerate() {
                values[g * cols..(g + 1) * cols].copy_from_slice(&data[hf_row * cols..(hf_row + 1) * cols]);
            }
        }
        let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?;
        let dt = if shape.len() == 2 { dtype } else { GgmlDType::F32 };
        tensors.push((gguf_name, QTensor::quantize(&t, dt)?));
    }
    let (tokens, merges) = tiny_vocab();
    let u32v = |x: usize| Value::U32(x as u32);
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String("tiny".into())),
        (format!("{a}.block_count"), u32v(cfg.num_layers)),
        (format!("{a}.context_length"), u32v(cfg.max_position_embeddings)),
        (format!("{a}.embedding_length"), u32v(cfg.hidden_size)),
        (format!("{a}.feed_forward_length"), u32v(cfg.intermediate_size)),
        (format!("{a}.attention.head_count"), u32v(cfg.num_heads)),
        (format!("{a}.attention.head_count_kv"), u32v(cfg.num_kv_heads)),
        (format!("{a}.rope.freq_base"), Value::F32(cfg.rope_theta)),
        (format!("{a}.rope.dimension_count"), u32v(cfg.head_dim)),
        (format!("{a}.attention.key_length"), u32v(cfg.head_dim)),
        (format!("{a}.attention.value_length"), u32v(cfg.head_dim)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps)),
        (format!("{a}.vocab_size"), u32v(cfg.vocab_size)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect())),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array((0..tokens.len()).map(|i| Value::I32(if i < SPECIALS.len() { 3 } else { 1 })).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.iter().map(|(x, y)| Value::String(format!("{x} {y}"))).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(CHATML_TEMPLATE.into())),
    ];
    meta.sort_by(|x, y| x.0.cmp(&y.0));
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    candle_core::quantized::gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    Ok(())
}

fn gguf_name(hf: &str) -> String {
    if hf == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if hf == "lm_head.weight" {
        return "output.weight".into();
    }
    if hf == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (i, name) = rest.split_once('.').expect("layer index");
    let g = match name {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{i}.{g}")
}
