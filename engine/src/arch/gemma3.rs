//! Gemma 3 text models (HF `modeling_gemma3.py`, `Gemma3ForCausalLM`; llama.cpp's `LLM_ARCH_GEMMA3`): embedding
//! scaled by √width, RMSNorm before *and after* both blocks, per-head q/k RMSNorm, GeGLU (tanh GELU), sliding-window
//! layers with their own rotary base between global ones, queries scaled by `query_pre_attn_scalar^-1/2`.

use std::path::Path;

use super::llama::LLAMA;
use super::{Arch, ArchSpec, HfLayers};
use crate::config::{parse_rope_scaling, Activation, HfConfig, ModelConfig, SlidingWindow};
use crate::error::{Error, Result};

pub(super) static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Gemma3,
    name: "gemma3",
    hf_model_types: &["gemma3_text"],
    gguf_name: Some("gemma3"),
    hf_export: ("Gemma3ForCausalLM", "gemma3_text"),
    qk_norm: true,
    sandwich_norms: true,
    scales_embedding: true,
    norm_weights_offset: true,
    activation: Activation::GeluTanh,
    gguf_permuted_qk: false,
    hf_layers,
    gguf_layers,
    hf_export_keys,
    ..LLAMA
};

/// Which layers slide (`layer_types`, or every layer but each `sliding_window_pattern`-th) and the two rotary
/// bases (transformers ≥ 5: `rope_parameters.{sliding,full}_attention`; before: `rope_local_base_freq` and
/// `rope_theta`).
fn hf_layers(hf: &HfConfig, path: &Path, common: HfLayers) -> Result<HfLayers> {
    let n = hf.num_hidden_layers;
    let layers: Vec<bool> = match (&hf.layer_types, hf.sliding_window_pattern) {
        (Some(types), _) => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(Error::unsupported(path, format!("gemma3: layer type `{other}`"))),
            })
            .collect::<Result<_>>()?,
        (None, pattern) => {
            let p = pattern.unwrap_or(6).max(1);
            (0..n).map(|i| (i + 1) % p != 0).collect()
        }
    };
    let per_type = hf.rope_parameters.as_ref().filter(|p| p.get("full_attention").is_some());
    let (rope_theta, rope_scaling, local_theta) = match per_type {
        Some(p) => {
            let full = &p["full_attention"];
            let local = p.get("sliding_attention").unwrap_or(full);
            let theta =
                |v: &serde_json::Value, default: f64| v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(default);
            let scaling = match full.get("rope_type").and_then(|t| t.as_str()) {
                None | Some("default") => None,
                Some(_) => Some(parse_rope_scaling(full).map_err(|msg| Error::unsupported(path, msg))?),
            };
            if local.get("rope_type").and_then(|t| t.as_str()).is_some_and(|t| t != "default") {
                return Err(Error::unsupported(path, "gemma3: rope scaling on the sliding-window layers"));
            }
            (theta(full, 1_000_000.0), scaling, theta(local, 10_000.0))
        }
        None => (common.rope_theta, common.rope_scaling, hf.rope_local_base_freq.unwrap_or(10_000.0)),
    };
    let sliding_window = match hf.sliding_window {
        Some(window) if layers.iter().any(|&s| s) => {
            Some(SlidingWindow { window, layers, rope_theta: local_theta as f32 })
        }
        _ => None,
    };
    Ok(HfLayers { rope_theta, rope_scaling, sliding_window, ..common })
}

/// llama.cpp's plan: every 6th layer global, the others a window with rotary base 10 000; queries scaled by
/// head_dim^-1/2 (its converter checks query_pre_attn_scalar == head_dim) except in the 27B (62 layers), which
/// scales by (hidden / heads)^-1/2.
fn gguf_layers(cfg: &mut ModelConfig, window: Option<usize>) {
    if let Some(window) = window {
        let layers = (0..cfg.num_layers).map(|i| (i + 1) % 6 != 0).collect();
        cfg.sliding_window = Some(SlidingWindow { window, layers, rope_theta: 10_000.0 });
    }
    if cfg.num_layers == 62 && cfg.num_heads > 0 {
        cfg.query_pre_attn_scalar = Some((cfg.hidden_size / cfg.num_heads) as f32);
    }
}

/// Gemma's own keys: `hidden_activation`, an integer `query_pre_attn_scalar`, the layer types and per-type rotary
/// parameters, no soft-capping.
fn hf_export_keys(cfg: &ModelConfig, obj: &mut serde_json::Map<String, serde_json::Value>) {
    obj.remove("hidden_act");
    obj.remove("mlp_bias");
    let act = match cfg.hidden_act {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    obj.insert("hidden_activation".into(), act.into());
    // transformers types this field as an int.
    let scalar = cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim as f32);
    let scalar = if scalar.fract() == 0.0 { serde_json::json!(scalar as u64) } else { serde_json::json!(scalar) };
    obj.insert("query_pre_attn_scalar".into(), scalar);
    if let Some(sw) = &cfg.sliding_window {
        let types: Vec<&str> =
            sw.layers.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
        obj.insert("sliding_window".into(), sw.window.into());
        obj.insert("layer_types".into(), serde_json::json!(types));
        obj.insert(
            "rope_parameters".into(),
            serde_json::json!({
                "sliding_attention": {"rope_type": "default", "rope_theta": sw.rope_theta},
                "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            }),
        );
        obj.remove("rope_theta");
    }
    obj.insert("final_logit_softcapping".into(), serde_json::Value::Null);
    obj.insert("attn_logit_softcapping".into(), serde_json::Value::Null);
}
