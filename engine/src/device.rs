//! The engine on a candle device: a GPU (`cuda`, a build with the `cuda` feature), or candle's CPU backend
//! (`cpu-candle`, which checks this path without a GPU). [`Model::on_device`](crate::Model::on_device) uploads the
//! weights once; from then on the model's [`forward`](crate::Model::forward) runs here, under the same scheduler
//! (continuous batching, radix prefix cache, budget, preemption) as the CPU engine.
//!
//! KV is *paged*: per layer one key and one value tensor of `slots × BLOCK_TOKENS` rows on the device, a sequence's
//! [`KvCache`](crate::KvCache) being its block table (its blocks' slots, [`crate::kv::SlotTable`]). A fork shares
//! slots; a write into a shared partial block first copies it to a fresh slot (copy-on-write, made here before the
//! step's writes); nothing is left-padded. Each step:
//!
//! 1. the host lays out the rows (the chunks' new tokens) and writes small index tensors: each row's token, position
//!    and KV slot row, each sequence's block table expanded to key rows;
//! 2. on the device: rotary angles from the positions, masks from positions (causal, and the sliding window where a
//!    layer has one), the new keys/values scattered into their slots, and attention per group of sequences with the
//!    same number of new rows (all decode rows form one group) over keys gathered through the block tables;
//! 3. only the requested logit rows come back.
//!
//! Attention is composed of candle ops (gather, batched matmul, softmax), not a fused paged-attention kernel: it
//! runs — and is tested — on every candle backend, CPU included; a fused kernel is the next step once GPU
//! measurements say where the time goes (BENCHMARKS.md).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

pub use candle_core::DType;
use candle_core::{Device, Tensor};

use crate::config::{Activation, ModelConfig};
use crate::error::{Error, Result};
use crate::kv::{SlotTable, BLOCK_TOKENS};
use crate::model::{logit_rows, qkv_split, Chunk, LogitRows, Logits, Model, RowLayout, TokenId};

/// Largest |Δ| of next-token log-probs, over the whole vocabulary, between the device in f32 and the CPU engine in
/// f32 that the parity check accepts (the bound).
pub const F32_LOGPROB_BOUND: f64 = 1e-3;
/// The bf16 bound, over the likely tokens ([`LogprobDiff::likely`]): bf16 keeps 8 bits of mantissa in weights,
/// activations and KV. transformers' own bf16 forward differs from its f32 one by 0.40 (likely tokens; 0.72 over
/// the vocabulary) on the default model and the prompts of `tests/reference/bf16_transformers.py`, where this
/// engine's bf16 differs by 0.38 (0.60).
pub const BF16_LOGPROB_BOUND: f64 = 0.5;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// The CPU engine: quantized kernels, the default.
    #[default]
    Cpu,
    /// This module's engine on candle's CPU backend: the device path checked without a GPU (slow).
    CpuCandle,
    /// CUDA device `N` (a build with the `cuda` feature).
    Cuda(usize),
}

impl FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Placement::Cpu),
            "cpu-candle" => Ok(Placement::CpuCandle),
            "cuda" => Ok(Placement::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Placement::Cuda(n)),
                _ => Err(format!("`{s}` is not a device: use cpu, cuda, cuda:N (N = 0, 1, …) or cpu-candle")),
            },
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Cpu => write!(f, "cpu"),
            Placement::CpuCandle => write!(f, "cpu-candle"),
            Placement::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Placement {
    /// The candle device (`None` for the CPU engine). A build without the `cuda` feature refuses `cuda` here.
    pub fn device(self) -> Result<Option<Device>> {
        match self {
            Placement::Cpu => Ok(None),
            Placement::CpuCandle => Ok(Some(Device::Cpu)),
            Placement::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Request(
                        "this orchard was built without CUDA support: rebuild with `cargo build --release --features \
                         cuda` (see README, GPU)"
                            .into(),
                    ));
                }
                Device::new_cuda(n).map(Some).map_err(|e| Error::Request(format!("cuda:{n}: {e}")))
            }
        }
    }
}

fn dev_err(e: candle_core::Error) -> Error {
    Error::Request(format!("device: {e}"))
}

struct DeviceLayer {
    ln1: Tensor,
    qkv_t: Tensor,
    qkv_b: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o_t: Tensor,
    ln2: Tensor,
    gate_up_t: Tensor,
    down_t: Tensor,
    after_attention: Option<Tensor>,
    after_mlp: Option<Tensor>,
}

