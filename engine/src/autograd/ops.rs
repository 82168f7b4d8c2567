//! The differentiable operations of the training forward, each with a fused CPU kernel (a candle custom op with its
//! own backward) and a composed reference built from candle's differentiable tensor ops.
//!
//! Why fused kernels (measured on the default model, see `docs/ENGINE.md`): candle's fast CPU kernels for
//! RMSNorm, softmax and rotary embedding have no backward; their composed equivalents allocate one tensor per
//! elementary op; candle's batched matmul issues one gemm per (batch, head) and its matmul backward always computes
//! the weight gradient, which a frozen LoRA base does not need. The composed references are used on devices without
//! the fused kernels (CUDA) and by the tests that check the fused values and gradients against them.
//!
//! Layouts: activations are packed rows (`T × width`, sequences one after another, no padding); attention reads the
//! fused `q ‖ k ‖ v` rows and a list of `(first row, length)` sequences, each causal on its own.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor, D};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::config::Activation;
use crate::kernels::ops::{exp, log_sum_exp};
use crate::kernels::SyncPtr;

type CResult<T> = candle_core::Result<T>;

// ---------------------------------------------------------------------------------------------------------------
// Raw-slice helpers.

/// The contiguous f32 values of a CPU storage under `layout`.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> CResult<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 values of a CPU tensor.
pub(crate) fn with_values<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout, op)?),
        _ => candle_core::bail!("{op}: the fused kernel runs on CPU tensors only"),
    }
}

fn cpu_tensor(values: Vec<f32>, shape: impl Into<Shape>) -> CResult<Tensor> {
    Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
}

/// A strided f32 matrix operand: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl Mat {
    fn rows(ptr: *const f32, rs: usize) -> Self {
        Mat { ptr, rs, cs: 1 }
    }
    /// The transpose of a row-major matrix with row stride `rs`.
    fn transposed(ptr: *const f32, rs: usize) -> Self {
        Mat { ptr, rs: 1, cs: rs }
    }
}

/// One matrix product `dst (m × n) [+]= alpha · a (m × k) · b (k × n)`.
#[derive(Clone, Copy)]
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
    threads: usize,
}

impl Gemm {
    fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm { m, n, k, alpha: 1.0, accumulate: false, threads: 1 }
    }

    /// # Safety
    /// `dst`, `a` and `b` must address `m × n`, `m × k` and `k × n` valid elements with their strides, and `dst`
    /// must not overlap the operands nor be written by anyone else meanwhile.
    unsafe fn run(self, dst: *mut f32, dst_rs: usize, a: Mat, b: Mat) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        let parallelism = if self.threads > 1 { Parallelism::Rayon(self.threads) } else { Parallelism::None };
        // gemm computes dst = alpha·dst + beta·a·b (dst read only when `read_dst`).
        gemm::gemm(
            self.m,
            self.n,
            self.k,
            dst,
            1,
            dst_rs as isize,
            self.accumulate,
            a.ptr,
            a.cs as isize,
            a.rs as isize,
            b.ptr,
            b.cs as isize,
            b.rs as isize,
            1.0,
            self.alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Threads for one large product (candle's matmul asks the same pool size).
fn pool_threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `x · wᵀ` for row-major `x` (`rows × k`) and `w` (`n × k`).
fn matmul_xwt(x: &[f32], w: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    let g = Gemm { threads: pool_threads(), ..Gemm::new(rows, n, k) };
    // SAFETY: sizes match the slices (checked by the callers' shapes); `out` is fresh.
    unsafe { g.run(out.as_mut_ptr(), n, Mat::rows(x.as_ptr(), k), Mat::transposed(w.as_ptr(), k)) };
    out
}

fn dims2(layout: &Layout, op: &str) -> CResult<(usize, usize)> {
    match layout.shape().dims() {
        &[a, b] => Ok((a, b)),
        other => candle_core::bail!("{op}: expected a matrix, got shape {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Linear layers.

/// `y = x · wᵀ` with both gradients, for trainable weights (`x`: `T × in`, `w`: `out × in`).
struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "orchard-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let ((rows, k), (n, k2)) = (dims2(xl, self.name())?, dims2(wl, self.name())?);
        if k != k2 {
            candle_core::bail!("linear: input width {k} but weight width {k2}");
        }
        let out = matmul_xwt(slice(xs, xl, self.name())?, slice(ws, wl, self.name())?, rows, n, k);
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, g) = (x.detach(), w.detach(), g.detach());
        // dx = g · w ; dw = gᵀ · x (the weight's own layout, no transpose afterwards).
        Ok((Some(g.matmul(&w)?), Some(g.t()?.matmul(&x)?)))
    }
}

/// `y = x · wᵀ` for a frozen weight: the backward computes only the input gradient.
struct FrozenLinearOp {
    w: Tensor,
}

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "orchard-frozen-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (rows, k) = dims2(xl, self.name())?;
        let (n, k2) = self.w.dims2()?;
        if k != k2 {
            candle_core::bail!("linear: input width {k} but weight width {k2}");
        }
        let x = slice(xs, xl, self.name())?;
        let out = with_values(&self.w, self.name(), |w| Ok(matmul_xwt(x, w, rows, n, k)))?;
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(g.detach().matmul(&self.w)?))
    }
}

