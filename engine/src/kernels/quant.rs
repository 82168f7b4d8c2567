//! Quantized weight matrices and their product with integer-quantized activations.
//!
//! Every supported GGUF block format is stored as *codes with a per-32-block scale and offset*, value = `d·q + m`:
//! 4-bit unsigned codes for Q4_0 (`m = −8d`), Q4_1 (`m` given) and Q4_K; 8-bit signed codes for Q8_0, Q5_0
//! (`q − 16`), Q5_1 and Q5_K (`q` in 0..32 with its `m`). Q4_0, Q4_1, Q8_0, Q5_0 and Q5_1 are kept exactly — the
//! weights bit for bit those of the file, scales its f16. The K-quants' sub-block scales are products of a 6-bit
//! integer and the super-block's f16 (`d·sc`, `dmin·m`): held rounded to f16 (relative error ≤ 2⁻¹¹ of the scale,
//! against ≈ 1/254 of the block's range when re-quantized to Q8_0). Other types (Q6_K, Q2_K, Q3_K…) are re-quantized
//! to Q8_0 by the loader.
//!
//! Activations are quantized per row and per 32-block to **15-bit** integers `q = 128·h + l` (`h` signed, `l` in
//! 0..128, both bytes) with their block sums `s = d·Σq`. Two int8 dot products per block give a 15-bit product:
//! the quantized path then differs from f32 only by the weights' own quantization, not by activation rounding
//! (int8 activations, as llama.cpp uses, moved next-token log-probs of the default model by up to 0.25 nats).
//!
//! ```text
//! Σ_b  d_w[b]·d_a[b]·(128·Σ_i q_w·h_a + Σ_i q_w·l_a)  +  m_w[b]·s_a[b]
//! ```
//!
//! Layout: weights in panels of 16 output features; inside a panel and a 32-block, codes are grouped by 4 input
//! positions per feature (`[quad][feature][4]`), so one `vpdpbusd` multiplies 16 features × 4 positions by a
//! broadcast of 4 activation bytes: no horizontal sums, one panel row of results per activation row. Q4 stores two
//! quads per byte (low nibble: quad 2j, high nibble: quad 2j+1).

use half::f16;
use rayon::prelude::*;

use super::{chunk_len, isa, Isa, SyncPtr};

/// Elements per quantization block.
pub const BLOCK: usize = 32;
/// Output features per panel.
pub const PANEL: usize = 16;
/// Activation rows per micro-kernel call (AVX-512).
const MR: usize = 6;

/// How the codes of a [`QMatrix`] are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormat {
    /// 4-bit codes (0..16).
    Q4,
    /// 8-bit signed codes (−127..=127).
    Q8,
}

impl QFormat {
    fn block_bytes(self) -> usize {
        match self {
            QFormat::Q4 => BLOCK * PANEL / 2,
            QFormat::Q8 => BLOCK * PANEL,
        }
    }
}

/// Quantized rows in plain row-major order: the loader's working form (permute, stack), then [`QRows::pack`].
#[derive(Debug, Clone)]
pub struct QRows {
    format: QFormat,
    rows: usize,
    cols: usize,
    /// One code per byte (Q8: `i8` bits), `rows × blocks × 32`.
    codes: Vec<u8>,
    d: Vec<f16>,
    m: Vec<f16>,
}