/// The device's KV: per layer, keys and values of `slots × BLOCK_TOKENS` positions (`[rows, kv_heads·head_dim]`).
struct DeviceKv {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    slots: usize,
}

/// A model's weights and paged KV on a candle device (see the module docs).
pub struct DeviceModel {
    placement: Placement,
    device: Device,
    dtype: DType,
    cfg: ModelConfig,
    embed: Tensor,
    lm_head_t: Tensor,
    norm: Tensor,
    inv_freq: Tensor,
    local_inv_freq: Option<Tensor>,
    layers: Vec<DeviceLayer>,
    slots: Arc<SlotTable>,
    kv: Mutex<DeviceKv>,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceModel").field("device", &self.device).field("dtype", &self.dtype).finish()
    }
}

/// One group of sequences attended together: the same number of new rows each.
struct Group {
    /// Rows of the group's queries, sequence by sequence (`[seqs·n]`).
    q_rows: Tensor,
    /// Key rows of the KV tensors through the sequences' block tables (`[seqs·keys]`, padded with row 0).
    key_rows: Tensor,
    /// Additive masks `[seqs, 1, 1, n, keys]`: causal, and causal within the sliding window.
    mask: Tensor,
    local_mask: Option<Tensor>,
    seqs: usize,
    n: usize,
    keys: usize,
}

/// Everything index-shaped of one step, on the device.
struct StepIndex {
    ids: Tensor,
    /// `[rows, kv_heads·head_dim]`: each row's KV row, repeated across the width (for `scatter_set`).
    write: Tensor,
    cos: Tensor,
    sin: Tensor,
    local: Option<(Tensor, Tensor)>,
    groups: Vec<Group>,
    /// Rows of the groups' concatenated output, in the step's row order.
    unpermute: Tensor,
    /// Rows whose logits were asked for.
    picked: Tensor,
    picked_len: usize,
    spans: Vec<(usize, usize)>,
}

impl DeviceModel {
    /// Uploads `model`'s weights (dequantized to f32, then cast to `dtype`) to `placement`'s `device`.
    pub fn new(model: &Model, placement: Placement, device: Device, dtype: DType) -> Result<Self> {
        let cfg = model.config().clone();
        let up = |data: &[f32], shape: &[usize]| -> Result<Tensor> {
            Tensor::from_slice(data, shape, &device).and_then(|t| t.to_dtype(dtype)).map_err(dev_err)
        };
        // Projections are stored transposed (`in × out`, contiguous): every projection is a plain `x · Wᵀ` gemm.
        let up_t = |lin: &crate::weights::Linear| -> Result<Tensor> {
            let t = up(&lin.to_f32(), &[lin.rows(), lin.cols()])?;
            t.t().and_then(|t| t.contiguous()).map_err(dev_err)
        };
        let d = cfg.hidden_size;
        let hd = cfg.head_dim;
        let mut layers = Vec::with_capacity(model.layers().len());
        for l in model.layers() {
            layers.push(DeviceLayer {
                ln1: up(&l.input_layernorm, &[d])?,
                qkv_t: up_t(&l.qkv_proj)?,
                qkv_b: l.qkv_bias.as_ref().map(|b| up(b, &[b.len()])).transpose()?,
                q_norm: l.qk_norm.as_ref().map(|n| up(&n.q, &[hd])).transpose()?,
                k_norm: l.qk_norm.as_ref().map(|n| up(&n.k, &[hd])).transpose()?,
                o_t: up_t(&l.o_proj)?,
                ln2: up(&l.post_attention_layernorm, &[d])?,
                gate_up_t: up_t(&l.gate_up_proj)?,
                down_t: up_t(&l.down_proj)?,
                after_attention: l.sandwich.as_ref().map(|n| up(&n.after_attention, &[d])).transpose()?,
                after_mlp: l.sandwich.as_ref().map(|n| up(&n.after_mlp, &[d])).transpose()?,
            });
        }
        let f32_on = |v: &[f32]| Tensor::from_slice(v, v.len(), &device).map_err(dev_err);
        let e = model.embed_tokens();
        let width = cfg.num_kv_heads * hd;
        let block_bytes = cfg.num_layers * 2 * BLOCK_TOKENS * width * dtype.size_in_bytes();
        let empty = || Tensor::zeros((0, width), dtype, &device).map_err(dev_err);
        let kv = DeviceKv {
            k: (0..cfg.num_layers).map(|_| empty()).collect::<Result<_>>()?,
            v: (0..cfg.num_layers).map(|_| empty()).collect::<Result<_>>()?,
            slots: 0,
        };
        Ok(DeviceModel {
            embed: up(&e.to_f32(), &[e.rows(), e.cols()])?,
            lm_head_t: up_t(model.lm_head())?,
            norm: up(model.norm(), &[d])?,
            inv_freq: f32_on(model.inv_freq())?,
            local_inv_freq: model.local_inv_freq().map(f32_on).transpose()?,
            layers,
            slots: Arc::new(SlotTable::new(block_bytes)),
            kv: Mutex::new(kv),
            placement,
            device,
            dtype,
            cfg,
        })
    }

