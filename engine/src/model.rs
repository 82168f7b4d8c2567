//! The llama-family decoder (Llama 2/3, SmolLM, Qwen2, Qwen3, Gemma 3): one architecture definition whose weights serve the fast
//! inference forward here and the differentiable forward of [`crate::autograd`].
//!
//! Paper: Touvron et al., "LLaMA" (arXiv 2302.13971); reference implementation: HF transformers'
//! `modeling_llama.py` / `modeling_qwen2.py` / `modeling_qwen3.py` (pre-norm, RMSNorm, rotary embedding with half
//! rotation, GQA, SwiGLU; Qwen3 adds a per-head RMSNorm on queries and keys before the rotary embedding).
//!
//! The inference forward packs the new tokens of many sequences into one matrix of rows (no padding): linear layers
//! see `T` rows, rotary embedding and attention use each row's own position and its own sequence's KV cache.

use std::sync::Arc;

use rayon::prelude::*;

use crate::config::{rope_inv_freq, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::attention::{attention, AttnSeq, AttnShape};
use crate::kernels::ops;
use crate::kv::{KvCache, KvLayout, KvPool};
use crate::weights::{Linear, Precision};

/// A token id.
pub use orchard_core::TokenId;

/// One decoder layer. Projections are stored fused (`qkv_proj` = q ‖ k ‖ v rows, `gate_up_proj` = gate ‖ up rows)
/// so one activation quantization and one parallel matmul serve them; [`Layer::split_qkv`] gives them back.
#[derive(Debug)]
pub struct Layer {
    /// RMSNorm weight before attention.
    pub input_layernorm: Vec<f32>,
    /// Fused q/k/v projection (`(H + 2·KVH)·hd × d`).
    pub qkv_proj: Linear,
    /// Fused q/k/v bias (Qwen2).
    pub qkv_bias: Option<Vec<f32>>,
    /// Per-head RMSNorm weights of queries and keys (`head_dim` each; Qwen3).
    pub qk_norm: Option<QkNorm>,
    /// Attention output projection.
    pub o_proj: Linear,
    /// RMSNorm weight before the MLP.
    pub post_attention_layernorm: Vec<f32>,
    /// Fused gate/up projection (`2·f × d`).
    pub gate_up_proj: Linear,
    /// MLP down projection.
    pub down_proj: Linear,
    /// Norms of the attention and MLP outputs before their residual adds (Gemma).
    pub sandwich: Option<SandwichNorms>,
}

/// Gemma's second pair of norms: each block's output is RMS-normalised before it joins the residual stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SandwichNorms {
    /// Applied to the attention output (HF Gemma `post_attention_layernorm`; GGUF `post_attention_norm`).
    pub after_attention: Vec<f32>,
    /// Applied to the MLP output (HF `post_feedforward_layernorm`; GGUF `post_ffw_norm`).
    pub after_mlp: Vec<f32>,
}

/// Qwen3's per-head RMSNorm weights, applied to every query and key head before the rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct QkNorm {
    /// `self_attn.q_norm.weight` (`head_dim`).
    pub q: Vec<f32>,
    /// `self_attn.k_norm.weight` (`head_dim`).
    pub k: Vec<f32>,
}

impl QkNorm {
    /// Normalise the query and key heads of packed `qkv` rows in place (each row: `heads` queries, then
    /// `kv_heads` keys, then values).
    fn apply(&self, qkv: &mut [f32], row_width: usize, heads: usize, kv_heads: usize, eps: f32) {
        let hd = self.q.len();
        qkv.par_chunks_mut(row_width).for_each(|row| {
            let mut tmp = vec![0f32; hd];
            for (h, head) in row[..(heads + kv_heads) * hd].chunks_mut(hd).enumerate() {
                let w = if h < heads { &self.q } else { &self.k };
                ops::rms_norm(head, w, eps, &mut tmp);
                head.copy_from_slice(&tmp);
            }
        });
    }
}

