//! The engine's architecture on candle's CUDA backend (cargo feature `cuda`): the same llama-family model
//! ([`Model`]'s weights, uploaded once) run with candle tensors on a GPU, in f32 or bf16.
//!
//! Layout: a [`GpuBatch`] holds the KV of `B` sequences as one tensor per layer and side, `[B, kv_heads, cap,
//! head_dim]`, left-padded — row `b`'s real tokens occupy columns `pad[b]..len`, so a ragged batch of prompts
//! decodes in lockstep with one forward per step. [`GpuBatch::fork`] selects (and repeats) rows with an
//! `index_select`, a device copy: a forked branch never aliases its parent's storage, and its prefix is never
//! recomputed. Sampling draws on the device (Gumbel-max over `logits / T`), so only `B` token ids cross back.
//!
//! Paper for the Gumbel-max trick: Gumbel (1954); see Maddison et al., "A* Sampling" (NeurIPS 2014), §2.

pub use candle_core::DType;
use candle_core::{Device, IndexOp, Tensor, D};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{qkv_split, Model, TokenId};

fn gpu(e: candle_core::Error) -> Error {
    Error::Request(format!("CUDA: {e}"))
}

struct GpuLayer {
    ln1: Tensor,
    qkv_t: Tensor,
    qkv_b: Option<Tensor>,
    o_t: Tensor,
    ln2: Tensor,
    gate_up_t: Tensor,
    down_t: Tensor,
}

/// A model's weights on a CUDA device.
pub struct GpuModel {
    device: Device,
    dtype: DType,
    cfg: ModelConfig,
    embed: Tensor,
    lm_head_t: Tensor,
    layers: Vec<GpuLayer>,
    norm: Tensor,
    inv_freq: Vec<f32>,
}

/// KV of a batch of sequences on the device (see the module docs).
pub struct GpuBatch {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Columns written so far (shared by every row).
    pub len: usize,
    /// Left padding of each row.
    pub pad: Vec<usize>,
    cap: usize,
}

impl GpuBatch {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.pad.len()
    }

    /// A new batch whose row `i` is a copy of row `rows[i]` of this one (repeats allowed): fork by copy.
    pub fn fork(&self, rows: &[usize]) -> Result<GpuBatch> {
        let device = self.k[0].device();
        let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), device).map_err(gpu)?;
        let sel = |t: &Tensor| t.index_select(&idx, 0);
        Ok(GpuBatch {
            k: self.k.iter().map(sel).collect::<candle_core::Result<_>>().map_err(gpu)?,
            v: self.v.iter().map(sel).collect::<candle_core::Result<_>>().map_err(gpu)?,
            len: self.len,
            pad: rows.iter().map(|&r| self.pad[r]).collect(),
            cap: self.cap,
        })
    }
}

impl GpuModel {
    /// Uploads `model`'s weights (dequantized to f32, then cast to `dtype`) to CUDA device `ordinal`.
    pub fn new(model: &Model, ordinal: usize, dtype: DType) -> Result<Self> {
        let cfg = model.config().clone();
        if cfg.arch.qk_norm() {
            return Err(Error::Request(format!(
                "{}: the CUDA backend has no per-head q/k norms yet; run this model on the CPU",
                cfg.arch.name()
            )));
        }
        let device = Device::new_cuda(ordinal).map_err(gpu)?;
        let up = |data: Vec<f32>, shape: &[usize]| -> Result<Tensor> {
            Tensor::from_vec(data, shape, &device).and_then(|t| t.to_dtype(dtype)).map_err(gpu)
        };
        // Weights are stored transposed (`in × out`, contiguous) so every projection is a plain `x · Wᵀ` gemm.
        let up_t = |lin: &crate::weights::Linear| -> Result<Tensor> {
            let t = up(lin.to_f32(), &[lin.rows(), lin.cols()])?;
            t.t().and_then(|t| t.contiguous()).map_err(gpu)
        };
        let d = cfg.hidden_size;
        let mut layers = Vec::with_capacity(model.layers().len());
        for l in model.layers() {
            layers.push(GpuLayer {
                ln1: up(l.input_layernorm.clone(), &[d])?,
                qkv_t: up_t(&l.qkv_proj)?,
                qkv_b: l.qkv_bias.as_ref().map(|b| up(b.clone(), &[b.len()])).transpose()?,
                o_t: up_t(&l.o_proj)?,
                ln2: up(l.post_attention_layernorm.clone(), &[d])?,
                gate_up_t: up_t(&l.gate_up_proj)?,
                down_t: up_t(&l.down_proj)?,
            });
        }
        let e = model.embed_tokens();
        Ok(GpuModel {
            embed: up(e.to_f32(), &[e.rows(), e.cols()])?,
            lm_head_t: up_t(model.lm_head())?,
            norm: up(model.norm().to_vec(), &[d])?,
            inv_freq: model.inv_freq().to_vec(),
            layers,
            device,
            dtype,
            cfg,
        })
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Waits for queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.device.synchronize().map_err(gpu)
    }