/// `x · wᵀ`: fused kernels when `fused`, candle's matmul otherwise. A `w` that is not a variable (and not computed
/// from one) gets no gradient either way, but only the fused path skips computing it.
pub(crate) fn linear(x: &Tensor, w: &Tensor, fused: bool) -> CResult<Tensor> {
    if !fused {
        return x.matmul(&w.t()?);
    }
    let x = x.contiguous()?;
    if w.track_op() {
        x.apply_op2(&w.contiguous()?, LinearOp)
    } else {
        x.apply_op1(FrozenLinearOp { w: w.contiguous()? })
    }
}

/// One adapted block of a fused frozen weight: rows `out_row..out_row + rows` of the output get
/// `scale · B · A · x`, with `A` = rows `index·r..(index+1)·r` of the stacked `A`s and `B` = rows
/// `b_row..b_row + rows` of the stacked `B`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoraBlock {
    pub out_row: usize,
    pub rows: usize,
    pub b_row: usize,
    /// Seed of this block's dropout mask (used when `dropout > 0`).
    pub seed: u64,
}

/// `y = x · Wᵀ + Σ_blocks scale · (m_i ⊙ x) · A_iᵀ · B_iᵀ` on the blocks' rows, for a frozen `W` (`out × in`),
/// stacked adapters `A` (`blocks·r × in`) and `B` (`Σ rows × r`), and dropout masks `m_i` regenerated from their
/// seeds (never stored). The graph keeps only `x`: no per-adapter intermediate of `T × out` values.
struct LoraLinearOp {
    w: Tensor,
    blocks: Arc<Vec<LoraBlock>>,
    rank: usize,
    scale: f32,
    dropout: f32,
}

impl LoraLinearOp {
    /// The adapter input of block `i`: `x`, or `x` under its dropout mask.
    fn input<'a>(&self, x: &'a [f32], i: usize) -> std::borrow::Cow<'a, [f32]> {
        if self.dropout <= 0.0 {
            return std::borrow::Cow::Borrowed(x);
        }
        let mask = dropout_values(self.blocks[i].seed, x.len(), self.dropout);
        std::borrow::Cow::Owned(x.iter().zip(&mask).map(|(a, m)| a * m).collect())
    }

    /// `low_i = input_i · A_iᵀ` (`T × r`).
    fn low(&self, input: &[f32], a: &[f32], i: usize, rows: usize, cols: usize) -> Vec<f32> {
        let r = self.rank;
        matmul_xwt(input, &a[i * r * cols..(i + 1) * r * cols], rows, r, cols)
    }
}

impl candle_core::CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "orchard-lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
        b_s: &CpuStorage,
        bl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (rows, k) = dims2(xl, self.name())?;
        let (n, k2) = self.w.dims2()?;
        let (ar, ak) = dims2(al, self.name())?;
        let (br, brank) = dims2(bl, self.name())?;
        let need_b: usize = self.blocks.iter().map(|b| b.rows).sum();
        if k != k2 || ak != k || ar != self.blocks.len() * self.rank || brank != self.rank || br != need_b {
            candle_core::bail!("lora_linear: shapes x {rows}×{k}, w {n}×{k2}, A {ar}×{ak}, B {br}×{brank} disagree");
        }
        let (x, a, b) = (slice(xs, xl, self.name())?, slice(a_s, al, self.name())?, slice(b_s, bl, self.name())?);
        let mut y = with_values(&self.w, self.name(), |w| Ok(matmul_xwt(x, w, rows, n, k)))?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let low = self.low(&self.input(x, i), a, i, rows, k);
            let g = Gemm {
                alpha: self.scale,
                accumulate: true,
                threads: pool_threads(),
                ..Gemm::new(rows, blk.rows, self.rank)
            };
            // SAFETY: block rows lie inside y's columns; B's block inside b.
            unsafe {
                g.run(
                    y.as_mut_ptr().add(blk.out_row),
                    n,
                    Mat::rows(low.as_ptr(), self.rank),
                    Mat::transposed(b[blk.b_row * self.rank..].as_ptr(), self.rank),
                )
            };
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, k) = x.dims2()?;
        let n = self.w.dim(0)?;
        let r = self.rank;
        let (na, nb) = (a.elem_count(), b.elem_count());
        let mut dx: Vec<f32> = g.detach().matmul(&self.w)?.flatten_all()?.to_vec1()?;
        let (mut da, mut db) = (vec![0f32; na], vec![0f32; nb]);
        let threads = pool_threads();
        with_values(x, self.name(), |x| {
            with_values(a, self.name(), |a| {
                with_values(b, self.name(), |b| {
                    with_values(g, self.name(), |g| {
                        for (i, blk) in self.blocks.iter().enumerate() {
                            let input = self.input(x, i);
                            let low = self.low(&input, a, i, rows, k);
                            let g_i = Mat::rows(g[blk.out_row..].as_ptr(), n);
                            let b_i = b[blk.b_row * r..].as_ptr();
                            let a_i = a[i * r * k..].as_ptr();
                            // gb = g_i · B_i (T × r)
                            let mut gb = vec![0f32; rows * r];
                            let mut dxi = vec![0f32; rows * k];
                            // SAFETY: every operand addresses its block inside the buffers checked in forward.
                            unsafe {
                                Gemm { threads, ..Gemm::new(rows, r, blk.rows) }.run(
                                    gb.as_mut_ptr(),
                                    r,
                                    g_i,
                                    Mat::rows(b_i, r),
                                );
                                // dB_i = scale · g_iᵀ · low
                                Gemm { alpha: self.scale, threads, ..Gemm::new(blk.rows, r, rows) }.run(
                                    db[blk.b_row * r..].as_mut_ptr(),
                                    r,
                                    Mat::transposed(g[blk.out_row..].as_ptr(), n),
                                    Mat::rows(low.as_ptr(), r),
                                );
                                // dA_i = scale · gbᵀ · input
                                Gemm { alpha: self.scale, threads, ..Gemm::new(r, k, rows) }.run(
                                    da[i * r * k..].as_mut_ptr(),
                                    k,
                                    Mat::transposed(gb.as_ptr(), r),
                                    Mat::rows(input.as_ptr(), k),
                                );
                                // dx_i = scale · gb · A_i (then masked)
                                Gemm { alpha: self.scale, threads, ..Gemm::new(rows, k, r) }.run(
                                    dxi.as_mut_ptr(),
                                    k,
                                    Mat::rows(gb.as_ptr(), r),
                                    Mat::rows(a_i, k),
                                );
                            }
                            if self.dropout > 0.0 {
                                let mask = dropout_values(blk.seed, rows * k, self.dropout);
                                dxi.iter_mut().zip(&mask).for_each(|(d, m)| *d *= m);
                            }
                            dx.iter_mut().zip(&dxi).for_each(|(d, v)| *d += v);
                        }
                        Ok(())
                    })
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, (rows, k))?),
            Some(cpu_tensor(da, a.shape().clone())?),
            Some(cpu_tensor(db, b.shape().clone())?),
        ))
    }
}

