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
    /// Sliding window: a query at position `p` sees keys `p + 1 − window ..= p` only (Gemma 3's local layers).
    pub window: Option<usize>,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[row] = softmax(q·Kᵀ/√d) V` for every new row of every sequence, for one `layer`.
///
/// `q` holds `T` rows of `q_stride` floats whose first `heads·head_dim` are the (rotated) queries; `out` holds `T`
/// rows of `heads·head_dim`.
pub fn attention(layer: usize, q: &[f32], q_stride: usize, seqs: &[AttnSeq], shape: AttnShape, out: &mut [f32]) {
    attention_on(isa(), layer, q, q_stride, seqs, shape, out)
}

/// [`attention`] at a given ISA level (one of [`super::available_isas`]).
pub fn attention_on(
    isa: Isa,
    layer: usize,
    q: &[f32],
    q_stride: usize,
    seqs: &[AttnSeq],
    shape: AttnShape,
    out: &mut [f32],
) {
    assert!(super::available_isas().contains(&isa), "attention: {isa:?} is not supported by this CPU");
    let group_width = shape.heads / shape.kv_heads * shape.head_dim;
    let mut owner = Vec::with_capacity(out.len() / group_width);
    for s in seqs {
        for r in 0..s.rows {
            for g in 0..shape.kv_heads {
                owner.push((s.cache, s.first_row + r, s.start_pos + r, g));
            }
        }
    }
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
    if a.shape.head_dim != x86::HD {
        return row(a, scores, out);
    }
    let group = a.shape.heads / a.shape.kv_heads;
    let stride = prepare(a, scores, out);
    let mut h0 = 0;
    while h0 < group {
        h0 += match group - h0 {
            1 => x86::heads::<1>(a, h0, scores, stride, out),
            2 => x86::heads::<2>(a, h0, scores, stride, out),
            3 => x86::heads::<3>(a, h0, scores, stride, out),
            _ => x86::heads::<4>(a, h0, scores, stride, out),
        };
    }
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
    let AttnShape { heads, kv_heads, head_dim: hd, .. } = a.shape;
    debug_assert!(a.g < kv_heads);
    let group = heads / kv_heads;
    let stride = prepare(a, scores, out);
    let mut h0 = 0;
    while h0 < group {
        let left = group - h0;
        // The head widths of the supported models, as fixed-size register tiles (Gemma 3: 256).
        match hd {
            32 => h0 += chunk::<32>(a, h0, left, scores, stride, out),
            64 => h0 += chunk::<64>(a, h0, left, scores, stride, out),
            80 => h0 += chunk::<80>(a, h0, left, scores, stride, out),
            96 => h0 += chunk::<96>(a, h0, left, scores, stride, out),
            128 => h0 += chunk::<128>(a, h0, left, scores, stride, out),
            256 => h0 += chunk::<256>(a, h0, left, scores, stride, out),
            _ => h0 += chunk_dyn(a, h0, scores, stride, out),
        }
    }
}

/// Sizes the score buffer of a task (one row of `stride` scores per head of the group) and clears its output;
/// returns the stride (the number of keys rounded up to whole blocks).
#[inline(always)]
fn prepare(a: &RowArgs<'_>, scores: &mut Vec<f32>, out: &mut [f32]) -> usize {
    let group = a.shape.heads / a.shape.kv_heads;
    let stride = (a.pos + 1).div_ceil(BLOCK_TOKENS) * BLOCK_TOKENS;
    scores.clear();
    scores.resize(group * stride, 0.0);
    out.fill(0.0);
    stride
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
        window_softmax(&mut scores[(h0 + h) * stride..(h0 + h) * stride + n_keys], a.first_key());
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

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // index loops over const-generic register tiles
mod x86 {
    use std::arch::x86_64::*;

    use super::{window_softmax, RowArgs, BLOCK_TOKENS};

    /// The head width this kernel is written for (SmolLM2, Llama 3.2 1B).
    pub const HD: usize = 64;
    /// How many blocks ahead keys and values are requested.
    const AHEAD: usize = 2;

    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }

    /// [`super::heads`] for 64-wide heads in AVX-512 registers, with the same multiply-adds in the same order, so
    /// the same bits. Two differences, both about memory: each key row is loaded once for all `NH` heads (the
    /// portable loop reloads it per head), and every block's keys and values are requested [`AHEAD`] blocks
    /// before use, a cache line per row as the loops go. Decode attention at large batch streams each sequence's
    /// whole cache once per layer, every block a separate 4 KiB run per head, which the hardware prefetcher does
    /// not run ahead into: at B = 64 and 200 positions this took attention from ~52 to ~39 ms per step.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn heads<const NH: usize>(
        a: &RowArgs<'_>,
        h0: usize,
        scores: &mut [f32],
        stride: usize,
        out: &mut [f32],
    ) -> usize {
        const L: usize = BLOCK_TOKENS;
        let group = a.shape.heads / a.shape.kv_heads;
        let scale = _mm512_set1_ps(1.0 / (HD as f32).sqrt());
        let n_keys = a.pos + 1;
        let blocks = &a.cache.blocks()[..n_keys.div_ceil(L)];
        let (layer, g) = (a.layer, a.g);
        assert!(a.q.len() >= (g * group + h0 + NH) * HD, "query row too short");
        assert!(out.len() >= (h0 + NH) * HD, "output row too short");
        assert!(scores.len() >= (h0 + NH - 1) * stride + blocks.len() * L, "score buffer too short");
        let q = a.q.as_ptr().add((g * group + h0) * HD);
        for block in blocks.iter().take(AHEAD) {
            for r in 0..HD {
                prefetch(block.keys_t(layer, g).as_ptr().add(r * L));
            }
        }
        // 1. Scores: Σ_d q[d]·K[d][key] in four partial sums per head (d mod 4), as the portable kernel.
        for (b, block) in blocks.iter().enumerate() {
            let kt = block.keys_t(layer, g);
            assert!(kt.len() >= HD * L, "key block too short");
            let kt = kt.as_ptr();
            let ahead = blocks.get(b + AHEAD).map(|n| n.keys_t(layer, g).as_ptr());
            let mut acc = [[_mm512_setzero_ps(); 4]; NH];
            for d in (0..HD).step_by(4) {
                for j in 0..4 {
                    if let Some(n) = ahead {
                        prefetch(n.add((d + j) * L));
                    }
                    let k = _mm512_loadu_ps(kt.add((d + j) * L));
                    for h in 0..NH {
                        acc[h][j] = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(h * HD + d + j)), k, acc[h][j]);
                    }
                }
            }
            for h in 0..NH {
                let sum = _mm512_add_ps(_mm512_add_ps(acc[h][0], acc[h][1]), _mm512_add_ps(acc[h][2], acc[h][3]));
                _mm512_storeu_ps(scores.as_mut_ptr().add((h0 + h) * stride + b * L), _mm512_mul_ps(sum, scale));
            }
        }
        // 2. Softmax (the first value blocks are requested meanwhile).
        for block in blocks.iter().take(AHEAD) {
            for r in 0..L * HD / 16 {
                prefetch(block.values(layer, g).as_ptr().add(r * 16));
            }
        }
        for h in 0..NH {
            window_softmax(&mut scores[(h0 + h) * stride..(h0 + h) * stride + n_keys], a.first_key());
        }
        // 3. Values: each head's output stays in registers while the value rows stream by.
        let mut o = [[_mm512_setzero_ps(); HD / 16]; NH];
        for (b, block) in blocks.iter().enumerate() {
            let values = block.values(layer, g);
            assert!(values.len() >= L * HD, "value block too short");
            let vp = values.as_ptr();
            let ahead = blocks.get(b + AHEAD).map(|n| n.values(layer, g).as_ptr());
            for t in 0..L.min(n_keys - b * L) {
                let mut v = [_mm512_setzero_ps(); HD / 16];
                for i in 0..HD / 16 {
                    if let Some(n) = ahead {
                        prefetch(n.add(t * HD + 16 * i));
                    }
                    v[i] = _mm512_loadu_ps(vp.add(t * HD + 16 * i));
                }
                for h in 0..NH {
                    let w = _mm512_set1_ps(scores[(h0 + h) * stride + b * L + t]);
                    for i in 0..HD / 16 {
                        o[h][i] = _mm512_fmadd_ps(w, v[i], o[h][i]);
                    }
                }
            }
        }
        for h in 0..NH {
            for i in 0..HD / 16 {
                _mm512_storeu_ps(out.as_mut_ptr().add((h0 + h) * HD + 16 * i), o[h][i]);
            }
        }
        NH
    }
}

impl RowArgs<'_> {
    /// The first key this row attends to (0 without a sliding window).
    #[inline(always)]
    fn first_key(&self) -> usize {
        self.shape.window.map_or(0, |w| (self.pos + 1).saturating_sub(w))
    }
}

/// Softmax over `s[first..]`, zero weight on the keys before `first` (outside a sliding window). With `first = 0`
/// exactly [`softmax`].
#[inline(always)]
fn window_softmax(s: &mut [f32], first: usize) {
    let (outside, inside) = s.split_at_mut(first);
    outside.fill(0.0);
    softmax(inside);
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

/// Any head width: one head at a time, same operation order as [`heads`]. Inlined into the caller's target
/// features (its `mul_add` is a libm call otherwise).
#[inline(always)]
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
    window_softmax(&mut scores[h * stride..h * stride + n_keys], a.first_key());
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::{KvLayout, KvPool};

    fn values(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every ISA the CPU has (passed explicitly) against the portable kernel, bit for bit: group sizes that
    /// exercise every register tile and the chunking past four heads, caches ending mid-block, the head widths with
    /// their own tiles and one without (48), with and without a sliding window.
    #[test]
    fn every_isa_computes_the_portable_kernels_bits() {
        let mut seed = 17;
        let cases = [
            (1, 1, 64, None),
            (3, 37, 64, None),
            (4, 16, 64, None),
            (5, 50, 64, None),
            (2, 64, 64, None),
            (2, 40, 32, Some(7)),
            (4, 45, 256, None),
            (1, 45, 256, Some(20)),
            (3, 33, 48, Some(16)),
            (2, 70, 128, Some(64)),
        ];
        for (group, len, head_dim, window) in cases {
            let kv_heads = 2;
            let shape = AttnShape { heads: group * kv_heads, kv_heads, head_dim, window };
            let layout = KvLayout { layers: 2, kv_heads, head_dim };
            let mut cache = KvCache::new(layout, Arc::new(KvPool::default()));
            cache.reserve(len);
            for pos in 0..len {
                for layer in 0..2 {
                    let k = values(kv_heads * head_dim, &mut seed);
                    let v = values(kv_heads * head_dim, &mut seed);
                    cache.write(layer, pos, &k, &v);
                }
            }
            cache.commit(len);
            // The last three positions are the new rows.
            let rows = 3.min(len);
            let width = shape.heads * head_dim;
            let q = values(rows * width, &mut seed);
            let seqs = [AttnSeq { cache: &cache, first_row: 0, rows, start_pos: len - rows }];
            for isa in super::super::available_isas() {
                let mut got = vec![0f32; rows * width];
                attention_on(isa, 1, &q, width, &seqs, shape, &mut got);
                check_rows(
                    &q,
                    &cache,
                    shape,
                    len,
                    rows,
                    &got,
                    &format!("{isa:?} group {group}, {len} keys, hd {head_dim}, window {window:?}"),
                );
            }
        }
    }

    /// Layer 1's key of position `pos`, KV head `g`, read out of its transposed block.
    fn key_of(cache: &KvCache, pos: usize, g: usize, hd: usize) -> Vec<f32> {
        let kt = cache.blocks()[pos / BLOCK_TOKENS].keys_t(1, g);
        (0..hd).map(|d| kt[d * BLOCK_TOKENS + pos % BLOCK_TOKENS]).collect()
    }

    /// Layer 1's value of position `pos`, KV head `g`.
    fn value_of(cache: &KvCache, pos: usize, g: usize, hd: usize) -> Vec<f32> {
        cache.blocks()[pos / BLOCK_TOKENS].values(1, g)[(pos % BLOCK_TOKENS) * hd..][..hd].to_vec()
    }

    /// Compares each row of `got` with the portable kernel and with an f64 softmax over the visible keys.
    fn check_rows(q: &[f32], cache: &KvCache, shape: AttnShape, len: usize, rows: usize, got: &[f32], what: &str) {
        let (kv_heads, head_dim) = (shape.kv_heads, shape.head_dim);
        let group = shape.heads / kv_heads;
        let width = shape.heads * head_dim;
        {
            let group_width = group * head_dim;
            let mut scores = Vec::new();
            for r in 0..rows {
                for g in 0..kv_heads {
                    let pos = len - rows + r;
                    let args = RowArgs { layer: 1, q: &q[r * width..(r + 1) * width], cache, pos, g, shape };
                    let mut want = vec![0f32; group_width];
                    row(&args, &mut scores, &mut want);
                    let at = r * width + g * group_width;
                    let same = want.iter().zip(&got[at..at + group_width]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: row {r}, KV head {g}");
                    // f64 reference: softmax over keys max(0, pos + 1 − window) ..= pos.
                    let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    for h in 0..group {
                        let qh = &q[r * width + (g * group + h) * head_dim..][..head_dim];
                        let scores: Vec<f64> = (first..=pos)
                            .map(|k| {
                                let key = key_of(cache, k, g, head_dim);
                                qh.iter().zip(&key).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                                    / (head_dim as f64).sqrt()
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                        for d in 0..head_dim {
                            let o: f64 = (first..=pos)
                                .zip(&scores)
                                .map(|(k, s)| (s - max).exp() / z * value_of(cache, k, g, head_dim)[d] as f64)
                                .sum();
                            let ours = got[at + h * head_dim + d] as f64;
                            assert!((ours - o).abs() < 1e-4, "{what}: row {r} head {h} dim {d}: {ours} vs {o}");
                        }
                    }
                }
            }
        }
    }
}