impl QRows {
    fn blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    fn check_len(raw: &[u8], rows: usize, cols: usize, block_bytes: usize) -> Result<(), String> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("row length {cols} is not a multiple of the block size {BLOCK}"));
        }
        let want = rows * cols / BLOCK * block_bytes;
        if raw.len() != want {
            return Err(format!("expected {want} bytes of block data, found {}", raw.len()));
        }
        Ok(())
    }

    fn parse(
        format: QFormat,
        raw: &[u8],
        rows: usize,
        cols: usize,
        block_bytes: usize,
        parse: impl Fn(&[u8], &mut [u8]) -> (f16, f16),
    ) -> Result<Self, String> {
        Self::check_len(raw, rows, cols, block_bytes)?;
        let n = rows * cols / BLOCK;
        let mut q =
            QRows { format, rows, cols, codes: vec![0; rows * cols], d: vec![f16::ZERO; n], m: vec![f16::ZERO; n] };
        for (i, (block, codes)) in raw.chunks_exact(block_bytes).zip(q.codes.chunks_exact_mut(BLOCK)).enumerate() {
            let (d, m) = parse(block, codes);
            q.d[i] = d;
            q.m[i] = m;
        }
        Ok(q)
    }

    fn f16_at(b: &[u8], at: usize) -> f16 {
        f16::from_le_bytes([b[at], b[at + 1]])
    }

    fn nibbles(src: &[u8], codes: &mut [u8]) {
        for j in 0..16 {
            codes[j] = src[j] & 0x0F;
            codes[j + 16] = src[j] >> 4;
        }
    }

    /// From GGUF Q4_0 blocks (`f16 d`, 16 bytes of nibbles; value = d·(q − 8)).
    pub fn from_q4_0(raw: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        Self::parse(QFormat::Q4, raw, rows, cols, 18, |b, codes| {
            Self::nibbles(&b[2..18], codes);
            let d = Self::f16_at(b, 0);
            (d, f16::from_f32(-8.0 * d.to_f32()))
        })
    }

    /// From GGUF Q4_1 blocks (`f16 d`, `f16 m`, 16 bytes of nibbles; value = d·q + m).
    pub fn from_q4_1(raw: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        Self::parse(QFormat::Q4, raw, rows, cols, 20, |b, codes| {
            Self::nibbles(&b[4..20], codes);
            (Self::f16_at(b, 0), Self::f16_at(b, 2))
        })
    }

    /// From GGUF Q5_0 blocks (`f16 d`, 4 bytes of fifth bits, 16 bytes of nibbles; value = d·(q − 16)): signed 8-bit
    /// codes, exact.
    pub fn from_q5_0(raw: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        Self::parse(QFormat::Q8, raw, rows, cols, 22, |b, codes| {
            Self::five_bits(&b[2..6], &b[6..22], codes);
            for c in codes.iter_mut() {
                *c = (*c as i8 - 16) as u8;
            }
            (Self::f16_at(b, 0), f16::ZERO)
        })
    }

    /// From GGUF Q5_1 blocks (`f16 d`, `f16 m`, 4 bytes of fifth bits, 16 bytes of nibbles; value = d·q + m): 8-bit
    /// codes 0..32 with the offset, exact.
    pub fn from_q5_1(raw: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        Self::parse(QFormat::Q8, raw, rows, cols, 24, |b, codes| {
            Self::five_bits(&b[4..8], &b[8..24], codes);
            (Self::f16_at(b, 0), Self::f16_at(b, 2))
        })
    }

    /// ggml's 5-bit layout: the low nibbles as [`QRows::nibbles`], bit `j` of the little-endian `qh` the fifth bit
    /// of value `j`.
    fn five_bits(qh: &[u8], qs: &[u8], codes: &mut [u8]) {
        Self::nibbles(qs, codes);
        let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (j, c) in codes.iter_mut().enumerate() {
            *c |= (((qh >> j) & 1) as u8) << 4;
        }
    }

    /// From GGUF Q4_K super-blocks (256 values: `f16 d`, `f16 dmin`, 12 bytes of 6-bit sub-block scales and mins,
    /// 128 bytes of nibbles; value = d·sc·q − dmin·m per 32-value sub-block): 4-bit codes, sub-block scale and offset
    /// rounded to f16.
    pub fn from_q4_k(raw: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        Self::parse_k(QFormat::Q4, raw, rows, cols, 144, |b, codes| {
            let qs = &b[16..144];
            for j in 0..4 {
                for l in 0..32 {
                    codes[64 * j + l] = qs[32 * j + l] & 0x0F;
                    codes[64 * j + 32 + l] = qs[32 * j + l] >> 4;
                }
            }
        })
    }

    /// From GGUF Q5_K super-blocks (as Q4_K plus 32 bytes of fifth bits): 8-bit codes 0..32, sub-block scale and
    /// offset rounded to f16.
    pub fn from_q5_k(raw: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        Self::parse_k(QFormat::Q8, raw, rows, cols, 176, |b, codes| {
            let (qh, qs) = (&b[16..48], &b[48..176]);
            for j in 0..4 {
                let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                for l in 0..32 {
                    codes[64 * j + l] = (qs[32 * j + l] & 0x0F) | if qh[l] & u1 != 0 { 16 } else { 0 };
                    codes[64 * j + 32 + l] = (qs[32 * j + l] >> 4) | if qh[l] & u2 != 0 { 16 } else { 0 };
                }
            }
        })
    }

    /// K-quant super-blocks of 256 values: `codes` fills the 256 codes; the eight sub-block scales and mins come
    /// from the 12 packed bytes after `d` and `dmin` (ggml's `get_scale_min_k4`).
    fn parse_k(
        format: QFormat,
        raw: &[u8],
        rows: usize,
        cols: usize,
        block_bytes: usize,
        codes: impl Fn(&[u8], &mut [u8]),
    ) -> Result<Self, String> {
        const SUPER: usize = 256;
        if !cols.is_multiple_of(SUPER) {
            return Err(format!("row length {cols} is not a multiple of the K-quant super-block size {SUPER}"));
        }
        let want = rows * cols / SUPER * block_bytes;
        if raw.len() != want {
            return Err(format!("expected {want} bytes of block data, found {}", raw.len()));
        }
        let n = rows * cols / BLOCK;
        let mut q =
            QRows { format, rows, cols, codes: vec![0; rows * cols], d: vec![f16::ZERO; n], m: vec![f16::ZERO; n] };
        for (i, (block, out)) in raw.chunks_exact(block_bytes).zip(q.codes.chunks_exact_mut(SUPER)).enumerate() {
            codes(block, out);
            let (d, dmin) = (Self::f16_at(block, 0).to_f32(), Self::f16_at(block, 2).to_f32());
            let sc = &block[4..16];
            for j in 0..8 {
                let (scale, min) = if j < 4 {
                    (sc[j] & 63, sc[j + 4] & 63)
                } else {
                    ((sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
                };
                q.d[8 * i + j] = f16::from_f32(d * scale as f32);
                q.m[8 * i + j] = f16::from_f32(-(dmin * min as f32));
            }
        }
        Ok(q)
    }

    /// From GGUF Q8_0 blocks (`f16 d`, 32 signed bytes; value = d·q).
    pub fn from_q8_0(raw: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        Self::parse(QFormat::Q8, raw, rows, cols, 34, |b, codes| {
            for j in 0..BLOCK {
                // −128 is clamped to −127: the AVX2 kernel's sign trick needs |q| ≤ 127 (llama.cpp never writes it).
                codes[j] = (b[2 + j] as i8).max(-127) as u8;
            }
            (Self::f16_at(b, 0), f16::ZERO)
        })
    }

    /// Quantizes an f32 row-major matrix to Q8_0 (per-block absmax scale in f16, round half away from zero).
    pub fn quantize_q8(data: &[f32], rows: usize, cols: usize) -> Self {
        let blocks = cols.div_ceil(BLOCK);
        let mut q = QRows {
            format: QFormat::Q8,
            rows,
            cols,
            codes: vec![0; rows * blocks * BLOCK],
            d: vec![f16::ZERO; rows * blocks],
            m: vec![f16::ZERO; rows * blocks],
        };
        for r in 0..rows {
            for (b, chunk) in data[r * cols..(r + 1) * cols].chunks(BLOCK).enumerate() {
                let amax = chunk.iter().fold(0f32, |a, &x| a.max(x.abs()));
                let d = f16::from_f32(amax / 127.0);
                let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
                q.d[r * blocks + b] = d;
                let codes = &mut q.codes[(r * blocks + b) * BLOCK..][..chunk.len()];
                for (c, &x) in codes.iter_mut().zip(chunk) {
                    *c = (round_half_away(x * inv).clamp(-127.0, 127.0) as i8) as u8;
                }
            }
        }
        q
    }

    /// The code format.
    pub fn format(&self) -> QFormat {
        self.format
    }

    /// Keeps the rows listed, in that order (un-permuting GGUF q/k rows).
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        let nb = self.blocks();
        let mut out = QRows {
            format: self.format,
            rows: order.len(),
            cols: self.cols,
            codes: Vec::with_capacity(order.len() * nb * BLOCK),
            d: Vec::with_capacity(order.len() * nb),
            m: Vec::with_capacity(order.len() * nb),
        };
        for &r in order {
            out.codes.extend_from_slice(&self.codes[r * nb * BLOCK..(r + 1) * nb * BLOCK]);
            out.d.extend_from_slice(&self.d[r * nb..(r + 1) * nb]);
            out.m.extend_from_slice(&self.m[r * nb..(r + 1) * nb]);
        }
        out
    }

    /// Stacks matrices of one format and width (fused q/k/v, gate/up).
    pub fn vstack(parts: &[&QRows]) -> Result<Self, String> {
        let first = parts.first().ok_or("nothing to stack")?;
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return Err("stacked matrices differ in format or width".into());
        }
        let mut out = QRows { rows: 0, codes: Vec::new(), d: Vec::new(), m: Vec::new(), ..(*first).clone() };
        for p in parts {
            out.rows += p.rows;
            out.codes.extend_from_slice(&p.codes);
            out.d.extend_from_slice(&p.d);
            out.m.extend_from_slice(&p.m);
        }
        Ok(out)
    }

    /// Row-major f32 values.
    pub fn dequantize(&self) -> Vec<f32> {
        let nb = self.blocks();
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols).enumerate().for_each(|(r, row)| {
            for (c, o) in row.iter_mut().enumerate() {
                let i = r * nb + c / BLOCK;
                *o = value(self.format, self.codes[r * nb * BLOCK + c], self.d[i], self.m[i]);
            }
        });
        out
    }

    /// Packs into the kernels' panel layout.
    pub fn pack(&self) -> QMatrix {
        let nb = self.blocks();
        let panels = self.rows.div_ceil(PANEL);
        let bb = self.format.block_bytes();
        let mut codes = vec![0u8; panels * nb * bb];
        let mut d = vec![f16::ZERO; panels * nb * PANEL];
        let mut m = vec![f16::ZERO; panels * nb * PANEL];
        // Panel by panel on the pool: panel p alone writes its codes and scales.
        codes
            .par_chunks_mut(nb * bb)
            .zip(d.par_chunks_mut(nb * PANEL))
            .zip(m.par_chunks_mut(nb * PANEL))
            .enumerate()
            .for_each(|(p, ((cp, dp), mp))| {
                for f in 0..PANEL.min(self.rows - p * PANEL) {
                    let r = p * PANEL + f;
                    for b in 0..nb {
                        let base = b * bb;
                        let src = &self.codes[(r * nb + b) * BLOCK..(r * nb + b + 1) * BLOCK];
                        match self.format {
                            QFormat::Q4 => {
                                for (k, &c) in src.iter().enumerate() {
                                    let (quad, t) = (k / 4, k % 4);
                                    cp[base + (quad / 2) * 64 + f * 4 + t] |= c << (4 * (quad % 2));
                                }
                            }
                            QFormat::Q8 => {
                                for (quad, four) in src.chunks_exact(4).enumerate() {
                                    cp[base + quad * 64 + f * 4..][..4].copy_from_slice(four);
                                }
                            }
                        }
                        dp[b * PANEL + f] = self.d[r * nb + b];
                        mp[b * PANEL + f] = self.m[r * nb + b];
                    }
                }
            });
        let has_min = self.format == QFormat::Q4 || self.m.iter().any(|x| *x != f16::ZERO);
        QMatrix { format: self.format, rows: self.rows, cols: self.cols, blocks: nb, codes, d, m, has_min }
    }
}