/// Inverted-dropout mask values (`0` or `1 / (1 − p)`), a pure function of `seed` and the index.
pub(crate) fn dropout_values(seed: u64, len: usize, p: f32) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    (0..len)
        .into_par_iter()
        .map(|i| {
            // SplitMix64 of (seed, index): counter-based, so masks do not depend on evaluation order.
            let z = orchard_core::seed::splitmix64_at(seed, i as u64 + 1);
            if ((z >> 40) as f32 / (1u64 << 24) as f32) < p {
                0.0
            } else {
                keep
            }
        })
        .collect()
}

/// The adapters of one frozen fused weight, as [`lora_linear`] applies them.
pub(crate) struct LoraParts<'a> {
    /// `(block, A, B)` per adapted projection.
    pub blocks: Vec<(LoraBlock, &'a Tensor, &'a Tensor)>,
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
}

/// `x · wᵀ` plus the adapters' updates on their rows (see [`LoraLinearOp`]); `w` is frozen.
pub(crate) fn lora_linear(x: &Tensor, w: &Tensor, parts: &LoraParts<'_>, fused: bool) -> CResult<Tensor> {
    let (rows, k) = x.dims2()?;
    if fused {
        let a = Tensor::cat(&parts.blocks.iter().map(|(_, a, _)| *a).collect::<Vec<_>>(), 0)?;
        let b = Tensor::cat(&parts.blocks.iter().map(|(_, _, b)| *b).collect::<Vec<_>>(), 0)?;
        let mut b_row = 0;
        let blocks: Vec<LoraBlock> = parts
            .blocks
            .iter()
            .map(|(blk, _, _)| {
                let out = LoraBlock { b_row, ..*blk };
                b_row += blk.rows;
                out
            })
            .collect();
        let op = LoraLinearOp {
            w: w.contiguous()?,
            blocks: Arc::new(blocks),
            rank: parts.rank,
            scale: parts.scale,
            dropout: parts.dropout,
        };
        return x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op);
    }
    let n = w.dim(0)?;
    let mut y = x.matmul(&w.t()?)?;
    for (blk, a, b) in &parts.blocks {
        let input = if parts.dropout > 0.0 {
            let mask = Tensor::from_vec(dropout_values(blk.seed, rows * k, parts.dropout), (rows, k), x.device())?;
            (x * mask)?
        } else {
            x.clone()
        };
        let delta = (input.matmul(&a.t()?)?.matmul(&b.t()?)? * parts.scale as f64)?;
        let mut pieces = Vec::new();
        if blk.out_row > 0 {
            pieces.push(Tensor::zeros((rows, blk.out_row), x.dtype(), x.device())?);
        }
        pieces.push(delta);
        if blk.out_row + blk.rows < n {
            pieces.push(Tensor::zeros((rows, n - blk.out_row - blk.rows), x.dtype(), x.device())?);
        }
        y = (y + Tensor::cat(&pieces, 1)?)?;
    }
    Ok(y)
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm.

