//! Model configuration: one struct for every supported llama-family architecture, read from GGUF metadata or an
//! HF `config.json`, validated once at load.

use std::path::Path;

use serde::Deserialize;

use crate::arch::HfLayers;
use crate::error::{Error, Result};

pub use crate::arch::Arch;

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SwiGLU: `silu(gate) · up` (llama, qwen).
    Silu,
    /// GeGLU with the tanh approximation: `gelu_tanh(gate) · up` (HF `gelu_pytorch_tanh`, Gemma).
    GeluTanh,
}

/// Sliding-window attention on some layers (Gemma 3): those attend to the last `window` positions only and rotate
/// with their own base.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlidingWindow {
    /// Keys a query sees: itself and the `window − 1` before it (HF: `kv_idx > q_idx − window`).
    pub window: usize,
    /// Per layer, whether it is a sliding-window layer (the others attend globally).
    pub layers: Vec<bool>,
    /// Rotary base of the sliding-window layers (unscaled; Gemma 3: 10 000).
    pub rope_theta: f32,
}

/// Rotary-embedding frequency scaling (HF `rope_scaling`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF `linear`).
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling (HF `llama3`).
    Llama3 {
        /// Overall factor (8 for Llama 3.1).
        factor: f32,
        /// Low-frequency factor (1).
        low_freq_factor: f32,
        /// High-frequency factor (4).
        high_freq_factor: f32,
        /// The original context (8192).
        original_max_position: usize,
    },
}

/// Shape and hyper-parameters of a llama-family decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary base.
    pub rope_theta: f32,
    /// Optional rotary scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest sequence the model accepts (prompt + completion).
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// The MLP's gate activation.
    pub hidden_act: Activation,
    /// Sliding-window layers, if the model has any.
    pub sliding_window: Option<SlidingWindow>,
    /// Attention scores scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2` (Gemma).
    pub query_pre_attn_scalar: Option<f32>,
}

impl ModelConfig {
    /// Width of the fused q/k/v projection output.
    pub fn qkv_width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let attn = d * self.qkv_width() + self.num_heads * self.head_dim * d;
        let bias = if self.attention_bias { self.qkv_width() } else { 0 };
        let qk_norm = if self.arch.qk_norm() { 2 * self.head_dim } else { 0 };
        let norms = if self.arch.sandwich_norms() { 4 * d } else { 2 * d };
        let per_layer = attn + bias + qk_norm + 3 * d * f + norms;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_layers * per_layer + d + head
    }

    /// Checks the invariants the forward relies on; `path` names the source in the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::bad_model(path, msg));
        let fields = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in fields {
            if value == 0 {
                return bad(format!("config field `{name}` must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim ({}) must be even for rotary embeddings", self.head_dim));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return bad(format!("rms_norm_eps ({}) must be a positive number", self.rms_norm_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta ({}) must be a positive number", self.rope_theta));
        }
        if let Some(sw) = &self.sliding_window {
            if sw.window == 0 {
                return bad("sliding_window must be positive".into());
            }
            if sw.layers.len() != self.num_layers {
                return bad(format!(
                    "{} layer types for {} layers (layer_types must name every layer)",
                    sw.layers.len(),
                    self.num_layers
                ));
            }
            if !(sw.rope_theta > 0.0 && sw.rope_theta.is_finite()) {
                return bad(format!("the sliding layers' rope base ({}) must be a positive number", sw.rope_theta));
            }
        }
        if let Some(s) = self.query_pre_attn_scalar {
            if !(s > 0.0 && s.is_finite()) {
                return bad(format!("query_pre_attn_scalar ({s}) must be a positive number"));
            }
        }
        Ok(())
    }

    /// This configuration as an HF `config.json` (the inverse of [`ModelConfig::from_hf_json`]).
    pub fn to_hf_json(&self, bos: Option<u32>, eos: Option<u32>) -> serde_json::Value {
        let (arch, model_type) = self.arch.spec().hf_export;
        let rope_scaling = match self.rope_scaling {
            None => serde_json::Value::Null,
            Some(RopeScaling::Linear { factor }) => serde_json::json!({"rope_type": "linear", "factor": factor}),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
                serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position,
                })
            }
        };
        let mut c = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "torch_dtype": "float32",
            "bos_token_id": bos,
            "eos_token_id": eos,
        });
        (self.arch.spec().hf_export_keys)(self, c.as_object_mut().expect("an object"));
        c
    }

    /// Reads and validates an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: HfConfig =
            serde_json::from_str(&text).map_err(|e| Error::bad_model(path, format!("invalid config.json: {e}")))?;
        let cfg = raw.into_config(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }
}

