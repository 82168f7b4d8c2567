//! Loading a llama-family model from a GGUF file (llama.cpp's format).
//!
//! Q4_0, Q4_1 and Q8_0 tensors are kept in their own blocks (see [`crate::kernels::quant`]); F32, F16 and BF16 are
//! read as f32; any other ggml type (K-quants…) is dequantized with candle and re-quantized to Q8_0 for the fast
//! path. llama.cpp stores the q/k projections of `llama` models permuted for interleaved rotary embedding; they are
//! un-permuted here so that one (half-rotation) rotary implementation serves GGUF and HF models alike.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::quant::QRows;
use crate::model::{Layer, Model, ModelParts, QkNorm, SandwichNorms};
use crate::weights::Linear;

/// An open GGUF file: metadata plus a memory map of the tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    map: memmap2::Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A tensor as read from the file.
enum Raw {
    Quant(QRows),
    F32(Vec<f32>),
}

impl GgufFile {
    /// Opens and parses the header of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let content =
            Content::read(&mut file).map_err(|e| Error::bad_model(path, format!("not a readable GGUF file: {e}")))?;
        // SAFETY: the file is opened read-only; a concurrent truncation by another process is outside our model.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(GgufFile { path: path.to_path_buf(), content, map })
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.meta(key) {
            None => Ok(None),
            Some(v) => v
                .to_u64()
                .map(|x| Some(x as usize))
                .or_else(|_| v.to_u32().map(|x| Some(x as usize)))
                .or_else(|_| v.to_i32().map(|x| Some(x.max(0) as usize)))
                .map_err(|_| Error::bad_model(&self.path, format!("metadata `{key}` is not an integer"))),
        }
    }

    fn meta_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.meta(key) {
            None => Ok(None),
            Some(v) => v
                .to_f32()
                .map(Some)
                .map_err(|_| Error::bad_model(&self.path, format!("metadata `{key}` is not a float"))),
        }
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }

    fn required(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?.ok_or_else(|| Error::bad_model(&self.path, format!("metadata `{key}` is missing")))
    }

    /// The model configuration from the metadata (validated).
    pub fn config(&self) -> Result<ModelConfig> {
        let arch_name = self
            .meta_str("general.architecture")
            .ok_or_else(|| Error::bad_model(&self.path, "metadata `general.architecture` is missing"))?;
        let Some(arch) = Arch::from_gguf_name(arch_name) else {
            return Err(Error::unsupported(
                &self.path,
                format!("architecture `{arch_name}`; supported: {}", Arch::gguf_names()),
            ));
        };
        let spec = arch.spec();
        let a = arch_name;
        let hidden = self.required(&format!("{a}.embedding_length"))?;
        let heads = self.required(&format!("{a}.attention.head_count"))?;
        let embd = self.tensor_info("token_embd.weight")?;
        let vocab = match self.meta_usize(&format!("{a}.vocab_size"))? {
            Some(v) => v,
            None => embd.shape.dims()[0],
        };
        // Qwen3 states the head width as the key length (it need not be hidden / heads).
        let key_length = self.meta_usize(&format!("{a}.attention.key_length"))?;
        let head_dim = match key_length.or(self.meta_usize(&format!("{a}.rope.dimension_count"))?) {
            Some(v) => v,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let scaling = match self.meta_str(&format!("{a}.rope.scaling.type")) {
            None | Some("none") => None,
            Some("linear") => {
                let factor = self.meta_f32(&format!("{a}.rope.scaling.factor"))?.unwrap_or(1.0);
                Some(crate::config::RopeScaling::Linear { factor })
            }
            Some(other) => {
                return Err(Error::unsupported(&self.path, format!("rope scaling `{other}`")));
            }
        };
        let num_layers = self.required(&format!("{a}.block_count"))?;
        let mut cfg = ModelConfig {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.required(&format!("{a}.feed_forward_length"))?,
            num_layers,
            num_heads: heads,
            num_kv_heads: self.meta_usize(&format!("{a}.attention.head_count_kv"))?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: self
                .meta_f32(&format!("{a}.attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| Error::bad_model(&self.path, "rms epsilon metadata is missing"))?,
            rope_theta: self.meta_f32(&format!("{a}.rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling: scaling,
            max_position_embeddings: self.meta_usize(&format!("{a}.context_length"))?.unwrap_or(2048),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            hidden_act: spec.activation,
            sliding_window: None,
            query_pre_attn_scalar: None,
        };
        (spec.gguf_layers)(&mut cfg, self.meta_usize(&format!("{a}.attention.sliding_window"))?);
        cfg.validate(&self.path)?;
        Ok(cfg)
    }

    fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::bad_model(&self.path, format!("tensor `{name}` is missing")))
    }

    fn bytes_of(&self, name: &str, info: &TensorInfo) -> Result<&[u8]> {
        let dt = info.ggml_dtype;
        let elems = info.shape.elem_count();
        if !elems.is_multiple_of(dt.block_size()) {
            return Err(Error::bad_model(&self.path, format!("tensor `{name}` has a partial block")));
        }
        let size = elems / dt.block_size() * dt.type_size();
        let start = self.content.tensor_data_offset.saturating_add(info.offset) as usize;
        let end = start.saturating_add(size);
        if end > self.map.len() {
            return Err(Error::bad_model(
                &self.path,
                format!(
                    "tensor `{name}` needs bytes {start}..{end} but the file has {} (truncated download?)",
                    self.map.len()
                ),
            ));
        }
        Ok(&self.map[start..end])
    }

    /// Reads a tensor as (rows, cols, data) where rows is the outer dimension.
    fn read(&self, name: &str) -> Result<(usize, usize, Raw)> {
        let info = self.tensor_info(name)?;
        let dims = info.shape.dims();
        let (rows, cols) = match dims {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => return Err(Error::bad_model(&self.path, format!("tensor `{name}` has shape {dims:?}"))),
        };
        let raw = self.bytes_of(name, info)?;
        let bad = |e: String| Error::bad_model(&self.path, format!("tensor `{name}`: {e}"));
        let data = match info.ggml_dtype {
            GgmlDType::Q4_0 => Raw::Quant(QRows::from_q4_0(raw, rows, cols).map_err(bad)?),
            GgmlDType::Q4_1 => Raw::Quant(QRows::from_q4_1(raw, rows, cols).map_err(bad)?),
            GgmlDType::Q8_0 => Raw::Quant(QRows::from_q8_0(raw, rows, cols).map_err(bad)?),
            GgmlDType::Q5_0 => Raw::Quant(QRows::from_q5_0(raw, rows, cols).map_err(bad)?),
            GgmlDType::Q5_1 => Raw::Quant(QRows::from_q5_1(raw, rows, cols).map_err(bad)?),
            GgmlDType::Q4K if cols.is_multiple_of(256) => Raw::Quant(QRows::from_q4_k(raw, rows, cols).map_err(bad)?),
            GgmlDType::Q5K if cols.is_multiple_of(256) => Raw::Quant(QRows::from_q5_k(raw, rows, cols).map_err(bad)?),
            GgmlDType::F32 => {
                Raw::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            GgmlDType::F16 => {
                Raw::F32(raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
            }
            GgmlDType::BF16 => {
                Raw::F32(raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
            }
            other => {
                let cpu = candle_core::Device::Cpu;
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(other, raw, dims.to_vec(), &cpu)
                    .map_err(|e| bad(e.to_string()))?;
                let t = q.dequantize(&cpu).and_then(|t| t.flatten_all()).map_err(|e| bad(e.to_string()))?;
                let v = t.to_vec1::<f32>().map_err(|e| bad(e.to_string()))?;
                Raw::Quant(QRows::quantize_q8(&v, rows, cols))
            }
        };
        Ok((rows, cols, data))
    }

    /// Tensor `name` dequantized to f32 exactly as stored (every GGML type: F32, F16, BF16, Q4_0 … Q8_0 and the
    /// K-quants Q2_K … Q6_K), row-major. The engine itself keeps Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 as they are, Q4_K/Q5_K
    /// with their sub-block scales rounded to f16, and re-quantizes the other block types from these values to Q8_0
    /// for its kernels.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        let raw = self.bytes_of(name, info)?;
        let bad = |e: String| Error::bad_model(&self.path, format!("tensor `{name}` ({:?}): {e}", info.ggml_dtype));
        let cpu = candle_core::Device::Cpu;
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            info.ggml_dtype,
            raw,
            info.shape.dims().to_vec(),
            &cpu,
        )
        .map_err(|e| bad(e.to_string()))?;
        q.dequantize(&cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| bad(e.to_string()))
    }

    /// How many tensors the file stores in each GGML type (`Q4_1` → 210, `F32` → 61 …).
    pub fn tensor_types(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for info in self.content.tensor_infos.values() {
            *m.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        }
        m
    }

    /// The names of the tensors in the file, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.content.tensor_infos.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (rows, cols, raw) = self.read(name)?;
        let v = match raw {
            Raw::F32(v) => v,
            Raw::Quant(q) => q.dequantize(),
        };
        if rows * cols != len {
            return Err(Error::bad_model(
                &self.path,
                format!("tensor `{name}` has {} values, expected {len}", v.len()),
            ));
        }
        Ok(v)
    }

    fn matrix(&self, name: &str, perm: Option<&[usize]>) -> Result<Raw> {
        let (rows, cols, raw) = self.read(name)?;
        Ok(match (raw, perm) {
            (raw, None) => raw,
            (Raw::Quant(q), Some(p)) => Raw::Quant(q.permute_rows(p)),
            (Raw::F32(v), Some(p)) => {
                let mut out = Vec::with_capacity(v.len());
                for &r in p {
                    out.extend_from_slice(&v[r * cols..(r + 1) * cols]);
                }
                debug_assert_eq!(out.len(), rows * cols);
                Raw::F32(out)
            }
        })
    }

    /// Loads the whole model.
    pub fn load_model(&self) -> Result<Model> {
        let cfg = self.config()?;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let permute = cfg.arch.spec().gguf_permuted_qk;
        let q_perm = permute.then(|| unpermute_order(cfg.num_heads, hd));
        let k_perm = permute.then(|| unpermute_order(cfg.num_kv_heads, hd));
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let q = self.matrix(&p("attn_q.weight"), q_perm.as_deref())?;
            let k = self.matrix(&p("attn_k.weight"), k_perm.as_deref())?;
            let v = self.matrix(&p("attn_v.weight"), None)?;
            let qkv_bias = if cfg.attention_bias {
                let [nq, nk, _] = crate::model::qkv_split(&cfg);
                let mut b = self.vector(&p("attn_q.bias"), nq)?;
                b.extend(self.vector(&p("attn_k.bias"), nk)?);
                b.extend(self.vector(&p("attn_v.bias"), nk)?);
                Some(b)
            } else {
                None
            };
            let qk_norm = if cfg.arch.qk_norm() {
                Some(QkNorm {
                    q: self.vector(&p("attn_q_norm.weight"), hd)?,
                    k: self.vector(&p("attn_k_norm.weight"), hd)?,
                })
            } else {
                None
            };
            let gate = self.matrix(&p("ffn_gate.weight"), None)?;
            let up = self.matrix(&p("ffn_up.weight"), None)?;
            // Gemma's norms are stored as `1 + w` by llama.cpp's converter: used as they are.
            let sandwich = if cfg.arch.sandwich_norms() {
                Some(SandwichNorms {
                    after_attention: self.vector(&p("post_attention_norm.weight"), d)?,
                    after_mlp: self.vector(&p("post_ffw_norm.weight"), d)?,
                })
            } else {
                None
            };
            layers.push(Layer {
                input_layernorm: self.vector(&p("attn_norm.weight"), d)?,
                qkv_proj: stack(&[q, k, v], d).map_err(|e| Error::bad_model(&self.path, format!("layer {i}: {e}")))?,
                qkv_bias,
                qk_norm,
                o_proj: linear(self.matrix(&p("attn_output.weight"), None)?, cfg.num_heads * hd),
                post_attention_layernorm: self.vector(&p("ffn_norm.weight"), d)?,
                gate_up_proj: stack(&[gate, up], d)
                    .map_err(|e| Error::bad_model(&self.path, format!("layer {i}: {e}")))?,
                down_proj: linear(self.matrix(&p("ffn_down.weight"), None)?, cfg.intermediate_size),
                sandwich,
            });
        }
        let embed_tokens = linear(self.matrix("token_embd.weight", None)?, d);
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(linear(self.matrix("output.weight", None)?, d)) };
        let rope_freq_factors = if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            Some(self.vector("rope_freqs.weight", hd / 2)?)
        } else {
            None
        };
        let norm = self.vector("output_norm.weight", d)?;
        Model::new(ModelParts { config: cfg, embed_tokens, lm_head, layers, norm, rope_freq_factors }, &self.path)
    }
}