/// `y = x / sqrt(mean(x²) + eps) · w`, row by row (HF `LlamaRMSNorm`).
struct RmsNormOp {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "orchard-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (rows, d) = dims2(xl, self.name())?;
        let (x, w) = (slice(xs, xl, self.name())?, slice(ws, wl, self.name())?);
        if w.len() != d {
            candle_core::bail!("rms_norm: weight has {} values for rows of {d}", w.len());
        }
        let mut out = vec![0f32; rows * d];
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, xr)| {
            let r = inv_rms(xr, self.eps);
            for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
                *o = wv * (xv * r);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, d))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (rows, d) = x.dims2()?;
        let eps = self.eps;
        with_values(x, self.name(), |x| {
            with_values(w, self.name(), |w| {
                with_values(g, self.name(), |g| {
                    // dx = r·(g⊙w) − x·r³·mean(g⊙w⊙x);  dw = Σ_rows g⊙x·r.
                    let mut dx = vec![0f32; rows * d];
                    // dw is summed over rows in fixed chunks, then in chunk order: the same bits on every run
                    // (a resumed run must retrace an uninterrupted one exactly).
                    const ROWS: usize = 32;
                    let partial: Vec<Vec<f32>> = dx
                        .par_chunks_mut(ROWS * d)
                        .zip(x.par_chunks(ROWS * d).zip(g.par_chunks(ROWS * d)))
                        .map(|(dxc, (xc, gc))| {
                            let mut dw = vec![0f32; d];
                            for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                                let r = inv_rms(xr, eps);
                                let dot: f32 = xr.iter().zip(gr).zip(w).map(|((x, g), w)| x * g * w).sum();
                                let c = r * r * r * dot / d as f32;
                                for j in 0..d {
                                    dxr[j] = r * gr[j] * w[j] - xr[j] * c;
                                    dw[j] += gr[j] * xr[j] * r;
                                }
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0f32; d];
                    for p in &partial {
                        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
                    }
                    Ok((Some(cpu_tensor(dx, (rows, d))?), Some(cpu_tensor(dw, d)?)))
                })
            })
        })
    }
}

/// RMSNorm over the last dimension of a `T × d` matrix.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32, fused: bool) -> CResult<Tensor> {
    if fused {
        return x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps });
    }
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?.sqrt()?.recip()?;
    x.broadcast_mul(&r)?.broadcast_mul(w)
}

// ---------------------------------------------------------------------------------------------------------------
// Rotary embedding.

/// Cosines and sines of each row's rotary angles (`T × half` each), HF's float32 computation.
#[derive(Debug, Clone)]
pub(crate) struct RopeTable {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    half: usize,
}

impl RopeTable {
    pub(crate) fn new(positions: &[usize], inv_freq: &[f32]) -> Self {
        let half = inv_freq.len();
        let (mut cos, mut sin) = (vec![0f32; positions.len() * half], vec![0f32; positions.len() * half]);
        for (t, &pos) in positions.iter().enumerate() {
            for (i, &f) in inv_freq.iter().enumerate() {
                // HF: freqs = position (f32) · inv_freq (f32), then cos/sin in f32.
                let angle = pos as f32 * f;
                cos[t * half + i] = angle.cos();
                sin[t * half + i] = angle.sin();
            }
        }
        RopeTable { cos: Arc::new(cos), sin: Arc::new(sin), half }
    }

    fn tensors(&self, rows: usize, device: &candle_core::Device) -> CResult<(Tensor, Tensor)> {
        let cos = Tensor::from_slice(self.cos.as_slice(), (rows, 1, self.half), device)?;
        let sin = Tensor::from_slice(self.sin.as_slice(), (rows, 1, self.half), device)?;
        Ok((cos, sin))
    }
}

/// Half rotation (HF `rotate_half`) of the first `heads` heads of each row; the rest of the row is copied.
struct RopeOp {
    table: RopeTable,
    heads: usize,
}