/// The subset of HF `config.json` the engine reads (the common keys, and those an architecture's
/// [`crate::arch::ArchSpec::hf_layers`] reads).
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub(crate) model_type: Option<String>,
    #[serde(default)]
    pub(crate) architectures: Vec<String>,
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) num_key_value_heads: Option<usize>,
    pub(crate) head_dim: Option<usize>,
    pub(crate) rms_norm_eps: f64,
    pub(crate) rope_theta: Option<f64>,
    pub(crate) rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes `rope_theta` and the scaling inside `rope_parameters`.
    pub(crate) rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_position")]
    pub(crate) max_position_embeddings: usize,
    #[serde(default)]
    pub(crate) tie_word_embeddings: bool,
    pub(crate) attention_bias: Option<bool>,
    #[serde(default)]
    pub(crate) mlp_bias: bool,
    pub(crate) hidden_act: Option<String>,
    /// Gemma's name for `hidden_act`.
    pub(crate) hidden_activation: Option<String>,
    pub(crate) use_sliding_window: Option<bool>,
    /// Gemma 3: `sliding_attention` / `full_attention` per layer.
    pub(crate) layer_types: Option<Vec<String>>,
    /// Gemma 3 (transformers < 5): every N-th layer is global.
    pub(crate) sliding_window_pattern: Option<usize>,
    /// Gemma 3 (transformers < 5): the sliding layers' rotary base.
    pub(crate) rope_local_base_freq: Option<f64>,
    pub(crate) query_pre_attn_scalar: Option<f64>,
    pub(crate) final_logit_softcapping: Option<f64>,
    pub(crate) attn_logit_softcapping: Option<f64>,
    /// Mistral's attention window (`null` from Mistral v0.2 on).
    pub(crate) sliding_window: Option<usize>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position() -> usize {
    2048
}

impl HfConfig {
    fn into_config(self, path: &Path) -> Result<ModelConfig> {
        let model_type = self.model_type.clone().unwrap_or_default();
        let Some(arch) = Arch::from_hf_model_type(&model_type) else {
            let other = model_type.as_str();
            let archs = self.architectures.join(", ");
            let hint = if other == "gemma3" {
                " (the multimodal Gemma 3 checkpoint: load its text model, model_type gemma3_text)"
            } else if crate::generic::GENERIC_ARCHITECTURES.contains(&other) {
                " (it runs on the generic candle-transformers backend, in `orchard generate`, `score` and `info` only)"
            } else {
                ""
            };
            return Err(Error::unsupported(
                path,
                format!(
                    "model_type `{other}` ({archs}){hint}; supported: {} (native), {} (generic backend: generate, \
                     score, info)",
                    Arch::hf_model_types(),
                    crate::generic::GENERIC_ARCHITECTURES.join(", ")
                ),
            ));
        };
        let spec = arch.spec();
        let hidden_act = self.supported(path, &model_type, spec.activation)?;
        let (rope_theta, rope_scaling) = self.rope(path)?;
        let common =
            HfLayers { rope_theta, rope_scaling, sliding_window: None, max_position: self.max_position_embeddings };
        let HfLayers { rope_theta, rope_scaling, sliding_window, max_position } =
            (spec.hf_layers)(&self, path, common)?;
        let heads = self.num_attention_heads;
        Ok(ModelConfig {
            arch,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: self.rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            rope_scaling,
            max_position_embeddings: max_position,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias.unwrap_or(spec.attention_bias),
            hidden_act,
            sliding_window,
            query_pre_attn_scalar: self.query_pre_attn_scalar.map(|x| x as f32),
        })
    }

    /// The MLP activation (`default` where the config names none), after refusing what the engine does not run:
    /// soft-capping, MLP biases, Qwen's sliding-window layers.
    fn supported(&self, path: &Path, model_type: &str, default: Activation) -> Result<Activation> {
        let act = match self.hidden_act.as_deref().or(self.hidden_activation.as_deref()) {
            None => default,
            Some("silu") => Activation::Silu,
            Some("gelu_pytorch_tanh") => Activation::GeluTanh,
            Some(act) => {
                return Err(Error::unsupported(
                    path,
                    format!("{model_type}: hidden activation `{act}`; supported: silu, gelu_pytorch_tanh"),
                ))
            }
        };
        for (name, v) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if v.is_some() {
                return Err(Error::unsupported(path, format!("{model_type}: {name} (logit soft-capping)")));
            }
        }
        if self.mlp_bias {
            return Err(Error::unsupported(path, "mlp_bias = true"));
        }
        if self.use_sliding_window == Some(true) {
            return Err(Error::unsupported(
                path,
                format!("{model_type}: sliding-window layers (use_sliding_window = true)"),
            ));
        }
        Ok(act)
    }

    /// The global rotary base and scaling from the common keys (`rope_theta`/`rope_scaling`, or transformers ≥ 5's
    /// `rope_parameters`).
    fn rope(&self, path: &Path) -> Result<(f64, Option<RopeScaling>)> {
        let params = self.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_theta = self
            .rope_theta
            .or_else(|| params.and_then(|p| p.get("rope_theta")).and_then(|x| x.as_f64()))
            .unwrap_or_else(default_rope_theta);
        // In `rope_parameters`, `rope_type: default` means no scaling.
        let params_scaling =
            params.filter(|p| p.get("rope_type").and_then(|t| t.as_str()).is_some_and(|t| t != "default"));
        let rope_scaling = match self.rope_scaling.as_ref().or(params_scaling) {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(parse_rope_scaling(v).map_err(|msg| Error::unsupported(path, msg))?),
        };
        Ok((rope_theta, rope_scaling))
    }
}