impl Layer {
    /// Checks layer `i`'s shapes against `cfg`, and that it has the optional weights its architecture uses and no
    /// others.
    fn check(&self, cfg: &ModelConfig, i: usize) -> std::result::Result<(), String> {
        let d = cfg.hidden_size;
        shape(&self.qkv_proj, &format!("layer {i} qkv_proj"), cfg.qkv_width(), d)?;
        shape(&self.o_proj, &format!("layer {i} o_proj"), d, cfg.num_heads * cfg.head_dim)?;
        shape(&self.gate_up_proj, &format!("layer {i} gate_up_proj"), 2 * cfg.intermediate_size, d)?;
        shape(&self.down_proj, &format!("layer {i} down_proj"), d, cfg.intermediate_size)?;
        if self.input_layernorm.len() != d || self.post_attention_layernorm.len() != d {
            return Err(format!("layer {i} norm weights are not {d} wide"));
        }
        if self.sandwich.as_ref().is_some_and(|n| n.after_attention.len() != d || n.after_mlp.len() != d) {
            return Err(format!("layer {i} post-block norm weights are not {d} wide"));
        }
        if self.qkv_bias.as_ref().is_some_and(|b| b.len() != cfg.qkv_width()) {
            return Err(format!("layer {i} qkv bias is not {} wide", cfg.qkv_width()));
        }
        if self.qk_norm.as_ref().is_some_and(|n| n.q.len() != cfg.head_dim || n.k.len() != cfg.head_dim) {
            return Err(format!("layer {i} q/k norm weights are not head_dim ({}) wide", cfg.head_dim));
        }
        let arch = cfg.arch.name();
        for (has, needs, what) in [
            (self.sandwich.is_some(), cfg.arch.sandwich_norms(), "post-block norms"),
            (self.qk_norm.is_some(), cfg.arch.qk_norm(), "q/k norm weights"),
        ] {
            match (has, needs) {
                (false, true) => return Err(format!("layer {i} lacks the {what} {arch} needs")),
                (true, false) => return Err(format!("layer {i} has {what}, which {arch} does not use")),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Checks that `l` is `rows × cols`.
fn shape(l: &Linear, name: &str, rows: usize, cols: usize) -> std::result::Result<(), String> {
    if l.rows() != rows || l.cols() != cols {
        return Err(format!("{name} is {}×{}, the config implies {rows}×{cols}", l.rows(), l.cols()));
    }
    Ok(())
}

/// Row counts of q, k and v inside the fused projection.
pub fn qkv_split(cfg: &ModelConfig) -> [usize; 3] {
    let kv = cfg.num_kv_heads * cfg.head_dim;
    [cfg.num_heads * cfg.head_dim, kv, kv]
}

/// Which rows of a step need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// None (a prefill chunk that is not the prompt's end).
    None,
    /// The last new token's (generation).
    Last,
    /// Every new token's from this index on (scoring).
    From(usize),
}

/// New tokens of one sequence in a batched forward.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// The sequence's cache; the new tokens are appended to it.
    pub cache: &'a mut KvCache,
    /// Tokens to run.
    pub tokens: &'a [TokenId],
    /// Which logits to return.
    pub logits: LogitRows,
}

/// Logits of a batched forward: one `vocab`-wide row per requested position, chunks in order.
#[derive(Debug, Default)]
pub struct Logits {
    /// Row-major values.
    pub values: Vec<f32>,
    /// Vocabulary size (row width).
    pub vocab: usize,
    /// For each step, the index of its first row and its number of rows.
    pub spans: Vec<(usize, usize)>,
}

impl Logits {
    /// Row `i` of step `s`.
    pub fn row(&self, s: usize, i: usize) -> &[f32] {
        let (first, n) = self.spans[s];
        assert!(i < n, "logit row {i} of step {s} was not requested");
        &self.values[(first + i) * self.vocab..(first + i + 1) * self.vocab]
    }
    /// Number of rows of step `s`.
    pub fn rows(&self, s: usize) -> usize {
        self.spans[s].1
    }
}

/// A loaded llama-family model.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    embed_tokens: Linear,
    lm_head: Option<Linear>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    inv_freq: Vec<f32>,
    /// Rotary frequencies of the sliding-window layers, when they have their own base (Gemma 3).
    local_inv_freq: Option<Vec<f32>>,
    pool: Arc<KvPool>,
    version: u64,
    /// The weights uploaded to a device, where [`Model::forward`] then runs (see [`Model::on_device`]).
    device: Option<Arc<crate::device::DeviceModel>>,
}

/// Every model instance gets its own weights version: caches keyed by it never outlive a weight change.
static NEXT_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The parts a loader hands to [`Model::new`].
#[derive(Debug)]
pub struct ModelParts {
    /// Validated configuration.
    pub config: ModelConfig,
    /// Token embedding (`vocab × d`).
    pub embed_tokens: Linear,
    /// Separate LM head, `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// Decoder layers.
    pub layers: Vec<Layer>,
    /// Final RMSNorm weight.
    pub norm: Vec<f32>,
    /// Per-frequency divisors of the rotary frequencies (GGUF `rope_freqs.weight`), if any.
    pub rope_freq_factors: Option<Vec<f32>>,
}

impl Model {
    /// Assembles a model, checking every shape against the configuration.
    pub fn new(parts: ModelParts, source: &std::path::Path) -> Result<Self> {
        let cfg = &parts.config;
        let d = cfg.hidden_size;
        let bad = |what: String| Error::bad_model(source, what);
        shape(&parts.embed_tokens, "token embedding", cfg.vocab_size, d).map_err(bad)?;
        if let Some(h) = &parts.lm_head {
            shape(h, "lm_head", cfg.vocab_size, d).map_err(bad)?;
        }
        if parts.layers.len() != cfg.num_layers {
            return Err(bad(format!("{} layers found, the config says {}", parts.layers.len(), cfg.num_layers)));
        }
        if parts.norm.len() != d {
            return Err(bad(format!("final norm has {} values, expected {d}", parts.norm.len())));
        }
        for (i, l) in parts.layers.iter().enumerate() {
            l.check(cfg, i).map_err(bad)?;
        }
        let mut inv_freq = rope_inv_freq(cfg);
        if let Some(f) = &parts.rope_freq_factors {
            if f.len() != inv_freq.len() {
                return Err(bad(format!("rope_freqs has {} values, expected {}", f.len(), inv_freq.len())));
            }
            for (i, x) in inv_freq.iter_mut().zip(f) {
                *i /= x;
            }
        }
        // Only when they differ (Gemma 3's local base): Mistral's sliding layers rotate as the global ones, and the
        // forward then builds one angle table per step, not two equal ones.
        let local_inv_freq = cfg
            .sliding_window
            .as_ref()
            .map(|sw| rope_inv_freq(&ModelConfig { rope_theta: sw.rope_theta, rope_scaling: None, ..cfg.clone() }))
            .filter(|local| *local != inv_freq);
        Ok(Model {
            config: parts.config,
            embed_tokens: parts.embed_tokens,
            lm_head: parts.lm_head,
            layers: parts.layers,
            norm: parts.norm,
            inv_freq,
            local_inv_freq,
            pool: Arc::new(KvPool::default()),
            version: NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            device: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// The decoder layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    /// The token embedding.
    pub fn embed_tokens(&self) -> &Linear {
        &self.embed_tokens
    }
    /// The LM head (the embedding when tied).
    pub fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
    /// Whether the LM head is the embedding.
    pub fn is_tied(&self) -> bool {
        self.lm_head.is_none()
    }
    /// The final norm weight.
    pub fn norm(&self) -> &[f32] {
        &self.norm
    }
    /// Rotary inverse frequencies (after scaling).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
    /// Rotary inverse frequencies of the sliding-window layers, when they differ (Gemma 3).
    pub fn local_inv_freq(&self) -> Option<&[f32]> {
        self.local_inv_freq.as_deref()
    }

    /// Whether any weight is quantized (then [`Precision::Quantized`] is the fast default).
    pub fn has_quantized_weights(&self) -> bool {
        self.layers.iter().any(|l| l.qkv_proj.quant().is_some())
    }

    /// The precision generation uses unless told otherwise: quantized weights for quantized models.
    pub fn default_precision(&self) -> Precision {
        if self.has_quantized_weights() {
            Precision::Quantized
        } else {
            Precision::F32
        }
    }

    /// Bytes of weights held now (quantized plus any dense copies made so far).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.qkv_proj.bytes() + l.o_proj.bytes() + l.gate_up_proj.bytes() + l.down_proj.bytes())
            .sum();
        layers + self.embed_tokens.bytes() + self.lm_head.as_ref().map_or(0, Linear::bytes)
    }

    /// SHA-256 over the configuration and every weight as held (quantized blocks, or f32 values): the model's
    /// identity for caches, checkpoints and resume, whatever file — or training round — it came from.
    pub fn weights_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut sink = |b: &[u8]| h.update(b);
        let floats = |v: &[f32], sink: &mut dyn FnMut(&[u8])| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
            sink(&(v.len() as u64).to_le_bytes());
            sink(&bytes);
        };
        sink(format!("{:?}", self.config).as_bytes());
        self.embed_tokens.digest_into(&mut sink);
        sink(&[u8::from(self.lm_head.is_some())]);
        if let Some(l) = &self.lm_head {
            l.digest_into(&mut sink);
        }
        for l in &self.layers {
            floats(&l.input_layernorm, &mut sink);
            l.qkv_proj.digest_into(&mut sink);
            floats(l.qkv_bias.as_deref().unwrap_or(&[]), &mut sink);
            if let Some(n) = &l.qk_norm {
                floats(&n.q, &mut sink);
                floats(&n.k, &mut sink);
            }
            l.o_proj.digest_into(&mut sink);
            floats(&l.post_attention_layernorm, &mut sink);
            l.gate_up_proj.digest_into(&mut sink);
            l.down_proj.digest_into(&mut sink);
            if let Some(n) = &l.sandwich {
                floats(&n.after_attention, &mut sink);
                floats(&n.after_mlp, &mut sink);
            }
        }
        floats(&self.norm, &mut sink);
        floats(&self.inv_freq, &mut sink);
        hex::encode(h.finalize())
    }