    /// An empty batch of `rows` sequences with room for `cap` columns.
    pub fn new_batch(&self, rows: usize, cap: usize) -> Result<GpuBatch> {
        let (kvh, hd) = (self.cfg.num_kv_heads, self.cfg.head_dim);
        let zeros = || Tensor::zeros((rows, kvh, cap, hd), self.dtype, &self.device);
        let n = self.cfg.num_layers;
        Ok(GpuBatch {
            k: (0..n).map(|_| zeros()).collect::<candle_core::Result<_>>().map_err(gpu)?,
            v: (0..n).map(|_| zeros()).collect::<candle_core::Result<_>>().map_err(gpu)?,
            len: 0,
            pad: vec![0; rows],
            cap,
        })
    }

    /// Prefills ragged `prompts` into a new left-padded batch with room for `extra` more columns; returns the
    /// batch and the last position's logits (`[B, vocab]`, f32, on the device).
    pub fn prefill(&self, prompts: &[Vec<TokenId>], extra: usize) -> Result<(GpuBatch, Tensor)> {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if width == 0 || prompts.iter().any(Vec::is_empty) {
            return Err(Error::Request("every prompt needs at least one token".into()));
        }
        let mut batch = self.new_batch(prompts.len(), width + extra)?;
        let mut ids = Vec::with_capacity(prompts.len() * width);
        for (b, p) in prompts.iter().enumerate() {
            batch.pad[b] = width - p.len();
            ids.extend(std::iter::repeat_n(0, width - p.len()));
            ids.extend_from_slice(p);
        }
        let logits = self.forward(&mut batch, &ids, width)?;
        Ok((batch, logits))
    }

    /// Runs `t` new columns (`ids`, row-major `[B, t]`) through the model, appending them to `batch`; returns the
    /// last column's logits (`[B, vocab]`, f32).
    pub fn forward(&self, batch: &mut GpuBatch, ids: &[TokenId], t: usize) -> Result<Tensor> {
        self.forward_inner(batch, ids, t).map_err(gpu)
    }

