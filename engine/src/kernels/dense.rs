//! Dense f32 matrix products with weights packed in column panels.
//!
//! A weight matrix `W` (`n × k`, one output feature per row) is stored as panels of [`NR`] output features:
//! `panel[p][k][j] = W[p·NR + j][k]`. The micro-kernel broadcasts one input value and multiplies it into a panel
//! row with fused multiply-adds, so every output element is the FMA chain `acc = fma(x[k], w[k], acc)` over
//! `k = 0..K` in order — the same bits whatever the ISA (AVX-512, AVX2 or `f32::mul_add`), the batch size, the tile
//! shape or the thread count.

use rayon::prelude::*;

use super::{chunk_len, isa, Isa, SyncPtr};

/// Output features per panel.
pub const NR: usize = 32;

/// An f32 `rows × cols` weight matrix in panel layout.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    panels: Vec<f32>,
}

impl PackedMatrix {
    /// Feeds the shape and every packed value to `sink` (for a digest of the weights held).
    pub fn digest_into(&self, sink: &mut dyn FnMut(&[u8])) {
        sink(&(self.rows as u64).to_le_bytes());
        sink(&(self.cols as u64).to_le_bytes());
        for chunk in self.panels.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
            sink(&bytes);
        }
    }

    /// Packs a row-major `rows × cols` matrix.
    pub fn pack(data: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "pack: data size");
        let np = rows.div_ceil(NR);
        let mut panels = vec![0f32; np * cols * NR];
        panels.par_chunks_mut(cols * NR).enumerate().for_each(|(p, panel)| {
            for j in 0..NR.min(rows - p * NR) {
                let src = &data[(p * NR + j) * cols..(p * NR + j + 1) * cols];
                for (k, &v) in src.iter().enumerate() {
                    panel[k * NR + j] = v;
                }
            }
        });
        PackedMatrix { rows, cols, panels }
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.panels.len()
    }

    /// Row `r` (one output feature) into `out`.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let (p, j) = (r / NR, r % NR);
        let panel = &self.panels[p * self.cols * NR..];
        for (k, o) in out.iter_mut().enumerate().take(self.cols) {
            *o = panel[k * NR + j];
        }
    }

    /// The matrix back in row-major order.
    pub fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols).enumerate().for_each(|(r, row)| self.row(r, row));
        out
    }
}

/// `out[m, n] = Σ_k x[m, k] · w[n, k]`; `x` is `m × k`, `out` is `m × w.rows`, both row-major.
pub fn matmul(w: &PackedMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    matmul_on(isa(), w, x, m, out)
}

/// [`matmul`] at a given ISA level (one of [`super::available_isas`]).
pub fn matmul_on(isa: Isa, w: &PackedMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: input size");
    assert_eq!(out.len(), m * n, "matmul: output size");
    assert!(super::available_isas().contains(&isa), "matmul: {isa:?} is not supported by this CPU");
    let np = n.div_ceil(NR);
    let ptr = SyncPtr(out.as_mut_ptr());
    let chunk = chunk_len(np, 1);
    (0..np.div_ceil(chunk)).into_par_iter().for_each(|c| {
        for p in c * chunk..((c + 1) * chunk).min(np) {
            let panel = &w.panels[p * k * NR..(p + 1) * k * NR];
            let cols = NR.min(n - p * NR);
            let mut r0 = 0;
            while r0 < m {
                let mut tile = [[0f32; NR]; MR_MAX];
                let mr = (m - r0).min(MR_MAX);
                panel_kernel(isa, panel, &x[r0 * k..], k, mr, &mut tile);
                for (t, vals) in tile.iter().take(mr).enumerate() {
                    for (j, v) in vals.iter().take(cols).enumerate() {
                        // SAFETY: (r0 + t, p·NR + j) lies inside `out`; only this task writes panel p's columns.
                        unsafe { *ptr.get().add((r0 + t) * n + p * NR + j) = *v };
                    }
                }
                r0 += mr;
            }
        }
    });
}

/// Rows of `x` per micro-kernel call.
const MR_MAX: usize = 6;