pub(crate) fn parse_rope_scaling(v: &serde_json::Value) -> std::result::Result<RopeScaling, String> {
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("").to_string();
    let num = |key: &str| v.get(key).and_then(|x| x.as_f64()).map(|x| x as f32);
    let factor = num("factor").ok_or_else(|| format!("rope_scaling `{kind}` without a `factor`"))?;
    match kind.as_str() {
        "linear" => Ok(RopeScaling::Linear { factor }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor,
            low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
            original_max_position: v.get("original_max_position_embeddings").and_then(|x| x.as_u64()).unwrap_or(8192)
                as usize,
        }),
        "default" => Ok(RopeScaling::Linear { factor: 1.0 }),
        other => Err(format!("rope_scaling type `{other}`; supported: linear, llama3")),
    }
}

/// Inverse frequencies of the rotary embedding, HF's `_compute_default_rope_parameters` and `llama3` scaling.
pub fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta;
    // HF: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
    let mut inv: Vec<f32> = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
    match cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            for f in &mut inv {
                *f /= factor;
            }
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
            let old = original_max_position as f32;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            for f in &mut inv {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) -> std::path::PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, json).expect("write config");
        p
    }

    #[test]
    fn llama_config_parses_with_defaults() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = write(
            dir.path(),
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
               "tie_word_embeddings":true}"#,
        );
        let cfg = ModelConfig::from_hf_json(&p)?;
        assert_eq!(cfg.head_dim, 16);
        assert_eq!(cfg.rope_theta, 10_000.0);
        assert!(!cfg.attention_bias);
        Ok(())
    }

    #[test]
    fn transformers5_rope_parameters_are_read() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = write(
            dir.path(),
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4,"rms_norm_eps":1e-5,
               "rope_parameters":{"rope_theta":100000.0,"rope_type":"default"}}"#,
        );
        let cfg = ModelConfig::from_hf_json(&p)?;
        assert_eq!(cfg.rope_theta, 100_000.0);
        assert!(cfg.rope_scaling.is_none());
        let p = write(
            dir.path(),
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4,"rms_norm_eps":1e-5,
               "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0}}"#,
        );
        let cfg = ModelConfig::from_hf_json(&p)?;
        assert_eq!(cfg.rope_theta, 500_000.0);
        assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
        Ok(())
    }

    #[test]
    fn a_mistral_sliding_window_slides_and_qwen2_windows_are_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let base = r#""vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"rms_norm_eps":1e-5,"max_position_embeddings":32768"#;
        let p = write(dir.path(), &format!(r#"{{"model_type":"mistral",{base},"sliding_window":4096}}"#));
        let cfg = ModelConfig::from_hf_json(&p)?;
        assert_eq!(cfg.max_position_embeddings, 32768);
        let sw = cfg.sliding_window.expect("a window");
        assert_eq!((sw.window, sw.layers, sw.rope_theta), (4096, vec![true, true], 10_000.0));
        let p = write(
            dir.path(),
            &format!(
                r#"{{"model_type":"mistral",{base},"sliding_window":4096,"rope_scaling":{{"type":"linear","factor":2.0}}}}"#
            ),
        );
        let cfg = ModelConfig::from_hf_json(&p)?;
        assert_eq!((cfg.max_position_embeddings, cfg.sliding_window), (4096, None));
        let p = write(dir.path(), &format!(r#"{{"model_type":"mistral",{base},"sliding_window":null}}"#));
        assert_eq!(ModelConfig::from_hf_json(&p)?.max_position_embeddings, 32768);
        let p = write(dir.path(), &format!(r#"{{"model_type":"qwen2",{base},"use_sliding_window":true}}"#));
        let err = ModelConfig::from_hf_json(&p).unwrap_err().to_string();
        assert!(err.contains("qwen2: sliding-window layers"), "{err}");
        Ok(())
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(
            dir.path(),
            r#"{"model_type":"gpt_neox","architectures":["GPTNeoXForCausalLM"],"vocab_size":100,"hidden_size":64,
               "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"rms_norm_eps":1e-5}"#,
        );
        let err = ModelConfig::from_hf_json(&p).unwrap_err().to_string();
        assert!(err.contains("gpt_neox") && err.contains("config.json"), "{err}");
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(
            dir.path(),
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":3,"rms_norm_eps":1e-5}"#,
        );
        let err = ModelConfig::from_hf_json(&p).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }

    #[test]
    fn llama3_scaling_leaves_high_frequencies_alone() {
        let mut cfg = ModelConfig {
            arch: Arch::Llama,
            vocab_size: 10,
            hidden_size: 128,
            intermediate_size: 10,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            max_position_embeddings: 1024,
            tie_word_embeddings: true,
            attention_bias: false,
            hidden_act: Activation::Silu,
            sliding_window: None,
            query_pre_attn_scalar: None,
        };
        let plain = rope_inv_freq(&cfg);
        cfg.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        });
        let scaled = rope_inv_freq(&cfg);
        assert_eq!(plain[0], scaled[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
    }
}