    fn forward_inner(&self, batch: &mut GpuBatch, ids: &[TokenId], t: usize) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let bsz = batch.rows();
        let (d, hd, heads, kvh) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let rep = heads / kvh;
        let [qw, kw, _] = qkv_split(cfg);
        let f = cfg.intermediate_size;
        let (start, end) = (batch.len, batch.len + t);
        if end > batch.cap {
            candle_core::bail!("batch capacity {} exceeded ({end} columns)", batch.cap);
        }
        if ids.len() != bsz * t {
            candle_core::bail!("{} ids for a {bsz}×{t} step", ids.len());
        }
        let dev = &self.device;
        // Rotary tables per (row, column) and the additive mask `[B, 1, 1, t, end]`.
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(bsz * t * half);
        let mut sin = Vec::with_capacity(bsz * t * half);
        let mut mask = Vec::with_capacity(bsz * t * end);
        for &pad in &batch.pad {
            for c in start..end {
                let pos = c.saturating_sub(pad) as f32;
                for &w in &self.inv_freq {
                    let a = pos * w;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
                for k in 0..end {
                    // Padding columns attend to themselves only (their outputs are never read).
                    let ok = if c < pad { k == c } else { k >= pad && k <= c };
                    mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let cos = Tensor::from_vec(cos, (bsz, t, half), dev)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (bsz, t, half), dev)?.to_dtype(self.dtype)?;
        let mask = Tensor::from_vec(mask, (bsz, 1, 1, t, end), dev)?.to_dtype(self.dtype)?;
        let ids = Tensor::from_vec(ids.to_vec(), bsz * t, dev)?;
        let mut x = self.embed.index_select(&ids, 0)?; // [B·t, d]
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &l.ln1, cfg.rms_norm_eps)?;
            let mut qkv = h.matmul(&l.qkv_t)?;
            if let Some(b) = &l.qkv_b {
                qkv = qkv.broadcast_add(b)?;
            }
            let heads_of = |off: usize, n: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, off, n * hd)?.reshape((bsz, t, n, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = candle_nn::rotary_emb::rope(&heads_of(0, heads)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&heads_of(qw, kvh)?, &cos, &sin)?;
            let v = heads_of(qw + kw, kvh)?;
            batch.k[li].slice_set(&k, 2, start)?;
            batch.v[li].slice_set(&v, 2, start)?;
            let keys = batch.k[li].narrow(2, 0, end)?.contiguous()?; // [B, kvh, end, hd]
            let values = batch.v[li].narrow(2, 0, end)?.contiguous()?;
            // Grouped-query attention: the `rep` query heads of a KV head form one [rep·t, hd] block.
            let q = q.reshape((bsz, kvh, rep * t, hd))?;
            let scores = (q.matmul(&keys.t()?)? * scale)?.reshape((bsz, kvh, rep, t, end))?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
            let out = probs.reshape((bsz, kvh, rep * t, end))?.matmul(&values)?; // [B, kvh, rep·t, hd]
            let out =
                out.reshape((bsz, heads, t, hd))?.transpose(1, 2)?.contiguous()?.reshape((bsz * t, heads * hd))?;
            x = (x + out.matmul(&l.o_t)?)?;
            let h = candle_nn::ops::rms_norm(&x, &l.ln2, cfg.rms_norm_eps)?;
            let gu = h.matmul(&l.gate_up_t)?;
            let act = (gu.narrow(1, 0, f)?.silu()? * gu.narrow(1, f, f)?)?;
            x = (x + act.matmul(&l.down_t)?)?;
        }
        batch.len = end;
        let last = x.reshape((bsz, t, d))?.i((.., t - 1, ..))?.contiguous()?;
        let normed = candle_nn::ops::rms_norm(&last, &self.norm, cfg.rms_norm_eps)?;
        normed.matmul(&self.lm_head_t)?.to_dtype(DType::F32)
    }

    /// Draws one token per row from `softmax(logits / temperature)` on the device (Gumbel-max); greedy when
    /// `temperature` is 0.
    pub fn sample(&self, logits: &Tensor, temperature: f64) -> Result<Vec<TokenId>> {
        let run = || -> candle_core::Result<Vec<TokenId>> {
            let scores = if temperature > 0.0 {
                let u = Tensor::rand(1e-20f32, 1f32, logits.shape(), &self.device)?;
                let gumbel = u.log()?.neg()?.log()?.neg()?;
                ((logits / temperature)? + gumbel)?
            } else {
                logits.clone()
            };
            scores.argmax(D::Minus1)?.to_vec1::<u32>()
        };
        run().map_err(gpu)
    }

    /// Seeds the device generator.
    pub fn set_seed(&self, seed: u64) -> Result<()> {
        self.device.set_seed(seed).map_err(gpu)
    }

    /// Copies logits back (`[B, vocab]` → rows).
    pub fn logits_to_host(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
        logits.to_vec2::<f32>().map_err(gpu)
    }
}

/// Decodes `steps` tokens for every row of `batch`, starting from `logits`; returns the tokens (row-major per step)
/// and the logits after the last one.
pub fn decode(
    model: &GpuModel,
    batch: &mut GpuBatch,
    mut logits: Tensor,
    steps: usize,
    temperature: f64,
) -> Result<(Vec<Vec<TokenId>>, Tensor)> {
    let mut out = vec![Vec::with_capacity(steps); batch.rows()];
    for _ in 0..steps {
        let next = model.sample(&logits, temperature)?;
        for (row, &t) in out.iter_mut().zip(&next) {
            row.push(t);
        }
        logits = model.forward(batch, &next, 1)?;
    }
    Ok((out, logits))
}

/// The tree workload of [`crate::bench::TreeShape`] on the GPU: every level's branches decode in lockstep in one
/// batch; children fork their parent's KV by device copy (no prefix is recomputed). Returns wall seconds and the
/// rows per forward at each level.
pub fn run_tree(
    model: &GpuModel,
    prompts: &[Vec<TokenId>],
    shape: crate::bench::TreeShape,
) -> Result<(f64, Vec<usize>)> {
    let b = shape.branch;
    let prompts = &prompts[..shape.prompts.min(prompts.len())];
    let extra = 2 * shape.child_tokens + shape.rollout_tokens + 1;
    model.set_seed(0)?;
    model.synchronize()?;
    let start = std::time::Instant::now();
    let (batch, logits) = model.prefill(prompts, extra)?;
    let repeat = |n: usize| -> Vec<usize> { (0..n).flat_map(|r| std::iter::repeat_n(r, b)).collect() };
    let idx = |rows: &[usize]| Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), model.device());
    let select = |logits: &Tensor, rows: &[usize]| -> Result<Tensor> {
        idx(rows).and_then(|i| logits.index_select(&i, 0)).map_err(gpu)
    };
    let rows1 = repeat(prompts.len());
    let mut children = batch.fork(&rows1)?;
    drop(batch);
    let (_, logits) = decode(model, &mut children, select(&logits, &rows1)?, shape.child_tokens, 1.0)?;
    let rows2 = repeat(children.rows());
    let mut grand = children.fork(&rows2)?;
    drop(children);
    let (_, logits) = decode(model, &mut grand, select(&logits, &rows2)?, shape.child_tokens, 1.0)?;
    let (_, _) = decode(model, &mut grand, logits, shape.rollout_tokens, 1.0)?;
    model.synchronize()?;
    Ok((start.elapsed().as_secs_f64(), vec![prompts.len(), rows1.len(), rows2.len(), rows2.len()]))
}

/// Largest |Δ| between the next-token log-softmax of the CPU engine's f32 path and this GPU model, at the last
/// position of each prompt (prompts prefilled together as one ragged batch on both sides).
pub fn max_logsoftmax_diff(cpu: &Model, model: &GpuModel, prompts: &[Vec<TokenId>]) -> Result<f64> {
    use crate::model::{Chunk, LogitRows};
    let mut caches: Vec<_> = prompts.iter().map(|_| cpu.new_cache()).collect();
    let mut chunks: Vec<_> =
        caches.iter_mut().zip(prompts).map(|(cache, p)| Chunk { cache, tokens: p, logits: LogitRows::Last }).collect();
    let want = cpu.forward(&mut chunks, crate::weights::Precision::F32)?;
    let (_, logits) = model.prefill(prompts, 0)?;
    let got = GpuModel::logits_to_host(&logits)?;
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z = row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        row.iter().map(|&x| x as f64 - z).collect()
    };
    let mut worst = 0f64;
    for (s, g) in got.iter().enumerate() {
        let (a, b) = (log_softmax(want.row(s, 0)), log_softmax(g));
        worst = a.iter().zip(&b).fold(worst, |w, (x, y)| w.max((x - y).abs()));
    }
    Ok(worst)
}