impl RopeOp {
    /// Rotates by the table's angles (`sign` = 1) or back (`sign` = −1, the backward).
    fn apply(&self, x: &[f32], width: usize, sign: f32) -> Vec<f32> {
        let half = self.table.half;
        let hd = 2 * half;
        let mut out = x.to_vec();
        out.par_chunks_mut(width).enumerate().for_each(|(t, row)| {
            let (cos, sin) = (&self.table.cos[t * half..(t + 1) * half], &self.table.sin[t * half..(t + 1) * half]);
            for h in 0..self.heads {
                let head = &mut row[h * hd..(h + 1) * hd];
                for i in 0..half {
                    let (x1, x2, s) = (head[i], head[i + half], sign * sin[i]);
                    head[i] = x1 * cos[i] - x2 * s;
                    head[i + half] = x2 * cos[i] + x1 * s;
                }
            }
        });
        out
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "orchard-rope"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (rows, width) = dims2(xl, self.name())?;
        if rows * self.table.half != self.table.cos.len() || self.heads * 2 * self.table.half > width {
            candle_core::bail!("rope: table or head count does not fit a {rows}×{width} input");
        }
        Ok((CpuStorage::F32(self.apply(slice(xs, xl, self.name())?, width, 1.0)), xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let (rows, width) = g.dims2()?;
        // The rotation is orthogonal: its gradient is the inverse rotation.
        with_values(g, self.name(), |g| Ok(Some(cpu_tensor(self.apply(g, width, -1.0), (rows, width))?)))
    }
}

/// Applies the rotary embedding to the first `heads` heads (of width `2·half`) of each row of `x` (`T × width`).
pub(crate) fn rope(x: &Tensor, table: &RopeTable, heads: usize, fused: bool) -> CResult<Tensor> {
    if fused {
        return x.contiguous()?.apply_op1(RopeOp { table: table.clone(), heads });
    }
    let (rows, width) = x.dims2()?;
    let hd = 2 * table.half;
    let rot = x.narrow(1, 0, heads * hd)?.reshape((rows, heads, hd))?;
    let (x1, x2) = (rot.narrow(2, 0, table.half)?, rot.narrow(2, table.half, table.half)?);
    let (cos, sin) = table.tensors(rows, x.device())?;
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    let rotated = Tensor::cat(&[r1, r2], 2)?.reshape((rows, heads * hd))?;
    if heads * hd == width {
        return Ok(rotated);
    }
    Tensor::cat(&[rotated, x.narrow(1, heads * hd, width - heads * hd)?], 1)
}

// ---------------------------------------------------------------------------------------------------------------
// Causal attention over packed sequences.

/// Head counts of the fused `q ‖ k ‖ v` rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Scores are `scale · q·k` (head_dim^-1/2, or Gemma's query_pre_attn_scalar^-1/2).
    pub scale: f32,
    /// Sliding window: a row sees the keys of the last `window` positions only (Gemma 3's local layers).
    pub window: Option<usize>,
}

impl AttnShape {
    fn qkv_width(self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
    fn out_width(self) -> usize {
        self.heads * self.head_dim
    }
    fn k_col(self, j: usize) -> usize {
        (self.heads + j) * self.head_dim
    }
    fn v_col(self, j: usize) -> usize {
        (self.heads + self.kv_heads + j) * self.head_dim
    }
}

/// Softmax(QKᵀ/√d + causal mask)·V per sequence and head; query head `h` reads KV head `h / (heads / kv_heads)`
/// (GQA). The backward recomputes the probabilities instead of keeping `heads · L²` floats per layer alive.
struct AttentionOp {
    seqs: Arc<Vec<(usize, usize)>>,
    /// Per sequence, its branches when it packs several continuations of one prompt.
    forks: Arc<Vec<Option<Fork>>>,
    shape: AttnShape,
}

/// `(first row, length)` of each packed sequence.
pub(crate) type Spans = Arc<Vec<(usize, usize)>>;
/// Each packed sequence's branches, if it has any.
pub(crate) type Forks = Arc<Vec<Option<Fork>>>;

/// A sequence `prompt ‖ branch 0 ‖ branch 1 ‖ …`: each branch's rows see the prompt and their own branch only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fork {
    /// Prompt rows.
    pub prompt: usize,
    /// First row of each branch (the first is `prompt`), increasing.
    pub starts: Vec<usize>,
}

impl Fork {
    /// The columns row `r` must not see: the earlier branches (between the prompt and its own branch).
    fn skip(&self, r: usize) -> std::ops::Range<usize> {
        if r < self.prompt {
            return 0..0;
        }
        let k = self.starts.partition_point(|&s| s <= r);
        self.prompt..self.starts[k.max(1) - 1]
    }

