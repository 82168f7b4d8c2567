//! Reference log-probabilities of preference pairs: from the pairs file's behaviour log-probs (Agent Q's off-policy
//! DPO: the data-generating policy is the reference), or computed once on the starting weights with the same f32
//! forward as the policy and cached on disk, keyed by model hash and data hash.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use orchard_engine::autograd::{DiffModel, Mode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{completion_logps, micro_batches, MemoryModel};
use crate::data::PairExample;
use crate::error::{Error, Result};
use crate::loss::ReferenceLogps;

/// Where reference log-probs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceSource {
    /// The starting model, scored once before training (cached). The default.
    #[default]
    Model,
    /// The pairs file's `meta_behaviour_logp_chosen` / `_rejected` (the sampler's log-probs).
    Behaviour,
}

/// Reference log-prob sums `(chosen, rejected)` per pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct References {
    /// The model the values were computed with (or `behaviour`).
    pub model_hash: String,
    /// The data they belong to.
    pub data_hash: String,
    /// One `(chosen, rejected)` per pair, in example order.
    pub values: Vec<(f64, f64)>,
}

impl References {
    /// The references of the pairs `idx`, as tensors.
    pub fn select(&self, idx: &[usize]) -> Result<ReferenceLogps> {
        let pick = |f: fn(&(f64, f64)) -> f64| idx.iter().map(|&i| f(&self.values[i])).collect::<Vec<f64>>();
        let cpu = &candle_core::Device::Cpu;
        Ok(ReferenceLogps {
            chosen: Tensor::from_vec(pick(|v| v.0), idx.len(), cpu)?,
            rejected: Tensor::from_vec(pick(|v| v.1), idx.len(), cpu)?,
        })
    }

    /// From the examples' behaviour log-probs.
    pub fn from_behaviour(examples: &[PairExample], data_hash: &str) -> Result<Self> {
        let values = examples
            .iter()
            .map(|e| e.behaviour.ok_or_else(|| Error::Config(format!("{}: no behaviour log-probs", e.origin))))
            .collect::<Result<Vec<_>>>()?;
        Ok(References { model_hash: "behaviour".into(), data_hash: data_hash.into(), values })
    }
}

/// The cache file of references for a model and dataset: `dir/reference-{sha256(model ‖ data)[..32]}.json`.
pub fn cache_path(dir: &Path, model_hash: &str, data_hash: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(model_hash.as_bytes());
    h.update(b"\0");
    h.update(data_hash.as_bytes());
    let key = hex::encode(h.finalize());
    dir.join(format!("reference-{}.json", &key[..32]))
}

/// Computes the references of `examples` on `model` (no gradients), micro-batched within `budget` bytes;
/// `progress(done, total)` after each micro-batch.
pub fn compute(
    model: &DiffModel,
    examples: &[PairExample],
    budget: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(f64, f64)>> {
    let mem = MemoryModel::for_config(model.config());
    let cost = |i: usize| {
        let e = &examples[i];
        mem.bytes(2 * e.prompt.len() + e.chosen.len() + e.rejected.len(), e.chosen.len() + e.rejected.len())
    };
    let all: Vec<usize> = (0..examples.len()).collect();
    let mut out = Vec::with_capacity(examples.len());
    for mb in micro_batches(&all, cost, budget, usize::MAX) {
        let mut seqs = Vec::with_capacity(2 * mb.len());
        for &i in &mb {
            let e = &examples[i];
            seqs.push((e.prompt.as_slice(), e.chosen.as_slice()));
            seqs.push((e.prompt.as_slice(), e.rejected.as_slice()));
        }
        let lp: Vec<f32> = completion_logps(model, &seqs, Mode::Eval)?.to_vec1()?;
        out.extend(lp.chunks(2).map(|c| (c[0] as f64, c[1] as f64)));
        progress(out.len(), examples.len());
    }
    Ok(out)
}

/// The cached references at `path` if they match, else `None`.
pub fn load_cached(path: &Path, model_hash: &str, data_hash: &str, pairs: usize) -> Option<References> {
    let text = std::fs::read_to_string(path).ok()?;
    let r: References = serde_json::from_str(&text).ok()?;
    (r.model_hash == model_hash && r.data_hash == data_hash && r.values.len() == pairs).then_some(r)
}

/// Writes references atomically (temporary file, then rename).
pub fn store(path: &Path, refs: &References) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    serde_json::to_writer(&mut tmp, refs)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
