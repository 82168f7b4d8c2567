//! Row-wise operations of the decoder: RMSNorm, rotary embedding, SwiGLU, residual add, log-softmax.
//!
//! Each row is processed on its own with a fixed operation order (see the module docs of [`super`]). The formulas
//! follow HF transformers' `LlamaRMSNorm`, `apply_rotary_pos_emb` (half rotation) and `nn.SiLU` in float32.

use rayon::prelude::*;

use super::{isa, Isa};
use crate::config::Activation;

/// Lanes of the partial sums: wide enough for SIMD, fixed so results do not depend on the ISA.
const LANES: usize = 8;

/// `Σ a[i]·b[i]` with 8 interleaved partial sums (vectorisable, deterministic).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    s + tail
}

/// `out = x / sqrt(mean(x²) + eps) · w`, row by row (`x` and `out` are `rows × w.len()`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d).zip(x.par_chunks(d)).with_min_len(16).for_each(|(o, xr)| {
        let var = dot(xr, xr) / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = wv * (xv * inv);
        }
    });
}

/// Cosines and sines of the rotary angles of each position: `positions.len() × 2·inv_freq.len()`, `[cos | sin]`
/// per row. Computed once per forward and shared by every layer.
pub fn rope_table(positions: &[usize], inv_freq: &[f32]) -> Vec<f32> {
    let half = inv_freq.len();
    let mut table = vec![0f32; positions.len() * 2 * half];
    table.par_chunks_mut(2 * half).zip(positions.par_iter()).with_min_len(16).for_each(|(row, &pos)| {
        for i in 0..half {
            // HF: freqs = position (f32) · inv_freq (f32), then cos/sin in f32.
            let angle = pos as f32 * inv_freq[i];
            row[i] = angle.cos();
            row[half + i] = angle.sin();
        }
    });
    table
}

/// Applies the rotary embedding in place to `heads` heads of width `2·half` at the start of each row of `x` (row
/// stride `stride`), with the angles of [`rope_table`]. Half-rotation (HF/NEOX) layout.
pub fn rope(x: &mut [f32], stride: usize, heads: usize, table: &[f32], half: usize) {
    let hd = 2 * half;
    x.par_chunks_mut(stride).zip(table.par_chunks(2 * half)).with_min_len(8).for_each(|(row, angles)| {
        let (cos, sin) = angles.split_at(half);
        for h in 0..heads {
            let head = &mut row[h * hd..(h + 1) * hd];
            for i in 0..half {
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * cos[i] - x2 * sin[i];
                head[i + half] = x2 * cos[i] + x1 * sin[i];
            }
        }
    });
}

/// The gated MLP activation: `out[r, i] = act(gu[r, i]) · gu[r, f + i]` where each row of `gu` is
/// `[gate (f) | up (f)]` — SwiGLU (`act` = SiLU) or GeGLU (HF `gelu_pytorch_tanh`).
pub fn gated(act: Activation, gu: &[f32], f: usize, out: &mut [f32]) {
    gated_on(isa(), act, gu, f, out)
}

