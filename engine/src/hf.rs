//! Loading a model from an HF directory: `config.json` and `model.safetensors` or a sharded
//! `model.safetensors.index.json` (F32, F16 or BF16 tensors, read as f32).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{Layer, Model, ModelParts, QkNorm, SandwichNorms};
use crate::weights::Linear;

/// The safetensors files of a model directory, memory-mapped.
struct Shards {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name → index into `maps`.
    index: HashMap<String, usize>,
}

impl Shards {
    fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::bad_model(&index_path, format!("invalid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::bad_model(&index_path, "no `weight_map` object"))?;
            let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            return Err(Error::bad_model(dir, "neither model.safetensors nor model.safetensors.index.json exists"));
        };
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only map of a file we do not modify.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| Error::bad_model(&path, format!("not a readable safetensors file: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), maps.len());
            }
            maps.push((path, map));
        }
        Ok(Shards { maps, index })
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor `name` as f32 with its shape.
    fn get(&self, dir: &Path, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let &i = self.index.get(name).ok_or_else(|| Error::bad_model(dir, format!("tensor `{name}` is missing")))?;
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map).map_err(|e| Error::bad_model(path, e.to_string()))?;
        let view = st.tensor(name).map_err(|e| Error::bad_model(path, format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::unsupported(
                    path,
                    format!("tensor `{name}` has dtype {other:?} (F32, F16, BF16 only)"),
                ))
            }
        };
        Ok((view.shape().to_vec(), data))
    }
}

fn expect_shape(dir: &Path, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(Error::bad_model(dir, format!("tensor `{name}` has shape {got:?}, the config implies {want:?}")));
    }
    Ok(())
}

/// Loads the model weights of an HF directory.
pub fn load_model(dir: &Path) -> Result<Model> {
    let cfg = ModelConfig::from_hf_json(&dir.join("config.json"))?;
    let shards = Shards::open(dir)?;
    let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let matrix = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>> {
        let (shape, data) = shards.get(dir, name)?;
        expect_shape(dir, name, &shape, &[rows, cols])?;
        Ok(data)
    };
    let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
        let (shape, data) = shards.get(dir, name)?;
        expect_shape(dir, name, &shape, &[len])?;
        Ok(data)
    };
    // Gemma's RMSNorm scales by `1 + w`: the engine's norms scale by their weight, so the offset is added here.
    let offset = if cfg.arch.norm_weights_offset() { 1.0 } else { 0.0 };
    let norm = |name: &str, len: usize| -> Result<Vec<f32>> {
        Ok(vector(name, len)?.into_iter().map(|w| w + offset).collect())
    };
    let [nq, nk, _] = crate::model::qkv_split(&cfg);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let mut qkv = matrix(&p("self_attn.q_proj.weight"), nq, d)?;
        qkv.extend(matrix(&p("self_attn.k_proj.weight"), nk, d)?);
        qkv.extend(matrix(&p("self_attn.v_proj.weight"), nk, d)?);
        let qkv_bias = if cfg.attention_bias {
            let mut b = vector(&p("self_attn.q_proj.bias"), nq)?;
            b.extend(vector(&p("self_attn.k_proj.bias"), nk)?);
            b.extend(vector(&p("self_attn.v_proj.bias"), nk)?);
            Some(b)
        } else {
            None
        };
        let qk_norm = if cfg.arch.qk_norm() {
            Some(QkNorm { q: norm(&p("self_attn.q_norm.weight"), hd)?, k: norm(&p("self_attn.k_norm.weight"), hd)? })
        } else {
            None
        };
        let mut gate_up = matrix(&p("mlp.gate_proj.weight"), f, d)?;
        gate_up.extend(matrix(&p("mlp.up_proj.weight"), f, d)?);
        // Gemma names its four norms differently: `post_attention_layernorm` follows the attention block there, and
        // `pre_feedforward_layernorm` is the one before the MLP (the llama family's `post_attention_layernorm`).
        let (pre_mlp, sandwich) = if cfg.arch.sandwich_norms() {
            let sandwich = SandwichNorms {
                after_attention: norm(&p("post_attention_layernorm.weight"), d)?,
                after_mlp: norm(&p("post_feedforward_layernorm.weight"), d)?,
            };
            (norm(&p("pre_feedforward_layernorm.weight"), d)?, Some(sandwich))
        } else {
            (vector(&p("post_attention_layernorm.weight"), d)?, None)
        };
        layers.push(Layer {
            input_layernorm: norm(&p("input_layernorm.weight"), d)?,
            qkv_proj: Linear::from_f32(&qkv, nq + 2 * nk, d),
            qkv_bias,
            qk_norm,
            o_proj: Linear::from_f32(
                &matrix(&p("self_attn.o_proj.weight"), d, cfg.num_heads * hd)?,
                d,
                cfg.num_heads * hd,
            ),
            post_attention_layernorm: pre_mlp,
            gate_up_proj: Linear::from_f32(&gate_up, 2 * f, d),
            down_proj: Linear::from_f32(&matrix(&p("mlp.down_proj.weight"), d, f)?, d, f),
            sandwich,
        });
    }
    let embed = matrix("model.embed_tokens.weight", cfg.vocab_size, d)?;
    let embed_tokens = Linear::from_f32(&embed, cfg.vocab_size, d);
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else if shards.has("lm_head.weight") {
        Some(Linear::from_f32(&matrix("lm_head.weight", cfg.vocab_size, d)?, cfg.vocab_size, d))
    } else {
        return Err(Error::bad_model(dir, "tie_word_embeddings is false but `lm_head.weight` is missing"));
    };
    let final_norm = norm("model.norm.weight", d)?;
    Model::new(
        ModelParts { config: cfg, embed_tokens, lm_head, layers, norm: final_norm, rope_freq_factors: None },
        dir,
    )
}
