//! Qwen2 / Qwen2.5: llama with biases on the q/k/v projections (HF `modeling_qwen2.py`).

use super::llama::LLAMA;
use super::{Arch, ArchSpec};
use crate::config::ModelConfig;

pub(super) static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen2,
    name: "qwen2",
    hf_model_types: &["qwen2"],
    gguf_name: Some("qwen2"),
    hf_export: ("Qwen2ForCausalLM", "qwen2"),
    attention_bias: true,
    gguf_permuted_qk: false,
    hf_export_keys: no_sliding_window,
    ..LLAMA
};

/// Qwen configs carry `use_sliding_window`; the engine runs (and exports) it off.
pub(super) fn no_sliding_window(_: &ModelConfig, c: &mut serde_json::Map<String, serde_json::Value>) {
    c.insert("use_sliding_window".into(), false.into());
}
