//! The architectures the engine runs natively, each described once, in its own file: its names (HF `model_type`,
//! GGUF `general.architecture`, the class an HF export declares) and what makes it differ from the llama decoder,
//! as data (per-head q/k norms, norms around both blocks, embedding scale, the MLP's activation, q/k/v biases) and
//! as small hooks where its configs spell something their own way (sliding-window layers, rotary bases). The
//! backends — inference (`model.rs`), training (`autograd.rs`), devices (`device.rs`) — and the loaders read only this
//! and the [`ModelConfig`] it fills.
//!
//! Adding an architecture is a file here with its [`ArchSpec`], plus its [`Arch`] variant and its line in
//! [`ARCHITECTURES`]. The tests that compare the backends (training vs inference logits, batched vs one at a time,
//! HF export round trips) run over [`ARCHITECTURES`], so a new entry is covered by them as it is added.

use std::path::Path;

use crate::config::{Activation, HfConfig, ModelConfig, RopeScaling, SlidingWindow};
use crate::error::Result;

mod gemma3;
mod llama;
mod mistral;
mod qwen2;
mod qwen3;

/// An architecture the engine runs natively (its [`ArchSpec`] says how).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3, SmolLM, TinyLlama.
    Llama,
    /// Mistral: llama with every layer a sliding window.
    Mistral,
    /// Qwen2 / Qwen2.5 (biases on q/k/v projections).
    Qwen2,
    /// Qwen3 dense models (per-head RMSNorm on queries and keys before the rotary embedding, no biases).
    Qwen3,
    /// Gemma 3 text models: embedding scaled by √width, RMSNorm around both blocks, per-head q/k RMSNorm, GeGLU,
    /// sliding-window layers with their own rotary base between global ones, `query_pre_attn_scalar`.
    Gemma3,
}

/// Every native architecture, once.
pub static ARCHITECTURES: &[&ArchSpec] = &[&llama::SPEC, &mistral::SPEC, &qwen2::SPEC, &qwen3::SPEC, &gemma3::SPEC];

/// One architecture: its names and how it differs from the llama decoder.
#[derive(Debug)]
pub struct ArchSpec {
    /// Which one.
    pub arch: Arch,
    /// Orchard's name (`orchard info`, errors).
    pub name: &'static str,
    /// HF `model_type` values read as this architecture.
    pub hf_model_types: &'static [&'static str],
    /// GGUF `general.architecture`, where GGUF files of it exist under a name of their own.
    pub gguf_name: Option<&'static str>,
    /// What an HF export declares: `architectures[0]` and `model_type`.
    pub hf_export: (&'static str, &'static str),
    /// Per-head RMSNorm on queries and keys before the rotary embedding (`q_norm`/`k_norm`).
    pub qk_norm: bool,
    /// Each block's output normalised again before the residual add (Gemma's `post_attention_layernorm` and
    /// `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// Token embeddings multiplied by √hidden_size.
    pub scales_embedding: bool,
    /// HF stores RMSNorm weights as offsets from one (`x · (1 + w)`); GGUF files store `1 + w`.
    pub norm_weights_offset: bool,
    /// The MLP's activation where the config names none.
    pub activation: Activation,
    /// Whether q/k/v projections carry biases where the config does not say.
    pub attention_bias: bool,
    /// llama.cpp's converter permuted the q/k rows of this architecture's GGUF files (they are unpermuted at load).
    pub gguf_permuted_qk: bool,
    /// The layer plan from an HF config: sliding windows and rotary bases beyond the common keys.
    pub hf_layers: fn(&HfConfig, &Path, HfLayers) -> Result<HfLayers>,
    /// The layer plan from GGUF metadata (the attention window it states, if any).
    pub gguf_layers: fn(&mut ModelConfig, Option<usize>),
    /// Keys an HF export adds to (or takes from) the common llama `config.json`.
    pub hf_export_keys: fn(&ModelConfig, &mut serde_json::Map<String, serde_json::Value>),
}

/// What the common HF keys give and an architecture's [`ArchSpec::hf_layers`] may change.
#[derive(Debug)]
pub struct HfLayers {
    /// Rotary base of the global layers.
    pub rope_theta: f64,
    /// Rotary scaling of the global layers.
    pub rope_scaling: Option<RopeScaling>,
    /// Sliding-window layers.
    pub sliding_window: Option<SlidingWindow>,
    /// Longest sequence.
    pub max_position: usize,
}

impl Arch {
    /// This architecture's description.
    pub fn spec(self) -> &'static ArchSpec {
        ARCHITECTURES.iter().copied().find(|s| s.arch == self).expect("every architecture is in ARCHITECTURES")
    }

    /// Orchard's name for it.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// See [`ArchSpec::qk_norm`].
    pub fn qk_norm(self) -> bool {
        self.spec().qk_norm
    }

    /// See [`ArchSpec::sandwich_norms`].
    pub fn sandwich_norms(self) -> bool {
        self.spec().sandwich_norms
    }

    /// See [`ArchSpec::scales_embedding`].
    pub fn scales_embedding(self) -> bool {
        self.spec().scales_embedding
    }

    /// See [`ArchSpec::norm_weights_offset`].
    pub fn norm_weights_offset(self) -> bool {
        self.spec().norm_weights_offset
    }

    /// The architecture an HF `model_type` names.
    pub fn from_hf_model_type(model_type: &str) -> Option<Arch> {
        ARCHITECTURES.iter().find(|s| s.hf_model_types.contains(&model_type)).map(|s| s.arch)
    }

    /// The architecture a GGUF `general.architecture` names.
    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        ARCHITECTURES.iter().find(|s| s.gguf_name == Some(name)).map(|s| s.arch)
    }

    /// The HF `model_type` values the native engine reads, comma-separated (for errors).
    pub fn hf_model_types() -> String {
        ARCHITECTURES.iter().flat_map(|s| s.hf_model_types.iter().copied()).collect::<Vec<_>>().join(", ")
    }

    /// The GGUF architectures the native engine reads, comma-separated (for errors).
    pub fn gguf_names() -> String {
        ARCHITECTURES.iter().filter_map(|s| s.gguf_name).collect::<Vec<_>>().join(", ")
    }
}

/// [`ArchSpec::hf_layers`] of architectures without sliding windows: the common keys as they are.
fn common_hf_layers(_: &HfConfig, _: &Path, layers: HfLayers) -> Result<HfLayers> {
    Ok(layers)
}

/// [`ArchSpec::gguf_layers`] of architectures without sliding windows.
fn common_gguf_layers(_: &mut ModelConfig, _: Option<usize>) {}

/// [`ArchSpec::hf_export_keys`] of architectures that need nothing beyond the common keys.
fn common_export_keys(_: &ModelConfig, _: &mut serde_json::Map<String, serde_json::Value>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_is_registered_once_under_names_of_its_own() {
        for (i, s) in ARCHITECTURES.iter().enumerate() {
            assert_eq!(s.arch.spec().name, s.name);
            for other in &ARCHITECTURES[i + 1..] {
                assert_ne!(s.arch, other.arch);
                assert_ne!(s.name, other.name);
                assert!(s.hf_model_types.iter().all(|t| !other.hf_model_types.contains(t)), "{}", s.name);
                assert!(s.gguf_name.is_none() || s.gguf_name != other.gguf_name, "{}", s.name);
            }
            for t in s.hf_model_types {
                assert_eq!(Arch::from_hf_model_type(t), Some(s.arch));
            }
            assert_eq!(Arch::from_hf_model_type(s.hf_export.1), Some(s.arch), "an export loads back as {}", s.name);
        }
    }
}