fn panel_kernel(isa: Isa, panel: &[f32], x: &[f32], k: usize, mr: usize, tile: &mut [[f32; NR]; MR_MAX]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only reports a level the CPU supports.
        Isa::Avx512 => unsafe {
            match mr {
                6 => x86::kernel_avx512::<6>(panel, x, k, tile),
                5 => x86::kernel_avx512::<5>(panel, x, k, tile),
                4 => x86::kernel_avx512::<4>(panel, x, k, tile),
                3 => x86::kernel_avx512::<3>(panel, x, k, tile),
                2 => x86::kernel_avx512::<2>(panel, x, k, tile),
                _ => x86::kernel_avx512::<1>(panel, x, k, tile),
            }
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            let mut r = 0;
            while r < mr {
                let step = (mr - r).min(3);
                let mut sub = [[0f32; NR]; MR_MAX];
                match step {
                    3 => x86::kernel_avx2::<3>(panel, &x[r * k..], k, &mut sub),
                    2 => x86::kernel_avx2::<2>(panel, &x[r * k..], k, &mut sub),
                    _ => x86::kernel_avx2::<1>(panel, &x[r * k..], k, &mut sub),
                }
                tile[r..r + step].copy_from_slice(&sub[..step]);
                r += step;
            }
        },
        _ => {
            for (t, out) in tile.iter_mut().enumerate().take(mr) {
                let xr = &x[t * k..(t + 1) * k];
                let mut acc = [0f32; NR];
                for (kk, &xv) in xr.iter().enumerate() {
                    let wrow = &panel[kk * NR..(kk + 1) * NR];
                    for j in 0..NR {
                        acc[j] = xv.mul_add(wrow[j], acc[j]);
                    }
                }
                *out = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // index loops over const-generic register tiles
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR_MAX, NR};

    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn kernel_avx512<const R: usize>(panel: &[f32], x: &[f32], k: usize, tile: &mut [[f32; NR]; MR_MAX]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let wp = panel.as_ptr();
        let xp = x.as_ptr();
        for kk in 0..k {
            let w0 = _mm512_loadu_ps(wp.add(kk * NR));
            let w1 = _mm512_loadu_ps(wp.add(kk * NR + 16));
            for t in 0..R {
                let xv = _mm512_set1_ps(*xp.add(t * k + kk));
                acc[t][0] = _mm512_fmadd_ps(xv, w0, acc[t][0]);
                acc[t][1] = _mm512_fmadd_ps(xv, w1, acc[t][1]);
            }
        }
        for t in 0..R {
            _mm512_storeu_ps(tile[t].as_mut_ptr(), acc[t][0]);
            _mm512_storeu_ps(tile[t].as_mut_ptr().add(16), acc[t][1]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_avx2<const R: usize>(panel: &[f32], x: &[f32], k: usize, tile: &mut [[f32; NR]; MR_MAX]) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let wp = panel.as_ptr();
        let xp = x.as_ptr();
        for kk in 0..k {
            let w = [
                _mm256_loadu_ps(wp.add(kk * NR)),
                _mm256_loadu_ps(wp.add(kk * NR + 8)),
                _mm256_loadu_ps(wp.add(kk * NR + 16)),
                _mm256_loadu_ps(wp.add(kk * NR + 24)),
            ];
            for t in 0..R {
                let xv = _mm256_set1_ps(*xp.add(t * k + kk));
                for (a, wv) in acc[t].iter_mut().zip(w) {
                    *a = _mm256_fmadd_ps(xv, wv, *a);
                }
            }
        }
        for t in 0..R {
            for (i, a) in acc[t].iter().enumerate() {
                _mm256_storeu_ps(tile[t].as_mut_ptr().add(8 * i), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// On every ISA the CPU has (passed explicitly): the same bits as one fused multiply-add chain per output.
    #[test]
    fn matmul_matches_naive_fma_chain_bitwise() {
        let (n, k) = (45, 70);
        let w = data(n * k, 1);
        let packed = PackedMatrix::pack(&w, n, k);
        assert_eq!(packed.unpack(), w);
        for (isa, m) in super::super::available_isas().into_iter().flat_map(|i| [1, 2, 5, 6, 7, 13].map(|m| (i, m))) {
            let x = data(m * k, 2);
            let mut out = vec![0f32; m * n];
            matmul_on(isa, &packed, &x, m, &mut out);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f32;
                    for t in 0..k {
                        acc = x[i * k + t].mul_add(w[j * k + t], acc);
                    }
                    assert_eq!(out[i * n + j], acc, "{isa:?} m={m} ({i},{j})");
                }
            }
        }
    }
}