    /// This model with every projection, the embedding and the LM head re-quantized to Q8_0 from their f32
    /// values (norms stay f32): the fast quantized path for weights handed back from training.
    pub fn to_q8(&self) -> Model {
        let layers = self
            .layers
            .iter()
            .map(|l| Layer {
                input_layernorm: l.input_layernorm.clone(),
                qkv_proj: l.qkv_proj.to_q8(),
                qkv_bias: l.qkv_bias.clone(),
                qk_norm: l.qk_norm.clone(),
                o_proj: l.o_proj.to_q8(),
                post_attention_layernorm: l.post_attention_layernorm.clone(),
                gate_up_proj: l.gate_up_proj.to_q8(),
                down_proj: l.down_proj.to_q8(),
                sandwich: l.sandwich.clone(),
            })
            .collect();
        Model {
            config: self.config.clone(),
            embed_tokens: self.embed_tokens.to_q8(),
            lm_head: self.lm_head.as_ref().map(Linear::to_q8),
            layers,
            norm: self.norm.clone(),
            inv_freq: self.inv_freq.clone(),
            local_inv_freq: self.local_inv_freq.clone(),
            pool: Arc::new(KvPool::default()),
            version: NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            device: None,
        }
    }

    /// This model with its weights uploaded to `placement`'s device in `dtype`: its forward (generation, scoring,
    /// every job through the scheduler) then runs there, its KV paged on the device. The host weights stay (the
    /// trainer and exports read them). `Placement::Cpu` gives the CPU engine back.
    pub fn on_device(self, placement: crate::device::Placement, dtype: crate::device::DType) -> Result<Model> {
        let device = match placement.device()? {
            Some(d) => Some(Arc::new(crate::device::DeviceModel::new(&self, placement, d, dtype)?)),
            None => None,
        };
        let pool = device.as_ref().map_or_else(KvPool::default, |d| KvPool::paged(d.slot_table().clone()));
        Ok(Model {
            device,
            pool: Arc::new(pool),
            version: NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..self
        })
    }

