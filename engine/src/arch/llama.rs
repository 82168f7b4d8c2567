//! Llama 2/3, SmolLM, TinyLlama: the decoder the others differ from (pre-norm RMSNorm, rotary embedding with half
//! rotation, GQA, SwiGLU; HF `modeling_llama.py`).

use super::{common_export_keys, common_gguf_layers, common_hf_layers, Arch, ArchSpec};
use crate::config::Activation;

/// The llama decoder; the other architectures state how they differ from it.
pub(super) const LLAMA: ArchSpec = ArchSpec {
    arch: Arch::Llama,
    name: "llama",
    hf_model_types: &["llama"],
    gguf_name: Some("llama"),
    hf_export: ("LlamaForCausalLM", "llama"),
    qk_norm: false,
    sandwich_norms: false,
    scales_embedding: false,
    norm_weights_offset: false,
    activation: Activation::Silu,
    attention_bias: false,
    gguf_permuted_qk: true,
    hf_layers: common_hf_layers,
    gguf_layers: common_gguf_layers,
    hf_export_keys: common_export_keys,
};

pub(super) static SPEC: ArchSpec = LLAMA;