#[inline(always)]
fn value(format: QFormat, code: u8, d: f16, m: f16) -> f32 {
    match format {
        QFormat::Q4 => d.to_f32() * code as f32 + m.to_f32(),
        // Q8_0 has no offset: its values stay the bare products (Q5_1/Q5_K add theirs).
        QFormat::Q8 if m == f16::ZERO => d.to_f32() * (code as i8) as f32,
        QFormat::Q8 => d.to_f32() * (code as i8) as f32 + m.to_f32(),
    }
}

/// `f32::round` (half away from zero) in arithmetic that vectorises: the truncation `v as i32` and the exact
/// fractional part `v − trunc(v)` (|v| < 2²³ here), where `round` is a libm call per element at the baseline ISA.
#[inline(always)]
fn round_half_away(v: f32) -> f32 {
    let t = v as i32 as f32;
    let d = v - t;
    if d >= 0.5 {
        t + 1.0
    } else if d <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// A quantized `rows × cols` matrix in panel layout (a linear layer's weight, one output feature per row).
#[derive(Debug, Clone)]
pub struct QMatrix {
    format: QFormat,
    rows: usize,
    cols: usize,
    blocks: usize,
    codes: Vec<u8>,
    d: Vec<f16>,
    m: Vec<f16>,
    /// Whether the offsets matter (always for 4-bit codes; for 8-bit codes when the format has them: Q5_1, Q5_K).
    has_min: bool,
}

impl QMatrix {
    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The code format.
    pub fn format(&self) -> QFormat {
        self.format
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * (self.d.len() + self.m.len())
    }

    /// Feeds every byte that defines the matrix (format, shape, codes, scales, minimums) to `sink`, for a digest of
    /// the weights actually held.
    pub fn digest_into(&self, sink: &mut dyn FnMut(&[u8])) {
        sink(&[self.format as u8]);
        sink(&(self.rows as u64).to_le_bytes());
        sink(&(self.cols as u64).to_le_bytes());
        sink(&self.codes);
        for v in [&self.d, &self.m] {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
            sink(&bytes);
        }
    }

    fn code(&self, r: usize, k: usize) -> u8 {
        let (p, f, b) = (r / PANEL, r % PANEL, k / BLOCK);
        let base = (p * self.blocks + b) * self.format.block_bytes();
        let (quad, t) = ((k % BLOCK) / 4, k % 4);
        match self.format {
            QFormat::Q4 => (self.codes[base + (quad / 2) * 64 + f * 4 + t] >> (4 * (quad % 2))) & 0x0F,
            QFormat::Q8 => self.codes[base + quad * 64 + f * 4 + t],
        }
    }

    /// Writes row `r` as f32 into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (p, f) = (r / PANEL, r % PANEL);
        for (k, o) in out.iter_mut().enumerate().take(self.cols) {
            let i = (p * self.blocks + k / BLOCK) * PANEL + f;
            *o = value(self.format, self.code(r, k), self.d[i], self.m[i]);
        }
    }

    /// The whole matrix as row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols).enumerate().for_each(|(r, row)| self.dequantize_row(r, row));
        out
    }
}