/// [`gated`] at a given ISA level (one of [`super::available_isas`]).
pub fn gated_on(isa: Isa, act: Activation, gu: &[f32], f: usize, out: &mut [f32]) {
    assert!(super::available_isas().contains(&isa), "gated: {isa:?} is not supported by this CPU");
    out.par_chunks_mut(f).zip(gu.par_chunks(2 * f)).with_min_len(4).for_each(|(o, row)| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked that the CPU supports `isa`.
        Isa::Avx512 => unsafe { gated_row_avx512(act, row, o) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { gated_row_avx2(act, row, o) },
        _ => gated_row(act, row, o),
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gated_row_avx512(act: Activation, row: &[f32], out: &mut [f32]) {
    gated_row(act, row, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_row_avx2(act: Activation, row: &[f32], out: &mut [f32]) {
    gated_row(act, row, out)
}

/// One row; the activation is chosen once per row, each arm a plain loop the caller's target features vectorise.
#[inline(always)]
fn gated_row(act: Activation, row: &[f32], out: &mut [f32]) {
    let (g, u) = row.split_at(out.len());
    match act {
        Activation::Silu => {
            for ((o, &gv), &uv) in out.iter_mut().zip(g).zip(u) {
                *o = gv / (1.0 + exp(-gv)) * uv;
            }
        }
        Activation::GeluTanh => {
            for ((o, &x), &uv) in out.iter_mut().zip(g).zip(u) {
                *o = gelu_tanh(x) * uv;
            }
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, HF's `gelu_pytorch_tanh`, with [`tanh`] in plain arithmetic.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + tanh(K * (x + 0.044_715 * x * x * x)))
}

/// `tanh x = 1 − 2 / (e^{2x} + 1)` with [`exp`]: vectorises (libm's `tanhf` was 11% of Gemma 3 decode), absolute
/// error a few 1e-7 (exp's ≈ 1 ulp and the subtraction from one), ±1 exactly far out.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `e^x` for f32 in plain arithmetic that vectorises (Cephes `expf`: Cody–Waite range reduction and a degree-6
/// polynomial, ≈1 ulp), so the same bits come out on every ISA; `f32::exp` is a libm call per element. Inputs are
/// clamped to the finite range. The inference kernels and the training ops both use it.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.0);
    // floor(y) in float arithmetic: adding and subtracting 1.5·2²³ rounds to the nearest integer (|y| < 2²² here),
    // one step down where that rounded up. Exactly `f32::floor`, without libm's `floorf` (a call per element at
    // the baseline ISA the training ops run at) or a saturating integer conversion.
    let y = x * LOG2E + 0.5;
    const ROUND: f32 = 12_582_912.0;
    let nearest = (y + ROUND) - ROUND;
    let n = if nearest > y { nearest - 1.0 } else { nearest };
    let r = x - n * C1 - n * C2;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5e-1;
    let y = p * z + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// The largest value of `x`, NaNs ignored (−∞ when there is none): what `fold(−∞, f32::max)` computes, written as
/// compares over independent lanes so that it vectorises (a 49152-wide logit row is scanned for every sampled
/// token).
pub fn max(x: &[f32]) -> f32 {
    let larger = |v: f32, m: f32| if v > m { v } else { m };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| larger(v, m));
    for c in chunks {
        for l in 0..16 {
            lanes[l] = larger(c[l], lanes[l]);
        }
    }
    lanes.iter().fold(rest, |m, &v| larger(v, m))
}

/// The index of the first largest value of `x` (0 when `x[0]` is NaN or nothing is larger than it), as a scan
/// keeping the first strictly larger value finds it.
pub fn argmax(x: &[f32]) -> usize {
    if x.first().is_none_or(|v| v.is_nan()) {
        return 0;
    }
    let m = max(x);
    x.iter().position(|&v| v == m).unwrap_or(0)
}

/// `log Σ exp(x)`: f32 exponentials ([`exp`]) summed in f64.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = max(x);
    if !max.is_finite() {
        return max as f64;
    }
    max as f64 + sum_exp(x, max, 1.0).ln()
}

/// `Σ exp((x − max)·inv_t)` with f32 exponentials summed in 8 interleaved f64 lanes (fixed order).
pub fn sum_exp(x: &[f32], max: f32, inv_t: f32) -> f64 {
    sum_exp_on(isa(), x, max, inv_t)
}

/// [`sum_exp`] at a given ISA level (one of [`super::available_isas`]).
pub fn sum_exp_on(isa: Isa, x: &[f32], max: f32, inv_t: f32) -> f64 {
    assert!(super::available_isas().contains(&isa), "sum_exp: {isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only reports levels the CPU supports.
        Isa::Avx512 => unsafe { sum_exp_avx512(x, max, inv_t) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { sum_exp_avx2(x, max, inv_t) },
        _ => sum_exp_impl(x, max, inv_t),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn sum_exp_avx512(x: &[f32], max: f32, inv_t: f32) -> f64 {
    sum_exp_impl(x, max, inv_t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp_avx2(x: &[f32], max: f32, inv_t: f32) -> f64 {
    sum_exp_impl(x, max, inv_t)
}

#[inline(always)]
fn sum_exp_impl(x: &[f32], max: f32, inv_t: f32) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&v| exp((v - max) * inv_t) as f64).sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += exp((c[l] - max) * inv_t) as f64;
        }
    }
    lanes.iter().sum::<f64>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "{x}: {a} vs {b}");
        }
    }

    /// The float-arithmetic floor inside `exp` is `f32::floor`: `exp`'s bits equal the same reduction with libm's
    /// floor, over a dense sweep and at every point where `x·log2(e) + 0.5` is an integer.
    #[test]
    fn exp_floor_is_libm_floor() {
        let with_libm_floor = |x: f32| {
            let x = x.clamp(-87.3, 88.0);
            let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
            let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
            let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
                + 1.666_666_5e-1)
                * r
                + 5e-1;
            (p * (r * r) + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23)
        };
        let sweep = (-900_000..=900_000).map(|i| i as f32 / 10_000.0);
        let integral = (-130..=130).flat_map(|k| {
            let x = (k as f32 - 0.5) / std::f32::consts::LOG2_E;
            [x, f32::from_bits(x.to_bits() + 1), f32::from_bits(x.to_bits().wrapping_sub(1))]
        });
        for x in sweep.chain(integral) {
            assert_eq!(exp(x).to_bits(), with_libm_floor(x).to_bits(), "{x}");
        }
        assert!(exp(f32::NAN).is_nan());
    }

    /// SwiGLU, GeGLU and the exponential sum on every ISA the CPU has give the portable code's bits.
    #[test]
    fn row_ops_give_the_portable_bits_on_every_isa() {
        let f = 37;
        let gu: Vec<f32> = (0..5 * 2 * f).map(|i| (i as f32 * 0.71).sin() * 5.0).collect();
        let (mut silu0, mut gelu0) = (vec![0f32; 5 * f], vec![0f32; 5 * f]);
        gated_on(Isa::Scalar, Activation::Silu, &gu, f, &mut silu0);
        gated_on(Isa::Scalar, Activation::GeluTanh, &gu, f, &mut gelu0);
        let sum0 = sum_exp_on(Isa::Scalar, &gu, max(&gu), 0.7);
        for isa in super::super::available_isas() {
            let (mut silu, mut gelu) = (vec![0f32; 5 * f], vec![0f32; 5 * f]);
            gated_on(isa, Activation::Silu, &gu, f, &mut silu);
            gated_on(isa, Activation::GeluTanh, &gu, f, &mut gelu);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&silu), bits(&silu0), "{isa:?} silu");
            assert_eq!(bits(&gelu), bits(&gelu0), "{isa:?} gelu");
            assert_eq!(sum_exp_on(isa, &gu, max(&gu), 0.7).to_bits(), sum0.to_bits(), "{isa:?} sum_exp");
        }
    }

    /// The arithmetic tanh against libm's, and GeGLU on every ISA against the f64 formula.
    #[test]
    fn tanh_and_gelu_are_accurate() {
        for i in -6000..=6000 {
            let x = i as f32 / 500.0;
            assert!((tanh(x) - x.tanh()).abs() <= 4e-7, "{x}: {} vs {}", tanh(x), x.tanh());
        }
        assert_eq!((tanh(100.0), tanh(-100.0)), (1.0, -1.0));
        let f = 40;
        let gu: Vec<f32> = (0..3 * 2 * f).map(|i| (i as f32 * 0.37).sin() * 6.0).collect();
        let mut out = vec![0f32; 3 * f];
        gated(Activation::GeluTanh, &gu, f, &mut out);
        for (r, row) in gu.chunks(2 * f).enumerate() {
            for i in 0..f {
                let x = row[i] as f64;
                let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
                let want = want * row[f + i] as f64;
                let got = out[r * f + i] as f64;
                assert!((got - want).abs() <= 2e-6 * (1.0 + want.abs()), "[{r},{i}] {got} vs {want}");
            }
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let inv: Vec<f32> = (0..4).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 8.0)).collect();
        let orig: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
        let mut x = orig.clone();
        rope(&mut x, 16, 2, &rope_table(&[0], &inv), 4);
        assert_eq!(x, orig);
        let mut y = orig.clone();
        rope(&mut y, 16, 2, &rope_table(&[17], &inv), 4);
        let n0: f32 = orig[..8].iter().map(|v| v * v).sum();
        let n1: f32 = y[..8].iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
    }

    #[test]
    fn rms_norm_normalises() {
        let x = vec![3.0f32, 4.0];
        let mut out = vec![0f32; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn max_and_argmax_equal_their_scalar_definitions() {
        let mut x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1009) as f32 / 100.0 - 5.0).collect();
        let scan = |x: &[f32]| {
            let mut best = 0;
            for (i, &v) in x.iter().enumerate() {
                if v > x[best] {
                    best = i;
                }
            }
            best
        };
        for case in 0..4 {
            match case {
                1 => x[517] = f32::NAN,
                2 => x[998] = 1e9, // a tie-free maximum in the remainder
                3 => x[0] = f32::NAN,
                _ => {}
            }
            let fold = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max(&x).to_bits(), fold.to_bits(), "case {case}");
            assert_eq!(argmax(&x), scan(&x), "case {case}");
        }
        x.fill(f32::NEG_INFINITY);
        assert_eq!((max(&x), argmax(&x)), (f32::NEG_INFINITY, 0));
    }

    #[test]
    fn log_sum_exp_is_stable() {
        let v = log_sum_exp(&[1000.0, 1000.0]);
        assert!((v - (1000.0 + 2f64.ln())).abs() < 1e-9);
    }
}
