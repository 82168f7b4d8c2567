//! Causal attention of new query rows over the paged KV cache, reading each block where it lies (no gather into a
//! contiguous copy per sequence). One task per query row; inside it the query heads that share a KV head (GQA) are
//! scored against each block together. Keys are stored transposed per block (`head_dim × 16`), so the scores of
//! 16 keys are one vector accumulated over the head dimension — no horizontal sums, no tiny gemm per head.

use std::cell::RefCell;

use rayon::prelude::*;

use super::ops::exp;
use super::{isa, Isa};
use crate::kv::{KvCache, BLOCK_TOKENS};

/// The query rows of one sequence in a packed batch.
#[derive(Debug, Clone, Copy)]
pub struct AttnSeq<'a> {
    /// The sequence's cache, already holding this layer's keys/values for the new rows.
    pub cache: &'a KvCache,
    /// Index of the sequence's first new row in the packed batch.
    pub first_row: usize,
    /// Number of new rows.
    pub rows: usize,
    /// Position of the first new row.
    pub start_pos: usize,
}

/// Head counts and widths.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[row] = softmax(q·Kᵀ/√d) V` for every new row of every sequence, for one `layer`.
///
/// `q` holds `T` rows of `q_stride` floats whose first `heads·head_dim` are the (rotated) queries; `out` holds `T`
/// rows of `heads·head_dim`.
pub fn attention(layer: usize, q: &[f32], q_stride: usize, seqs: &[AttnSeq], shape: AttnShape, out: &mut [f32]) {
    let group_width = shape.heads / shape.kv_heads * shape.head_dim;
    let mut owner = Vec::with_capacity(out.len() / group_width);
    for s in seqs {
        for r in 0..s.rows {
            for g in 0..shape.kv_heads {
                owner.push((s.cache, s.first_row + r, s.start_pos + r, g));
            }
        }
    }
    let isa = isa();
    // One task per (row, KV head): a single decoding sequence still spreads over the cores.
    out.par_chunks_mut(group_width).zip(owner.par_iter()).for_each(|(o, &(cache, r, pos, g))| {
        SCORES.with(|buf| {
            let scores = &mut buf.borrow_mut();
            let args = RowArgs { layer, q: &q[r * q_stride..(r + 1) * q_stride], cache, pos, g, shape };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` only reports levels the CPU supports.
                Isa::Avx512 => unsafe { row_avx512(&args, scores, o) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { row_avx2(&args, scores, o) },
                _ => row(&args, scores, o),
            }
        })
    });
}

struct RowArgs<'a> {
    layer: usize,
    q: &'a [f32],
    cache: &'a KvCache,
    pos: usize,
    /// The KV head (query-head group) this task computes.
    g: usize,
    shape: AttnShape,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn row_avx512(a: &RowArgs<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    row(a, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(a: &RowArgs<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    row(a, scores, out)
}

/// One query row's heads of KV group `g` against keys `0..=pos` (`out` is that group's slice of the row).
///
/// Plain loops over fixed-size arrays with fused multiply-adds, vectorised by the caller's target features; the
/// same operations in the same order on every ISA (the portable tier computes `mul_add` exactly too, only slower).
/// Heads are processed in register-sized chunks with several independent accumulators, so the FMA latency is
/// hidden: scores keep four partial sums per head (dimensions mod 4), values keep each head's whole output.
#[inline(always)]
fn row(a: &RowArgs<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let AttnShape { heads, kv_heads, head_dim: hd } = a.shape;
    debug_assert!(a.g < kv_heads);
    let group = heads / kv_heads;
    let n_keys = a.pos + 1;
    let stride = n_keys.div_ceil(BLOCK_TOKENS) * BLOCK_TOKENS;
    scores.clear();
    scores.resize(group * stride, 0.0);
    out.fill(0.0);
    let mut h0 = 0;
    while h0 < group {
        let left = group - h0;
        match hd {
            64 => h0 += chunk::<64>(a, h0, left, scores, stride, out),
            128 => h0 += chunk::<128>(a, h0, left, scores, stride, out),
            _ => h0 += chunk_dyn(a, h0, scores, stride, out),
        }
    }
}

/// Heads `h0 ..` of the group (as many as fit the registers, at most `left`); returns how many were done.
#[inline(always)]
fn chunk<const HD: usize>(
    a: &RowArgs<'_>,
    h0: usize,
    left: usize,
    scores: &mut [f32],
    stride: usize,
    out: &mut [f32],
) -> usize {
    // Value accumulators: NH·HD floats must fit the register file (≤ 256 floats = 16 zmm).
    let cap = (256 / HD).max(1);
    match left.min(cap) {
        4 => heads::<HD, 4>(a, h0, scores, stride, out),
        3 => heads::<HD, 3>(a, h0, scores, stride, out),
        2 => heads::<HD, 2>(a, h0, scores, stride, out),
        _ => heads::<HD, 1>(a, h0, scores, stride, out),
    }
}

#[inline(always)]
fn heads<const HD: usize, const NH: usize>(
    a: &RowArgs<'_>,
    h0: usize,
    scores: &mut [f32],
    stride: usize,
    out: &mut [f32],
) -> usize {
    const L: usize = BLOCK_TOKENS;
    let group = a.shape.heads / a.shape.kv_heads;
    let scale = 1.0 / (HD as f32).sqrt();
    let n_keys = a.pos + 1;
    let blocks = &a.cache.blocks()[..n_keys.div_ceil(L)];
    let g = a.g;
    let mut q = [[0f32; HD]; NH];
    for (h, qh) in q.iter_mut().enumerate() {
        let at = (g * group + h0 + h) * HD;
        qh.copy_from_slice(&a.q[at..at + HD]);
    }
    // 1. Scores, 16 keys per vector: Σ_d q[d]·K[d][key] in four partial sums (d mod 4), independent FMA chains.
    for (b, block) in blocks.iter().enumerate() {
        let kt = block.keys_t(a.layer, g);
        for (h, qh) in q.iter().enumerate() {
            let mut acc = [[0f32; L]; 4];
            for d in (0..HD).step_by(4) {
                for (j, part) in acc.iter_mut().enumerate() {
                    let k: &[f32; L] = kt[(d + j) * L..(d + j + 1) * L].try_into().expect("a block row");
                    let qv = qh[d + j];
                    for l in 0..L {
                        part[l] = qv.mul_add(k[l], part[l]);
                    }
                }
            }
            let dst = &mut scores[(h0 + h) * stride + b * L..(h0 + h) * stride + (b + 1) * L];
            for l in 0..L {
                dst[l] = ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])) * scale;
            }
        }
    }
    // 2. Softmax over the valid keys of each head.
    for h in 0..NH {
        softmax(&mut scores[(h0 + h) * stride..(h0 + h) * stride + n_keys]);
    }
    // 3. Values: each head's output stays in registers while the keys stream by.
    let mut o = [[0f32; HD]; NH];
    for (b, block) in blocks.iter().enumerate() {
        let values = block.values(a.layer, g);
        for t in 0..L.min(n_keys - b * L) {
            let v: &[f32; HD] = values[t * HD..(t + 1) * HD].try_into().expect("a value row");
            for h in 0..NH {
                let w = scores[(h0 + h) * stride + b * L + t];
                for d in 0..HD {
                    o[h][d] = w.mul_add(v[d], o[h][d]);
                }
            }
        }
    }
    for (h, oh) in o.iter().enumerate() {
        out[(h0 + h) * HD..(h0 + h + 1) * HD].copy_from_slice(oh);
    }
    NH
}

/// Softmax in place, vectorisable with a fixed summation order.
#[inline(always)]
fn softmax(s: &mut [f32]) {
    const L: usize = BLOCK_TOKENS;
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut lanes = [0f32; L];
    let mut chunks = s.chunks_exact_mut(L);
    for c in &mut chunks {
        for l in 0..L {
            c[l] = exp(c[l] - max);
            lanes[l] += c[l];
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / (lanes.iter().sum::<f32>() + sum);
    for v in s.iter_mut() {
        *v *= inv;
    }
}

/// Any head width: one head at a time, same operation order as [`heads`].
fn chunk_dyn(a: &RowArgs<'_>, h: usize, scores: &mut [f32], stride: usize, out: &mut [f32]) -> usize {
    const L: usize = BLOCK_TOKENS;
    let hd = a.shape.head_dim;
    let group = a.shape.heads / a.shape.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_keys = a.pos + 1;
    let blocks = &a.cache.blocks()[..n_keys.div_ceil(L)];
    let qh = &a.q[(a.g * group + h) * hd..(a.g * group + h + 1) * hd];
    for (b, block) in blocks.iter().enumerate() {
        let kt = block.keys_t(a.layer, a.g);
        let mut acc = [[0f32; L]; 4];
        for d in 0..hd {
            let k = &kt[d * L..(d + 1) * L];
            for l in 0..L {
                acc[d % 4][l] = qh[d].mul_add(k[l], acc[d % 4][l]);
            }
        }
        for l in 0..L {
            scores[h * stride + b * L + l] = ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])) * scale;
        }
    }
    softmax(&mut scores[h * stride..h * stride + n_keys]);
    let oh = &mut out[h * hd..(h + 1) * hd];
    for (b, block) in blocks.iter().enumerate() {
        let values = block.values(a.layer, a.g);
        for t in 0..L.min(n_keys - b * L) {
            let w = scores[h * stride + b * L + t];
            for (x, &y) in oh.iter_mut().zip(&values[t * hd..(t + 1) * hd]) {
                *x = w.mul_add(y, *x);
            }
        }
    }
    1
}