/// Activations quantized per row and per 32-block to 15-bit integers split in two bytes (`q = 128·h + l`), with
/// their block scales and sums.
#[derive(Debug, Default)]
pub struct QActs {
    rows: usize,
    cols: usize,
    blocks: usize,
    h: Vec<i8>,
    l: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Largest activation code: `h = q >> 7` stays in −127..=127 (the AVX2 kernel negates it, and −128 has no
/// negation in a byte).
const QMAX: f32 = 16256.0;

impl QActs {
    /// Quantizes `x` (`rows × cols`, row-major). Each row is quantized on its own.
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        Self::quantize_on(isa(), x, rows, cols)
    }

    /// [`QActs::quantize`] at a given ISA level (one of [`super::available_isas`]).
    pub fn quantize_on(isa: Isa, x: &[f32], rows: usize, cols: usize) -> Self {
        assert!(super::available_isas().contains(&isa), "quantize: {isa:?} is not supported by this CPU");
        let blocks = cols.div_ceil(BLOCK);
        let width = blocks * BLOCK;
        let mut a = QActs {
            rows,
            cols,
            blocks,
            h: vec![0; rows * width],
            l: vec![0; rows * width],
            d: vec![0.0; rows * blocks],
            s: vec![0.0; rows * blocks],
        };
        let parts = a.h.par_chunks_mut(width).zip(a.l.par_chunks_mut(width));
        let scales = a.d.par_chunks_mut(blocks).zip(a.s.par_chunks_mut(blocks));
        parts.zip(scales).enumerate().with_min_len(8).for_each(|(r, ((h, l), (d, s)))| {
            let row = RowCodes { x: &x[r * cols..(r + 1) * cols], h, l, d, s };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` only reports levels the CPU supports.
                Isa::Avx512 => unsafe { quantize_row_avx512(row) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { quantize_row_avx2(row) },
                _ => quantize_row(row),
            }
        });
        a
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The values the kernels multiply: `d·q` per element (row-major, `rows × cols`).
    pub fn dequantize(&self) -> Vec<f32> {
        let width = self.blocks * BLOCK;
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                let q = 128 * self.h[r * width + c] as i32 + self.l[r * width + c] as i32;
                out.push(self.d[r * self.blocks + c / BLOCK] * q as f32);
            }
        }
        out
    }
}

/// One row of [`QActs::quantize`]: its input and the parts it writes.
struct RowCodes<'a> {
    x: &'a [f32],
    h: &'a mut [i8],
    l: &'a mut [i8],
    d: &'a mut [f32],
    s: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quantize_row_avx512(row: RowCodes<'_>) {
    quantize_row(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(row: RowCodes<'_>) {
    quantize_row(row)
}

/// Quantizes a row block by block. Plain element-wise loops over fixed-size blocks, vectorised by the caller's
/// target features (activation quantization was 9% of decode at B = 64 as scalar code); the results are the same
/// bits on every ISA: the maximum is exact in any order and everything else is per element.
#[inline(always)]
fn quantize_row(row: RowCodes<'_>) {
    let RowCodes { x, h, l, d, s } = row;
    let blocks = x.chunks(BLOCK).zip(h.chunks_exact_mut(BLOCK)).zip(l.chunks_exact_mut(BLOCK));
    for (b, ((chunk, h), l)) in blocks.enumerate() {
        let (h, l): (&mut [i8; BLOCK], &mut [i8; BLOCK]) =
            (h.try_into().expect("a block of codes"), l.try_into().expect("a block of codes"));
        let (db, sum) = match <&[f32; BLOCK]>::try_from(chunk) {
            Ok(full) => quantize_block(full, h, l),
            Err(_) => {
                // A partial last block: pad with zeros, which change neither the maximum nor the sum.
                let mut padded = [0f32; BLOCK];
                padded[..chunk.len()].copy_from_slice(chunk);
                quantize_block(&padded, h, l)
            }
        };
        d[b] = db;
        s[b] = db * sum as f32;
    }
}

/// One 32-block: returns its scale and the sum of its codes.
#[inline(always)]
fn quantize_block(x: &[f32; BLOCK], h: &mut [i8; BLOCK], l: &mut [i8; BLOCK]) -> (f32, i32) {
    // The largest |x|, NaN ignored (as `f32::max` does), written as compares that map onto vector max
    // instructions: a lane is never NaN, and `v > m` is false for a NaN `v`.
    const HALF: usize = BLOCK / 2;
    let larger = |v: f32, m: f32| if v > m { v } else { m };
    let mut lanes = [0f32; HALF];
    for (j, lane) in lanes.iter_mut().enumerate() {
        *lane = larger(x[j + HALF].abs(), larger(x[j].abs(), 0.0));
    }
    let mut width = HALF;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            lanes[j] = larger(lanes[j + width], lanes[j]);
        }
    }
    let amax = lanes[0];
    let db = amax / QMAX;
    let inv = if db > 0.0 { 1.0 / db } else { 0.0 };
    let mut q = [0i32; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        // Round half away from zero without a libm call: truncate x ± 0.5. Clamping before the conversion (the
        // value is then an integer in range, or NaN, which becomes 0 as a saturating cast would make it) lets the
        // conversion be a plain vector instruction.
        let y = v * inv;
        let r = (y + 0.5f32.copysign(y)).trunc().clamp(-QMAX, QMAX);
        let r = if r.is_nan() { 0.0 } else { r };
        // SAFETY: `r` is finite and within ±QMAX.
        *q = unsafe { r.to_int_unchecked::<i32>() };
    }
    for j in 0..BLOCK {
        h[j] = (q[j] >> 7) as i8;
        l[j] = (q[j] & 127) as i8;
    }
    (db, q.iter().sum())
}

/// `out[m, n] = Σ_k x[m, k] · w[n, k]` for all rows of `x`; `out` is `x.rows × w.rows`, row-major.
pub fn qmatmul(w: &QMatrix, x: &QActs, out: &mut [f32]) {
    qmatmul_on(isa(), w, x, out)
}

/// [`qmatmul`] at a given ISA level (which the CPU must support: one of [`super::available_isas`]).
pub fn qmatmul_on(isa: Isa, w: &QMatrix, x: &QActs, out: &mut [f32]) {
    assert_eq!(w.cols, x.cols, "qmatmul: width mismatch");
    assert_eq!(out.len(), x.rows * w.rows, "qmatmul: output size");
    assert!(super::available_isas().contains(&isa), "qmatmul: {isa:?} is not supported by this CPU");
    let (n, m) = (w.rows, x.rows);
    let panels = n.div_ceil(PANEL);
    let ptr = SyncPtr(out.as_mut_ptr());
    let chunk = chunk_len(panels, 1);
    let mr = match isa {
        Isa::Avx512 => MR,
        Isa::Avx2 => 2,
        Isa::Scalar => 1,
    };
    // Panels are visited in groups of about 256 KiB of codes, every activation row group over one group before the
    // next: a wide matrix (Gemma 3's 262 144-row LM head) is then read from memory once per call, not once per
    // group of `mr` rows. Each output value is still one `panel_kernel` call: the same bits in any order.
    let panel_bytes = w.format.block_bytes() * w.blocks;
    let group = (256 * 1024 / panel_bytes.max(1)).max(1);
    (0..panels.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let mut tile = [[0f32; PANEL]; MR];
        let (first, end) = (c * chunk, ((c + 1) * chunk).min(panels));
        for g in (first..end).step_by(group) {
            let mut r0 = 0;
            while r0 < m {
                let rows = (m - r0).min(mr);
                for p in g..(g + group).min(end) {
                    panel_kernel(isa, w, p, x, r0, rows, &mut tile);
                    let cols = PANEL.min(n - p * PANEL);
                    for (t, vals) in tile.iter().take(rows).enumerate() {
                        // SAFETY: row r0 + t < m and columns p·16 .. p·16 + cols < n lie inside `out`; only this
                        // task writes panel p's columns.
                        unsafe {
                            std::ptr::copy_nonoverlapping(vals.as_ptr(), ptr.get().add((r0 + t) * n + p * PANEL), cols);
                        }
                    }
                }
                r0 += rows;
            }
        }
    });
}

fn panel_kernel(isa: Isa, w: &QMatrix, p: usize, x: &QActs, r0: usize, rows: usize, tile: &mut [[f32; PANEL]; MR]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only reports AVX-512/AVX2 when the CPU has them.
        Isa::Avx512 => unsafe {
            match rows {
                6 => x86::panel_avx512::<6>(w, p, x, r0, tile),
                5 => x86::panel_avx512::<5>(w, p, x, r0, tile),
                4 => x86::panel_avx512::<4>(w, p, x, r0, tile),
                3 => x86::panel_avx512::<3>(w, p, x, r0, tile),
                2 => x86::panel_avx512::<2>(w, p, x, r0, tile),
                _ => x86::panel_avx512::<1>(w, p, x, r0, tile),
            }
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            match rows {
                2 => x86::panel_avx2::<2>(w, p, x, r0, tile),
                _ => x86::panel_avx2::<1>(w, p, x, r0, tile),
            }
        },
        _ => {
            for (t, out) in tile.iter_mut().enumerate().take(rows) {
                panel_scalar(w, p, x, r0 + t, out);
            }
        }
    }
}

fn panel_scalar(w: &QMatrix, p: usize, x: &QActs, row: usize, out: &mut [f32; PANEL]) {
    let width = x.blocks * BLOCK;
    for (f, o) in out.iter_mut().enumerate() {
        let r = p * PANEL + f;
        let mut acc = 0f32;
        for b in 0..w.blocks {
            let (mut ih, mut il) = (0i32, 0i32);
            for k in 0..BLOCK {
                let c = if r < w.rows { w.code(r, b * BLOCK + k) } else { 0 };
                let c = match w.format {
                    QFormat::Q4 => c as i32,
                    QFormat::Q8 => c as i8 as i32,
                };
                ih += c * x.h[row * width + b * BLOCK + k] as i32;
                il += c * x.l[row * width + b * BLOCK + k] as i32;
            }
            let i = (p * w.blocks + b) * PANEL + f;
            let total = (ih << 7) + il;
            acc = (total as f32).mul_add(w.d[i].to_f32() * x.d[row * x.blocks + b], acc);
            if w.has_min {
                acc = w.m[i].to_f32().mul_add(x.s[row * x.blocks + b], acc);
            }
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // index loops over const-generic register tiles
mod x86 {
    use std::arch::x86_64::*;

    use super::{QActs, QFormat, QMatrix, BLOCK, MR, PANEL};

    #[inline(always)]
    unsafe fn bcast(p: *const i8) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn bcast256(p: *const i8) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn panel_avx512<const R: usize>(
        w: &QMatrix,
        p: usize,
        x: &QActs,
        r0: usize,
        tile: &mut [[f32; PANEL]; MR],
    ) {
        let width = x.blocks * BLOCK;
        let low = _mm512_set1_epi8(0x0F);
        let flip = _mm512_set1_epi8(-128);
        let minus128 = _mm512_set1_ps(-128.0);
        let mut acc = [_mm512_setzero_ps(); R];
        let bb = w.format.block_bytes();
        for b in 0..w.blocks {
            let codes = w.codes.as_ptr().add((p * w.blocks + b) * bb);
            let mut ih = [_mm512_setzero_si512(); R];
            let mut il = [_mm512_setzero_si512(); R];
            // 1. Integer dot products of the block: 8 quads of 4 positions.
            match w.format {
                QFormat::Q4 => {
                    for qp in 0..4 {
                        let v = _mm512_loadu_si512(codes.add(qp * 64) as *const _);
                        let wa = _mm512_and_si512(v, low);
                        let wb = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                        for t in 0..R {
                            let at = (r0 + t) * width + b * BLOCK + 8 * qp;
                            let (hp, lp) = (x.h.as_ptr().add(at), x.l.as_ptr().add(at));
                            ih[t] = _mm512_dpbusd_epi32(ih[t], wa, bcast(hp));
                            il[t] = _mm512_dpbusd_epi32(il[t], wa, bcast(lp));
                            ih[t] = _mm512_dpbusd_epi32(ih[t], wb, bcast(hp.add(4)));
                            il[t] = _mm512_dpbusd_epi32(il[t], wb, bcast(lp.add(4)));
                        }
                    }
                }
                QFormat::Q8 => {
                    for q in 0..8 {
                        // Signed codes + 128 as unsigned; the −128·d·s correction joins the offset term below.
                        let wu = _mm512_xor_si512(_mm512_loadu_si512(codes.add(q * 64) as *const _), flip);
                        for t in 0..R {
                            let at = (r0 + t) * width + b * BLOCK + 4 * q;
                            ih[t] = _mm512_dpbusd_epi32(ih[t], wu, bcast(x.h.as_ptr().add(at)));
                            il[t] = _mm512_dpbusd_epi32(il[t], wu, bcast(x.l.as_ptr().add(at)));
                        }
                    }
                }
            }
            // 2. Scale and offset per feature (f16 → f32), accumulate in f32.
            let sc = (p * w.blocks + b) * PANEL;
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(sc) as *const __m256i));
            let load_m = || _mm512_cvtph_ps(_mm256_loadu_si256(w.m.as_ptr().add(sc) as *const __m256i));
            let mw = match w.format {
                QFormat::Q4 => load_m(),
                // The flip's −128·d, plus the format's own offset when it has one.
                QFormat::Q8 if w.has_min => _mm512_fmadd_ps(dw, minus128, load_m()),
                QFormat::Q8 => _mm512_mul_ps(dw, minus128),
            };
            for t in 0..R {
                let row = r0 + t;
                let total = _mm512_add_epi32(_mm512_slli_epi32(ih[t], 7), il[t]);
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*x.d.get_unchecked(row * x.blocks + b)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), scale, acc[t]);
                acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*x.s.get_unchecked(row * x.blocks + b)), acc[t]);
            }
        }
        for t in 0..R {
            _mm512_storeu_ps(tile[t].as_mut_ptr(), acc[t]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn panel_avx2<const R: usize>(
        w: &QMatrix,
        p: usize,
        x: &QActs,
        r0: usize,
        tile: &mut [[f32; PANEL]; MR],
    ) {
        let width = x.blocks * BLOCK;
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let bb = w.format.block_bytes();
        for b in 0..w.blocks {
            let codes = w.codes.as_ptr().add((p * w.blocks + b) * bb);
            let mut ih = [[_mm256_setzero_si256(); 2]; R];
            let mut il = [[_mm256_setzero_si256(); 2]; R];
            for q in 0..8 {
                for half in 0..2 {
                    // Features 8·half .. 8·half + 8 of quad q.
                    let (wv, signed) = match w.format {
                        QFormat::Q4 => {
                            let v = _mm256_loadu_si256(codes.add((q / 2) * 64 + half * 32) as *const __m256i);
                            let c = if q % 2 == 0 { v } else { _mm256_srli_epi16(v, 4) };
                            (_mm256_and_si256(c, low), false)
                        }
                        QFormat::Q8 => (_mm256_loadu_si256(codes.add(q * 64 + half * 32) as *const __m256i), true),
                    };
                    for t in 0..R {
                        let at = (r0 + t) * width + b * BLOCK + 4 * q;
                        let (ha, la) = (bcast256(x.h.as_ptr().add(at)), bcast256(x.l.as_ptr().add(at)));
                        let (ph, pl) = if signed {
                            let aw = _mm256_sign_epi8(wv, wv);
                            (
                                _mm256_maddubs_epi16(aw, _mm256_sign_epi8(ha, wv)),
                                _mm256_maddubs_epi16(aw, _mm256_sign_epi8(la, wv)),
                            )
                        } else {
                            (_mm256_maddubs_epi16(wv, ha), _mm256_maddubs_epi16(wv, la))
                        };
                        ih[t][half] = _mm256_add_epi32(ih[t][half], _mm256_madd_epi16(ph, ones));
                        il[t][half] = _mm256_add_epi32(il[t][half], _mm256_madd_epi16(pl, ones));
                    }
                }
            }
            let sc = (p * w.blocks + b) * PANEL;
            for half in 0..2 {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(sc + 8 * half) as *const __m128i));
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(sc + 8 * half) as *const __m128i));
                for t in 0..R {
                    let row = r0 + t;
                    let total = _mm256_add_epi32(_mm256_slli_epi32(ih[t][half], 7), il[t][half]);
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d[row * x.blocks + b]));
                    acc[t][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scale, acc[t][half]);
                    if w.has_min {
                        acc[t][half] = _mm256_fmadd_ps(mw, _mm256_set1_ps(x.s[row * x.blocks + b]), acc[t][half]);
                    }
                }
            }
        }
        for t in 0..R {
            _mm256_storeu_ps(tile[t].as_mut_ptr(), acc[t][0]);
            _mm256_storeu_ps(tile[t].as_mut_ptr().add(8), acc[t][1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    /// GGUF Q4_1 bytes for random data, plus the exact dequantized values.
    fn q4_1_fixture(rows: usize, cols: usize, seed: &mut u64) -> (Vec<u8>, Vec<f32>) {
        let mut raw = Vec::new();
        let mut vals = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let d = f16::from_f32(0.01 + 0.05 * lcg(seed).abs());
            let m = f16::from_f32(-0.3 * lcg(seed).abs());
            raw.extend_from_slice(&d.to_le_bytes());
            raw.extend_from_slice(&m.to_le_bytes());
            let codes: Vec<u8> = (0..BLOCK).map(|_| ((lcg(seed) + 1.0) * 7.99) as u8).collect();
            for j in 0..16 {
                raw.push(codes[j] | (codes[j + 16] << 4));
            }
            vals.extend(codes.iter().map(|&c| d.to_f32() * c as f32 + m.to_f32()));
        }
        (raw, vals)
    }

    fn reference(w: &[f32], x: &[f32], n: usize, m: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn q4_1_round_trips_exactly_through_the_panel_layout() {
        let mut seed = 7;
        let (raw, vals) = q4_1_fixture(19, 96, &mut seed);
        let q = QRows::from_q4_1(&raw, 19, 96).expect("valid");
        assert_eq!(q.dequantize(), vals);
        assert_eq!(q.pack().dequantize(), vals);
    }

    #[test]
    fn truncated_block_data_is_refused() {
        let err = QRows::from_q4_1(&[0u8; 39], 1, 64).unwrap_err();
        assert!(err.contains("expected 40 bytes"), "{err}");
    }

    #[test]
    fn activation_quantization_keeps_15_bits() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 7.0).collect();
        let a = QActs::quantize(&x, 1, 64);
        let back = a.dequantize();
        assert_eq!(back.len(), x.len());
        for (u, v) in x.iter().zip(&back) {
            assert!((u - v).abs() <= 4.5 / QMAX / 2.0 * 1.01, "{u} vs {v}");
        }
    }

    #[test]
    fn activation_quantization_equals_its_scalar_definition_bitwise() {
        let mut seed = 13;
        let shapes = [(3, 96), (9, 576), (2, 70)];
        for (isa, (rows, cols)) in super::super::available_isas().into_iter().flat_map(|i| shapes.map(|s| (i, s))) {
            let mut x: Vec<f32> = (0..rows * cols).map(|_| 3.0 * lcg(&mut seed)).collect();
            x[..BLOCK].fill(0.0); // an all-zero block has scale 0
            x[BLOCK + 3] = f32::NAN; // ignored by the maximum, coded as 0
            let a = QActs::quantize_on(isa, &x, rows, cols);
            let width = a.blocks * BLOCK;
            for r in 0..rows {
                for (b, chunk) in x[r * cols..(r + 1) * cols].chunks(BLOCK).enumerate() {
                    let amax = chunk.iter().fold(0f32, |m, &v| m.max(v.abs()));
                    let db = amax / QMAX;
                    let inv = if db > 0.0 { 1.0 / db } else { 0.0 };
                    let mut sum = 0i32;
                    for (j, &v) in chunk.iter().enumerate() {
                        let y = v * inv;
                        let q = ((y + 0.5f32.copysign(y)) as i32).clamp(-(QMAX as i32), QMAX as i32);
                        assert_eq!(a.h[r * width + b * BLOCK + j], (q >> 7) as i8);
                        assert_eq!(a.l[r * width + b * BLOCK + j], (q & 127) as i8);
                        sum += q;
                    }
                    assert_eq!(a.d[r * a.blocks + b].to_bits(), db.to_bits());
                    assert_eq!(a.s[r * a.blocks + b].to_bits(), (db * sum as f32).to_bits());
                }
            }
        }
    }

    #[test]
    fn qmatmul_matches_f64_reference_for_every_tile_size() {
        let mut seed = 3;
        let (n, k) = (37, 160);
        let (raw, wv) = q4_1_fixture(n, k, &mut seed);
        let w = QRows::from_q4_1(&raw, n, k).expect("valid").pack();
        for m in 1..=13 {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let acts = QActs::quantize(&x, m, k);
            let mut out = vec![0f32; m * n];
            qmatmul(&w, &acts, &mut out);
            let want = reference(&wv, &x, n, m, k);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 2e-4 * (1.0 + b.abs()), "m={m}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn q8_weights_match_reference() {
        let mut seed = 11;
        let (n, k) = (20, 96);
        let wf: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let rows = QRows::quantize_q8(&wf, n, k);
        let wq = rows.dequantize();
        let w = rows.pack();
        assert_eq!(w.dequantize(), wq);
        let x: Vec<f32> = (0..7 * k).map(|_| lcg(&mut seed)).collect();
        let acts = QActs::quantize(&x, 7, k);
        let mut out = vec![0f32; 7 * n];
        qmatmul(&w, &acts, &mut out);
        let want = reference(&wq, &x, n, 7, k);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 2e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let mut seed = 5;
        let (n, k) = (33, 128);
        let (raw, _) = q4_1_fixture(n, k, &mut seed);
        let w = QRows::from_q4_1(&raw, n, k).expect("valid").pack();
        let x: Vec<f32> = (0..9 * k).map(|_| lcg(&mut seed)).collect();
        let mut all = vec![0f32; 9 * n];
        qmatmul(&w, &QActs::quantize(&x, 9, k), &mut all);
        for r in 0..9 {
            let mut one = vec![0f32; n];
            qmatmul(&w, &QActs::quantize(&x[r * k..(r + 1) * k], 1, k), &mut one);
            assert_eq!(one, all[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn permuted_and_stacked_rows_follow_the_order() {
        let mut seed = 9;
        let (raw, vals) = q4_1_fixture(4, 64, &mut seed);
        let q = QRows::from_q4_1(&raw, 4, 64).expect("valid");
        let p = q.permute_rows(&[2, 0, 3, 1]);
        let s = QRows::vstack(&[&p, &q]).expect("same format").pack().dequantize();
        assert_eq!(s[..64], vals[128..192]);
        assert_eq!(s[64..128], vals[..64]);
        assert_eq!(s[256..], vals[..]);
    }

    /// Random GGUF blocks of `dt` (quantized by candle from random values) and candle's dequantization of them —
    /// the same values the `gguf` package gives (tests/reference/gguf_dequant.py).
    fn ggml_fixture(dt: GgmlDType, rows: usize, cols: usize, seed: &mut u64) -> (Vec<u8>, Vec<f32>) {
        let v: Vec<f32> = (0..rows * cols).map(|_| lcg(seed) * 0.8 + 0.1 * lcg(seed).abs()).collect();
        let t = candle_core::Tensor::from_vec(v, (rows, cols), &candle_core::Device::Cpu).expect("tensor");
        let q = candle_core::quantized::QTensor::quantize(&t, dt).expect("quantize");
        let raw = q.data().expect("bytes").to_vec();
        let want = q.dequantize(&candle_core::Device::Cpu).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1());
        (raw, want.expect("dequantize"))
    }

    fn parse(dt: GgmlDType, raw: &[u8], rows: usize, cols: usize) -> QRows {
        match dt {
            GgmlDType::Q5_0 => QRows::from_q5_0(raw, rows, cols),
            GgmlDType::Q5_1 => QRows::from_q5_1(raw, rows, cols),
            GgmlDType::Q4K => QRows::from_q4_k(raw, rows, cols),
            GgmlDType::Q5K => QRows::from_q5_k(raw, rows, cols),
            other => panic!("no parser for {other:?}"),
        }
        .expect("valid blocks")
    }

    /// Q5_0 and Q5_1 are held exactly; Q4_K and Q5_K differ from the file only by their sub-block scale and offset
    /// rounded to f16 (each value within 2⁻¹¹ of |scale·q| + |offset|, far inside a Q8_0 step).
    #[test]
    fn five_bit_and_k_quant_blocks_hold_the_files_values() {
        let mut seed = 21;
        let (rows, cols) = (5, 512);
        for dt in [GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q4K, GgmlDType::Q5K] {
            let (raw, want) = ggml_fixture(dt, rows, cols, &mut seed);
            let q = parse(dt, &raw, rows, cols);
            let got = q.pack().dequantize();
            assert_eq!(got, q.dequantize(), "{dt:?}: the panel layout keeps the values");
            assert_eq!(got.len(), want.len());
            let exact = matches!(dt, GgmlDType::Q5_0 | GgmlDType::Q5_1);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                if exact {
                    assert_eq!(a.to_bits(), b.to_bits(), "{dt:?} value {i}: {a} vs {b}");
                } else {
                    let blk = i / BLOCK;
                    let bound = (q.d[blk].to_f32().abs() * 31.0 + q.m[blk].to_f32().abs()) * 2f32.powi(-11) + 1e-7;
                    assert!((a - b).abs() <= bound, "{dt:?} value {i}: {a} vs {b} (bound {bound})");
                }
            }
            let err = parse_err(dt, &raw[..raw.len() - 1], rows, cols);
            assert!(err.contains("bytes of block data"), "{dt:?}: {err}");
        }
        let err = QRows::from_q4_k(&[0u8; 144], 1, 128).unwrap_err();
        assert!(err.contains("super-block"), "{err}");
    }

    fn parse_err(dt: GgmlDType, raw: &[u8], rows: usize, cols: usize) -> String {
        let r = match dt {
            GgmlDType::Q5_0 => QRows::from_q5_0(raw, rows, cols),
            GgmlDType::Q5_1 => QRows::from_q5_1(raw, rows, cols),
            GgmlDType::Q4K => QRows::from_q4_k(raw, rows, cols),
            _ => QRows::from_q5_k(raw, rows, cols),
        };
        r.err().unwrap_or_default()
    }

    /// Every block format's product on every ISA this CPU has (the ISA passed explicitly, whatever `ORCHARD_ISA`
    /// says) equals the f64 product of its own dequantized weights, up to activation rounding; AVX2 and AVX-512 give
    /// the portable kernel's values to float rounding.
    #[test]
    fn every_format_multiplies_on_every_isa() {
        let mut seed = 33;
        let (n, k, m) = (37, 512, 7);
        let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let acts = QActs::quantize(&x, m, k);
        let mut formats: Vec<(String, QRows)> = Vec::new();
        for dt in [GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q4K, GgmlDType::Q5K] {
            let (raw, _) = ggml_fixture(dt, n, k, &mut seed);
            formats.push((format!("{dt:?}"), parse(dt, &raw, n, k)));
        }
        let (raw, _) = q4_1_fixture(n, k, &mut seed);
        formats.push(("Q4_1".into(), QRows::from_q4_1(&raw, n, k).expect("valid")));
        let wf: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        formats.push(("Q8_0".into(), QRows::quantize_q8(&wf, n, k)));
        for (name, rows) in &formats {
            let w = rows.pack();
            let wd = rows.dequantize();
            let want = reference(&wd, &x, n, m, k);
            let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            let wa: Vec<f32> = wd.iter().map(|v| v.abs()).collect();
            // Activation rounding is relative to the magnitudes summed, not to the (cancelling) result.
            let mass = reference(&wa, &xa, n, m, k);
            let mut portable = vec![0f32; m * n];
            qmatmul_on(Isa::Scalar, &w, &acts, &mut portable);
            for isa in super::super::available_isas() {
                let mut out = vec![0f32; m * n];
                qmatmul_on(isa, &w, &acts, &mut out);
                assert_eq!((out.len(), want.len(), portable.len()), (mass.len(), mass.len(), mass.len()));
                for (i, ((a, b), p)) in out.iter().zip(&want).zip(&portable).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-4 * mass[i],
                        "{name} {isa:?} [{i}]: {a} vs f64 {b} (Σ|w·x| {})",
                        mass[i]
                    );
                    assert!((a - p).abs() < 1e-4 * (1.0 + p.abs()), "{name} {isa:?} [{i}]: {a} vs portable {p}");
                }
            }
        }
    }

    /// The vectorisable rounding equals `f32::round` everywhere a Q8_0 code can come from, halves included.
    #[test]
    fn round_half_away_equals_f32_round() {
        let mut v: Vec<f32> = (-1300..=1300).map(|i| i as f32 * 0.1).collect();
        v.extend((-260..=260).map(|i| i as f32 * 0.5));
        v.extend([0.499_999_97, -0.499_999_97, 126.5, -126.5, 127.49, f32::from_bits(0x3f00_0001), -0.0]);
        let mut s = 9u64;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.push((s >> 40) as f32 / (1u64 << 24) as f32 * 260.0 - 130.0);
        }
        for x in v {
            assert_eq!(super::round_half_away(x), x.round(), "{x}");
        }
    }
}
