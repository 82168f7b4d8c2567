//! Mistral: llama whose every layer attends to the last `sliding_window` positions only (HF
//! `modeling_mistral.py`; `null` from Mistral v0.2 on, which is plain llama). GGUF files of it say `llama` and
//! carry no window, so they load as llama.

use std::path::Path;

use super::llama::LLAMA;
use super::{Arch, ArchSpec, HfLayers};
use crate::config::{HfConfig, ModelConfig, SlidingWindow};
use crate::error::Result;

pub(super) static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Mistral,
    name: "mistral",
    hf_model_types: &["mistral"],
    gguf_name: None,
    hf_export: ("MistralForCausalLM", "mistral"),
    hf_layers,
    hf_export_keys,
    ..LLAMA
};

/// Every layer a window of `sliding_window` positions (the sliding-window layers Gemma 3 uses), so longer
/// sequences run exactly. Under rope scaling (no local base to give those layers) the context is capped at the
/// window instead, which is exact within it.
fn hf_layers(hf: &HfConfig, path: &Path, layers: HfLayers) -> Result<HfLayers> {
    let Some(window) = hf.sliding_window.filter(|&w| w > 0 && w < layers.max_position) else { return Ok(layers) };
    if layers.rope_scaling.is_some() {
        tracing::info!(
            "{}: sliding_window = {window} with rope scaling; the context is capped at {window} tokens (exact \
             within the window)",
            path.display()
        );
        return Ok(HfLayers { max_position: window, ..layers });
    }
    let every = vec![true; hf.num_hidden_layers];
    let sliding_window = Some(SlidingWindow { window, layers: every, rope_theta: layers.rope_theta as f32 });
    Ok(HfLayers { sliding_window, ..layers })
}

/// `sliding_window`: the window, or `null` (none) where it was capped or absent.
fn hf_export_keys(cfg: &ModelConfig, c: &mut serde_json::Map<String, serde_json::Value>) {
    c.insert("sliding_window".into(), cfg.sliding_window.as_ref().map(|sw| sw.window).into());
}