    /// The device this model runs on, when not the CPU engine.
    pub fn device(&self) -> Option<&crate::device::DeviceModel> {
        self.device.as_deref()
    }

    /// Shape of this model's KV cache.
    pub fn kv_layout(&self) -> KvLayout {
        KvLayout { layers: self.config.num_layers, kv_heads: self.config.num_kv_heads, head_dim: self.config.head_dim }
    }

    /// A new, empty KV cache.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.kv_layout(), self.pool.clone())
    }

    /// The weights version of this instance (unique per loaded or trained model).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// KV storage accounting for every cache of this model.
    pub fn kv_pool(&self) -> &Arc<KvPool> {
        &self.pool
    }

    /// Runs the new tokens of every chunk through the model in one batched forward, appending them to the chunks'
    /// caches, and returns the requested logits.
    pub fn forward(&self, chunks: &mut [Chunk<'_>], precision: Precision) -> Result<Logits> {
        // The forward runs on a thread of the compute pool: its ~10 parallel loops per layer then fork from inside
        // the pool, instead of each being injected from outside and waking the workers (`rayon::scope` runs its
        // closure inline when already on a pool thread).
        rayon::scope(|_| self.forward_on_pool(chunks, precision))
    }

    fn forward_on_pool(&self, chunks: &mut [Chunk<'_>], precision: Precision) -> Result<Logits> {
        let rows = self.lay_out(chunks)?;
        let logits = match &self.device {
            Some(dev) => dev.forward(chunks, &rows)?,
            None => self.forward_host(chunks, &rows, precision)?,
        };
        for s in chunks.iter_mut() {
            s.cache.commit(s.tokens.len());
        }
        Ok(logits)
    }

    /// The forward on the CPU engine's kernels (the chunks' caches reserve the rows of `rows`).
    fn forward_host(&self, chunks: &mut [Chunk<'_>], rows: &RowLayout, precision: Precision) -> Result<Logits> {
        let mut x = self.embed(chunks, rows.positions.len());
        let mut buf = Buffers::new(&self.config, rows.positions.len());
        let rope = Rope {
            global: ops::rope_table(&rows.positions, &self.inv_freq),
            local: self.local_inv_freq.as_ref().map(|f| ops::rope_table(&rows.positions, f)),
        };
        for (li, layer) in self.layers.iter().enumerate() {
            self.attention_block(li, layer, chunks, rows, &rope, precision, &mut x, &mut buf);
            self.mlp_block(layer, precision, &mut x, &mut buf);
        }
        self.head(chunks, &x, precision)
    }

    /// Checks every chunk (its cache is this model's, it fits the context, its tokens are in the vocabulary),
    /// reserves its cache space and lays out its rows.
    fn lay_out(&self, chunks: &mut [Chunk<'_>]) -> Result<RowLayout> {
        let cfg = &self.config;
        let mut rows = RowLayout::default();
        for s in chunks.iter_mut() {
            let same_place = match (s.cache.slot_table(), &self.device) {
                (None, None) => true,
                (Some(t), Some(d)) => Arc::ptr_eq(t, d.slot_table()),
                _ => false,
            };
            if s.cache.layout() != self.kv_layout() || !same_place {
                return Err(Error::Request("a KV cache from another model was passed to forward".into()));
            }
            let end = s.cache.len() + s.tokens.len();
            if end > cfg.max_position_embeddings {
                return Err(Error::Request(format!(
                    "sequence of {end} tokens is longer than the model's context ({} tokens)",
                    cfg.max_position_embeddings
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(Error::Request(format!("token id {t} is outside the vocabulary ({})", cfg.vocab_size)));
            }
            let start = s.cache.reserve(s.tokens.len());
            rows.first_rows.push(rows.positions.len());
            rows.starts.push(start);
            rows.positions.extend(start..end);
        }
        Ok(rows)
    }

    /// The token embeddings of every row (scaled by `√d` where the architecture does: HF Gemma's factor, rounded
    /// to the weights' dtype, f32 here).
    fn embed(&self, chunks: &[Chunk<'_>], t: usize) -> Vec<f32> {
        let d = self.config.hidden_size;
        let mut x = vec![0f32; t * d];
        let ids = chunks.iter().flat_map(|s| s.tokens.iter().copied());
        for (row, id) in x.chunks_mut(d).zip(ids) {
            self.embed_tokens.row(id as usize, row);
        }
        if self.config.arch.scales_embedding() {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    /// `x += attention(norm(x))` for layer `li`: the new keys and values go to each chunk's cache.
    #[allow(clippy::too_many_arguments)]
    fn attention_block(
        &self,
        li: usize,
        layer: &Layer,
        chunks: &mut [Chunk<'_>],
        rows: &RowLayout,
        rope: &Rope,
        precision: Precision,
        x: &mut [f32],
        buf: &mut Buffers,
    ) {
        let cfg = &self.config;
        let (hd, heads, kvh) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let (qkv_w, t, eps) = (cfg.qkv_width(), rows.positions.len(), cfg.rms_norm_eps);
        let sliding = cfg.sliding_window.as_ref().filter(|sw| sw.layers[li]);
        let shape = AttnShape { heads, kv_heads: kvh, head_dim: hd, window: sliding.map(|sw| sw.window) };
        let angles = match (sliding, &rope.local) {
            (Some(_), Some(local)) => local,
            _ => &rope.global,
        };
        let qkv = &mut buf.qkv;
        ops::rms_norm(x, &layer.input_layernorm, eps, &mut buf.h);
        layer.qkv_proj.forward(&buf.h, t, precision, qkv);
        if let Some(b) = &layer.qkv_bias {
            qkv.chunks_mut(qkv_w).for_each(|row| ops::add_assign(row, b));
        }
        if let Some(n) = &layer.qk_norm {
            n.apply(qkv, qkv_w, heads, kvh, eps);
        }
        ops::rope(qkv, qkv_w, heads + kvh, angles, self.inv_freq.len());
        // The kernels scale scores by head_dim^-1/2; a model asking for query_pre_attn_scalar^-1/2 instead gets its
        // queries multiplied by the ratio first.
        if let Some(c) = cfg.query_pre_attn_scalar.map(|s| (hd as f32).sqrt() / s.sqrt()).filter(|&c| c != 1.0) {
            qkv.par_chunks_mut(qkv_w).for_each(|row| row[..heads * hd].iter_mut().for_each(|v| *v *= c));
        }
        // Each chunk writes its own cache: in parallel (the transposed key writes touch a cache line per
        // dimension, a few percent of decode at B = 64 when done by one thread).
        let qkv = &*qkv;
        let write = |(s, (&first, &start)): (&mut Chunk<'_>, (&usize, &usize))| {
            for i in 0..s.tokens.len() {
                let r = &qkv[(first + i) * qkv_w..(first + i + 1) * qkv_w];
                let (k, v) = r[heads * hd..].split_at(kvh * hd);
                s.cache.write(li, start + i, k, v);
            }
        };
        chunks.par_iter_mut().zip(rows.first_rows.par_iter().zip(&rows.starts)).for_each(write);
        let seqs: Vec<AttnSeq> = chunks
            .iter()
            .zip(rows.first_rows.iter().zip(&rows.starts))
            .map(|(s, (&first_row, &start_pos))| AttnSeq {
                cache: &*s.cache,
                first_row,
                rows: s.tokens.len(),
                start_pos,
            })
            .collect();
        attention(li, qkv, qkv_w, &seqs, shape, &mut buf.attn);
        layer.o_proj.forward(&buf.attn, t, precision, &mut buf.proj);
        self.residual(layer.sandwich.as_ref().map(|n| &n.after_attention[..]), x, buf);
    }

    /// `x += mlp(norm(x))`: gated activation (SwiGLU or GeGLU) between the fused gate/up and the down projection.
    fn mlp_block(&self, layer: &Layer, precision: Precision, x: &mut [f32], buf: &mut Buffers) {
        let cfg = &self.config;
        let (f, t) = (cfg.intermediate_size, x.len() / cfg.hidden_size);
        ops::rms_norm(x, &layer.post_attention_layernorm, cfg.rms_norm_eps, &mut buf.h);
        layer.gate_up_proj.forward(&buf.h, t, precision, &mut buf.gate_up);
        ops::gated(cfg.hidden_act, &buf.gate_up, f, &mut buf.act);
        layer.down_proj.forward(&buf.act, t, precision, &mut buf.proj);
        self.residual(layer.sandwich.as_ref().map(|n| &n.after_mlp[..]), x, buf);
    }

    /// `x += proj`, the block output normalised first where the architecture has sandwich norms (Gemma).
    fn residual(&self, after: Option<&[f32]>, x: &mut [f32], buf: &mut Buffers) {
        if let Some(w) = after {
            ops::rms_norm(&buf.proj, w, self.config.rms_norm_eps, &mut buf.h);
            std::mem::swap(&mut buf.proj, &mut buf.h);
        }
        ops::add_assign(x, &buf.proj);
    }

    /// Final norm and LM head on the rows whose logits were asked for.
    fn head(&self, chunks: &[Chunk<'_>], x: &[f32], precision: Precision) -> Result<Logits> {
        let d = self.config.hidden_size;
        let (picked, spans) = logit_rows(chunks);
        let mut sel = vec![0f32; picked.len() * d];
        for (dst, &r) in sel.chunks_mut(d).zip(&picked) {
            dst.copy_from_slice(&x[r * d..(r + 1) * d]);
        }
        let mut normed = vec![0f32; sel.len()];
        ops::rms_norm(&sel, &self.norm, self.config.rms_norm_eps, &mut normed);
        let vocab = self.config.vocab_size;
        let mut values = vec![0f32; picked.len() * vocab];
        if !picked.is_empty() {
            self.lm_head().forward(&normed, picked.len(), precision, &mut values);
        }
        Ok(Logits { values, vocab, spans })
    }
}

/// The rows of a batched forward whose logits are returned ([`Chunk::logits`]), and each chunk's span of them
/// (first index into the returned rows, count).
pub(crate) fn logit_rows(chunks: &[Chunk<'_>]) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut picked = Vec::new();
    let mut spans = Vec::with_capacity(chunks.len());
    let mut row = 0;
    for s in chunks {
        let n = s.tokens.len();
        let range = match s.logits {
            LogitRows::None => 0..0,
            LogitRows::Last => n.saturating_sub(1)..n,
            LogitRows::From(k) => k.min(n)..n,
        };
        spans.push((picked.len(), range.len()));
        picked.extend(range.map(|i| row + i));
        row += n;
    }
    (picked, spans)
}

/// Where the rows of a batched forward come from: each row's position, and per chunk its first cache position and
/// its first row.
#[derive(Default)]
pub(crate) struct RowLayout {
    pub(crate) positions: Vec<usize>,
    pub(crate) starts: Vec<usize>,
    pub(crate) first_rows: Vec<usize>,
}

/// Rotary tables of a forward's rows: the global one, and the sliding layers' own where their base differs.
struct Rope {
    global: Vec<f32>,
    local: Option<Vec<f32>>,
}

/// Activation buffers of one forward, reused by every layer.
struct Buffers {
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

impl Buffers {
    fn new(cfg: &ModelConfig, t: usize) -> Self {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        Buffers {
            h: vec![0f32; t * d],
            qkv: vec![0f32; t * cfg.qkv_width()],
            attn: vec![0f32; t * cfg.num_heads * cfg.head_dim],
            proj: vec![0f32; t * d],
            gate_up: vec![0f32; t * 2 * f],
            act: vec![0f32; t * f],
        }
    }
}