    /// Where this model runs.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The element type of weights, activations and KV.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The slot table of this model's paged KV.
    pub fn slot_table(&self) -> &Arc<SlotTable> {
        &self.slots
    }

    /// Width of one position's keys (or values) in one layer: `kv_heads · head_dim`.
    fn kv_width(&self) -> usize {
        self.cfg.num_kv_heads * self.cfg.head_dim
    }

    /// The index tensor `scatter_set` writes whole rows with: `rows[i]` repeated across the KV width.
    fn row_index(&self, rows: Vec<u32>) -> candle_core::Result<Tensor> {
        let n = rows.len();
        Tensor::from_vec(rows, (n, 1), &self.device)?.broadcast_as((n, self.kv_width()))?.contiguous()
    }

    fn kv(&self) -> std::sync::MutexGuard<'_, DeviceKv> {
        // Every update of the KV tensors replaces them whole or writes rows in place: a poisoned lock is usable.
        self.kv.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The batched forward of [`Model::forward`] on the device: the chunks' caches already reserve the rows of
    /// `rows`.
    pub(crate) fn forward(&self, chunks: &[Chunk<'_>], rows: &RowLayout) -> Result<Logits> {
        let vocab = self.cfg.vocab_size;
        if rows.positions.is_empty() {
            return Ok(Logits { values: Vec::new(), vocab, spans: vec![(0, 0); chunks.len()] });
        }
        let mut kv = self.kv();
        self.prepare_kv(&mut kv).map_err(dev_err)?;
        let index = self.index(chunks, rows).map_err(dev_err)?;
        let logits = self.run(&kv, &index, rows.positions.len()).map_err(dev_err)?;
        let values = logits.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(dev_err)?;
        Ok(Logits { values, vocab, spans: index.spans })
    }

    /// Grows the KV tensors to the slot table's high-water mark and makes the copy-on-write copies recorded since
    /// the last step, in order.
    fn prepare_kv(&self, kv: &mut DeviceKv) -> candle_core::Result<()> {
        let need = self.slots.high_water();
        if need > kv.slots {
            let slots = need.max(kv.slots * 2).max(64);
            for t in kv.k.iter_mut().chain(kv.v.iter_mut()) {
                let grown = Tensor::zeros((slots * BLOCK_TOKENS, self.kv_width()), self.dtype, &self.device)?;
                grown.slice_set(t, 0, 0)?;
                *t = grown;
            }
            kv.slots = slots;
        }
        // Copies in waves: a wave reads no slot an earlier copy of it writes, nor writes one it reads.
        let copies = self.slots.take_copies();
        let mut wave: Vec<(u32, u32)> = Vec::new();
        for (from, to) in copies {
            if wave.iter().any(|&(f, t)| t == from || f == to || t == to) {
                self.copy_wave(kv, &std::mem::take(&mut wave))?;
            }
            wave.push((from, to));
        }
        self.copy_wave(kv, &wave)
    }

    fn copy_wave(&self, kv: &DeviceKv, wave: &[(u32, u32)]) -> candle_core::Result<()> {
        if wave.is_empty() {
            return Ok(());
        }
        let bt = BLOCK_TOKENS as u32;
        let src: Vec<u32> = wave.iter().flat_map(|&(f, _)| (0..bt).map(move |t| f * bt + t)).collect();
        let dst: Vec<u32> = wave.iter().flat_map(|&(_, to)| (0..bt).map(move |t| to * bt + t)).collect();
        let n = src.len();
        let src = Tensor::from_vec(src, n, &self.device)?;
        let dst = self.row_index(dst)?;
        for t in kv.k.iter().chain(&kv.v) {
            let rows = t.index_select(&src, 0)?;
            t.scatter_set(&dst, &rows, 0)?;
        }
        Ok(())
    }

    /// Lays out one step's indices and masks (host arithmetic, then small uploads).
    fn index(&self, chunks: &[Chunk<'_>], layout: &RowLayout) -> candle_core::Result<StepIndex> {
        let dev = &self.device;
        let (starts, first_rows) = (&layout.starts, &layout.first_rows);
        let bt = BLOCK_TOKENS;
        let tables: Vec<Vec<u32>> = chunks.iter().map(|c| c.cache.block_table()).collect();
        let kv_row = |s: usize, pos: usize| tables[s][pos / bt] * bt as u32 + (pos % bt) as u32;
        let ids: Vec<TokenId> = chunks.iter().flat_map(|c| c.tokens.iter().copied()).collect();
        let write = (0..chunks.len()).flat_map(|s| (0..chunks[s].tokens.len()).map(move |j| (s, starts[s] + j)));
        let write = self.row_index(write.map(|(s, pos)| kv_row(s, pos)).collect())?;
        let rows = ids.len();
        let ids = Tensor::from_vec(ids, rows, dev)?;
        let positions = layout.positions.iter().map(|&p| p as f32).collect();
        let pos = Tensor::from_vec(positions, (rows, 1), dev)?;
        let angles = |inv: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
            let a = pos.broadcast_mul(&inv.unsqueeze(0)?)?;
            Ok((a.cos()?.to_dtype(self.dtype)?, a.sin()?.to_dtype(self.dtype)?))
        };
        let (cos, sin) = angles(&self.inv_freq)?;
        let local = self.local_inv_freq.as_ref().map(angles).transpose()?;
        // Groups: sequences with the same number of new rows (every decode row lands in one group).
        let mut by_rows: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (s, c) in chunks.iter().enumerate() {
            if !c.tokens.is_empty() {
                by_rows.entry(c.tokens.len()).or_default().push(s);
            }
        }
        let mut groups = Vec::with_capacity(by_rows.len());
        let mut order: Vec<u32> = Vec::with_capacity(rows);
        for (&n, seqs) in &by_rows {
            let q_rows: Vec<u32> = seqs.iter().flat_map(|&s| (0..n).map(move |j| (first_rows[s] + j) as u32)).collect();
            order.extend_from_slice(&q_rows);
            groups.push(self.group(seqs, n, q_rows, starts, &kv_row)?);
        }
        let mut unpermute = vec![0u32; rows];
        for (k, &r) in order.iter().enumerate() {
            unpermute[r as usize] = k as u32;
        }
        let (picked, spans) = logit_rows(chunks);
        let picked: Vec<u32> = picked.into_iter().map(|r| r as u32).collect();
        let picked_len = picked.len();
        Ok(StepIndex {
            ids,
            write,
            cos,
            sin,
            local,
            groups,
            unpermute: Tensor::from_vec(unpermute, rows, dev)?,
            picked: Tensor::from_vec(picked, picked_len, dev)?,
            picked_len,
            spans,
        })
    }

    /// One attention group: `seqs` (chunk indices), `n` new rows each, their query rows; keys through the block
    /// tables (`kv_row(s, pos)`) and the masks, on the device.
    fn group(
        &self,
        seqs: &[usize],
        n: usize,
        q_rows: Vec<u32>,
        starts: &[usize],
        kv_row: &dyn Fn(usize, usize) -> u32,
    ) -> candle_core::Result<Group> {
        let dev = &self.device;
        let keys = seqs.iter().map(|&s| starts[s] + n).max().unwrap_or(0);
        let mut key_rows = Vec::with_capacity(seqs.len() * keys);
        let mut qpos = Vec::with_capacity(seqs.len() * n);
        for &s in seqs {
            qpos.extend((0..n).map(|j| (starts[s] + j) as f32));
            let len = starts[s] + n;
            key_rows.extend((0..keys).map(|p| if p < len { kv_row(s, p) } else { 0 }));
        }
        let m = seqs.len();
        let qpos = Tensor::from_vec(qpos, (m, 1, 1, n, 1), dev)?;
        let kpos = Tensor::arange(0u32, keys as u32, dev)?.to_dtype(DType::F32)?.reshape((1, 1, 1, 1, keys))?;
        let zero = Tensor::zeros((m, 1, 1, n, keys), self.dtype, dev)?;
        let ninf = Tensor::full(f32::NEG_INFINITY, (m, 1, 1, n, keys), dev)?.to_dtype(self.dtype)?;
        // A key at position p is visible from a query at q when p ≤ q (and q − p < window on sliding layers);
        // padded key rows lie past every query of their sequence.
        let causal = kpos.broadcast_le(&qpos)?;
        let mask = causal.where_cond(&zero, &ninf)?;
        let local_mask = match self.cfg.sliding_window.as_ref().map(|sw| sw.window) {
            Some(w) => {
                let inside = kpos.broadcast_gt(&(&qpos - w as f64)?)?;
                let both = (causal.to_dtype(DType::U8)? * inside.to_dtype(DType::U8)?)?;
                Some(both.where_cond(&zero, &ninf)?)
            }
            None => None,
        };
        Ok(Group {
            q_rows: Tensor::from_vec(q_rows, m * n, dev)?,
            key_rows: Tensor::from_vec(key_rows, m * keys, dev)?,
            mask,
            local_mask,
            seqs: m,
            n,
            keys,
        })
    }

    /// The decoder over one step's rows; the picked rows' logits (`[picked, vocab]`, f32).
    fn run(&self, kv: &DeviceKv, ix: &StepIndex, rows: usize) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (hd, heads, kvh, eps) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.rms_norm_eps);
        let rep = heads / kvh;
        let [qw, kw, _] = qkv_split(cfg);
        let f = cfg.intermediate_size;
        let mut x = self.embed.index_select(&ix.ids, 0)?;
        if cfg.arch.scales_embedding() {
            // HF Gemma multiplies by √d rounded to the weights' dtype.
            let scale = Tensor::new((cfg.hidden_size as f32).sqrt(), &self.device)?.to_dtype(self.dtype)?;
            x = x.broadcast_mul(&scale)?;
        }
        let scale = 1.0 / cfg.query_pre_attn_scalar.map_or((hd as f64).sqrt(), |s| (s as f64).sqrt());
        for (li, l) in self.layers.iter().enumerate() {
            let sliding = cfg.sliding_window.as_ref().is_some_and(|sw| sw.layers[li]);
            let h = candle_nn::ops::rms_norm(&x, &l.ln1, eps)?;
            let mut qkv = h.matmul(&l.qkv_t)?;
            if let Some(b) = &l.qkv_b {
                qkv = qkv.broadcast_add(b)?;
            }
            let mut q = qkv.narrow(1, 0, qw)?.reshape((rows, heads, hd))?;
            let mut k = qkv.narrow(1, qw, kw)?.reshape((rows, kvh, hd))?;
            let v = qkv.narrow(1, qw + kw, kw)?.contiguous()?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, qn, eps)?;
                k = candle_nn::ops::rms_norm(&k.contiguous()?, kn, eps)?;
            }
            let (cos, sin) = match (&ix.local, sliding) {
                (Some((c, s)), true) => (c, s),
                _ => (&ix.cos, &ix.sin),
            };
            let q = candle_nn::rotary_emb::rope_thd(&q.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_thd(&k.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)?;
            kv.k[li].scatter_set(&ix.write, &k.reshape((rows, kw))?, 0)?;
            kv.v[li].scatter_set(&ix.write, &v, 0)?;
            let q = q.reshape((rows, heads * hd))?;
            let mut outs = Vec::with_capacity(ix.groups.len());
            for g in &ix.groups {
                let (m, n, keys) = (g.seqs, g.n, g.keys);
                // Query head h reads KV head h / rep: the rep query heads of a KV head form one [rep·n, hd] block.
                let qg = q.index_select(&g.q_rows, 0)?.reshape((m, n, kvh, rep, hd))?.permute((0, 2, 3, 1, 4))?;
                let qg = qg.contiguous()?.reshape((m, kvh, rep * n, hd))?;
                let gather = |t: &Tensor| -> candle_core::Result<Tensor> {
                    t.index_select(&g.key_rows, 0)?.reshape((m, keys, kvh, hd))?.transpose(1, 2)?.contiguous()
                };
                let (keys_g, values_g) = (gather(&kv.k[li])?, gather(&kv.v[li])?);
                let scores = (qg.matmul(&keys_g.t()?)? * scale)?.reshape((m, kvh, rep, n, keys))?;
                let mask = match (&g.local_mask, sliding) {
                    (Some(lm), true) => lm,
                    _ => &g.mask,
                };
                let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
                let out = probs.reshape((m, kvh, rep * n, keys))?.matmul(&values_g)?;
                let out = out.reshape((m, kvh, rep, n, hd))?.permute((0, 3, 1, 2, 4))?.contiguous()?;
                outs.push(out.reshape((m * n, heads * hd))?);
            }
            let attn = Tensor::cat(&outs, 0)?.index_select(&ix.unpermute, 0)?;
            let proj = attn.matmul(&l.o_t)?;
            x = residual(&x, proj, l.after_attention.as_ref(), eps)?;
            let h = candle_nn::ops::rms_norm(&x, &l.ln2, eps)?;
            let gu = h.matmul(&l.gate_up_t)?;
            let gate = gu.narrow(1, 0, f)?;
            let gate = match cfg.hidden_act {
                Activation::Silu => gate.silu()?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let proj = (gate * gu.narrow(1, f, f)?)?.matmul(&l.down_t)?;
            x = residual(&x, proj, l.after_mlp.as_ref(), eps)?;
        }
        if ix.picked_len == 0 {
            return Tensor::zeros((0, cfg.vocab_size), DType::F32, &self.device);
        }
        let last = x.index_select(&ix.picked, 0)?;
        let normed = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        normed.matmul(&self.lm_head_t)?.to_dtype(DType::F32)
    }
}