fn linear(raw: Raw, cols: usize) -> Linear {
    match raw {
        Raw::Quant(q) => Linear::from_quant(q.pack()),
        Raw::F32(v) => Linear::from_f32(&v, v.len() / cols, cols),
    }
}

/// Stacks row blocks into one fused projection. Mixed formats (or mixed quantized/f32) fall back to Q8_0.
fn stack(parts: &[Raw], cols: usize) -> std::result::Result<Linear, String> {
    let quants: Vec<&QRows> = parts
        .iter()
        .filter_map(|p| match p {
            Raw::Quant(q) => Some(q),
            Raw::F32(_) => None,
        })
        .collect();
    if quants.len() == parts.len() && quants.iter().all(|q| q.format() == quants[0].format()) {
        return QRows::vstack(&quants).map(|q| Linear::from_quant(q.pack()));
    }
    let mut all = Vec::new();
    for p in parts {
        match p {
            Raw::Quant(q) => all.extend(q.dequantize()),
            Raw::F32(v) => all.extend_from_slice(v),
        }
    }
    let rows = all.len() / cols;
    if quants.is_empty() {
        Ok(Linear::from_f32(&all, rows, cols))
    } else {
        Ok(Linear::from_quant(QRows::quantize_q8(&all, rows, cols).pack()))
    }
}

/// For each HF row, the GGUF row that holds it: llama.cpp's convert script permutes each head's rows from
/// `[2][hd/2]` (HF half-rotation) to `[hd/2][2]` (interleaved), so HF row `h·hd + j·hd/2 + i` is GGUF row
/// `h·hd + 2i + j`.
pub fn unpermute_order(heads: usize, hd: usize) -> Vec<usize> {
    let half = hd / 2;
    let mut order = Vec::with_capacity(heads * hd);
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                order.push(h * hd + 2 * i + j);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, …).swapaxes(1, 2): GGUF row (h, i, j) holds HF row (h, j, i).
        let (heads, hd) = (2, 8);
        let gguf_holds = |g: usize| {
            let (h, rem) = (g / hd, g % hd);
            let (i, j) = (rem / 2, rem % 2);
            h * hd + j * (hd / 2) + i
        };
        let order = unpermute_order(heads, hd);
        for (hf_row, &g) in order.iter().enumerate() {
            assert_eq!(gguf_holds(g), hf_row);
        }
    }

    #[test]
    fn a_non_gguf_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("model.gguf");
        std::fs::write(&p, b"not a gguf file at all").expect("write");
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("model.gguf") && err.contains("GGUF"), "{err}");
    }
}
