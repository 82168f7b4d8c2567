//! Qwen3 dense models: llama with a per-head RMSNorm on queries and keys before the rotary embedding, a head width
//! independent of the model width, no biases (HF `modeling_qwen3.py`).

use super::llama::LLAMA;
use super::{qwen2::no_sliding_window, Arch, ArchSpec};

pub(super) static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen3,
    name: "qwen3",
    hf_model_types: &["qwen3"],
    gguf_name: Some("qwen3"),
    hf_export: ("Qwen3ForCausalLM", "qwen3"),
    qk_norm: true,
    gguf_permuted_qk: false,
    hf_export_keys: no_sliding_window,
    ..LLAMA
};
