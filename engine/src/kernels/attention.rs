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

/// One query row's heads of KV group `g` against keys `0..=pos` (`out` is that group's slice of the row). Plain loops over 16-lane arrays, vectorised by the
/// caller's target features; the same operations in the same order on every ISA.
#[inline(always)]
fn row(a: &RowArgs<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    const L: usize = BLOCK_TOKENS;
    let AttnShape { heads, kv_heads, head_dim: hd } = a.shape;
    debug_assert!(a.g < kv_heads);
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_keys = a.pos + 1;
    let nb = n_keys.div_ceil(L);
    let stride = nb * L;
    scores.clear();
    scores.resize(group * stride, 0.0);
    let blocks = &a.cache.blocks()[..nb];
    let g = a.g;
    {
        // 1. Scores: for each block, 16 keys at once per head.
        for (b, block) in blocks.iter().enumerate() {
            let kt = block.keys_t(a.layer, g);
            for h in 0..group {
                let qh = &a.q[(g * group + h) * hd..(g * group + h + 1) * hd];
                let mut acc = [0f32; L];
                for (d, &qv) in qh.iter().enumerate() {
                    let krow = &kt[d * L..(d + 1) * L];
                    for l in 0..L {
                        acc[l] = qv.mul_add(krow[l], acc[l]);
                    }
                }
                let dst = &mut scores[h * stride + b * L..h * stride + (b + 1) * L];
                for l in 0..L {
                    dst[l] = acc[l] * scale;
                }
            }
        }
        // 2. Softmax over the valid keys of each head.
        for h in 0..group {
            let s = &mut scores[h * stride..h * stride + n_keys];
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
            let total = lanes.iter().sum::<f32>() + sum;
            let inv = 1.0 / total;
            for v in s.iter_mut() {
                *v *= inv;
            }
        }
        // 3. Weighted sum of values.
        let o = out;
        o.fill(0.0);
        for (b, block) in blocks.iter().enumerate() {
            let values = block.values(a.layer, g);
            for t in 0..L.min(n_keys - b * L) {
                let v = &values[t * hd..(t + 1) * hd];
                for h in 0..group {
                    let w = scores[h * stride + b * L + t];
                    let oh = &mut o[h * hd..(h + 1) * hd];
                    for (x, &y) in oh.iter_mut().zip(v) {
                        *x = w.mul_add(y, *x);
                    }
                }
            }
        }
    }
}