    /// The first row of the branch row `r` belongs to (`r` itself's prompt: 0).
    fn branch_start(&self, r: usize) -> usize {
        if r < self.prompt {
            return 0;
        }
        let k = self.starts.partition_point(|&s| s <= r);
        self.starts[k.max(1) - 1]
    }
}

/// What row `r` of a sequence hides: a prefix of columns `0..cut` (keys outside its sliding window) and a range
/// `skip` (a fork's earlier branches). The columns it sees are the rest of `0..=r`, in position order.
fn hidden_columns(r: usize, fork: Option<&Fork>, window: Option<usize>) -> (usize, std::ops::Range<usize>) {
    let skip = fork.map_or(0..0, |f| f.skip(r));
    let Some(w) = window else { return (0, skip) };
    let (prompt, own) = match fork {
        Some(f) if r >= f.prompt => (f.prompt, f.branch_start(r)),
        _ => return ((r + 1).saturating_sub(w), skip),
    };
    // Row r sits at position prompt + (r − own); positions below `first` are outside the window.
    let first = (prompt + r - own + 1).saturating_sub(w);
    if first <= prompt {
        (first, skip)
    } else {
        (own + first - prompt, 0..0)
    }
}

/// Softmax of `row` with the columns `0..cut` and those in `skip` left out (set to zero).
fn softmax_skipping(row: &mut [f32], cut: usize, skip: std::ops::Range<usize>) {
    if cut > 0 {
        let (outside, rest) = row.split_at_mut(cut);
        outside.fill(0.0);
        let skip = skip.start.saturating_sub(cut)..skip.end.saturating_sub(cut);
        return softmax_skipping(rest, 0, skip);
    }
    if skip.is_empty() {
        return softmax_in_place(row);
    }
    let (head, rest) = row.split_at_mut(skip.start);
    let (hole, tail) = rest.split_at_mut(skip.len());
    let max = head.iter().chain(tail.iter()).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in head.iter_mut().chain(tail.iter_mut()) {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    head.iter_mut().chain(tail.iter_mut()).for_each(|v| *v *= inv);
    hole.fill(0.0);
}

impl AttentionOp {
    /// Causal softmax probabilities `P` (`len × len`, zero above the diagonal) of query head `h` of one sequence.
    fn probs(&self, qkv: &[f32], q: usize, h: usize, p: &mut [f32]) {
        let (start, len) = self.seqs[q];
        let fork = self.forks.get(q).and_then(Option::as_ref);
        let s = self.shape;
        let (w, hd) = (s.qkv_width(), s.head_dim);
        let j = h / (s.heads / s.kv_heads);
        let base = start * w;
        let g = Gemm { alpha: s.scale, ..Gemm::new(len, len, hd) };
        // SAFETY: q and k of rows start..start+len lie inside `qkv`; `p` holds len² values.
        unsafe {
            g.run(p.as_mut_ptr(), len, Mat::rows(qkv[base + h * hd..].as_ptr(), w), {
                Mat::transposed(qkv[base + s.k_col(j)..].as_ptr(), w)
            })
        };
        for (r, row) in p.chunks_mut(len).enumerate() {
            let (live, masked) = row.split_at_mut(r + 1);
            let (cut, skip) = hidden_columns(r, fork, s.window);
            softmax_skipping(live, cut, skip);
            masked.fill(0.0);
        }
    }

    fn forward(&self, qkv: &[f32], rows: usize) -> Vec<f32> {
        let s = self.shape;
        let (w, ow, hd) = (s.qkv_width(), s.out_width(), s.head_dim);
        let mut out = vec![0f32; rows * ow];
        let ptr = SyncPtr(out.as_mut_ptr());
        let tasks: Vec<(usize, usize)> = (0..self.seqs.len()).flat_map(|q| (0..s.heads).map(move |h| (q, h))).collect();
        tasks.par_iter().for_each(|&(q, h)| {
            let (start, len) = self.seqs[q];
            let j = h / (s.heads / s.kv_heads);
            let mut p = vec![0f32; len * len];
            self.probs(qkv, q, h, &mut p);
            // SAFETY: task (q, h) alone writes rows of sequence q, columns of head h.
            unsafe {
                Gemm::new(len, hd, len).run(
                    ptr.at(start * ow + h * hd),
                    ow,
                    Mat::rows(p.as_ptr(), len),
                    Mat::rows(qkv[start * w + s.v_col(j)..].as_ptr(), w),
                )
            };
        });
        out
    }

    fn backward(&self, qkv: &[f32], dout: &[f32], rows: usize) -> Vec<f32> {
        let s = self.shape;
        let (w, ow, hd) = (s.qkv_width(), s.out_width(), s.head_dim);
        let group = s.heads / s.kv_heads;
        let scale = s.scale;
        let mut dqkv = vec![0f32; rows * w];
        let ptr = SyncPtr(dqkv.as_mut_ptr());
        let tasks: Vec<(usize, usize)> =
            (0..self.seqs.len()).flat_map(|q| (0..s.kv_heads).map(move |j| (q, j))).collect();
        // One task per (sequence, KV head): it alone writes dK and dV of that head and dQ of its query heads.
        tasks.par_iter().for_each(|&(q, j)| {
            let (start, len) = self.seqs[q];
            let (mut p, mut dp) = (vec![0f32; len * len], vec![0f32; len * len]);
            for h in j * group..(j + 1) * group {
                self.probs(qkv, q, h, &mut p);
                let d_o = Mat::rows(dout[start * ow + h * hd..].as_ptr(), ow);
                let acc = Gemm { accumulate: true, ..Gemm::new(len, hd, len) };
                // SAFETY: see the task comment; all operands lie inside their buffers.
                unsafe {
                    // dV_j += Pᵀ · dO_h
                    acc.run(ptr.at(start * w + s.v_col(j)), w, Mat::transposed(p.as_ptr(), len), d_o);
                    // dP = dO_h · V_jᵀ
                    Gemm::new(len, len, hd).run(
                        dp.as_mut_ptr(),
                        len,
                        d_o,
                        Mat::transposed(qkv[start * w + s.v_col(j)..].as_ptr(), w),
                    );
                }
                // dS = P ⊙ (dP − rowsum(P ⊙ dP)), zero above the diagonal (and wherever a fork masks: P is zero there).
                for (r, (pr, dr)) in p.chunks(len).zip(dp.chunks_mut(len)).enumerate() {
                    let dot: f32 = pr[..=r].iter().zip(&dr[..=r]).map(|(a, b)| a * b).sum();
                    for c in 0..=r {
                        dr[c] = pr[c] * (dr[c] - dot);
                    }
                    dr[r + 1..].fill(0.0);
                }
                let scaled = Gemm { alpha: scale, accumulate: true, ..Gemm::new(len, hd, len) };
                // SAFETY: as above.
                unsafe {
                    // dQ_h = scale · dS · K_j
                    scaled.run(
                        ptr.at(start * w + h * hd),
                        w,
                        Mat::rows(dp.as_ptr(), len),
                        Mat::rows(qkv[start * w + s.k_col(j)..].as_ptr(), w),
                    );
                    // dK_j += scale · dSᵀ · Q_h
                    scaled.run(
                        ptr.at(start * w + s.k_col(j)),
                        w,
                        Mat::transposed(dp.as_ptr(), len),
                        Mat::rows(qkv[start * w + h * hd..].as_ptr(), w),
                    );
                }
            }
        });
        dqkv
    }

    fn check(&self, rows: usize, width: usize) -> CResult<()> {
        let s = self.shape;
        if width != s.qkv_width() || s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
            candle_core::bail!("attention: rows of {width} do not hold {} q and {} kv heads", s.heads, s.kv_heads);
        }
        let mut next = 0;
        for &(start, len) in self.seqs.iter() {
            if start != next {
                candle_core::bail!("attention: sequences must tile the rows in order");
            }
            next = start + len;
        }
        if next != rows {
            candle_core::bail!("attention: sequences cover {next} rows of {rows}");
        }
        Ok(())
    }
}

/// Numerically stable softmax of one row, in place.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "orchard-causal-attention"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (rows, width) = dims2(xl, self.name())?;
        self.check(rows, width)?;
        let out = self.forward(slice(xs, xl, self.name())?, rows);
        Ok((CpuStorage::F32(out), Shape::from((rows, self.shape.out_width()))))
    }

    fn bwd(&self, qkv: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let (rows, width) = qkv.dims2()?;
        let dqkv =
            with_values(qkv, self.name(), |qkv| with_values(g, self.name(), |g| Ok(self.backward(qkv, g, rows))))?;
        Ok(Some(cpu_tensor(dqkv, (rows, width))?))
    }
}

