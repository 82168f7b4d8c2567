//! Causal attention of new query rows over the paged KV cache, reading each block where it lies (no gather into a
//! contiguous copy per sequence). One task per query row; inside it the query heads that share a KV head (GQA) are
//! scored against each key together, so a key is loaded once per group.

use std::cell::RefCell;

use rayon::prelude::*;

use super::ops::dot;
use crate::kv::KvCache;

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
pub fn attention(
    layer: usize,
    q: &[f32],
    q_stride: usize,
    seqs: &[AttnSeq],
    shape: AttnShape,
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
    } = shape;
    let width = heads * hd;
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // Row → (sequence, position).
    let mut owner = Vec::with_capacity(out.len() / width);
    for s in seqs {
        for r in 0..s.rows {
            owner.push((s, s.start_pos + r));
        }
    }
    out.par_chunks_mut(width)
        .zip(q.par_chunks(q_stride))
        .zip(owner.par_iter())
        .for_each(|((o, qr), (seq, pos))| {
            SCORES.with(|buf| {
                let mut scores = buf.borrow_mut();
                let n_keys = pos + 1;
                scores.clear();
                scores.resize(group * n_keys, 0.0);
                let cache = seq.cache;
                let bt = cache.block_tokens();
                for g in 0..kv_heads {
                    // 1. Scores of the group's heads against every key 0..=pos.
                    for (b, block) in cache.blocks().iter().enumerate().take(n_keys.div_ceil(bt)) {
                        let keys = block.keys(layer, g);
                        let first = b * bt;
                        for t in 0..bt.min(n_keys - first) {
                            let key = &keys[t * hd..(t + 1) * hd];
                            for h in 0..group {
                                let qh = &qr[(g * group + h) * hd..(g * group + h + 1) * hd];
                                scores[h * n_keys + first + t] = dot(qh, key) * scale;
                            }
                        }
                    }
                    // 2. Softmax per head.
                    for h in 0..group {
                        let s = &mut scores[h * n_keys..(h + 1) * n_keys];
                        let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                        let mut sum = 0f32;
                        for v in s.iter_mut() {
                            *v = (*v - max).exp();
                            sum += *v;
                        }
                        let inv = 1.0 / sum;
                        for v in s.iter_mut() {
                            *v *= inv;
                        }
                    }
                    // 3. Weighted sum of values.
                    for h in 0..group {
                        o[(g * group + h) * hd..(g * group + h + 1) * hd].fill(0.0);
                    }
                    for (b, block) in cache.blocks().iter().enumerate().take(n_keys.div_ceil(bt)) {
                        let values = block.values(layer, g);
                        let first = b * bt;
                        for t in 0..bt.min(n_keys - first) {
                            let v = &values[t * hd..(t + 1) * hd];
                            for h in 0..group {
                                let w = scores[h * n_keys + first + t];
                                let oh = &mut o[(g * group + h) * hd..(g * group + h + 1) * hd];
                                for (a, &x) in oh.iter_mut().zip(v) {
                                    *a += w * x;
                                }
                            }
                        }
                    }
                }
            });
        });
}
