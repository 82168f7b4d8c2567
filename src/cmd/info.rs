//! `orchard info`: what a model is and how Orchard serves it.

use std::process::ExitCode;

use orchard_engine::{Message, Model};
use serde_json::json;

use super::common::ModelArgs;

/// Describe a model: which backend serves it (`native`, or `candle-transformers` for an HF directory of an
/// architecture only the generic backend runs), its architecture, how its weights are stored (GGUF tensor types) and
/// held (quantized blocks or f32), its shape, context, parameter count, special tokens and chat template (with
/// one rendered user turn). An architecture Orchard does not run fails here with the loader's error, which names
/// it and the supported ones. One JSON object on stdout.
///
/// Examples:
///   orchard info --model default
///   orchard info --model ~/models/Qwen3-0.6B
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let engine = match args.model.load_any()? {
        orchard_engine::AnyEngine::Native(e) => *e,
        orchard_engine::AnyEngine::Generic(g) => return generic(&g),
    };
    let m: &Model = engine.model();
    let cfg = m.config();
    let path = &engine.info().path;
    let (format, stored) = if path.is_file() {
        let gguf = orchard_engine::gguf::GgufFile::open(path)?;
        ("gguf", json!(gguf.tensor_types()))
    } else {
        ("hf", json!("safetensors (read as f32)"))
    };
    let (bos, eos, template) = special_tokens_and_template(engine.tokenizer(), engine.template());
    let out = json!({
        "model": engine.info().id,
        "path": path,
        "backend": "native",
        "architecture": cfg.arch.name(),
        "format": format,
        "stored": stored,
        "held_as": if m.has_quantized_weights() { "quantized blocks (Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 exactly, Q4_K / Q5_K with f16 sub-block scales; Q6_K and other types re-quantized to Q8_0)" } else { "f32" },
        "weight_bytes": m.weight_bytes(),
        "parameters": cfg.num_parameters(),
        "context": cfg.max_position_embeddings,
        "vocab": cfg.vocab_size,
        "hidden": cfg.hidden_size,
        "layers": cfg.num_layers,
        "heads": cfg.num_heads,
        "kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "qk_norm": cfg.arch.qk_norm(),
        "attention_bias": cfg.attention_bias,
        "tied_embeddings": cfg.tie_word_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "bos": bos,
        "eos": eos,
        "chat_template": template,
        "hidden_act": cfg.hidden_act,
        "sliding_window": cfg.sliding_window.as_ref().map(|sw| json!({
            "window": sw.window,
            "sliding_layers": sw.layers.iter().filter(|&&s| s).count(),
            "global_layers": sw.layers.iter().filter(|&&s| !s).count(),
            "rope_theta": sw.rope_theta,
            "kv_cache": "every layer keeps its whole KV (forks and prefix sharing exact)",
        })),
        "training": "LoRA and full fine-tuning (f32 differentiable forward)",
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// A model on the generic candle-transformers backend.
fn generic(g: &orchard_engine::GenericEngine) -> anyhow::Result<ExitCode> {
    let (bos, eos, template) = special_tokens_and_template(g.tokenizer(), g.template());
    let i = g.info();
    let out = json!({
        "model": g.path().file_name().map(|n| n.to_string_lossy().into_owned()),
        "path": g.path(),
        "backend": "candle-transformers",
        "architecture": i.architecture,
        "format": "hf",
        "stored": "safetensors (read as f32)",
        "context": i.context,
        "vocab": i.vocab,
        "hidden": i.hidden,
        "layers": i.layers,
        "bos": bos,
        "eos": eos,
        "chat_template": template,
        "commands": "generate, score and info (one sequence per forward, no prefix sharing); not sample, search, \
                     eval, train or the loop",
        "training": "not supported on the generic backend",
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// `bos`, `eos` (id and piece) and `chat_template` (with one rendered user turn) as `info` prints them.
fn special_tokens_and_template(
    tok: &orchard_engine::Tokenizer,
    template: Option<&orchard_engine::ChatTemplate>,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let piece = |id: u32| tok.piece(id).unwrap_or_default();
    let template = template.map_or_else(
        || json!({ "present": false }),
        |t| {
            let sample =
                t.render(&[Message::new("user", "Hi")], true).unwrap_or_else(|e| format!("(cannot render: {e})"));
            json!({ "present": true, "renders_user_hi_as": sample })
        },
    );
    (
        json!(tok.bos().map(|b| json!({"id": b, "piece": piece(b)}))),
        json!(tok.eos().iter().map(|&e| json!({"id": e, "piece": piece(e)})).collect::<Vec<_>>()),
        template,
    )
}