/// `x + proj`, the block output normalised first where the architecture has sandwich norms (Gemma).
fn residual(x: &Tensor, proj: Tensor, after: Option<&Tensor>, eps: f32) -> candle_core::Result<Tensor> {
    let proj = match after {
        Some(w) => candle_nn::ops::rms_norm(&proj, w, eps)?,
        None => proj,
    };
    x + proj
}

/// How far a device's next-token log-probs are from the CPU engine's (f32) on the same prompts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogprobDiff {
    /// Largest |Δ| over the whole vocabulary.
    pub all: f64,
    /// Largest |Δ| over the tokens the CPU engine gives a log-prob of at least [`LIKELY_LOGPROB`] (those a
    /// sampler can draw; far-tail tokens of log-prob −30 carry bf16's relative error in absolute terms).
    pub likely: f64,
}

/// See [`LogprobDiff::likely`].
pub const LIKELY_LOGPROB: f64 = -10.0;

impl LogprobDiff {
    /// Whether the gap is within the parity check's bound for `dtype`: [`F32_LOGPROB_BOUND`] over the vocabulary in
    /// f32, [`BF16_LOGPROB_BOUND`] over the likely tokens otherwise.
    pub fn within_bound(&self, dtype: DType) -> bool {
        match dtype {
            DType::F32 => self.all <= F32_LOGPROB_BOUND,
            _ => self.likely <= BF16_LOGPROB_BOUND,
        }
    }
}

