//! CPU kernels of the inference path: quantized and dense matrix products, attention over paged KV blocks, and
//! the small row-wise ops (RMSNorm, rotary embedding, SwiGLU).
//!
//! Why our own kernels instead of candle's CPU ops (measured, see `docs/ENGINE.md`): candle has no SIMD
//! kernel for Q4_1, its quantized matmul is a gemv per row (cost grows linearly with the batch), and its batched
//! attention issues one tiny gemm per (batch, head). The kernels here are written so that **every output row depends
//! only on its own input row**, with a fixed reduction order whatever the batch size, tile shape or thread count:
//! a sequence's logits, and therefore its sampled tokens, do not change with its batch companions.

pub mod attention;
pub mod dense;
pub mod ops;
pub mod quant;

use std::sync::OnceLock;

/// The instruction-set level a kernel runs at, detected once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust (any CPU).
    Scalar,
    /// AVX2 + FMA (x86-64 since 2013).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI int8 dot products (Ice Lake, Zen 4 and later).
    Avx512,
}

/// The best ISA this CPU supports, capped by `ORCHARD_ISA=scalar|avx2|avx512` (for tests and comparisons).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = detect();
        let cap = match std::env::var("ORCHARD_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        detected.min(cap)
    })
}

/// Every ISA level this CPU can run, portable first (what kernel tests compare across, whatever `ORCHARD_ISA` says).
pub fn available_isas() -> Vec<Isa> {
    let best = detect();
    [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= best).collect()
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
    {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}

/// A raw pointer that parallel tasks use to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
// SAFETY: every user writes a region no other task touches, and the buffer outlives the parallel scope.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not its raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }

    /// The pointer `offset` floats on.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// Splits `n` items into chunks so that each of the pool's threads gets several (load balance) but each chunk
/// stays at least `min` items (amortise the task overhead).
pub(crate) fn chunk_len(n: usize, min: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let target = n.div_ceil(threads * 4);
    target.max(min).min(n.max(1))
}
