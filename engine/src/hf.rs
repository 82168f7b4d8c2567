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
    let r = Reader { dir, shards: Shards::open(dir)?, cfg: &cfg };
    let d = cfg.hidden_size;
    let layers = (0..cfg.num_layers).map(|i| r.layer(i)).collect::<Result<Vec<_>>>()?;
    let embed = r.matrix("model.embed_tokens.weight", cfg.vocab_size, d)?;
    let embed_tokens = Linear::from_f32(&embed, cfg.vocab_size, d);
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else if r.shards.has("lm_head.weight") {
        Some(Linear::from_f32(&r.matrix("lm_head.weight", cfg.vocab_size, d)?, cfg.vocab_size, d))
    } else {
        return Err(Error::bad_model(dir, "tie_word_embeddings is false but `lm_head.weight` is missing"));
    };
    let final_norm = r.norm("model.norm.weight", d)?;
    Model::new(
        ModelParts { config: cfg, embed_tokens, lm_head, layers, norm: final_norm, rope_freq_factors: None },
        dir,
    )
}

/// Named, shape-checked tensors of an HF directory's shards.
struct Reader<'a> {
    dir: &'a Path,
    shards: Shards,
    cfg: &'a ModelConfig,
}

impl Reader<'_> {
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
        let (shape, data) = self.shards.get(self.dir, name)?;
        expect_shape(self.dir, name, &shape, &[rows, cols])?;
        Ok(data)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (shape, data) = self.shards.get(self.dir, name)?;
        expect_shape(self.dir, name, &shape, &[len])?;
        Ok(data)
    }

    /// An RMSNorm weight. Gemma's RMSNorm scales by `1 + w`: the engine's norms scale by their weight, so the offset
    /// is added here.
    fn norm(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let offset = if self.cfg.arch.norm_weights_offset() { 1.0 } else { 0.0 };
        Ok(self.vector(name, len)?.into_iter().map(|w| w + offset).collect())
    }

    /// Decoder layer `i`, its projections fused.
    fn layer(&self, i: usize) -> Result<Layer> {
        let cfg = self.cfg;
        let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let [nq, nk, _] = crate::model::qkv_split(cfg);
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let mut qkv = self.matrix(&p("self_attn.q_proj.weight"), nq, d)?;
        qkv.extend(self.matrix(&p("self_attn.k_proj.weight"), nk, d)?);
        qkv.extend(self.matrix(&p("self_attn.v_proj.weight"), nk, d)?);
        let qkv_bias = if cfg.attention_bias {
            let mut b = self.vector(&p("self_attn.q_proj.bias"), nq)?;
            b.extend(self.vector(&p("self_attn.k_proj.bias"), nk)?);
            b.extend(self.vector(&p("self_attn.v_proj.bias"), nk)?);
            Some(b)
        } else {
            None
        };
        let qk_norm = if cfg.arch.qk_norm() {
            let (q, k) = (self.norm(&p("self_attn.q_norm.weight"), hd)?, self.norm(&p("self_attn.k_norm.weight"), hd)?);
            Some(QkNorm { q, k })
        } else {
            None
        };
        let mut gate_up = self.matrix(&p("mlp.gate_proj.weight"), f, d)?;
        gate_up.extend(self.matrix(&p("mlp.up_proj.weight"), f, d)?);
        // Gemma names its four norms differently: `post_attention_layernorm` follows the attention block there, and
        // `pre_feedforward_layernorm` is the one before the MLP (the llama family's `post_attention_layernorm`).
        let (pre_mlp, sandwich) = if cfg.arch.sandwich_norms() {
            let sandwich = SandwichNorms {
                after_attention: self.norm(&p("post_attention_layernorm.weight"), d)?,
                after_mlp: self.norm(&p("post_feedforward_layernorm.weight"), d)?,
            };
            (self.norm(&p("pre_feedforward_layernorm.weight"), d)?, Some(sandwich))
        } else {
            (self.vector(&p("post_attention_layernorm.weight"), d)?, None)
        };
        let o_width = cfg.num_heads * hd;
        Ok(Layer {
            input_layernorm: self.norm(&p("input_layernorm.weight"), d)?,
            qkv_proj: Linear::from_f32(&qkv, nq + 2 * nk, d),
            qkv_bias,
            qk_norm,
            o_proj: Linear::from_f32(&self.matrix(&p("self_attn.o_proj.weight"), d, o_width)?, d, o_width),
            post_attention_layernorm: pre_mlp,
            gate_up_proj: Linear::from_f32(&gate_up, 2 * f, d),
            down_proj: Linear::from_f32(&self.matrix(&p("mlp.down_proj.weight"), d, f)?, d, f),
            sandwich,
        })
    }
}