/// [`LogprobDiff`] of `dev` (a model on a device) against `cpu` (the CPU engine, f32) at the last position of each
/// prompt, all prompts in one ragged batch on both sides.
pub fn logprob_diff(cpu: &Model, dev: &Model, prompts: &[Vec<TokenId>]) -> Result<LogprobDiff> {
    let last = |m: &Model| -> Result<Logits> {
        let mut caches: Vec<_> = prompts.iter().map(|_| m.new_cache()).collect();
        let mut chunks: Vec<_> = caches
            .iter_mut()
            .zip(prompts)
            .map(|(cache, p)| Chunk { cache, tokens: p, logits: LogitRows::Last })
            .collect();
        m.forward(&mut chunks, crate::Precision::F32)
    };
    let (want, got) = (last(cpu)?, last(dev)?);
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z = row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        row.iter().map(|&x| x as f64 - z).collect()
    };
    let mut diff = LogprobDiff { all: 0.0, likely: 0.0 };
    for s in 0..prompts.len() {
        for (x, y) in log_softmax(want.row(s, 0)).into_iter().zip(log_softmax(got.row(s, 0))) {
            let d = (x - y).abs();
            diff.all = diff.all.max(d);
            if x >= LIKELY_LOGPROB {
                diff.likely = diff.likely.max(d);
            }
        }
    }
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse_and_print() {
        for (s, p) in [
            ("cpu", Placement::Cpu),
            ("cuda", Placement::Cuda(0)),
            ("cuda:3", Placement::Cuda(3)),
            ("cpu-candle", Placement::CpuCandle),
        ] {
            assert_eq!(s.parse::<Placement>(), Ok(p));
        }
        assert_eq!(Placement::Cuda(0).to_string(), "cuda:0");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<Placement>().unwrap_err();
            assert!(e.contains("is not a device"), "{e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_refused_clearly() {
        let e = Placement::Cuda(0).device().unwrap_err().to_string();
        assert!(e.contains("built without CUDA") && e.contains("--features cuda"), "{e}");
    }
}
