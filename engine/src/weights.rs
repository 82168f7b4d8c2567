//! Weights of a linear layer in the representations the engine uses: quantized (as the file stores them) for fast
//! small-batch decode, and dense f32 (packed for the gemm kernel) for exact scoring — materialised on first use.

use std::sync::OnceLock;

use crate::kernels::dense::{self, PackedMatrix};
use crate::kernels::quant::{self, QActs, QMatrix};

/// Which numeric path a forward takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights everywhere: the reference path (scoring, training numerics, determinism tests).
    F32,
    /// Quantized weights where the model has them (15-bit integer activations): the fast path for generation.
    Quantized,
}

/// A `rows × cols` weight (one output feature per row).
#[derive(Debug)]
pub struct Linear {
    rows: usize,
    cols: usize,
    quant: Option<QMatrix>,
    dense: OnceLock<PackedMatrix>,
}

impl Linear {
    /// From quantized blocks; the f32 copy is made on first f32 use.
    pub fn from_quant(q: QMatrix) -> Self {
        Linear { rows: q.rows(), cols: q.cols(), quant: Some(q), dense: OnceLock::new() }
    }

    /// From row-major f32 values.
    pub fn from_f32(data: &[f32], rows: usize, cols: usize) -> Self {
        let dense = OnceLock::new();
        let _ = dense.set(PackedMatrix::pack(data, rows, cols));
        Linear { rows, cols, quant: None, dense }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The quantized form, if the model has one.
    pub fn quant(&self) -> Option<&QMatrix> {
        self.quant.as_ref()
    }

    /// The f32 form (dequantized once, on first call).
    ///
    /// Built outside the `OnceLock` rather than in `get_or_init`: building runs parallel loops, and a compute-pool
    /// thread waiting in one of them may pick up another forward that needs this same weight — which would then
    /// wait for an initialisation its own thread holds, forever. Threads that race here each build the same
    /// values and the first one stored is kept.
    pub fn dense(&self) -> &PackedMatrix {
        if let Some(d) = self.dense.get() {
            return d;
        }
        let q = self.quant.as_ref().expect("a Linear without dense weights has quantized ones");
        let _ = self.dense.set(PackedMatrix::pack(&q.dequantize(), self.rows, self.cols));
        self.dense.get().expect("set just above, by this thread or another")
    }

    /// Row-major f32 copy of the weight (for training and export).
    pub fn to_f32(&self) -> Vec<f32> {
        match (&self.quant, self.dense.get()) {
            (_, Some(d)) => d.unpack(),
            (Some(q), None) => q.dequantize(),
            (None, None) => unreachable!("a Linear always holds one representation"),
        }
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match (&self.quant, self.dense.get()) {
            (Some(q), _) => q.dequantize_row(r, out),
            (None, Some(d)) => d.row(r, out),
            (None, None) => unreachable!("a Linear always holds one representation"),
        }
    }

    /// The same weight re-quantized to Q8_0 from its f32 values: the quantized fast path of a model handed back
    /// from training.
    pub fn to_q8(&self) -> Self {
        Self::q8_from_f32(&self.to_f32(), self.rows, self.cols)
    }

    /// A Q8_0 weight from row-major f32 values, quantized in row bands on the compute pool and stacked: the same
    /// bits as one serial `QRows::quantize_q8`.
    pub fn q8_from_f32(data: &[f32], rows: usize, cols: usize) -> Self {
        use crate::kernels::quant::QRows;
        use rayon::prelude::*;
        debug_assert_eq!(data.len(), rows * cols);
        let band = 256usize;
        let parts: Vec<QRows> =
            data.par_chunks(band * cols).map(|c| QRows::quantize_q8(c, c.len() / cols, cols)).collect();
        let refs: Vec<&QRows> = parts.iter().collect();
        let q = QRows::vstack(&refs).expect("bands of one matrix share its width");
        Linear::from_quant(q.pack())
    }

    /// Feeds the representation the forward uses (quantized blocks, else the f32 values) to `sink`.
    pub fn digest_into(&self, sink: &mut dyn FnMut(&[u8])) {
        match (&self.quant, self.dense.get()) {
            (Some(q), _) => q.digest_into(sink),
            (None, Some(d)) => d.digest_into(sink),
            (None, None) => unreachable!("a Linear always holds one representation"),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.quant.as_ref().map_or(0, QMatrix::bytes) + self.dense.get().map_or(0, PackedMatrix::bytes)
    }

    /// `out = x · Wᵀ` for `m` rows of `x`.
    pub fn forward(&self, x: &[f32], m: usize, precision: Precision, out: &mut [f32]) {
        match (precision, &self.quant) {
            (Precision::Quantized, Some(q)) => {
                let acts = QActs::quantize(x, m, self.cols);
                quant::qmatmul(q, &acts, out);
            }
            _ => dense::matmul(self.dense(), x, m, out),
        }
    }
}