/// Causal self-attention of packed sequences (`seqs`: `(first row, length)`, tiling the rows in order) on fused
/// `q ‖ k ‖ v` rows; returns `T × heads·head_dim`.
pub(crate) fn attention(
    qkv: &Tensor,
    (seqs, forks): (&Spans, &Forks),
    shape: AttnShape,
    fused: bool,
) -> CResult<Tensor> {
    if fused {
        return qkv.contiguous()?.apply_op1(AttentionOp { seqs: seqs.clone(), forks: forks.clone(), shape });
    }
    let (hd, group) = (shape.head_dim, shape.heads / shape.kv_heads);
    let mut outs = Vec::with_capacity(seqs.len());
    for (q, &(start, len)) in seqs.iter().enumerate() {
        let fork = forks.get(q).and_then(Option::as_ref);
        let visible = |r: usize, c: usize| {
            let (cut, skip) = hidden_columns(r, fork, shape.window);
            c <= r && c >= cut && !skip.contains(&c)
        };
        let rows = qkv.narrow(0, start, len)?;
        // (L, H, hd) -> (KVH, G·L, hd): the query heads sharing a KV head become rows of one product.
        let q = rows.narrow(1, 0, shape.heads * hd)?.reshape((len, shape.kv_heads, group, hd))?;
        let q = q.permute((1, 2, 0, 3))?.reshape((shape.kv_heads, group * len, hd))?.contiguous()?;
        let k = rows.narrow(1, shape.k_col(0), shape.kv_heads * hd)?.reshape((len, shape.kv_heads, hd))?;
        let k = k.transpose(0, 1)?.contiguous()?;
        let v = rows.narrow(1, shape.v_col(0), shape.kv_heads * hd)?.reshape((len, shape.kv_heads, hd))?;
        let v = v.transpose(0, 1)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * shape.scale as f64)?;
        let mask: Vec<f32> = (0..group * len)
            .flat_map(|r| (0..len).map(move |c| (r, c)))
            .map(|(r, c)| if visible(r % len, c) { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        let mask = Tensor::from_vec(mask, (group * len, len), qkv.device())?;
        let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
        let o = probs.matmul(&v)?.reshape((shape.kv_heads, group, len, hd))?;
        outs.push(o.permute((2, 0, 1, 3))?.reshape((len, shape.heads * hd))?);
    }
    Tensor::cat(&outs, 0)
}

// ---------------------------------------------------------------------------------------------------------------
// Gated MLP activations: SwiGLU and GeGLU.

/// `act(gate) ⊙ up` of rows `[gate (f) | up (f)]`, `act` SiLU or the tanh GELU.
struct GatedOp(Activation);

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

const GELU_K: f32 = 0.797_884_6; // √(2/π)

/// `(gelu_tanh(x), d gelu_tanh / dx)`, with the inference forward's `tanh`.
fn gelu_tanh(x: f32) -> (f32, f32) {
    let u = GELU_K * (x + 0.044_715 * x * x * x);
    let t = crate::kernels::ops::tanh(u);
    let du = GELU_K * (1.0 + 3.0 * 0.044_715 * x * x);
    (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
}

impl CustomOp1 for GatedOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Activation::Silu => "orchard-silu-mul",
            Activation::GeluTanh => "orchard-gelu-mul",
        }
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (rows, w2) = dims2(xl, self.name())?;
        let f = w2 / 2;
        let x = slice(xs, xl, self.name())?;
        let mut out = vec![0f32; rows * f];
        let act = self.0;
        out.par_chunks_mut(f).zip(x.par_chunks(w2)).for_each(|(o, row)| {
            let (g, u) = row.split_at(f);
            match act {
                Activation::Silu => (0..f).for_each(|i| o[i] = g[i] * sigmoid(g[i]) * u[i]),
                Activation::GeluTanh => (0..f).for_each(|i| o[i] = gelu_tanh(g[i]).0 * u[i]),
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, f))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let (rows, w2) = x.dims2()?;
        let f = w2 / 2;
        let act = self.0;
        let dx = with_values(x, self.name(), |x| {
            with_values(g, self.name(), |g| {
                let mut dx = vec![0f32; rows * w2];
                dx.par_chunks_mut(w2).zip(x.par_chunks(w2).zip(g.par_chunks(f))).for_each(|(d, (row, go))| {
                    let (gate, up) = row.split_at(f);
                    let (dg, du) = d.split_at_mut(f);
                    for i in 0..f {
                        match act {
                            Activation::Silu => {
                                let s = sigmoid(gate[i]);
                                du[i] = go[i] * gate[i] * s;
                                dg[i] = go[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
                            }
                            Activation::GeluTanh => {
                                let (a, slope) = gelu_tanh(gate[i]);
                                du[i] = go[i] * a;
                                dg[i] = go[i] * up[i] * slope;
                            }
                        }
                    }
                });
                Ok(dx)
            })
        })?;
        Ok(Some(cpu_tensor(dx, (rows, w2))?))
    }
}

/// SwiGLU or GeGLU of `T × 2f` rows `[gate | up]`.
pub(crate) fn gated(gate_up: &Tensor, act: Activation, fused: bool) -> CResult<Tensor> {
    if fused {
        return gate_up.contiguous()?.apply_op1(GatedOp(act));
    }
    let f = gate_up.dim(1)? / 2;
    let gate = gate_up.narrow(1, 0, f)?;
    // candle's `gelu` is the tanh approximation.
    let gate = match act {
        Activation::Silu => gate.silu()?,
        Activation::GeluTanh => gate.gelu()?,
    };
    gate * gate_up.narrow(1, f, f)?
}

// ---------------------------------------------------------------------------------------------------------------
// Token log-probabilities.

/// `log softmax(logits[n])[target[n]]` per row; the backward is `g · (onehot − softmax)`.
struct TokenLogprobsOp {
    targets: Arc<Vec<u32>>,
}

impl CustomOp1 for TokenLogprobsOp {
    fn name(&self) -> &'static str {
        "orchard-token-logprobs"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (rows, vocab) = dims2(xl, self.name())?;
        if rows != self.targets.len() || self.targets.iter().any(|&t| t as usize >= vocab) {
            candle_core::bail!("token_logprobs: {} targets for {rows} rows of {vocab} logits", self.targets.len());
        }
        let x = slice(xs, xl, self.name())?;
        let out: Vec<f32> = x
            .par_chunks(vocab)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| row[t as usize] - log_sum_exp(row) as f32)
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(rows)))
    }

    fn bwd(&self, logits: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let (rows, vocab) = logits.dims2()?;
        let dx = with_values(logits, self.name(), |x| {
            with_values(g, self.name(), |g| {
                let mut dx = vec![0f32; rows * vocab];
                dx.par_chunks_mut(vocab).zip(x.par_chunks(vocab)).enumerate().for_each(|(n, (d, row))| {
                    let lse = log_sum_exp(row) as f32;
                    for (d, &v) in d.iter_mut().zip(row) {
                        *d = -g[n] * exp(v - lse);
                    }
                    d[self.targets[n] as usize] += g[n];
                });
                Ok(dx)
            })
        })?;
        Ok(Some(cpu_tensor(dx, (rows, vocab))?))
    }
}

/// Log-probability of `targets[n]` under the softmax of row `n` of `logits` (`N × V`); returns `N` values.
pub(crate) fn token_logprobs(logits: &Tensor, targets: &[u32], fused: bool) -> CResult<Tensor> {
    if fused {
        return logits.contiguous()?.apply_op1(TokenLogprobsOp { targets: Arc::new(targets.to_vec()) });
    }
    let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    candle_nn::ops::log_softmax(logits, D::Minus1)?.gather(&idx, 1)?.squeeze(1)
}
