//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! ```text
//! OUT/checkpoint-000120/trainable.safetensors   the trainable tensors (all weights, or the LoRA adapters)
//! OUT/checkpoint-000120/optimizer.safetensors   AdamW moments `m.NAME`, `v.NAME`
//! OUT/checkpoint-000120/state.json              step, epoch, data order, seed, model and data hashes, config
//! OUT/latest.json                               {"checkpoint": "checkpoint-000120", "step": 120}
//! ```
//!
//! A checkpoint directory is written under a temporary name and renamed into place, then `latest.json` is replaced
//! atomically: an interrupted save leaves the previous checkpoint and pointer untouched. Dropout masks and the data
//! order are pure functions of (seed, epoch, step), so the state needs no RNG stream of its own.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use orchard_engine::autograd::DiffModel;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optim::AdamW;

/// Checkpoint layout version.
pub const FORMAT: u32 = 1;
/// The trainable tensors.
pub const WEIGHTS_FILE: &str = "trainable.safetensors";
/// The optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The run state.
pub const STATE_FILE: &str = "state.json";
/// The pointer to the newest checkpoint of a run directory.
pub const LATEST_FILE: &str = "latest.json";

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`FORMAT`].
    pub format: u32,
    /// Orchard version that wrote it.
    pub orchard_version: String,
    /// Optimizer steps done.
    pub step: usize,
    /// Optimizer steps the run plans in all.
    pub total_steps: usize,
    /// Epoch of the next step.
    pub epoch: usize,
    /// The order this epoch visits the examples in.
    pub order: Vec<usize>,
    /// The run's seed (data order, dropout, LoRA init).
    pub seed: u64,
    /// Hash of the starting model's weights.
    pub model_hash: String,
    /// Hash of the tokenized training data.
    pub data_hash: String,
    /// The training configuration, as JSON.
    pub config: serde_json::Value,
}

/// AdamW's first and second moments `(m, v)` by parameter name.
pub type Moments = HashMap<String, (Vec<f32>, Vec<f32>)>;

/// A named tensor as written: `(name, shape, little-endian f32 bytes)`.
pub type NamedBytes = (String, Vec<usize>, Vec<u8>);

/// A checkpoint read back.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// The state.
    pub state: TrainState,
    /// Trainable tensors by name.
    pub params: HashMap<String, Tensor>,
    /// Optimizer moments `(m, v)` by parameter name, and the optimizer's step count.
    pub moments: (u64, Moments),
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, Some(meta), path)?;
    Ok(())
}

/// The trainable tensors of `model` as `(name, shape, little-endian bytes)`.
pub fn trainable_tensors(model: &DiffModel) -> Result<Vec<NamedBytes>> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, v)| Ok((n, v.dims().to_vec(), f32_bytes(&v.as_tensor().flatten_all()?.to_vec1::<f32>()?))))
        .collect()
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Writes a checkpoint of step `state.step` into `out`, points `latest.json` at it and keeps the newest `keep`
/// checkpoints (at least this one). Returns its directory.
pub fn save(out: &Path, state: &TrainState, model: &DiffModel, opt: &AdamW, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let name = format!("checkpoint-{:06}", state.step);
    let final_dir = out.join(&name);
    let tmp = tempfile::Builder::new().prefix(".checkpoint-").tempdir_in(out).map_err(|e| Error::io(out, e))?;
    let meta = HashMap::from([("format".to_string(), "orchard-train".to_string())]);
    write_safetensors(&tmp.path().join(WEIGHTS_FILE), &trainable_tensors(model)?, meta.clone())?;
    let (steps, moments) = opt.state();
    let mut tensors = Vec::with_capacity(2 * moments.len());
    for (n, m, v) in moments {
        tensors.push((format!("m.{n}"), vec![m.len()], f32_bytes(m)));
        tensors.push((format!("v.{n}"), vec![v.len()], f32_bytes(v)));
    }
    let mut meta = meta;
    meta.insert("steps".into(), steps.to_string());
    write_safetensors(&tmp.path().join(OPTIMIZER_FILE), &tensors, meta)?;
    let state_path = tmp.path().join(STATE_FILE);
    let mut f = std::fs::File::create(&state_path).map_err(|e| Error::io(&state_path, e))?;
    f.write_all(serde_json::to_string_pretty(state)?.as_bytes()).map_err(|e| Error::io(&state_path, e))?;
    f.sync_all().map_err(|e| Error::io(&state_path, e))?;
    for file in [WEIGHTS_FILE, OPTIMIZER_FILE] {
        let p = tmp.path().join(file);
        std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| Error::io(&p, e))?;
    }
    // A checkpoint of the same step (a rerun) is replaced only once the new one is complete: the old one is renamed
    // aside (atomic), the new one renamed into place, then the old one deleted. A kill at any point leaves either a
    // complete checkpoint under the name or none, and [`latest`] falls back to the newest complete one.
    let staged = tmp.keep();
    let aside = final_dir.exists().then(|| out.join(format!(".replaced-{name}")));
    if let Some(a) = &aside {
        if a.exists() {
            std::fs::remove_dir_all(a).map_err(|e| Error::io(a, e))?;
        }
        std::fs::rename(&final_dir, a).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&staged, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    sync_dir(out)?;
    if let Some(a) = &aside {
        std::fs::remove_dir_all(a).map_err(|e| Error::io(a, e))?;
    }
    let pointer = serde_json::json!({ "checkpoint": name, "step": state.step });
    let mut ptr = tempfile::NamedTempFile::new_in(out).map_err(|e| Error::io(out, e))?;
    ptr.write_all(pointer.to_string().as_bytes()).map_err(|e| Error::io(out, e))?;
    ptr.as_file().sync_all().map_err(|e| Error::io(out, e))?;
    ptr.persist(out.join(LATEST_FILE)).map_err(|e| Error::io(out.join(LATEST_FILE), e.error))?;
    prune(out, keep.max(1), &name)?;
    Ok(final_dir)
}

/// Removes all but the newest `keep` checkpoints (never `current`).
fn prune(out: &Path, keep: usize, current: &str) -> Result<()> {
    let mut dirs: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("checkpoint-") && n[11..].chars().all(|c| c.is_ascii_digit()))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for n in dirs.into_iter().take(excess).filter(|n| n != current) {
        let p = out.join(n);
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// The newest checkpoint of run directory `out`, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let p = out.join(LATEST_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::checkpoint(&p, e.to_string()))?;
    let name = v["checkpoint"].as_str().ok_or_else(|| Error::checkpoint(&p, "no `checkpoint` entry"))?;
    let named = out.join(name);
    if named.join(STATE_FILE).is_file() {
        return Ok(Some(named));
    }
    // Killed while a checkpoint of the same step was being replaced: the newest complete one (training from it
    // redoes the lost steps, deterministically), or none.
    let mut complete: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("checkpoint-") && n[11..].chars().all(|c| c.is_ascii_digit()))
        .filter(|n| out.join(n).join(STATE_FILE).is_file())
        .collect();
    complete.sort();
    if let Some(n) = complete.last() {
        tracing::warn!("{}: {name} is incomplete; resuming from {n}", p.display());
    }
    Ok(complete.pop().map(|n| out.join(n)))
}

/// Reads a checkpoint directory (or the newest checkpoint of a run directory).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let dir = match latest(path)? {
        Some(d) if !path.join(STATE_FILE).is_file() => d,
        _ => path.to_path_buf(),
    };
    let state_path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&state_path).map_err(|_| Error::checkpoint(&dir, "no state.json: not a checkpoint"))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(&dir, format!("unreadable state.json: {e}")))?;
    if state.format != FORMAT {
        return Err(Error::checkpoint(&dir, format!("format {} (this Orchard reads {FORMAT})", state.format)));
    }
    let read = |file: &str| -> Result<HashMap<String, Tensor>> {
        candle_core::safetensors::load(dir.join(file), &Device::Cpu)
            .map_err(|e| Error::checkpoint(&dir, format!("{file}: {e}")))
    };
    let params = read(WEIGHTS_FILE)?;
    let opt = read(OPTIMIZER_FILE)?;
    let mut moments = HashMap::new();
    for (name, m) in &opt {
        if let Some(n) = name.strip_prefix("m.") {
            let v = opt.get(&format!("v.{n}")).ok_or_else(|| Error::checkpoint(&dir, format!("v.{n} is missing")))?;
            moments.insert(n.to_string(), (m.to_vec1::<f32>()?, v.to_vec1::<f32>()?));
        }
    }
    let steps = safetensors_steps(&dir.join(OPTIMIZER_FILE))?;
    Ok(Checkpoint { dir, state, params, moments: (steps, moments) })
}

fn safetensors_steps(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let steps = meta.metadata().as_ref().and_then(|m| m.get("steps")).and_then(|s| s.parse().ok());
    steps.ok_or_else(|| Error::checkpoint(path, "optimizer step count is missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kill while a checkpoint of the same step was being replaced leaves `latest.json` naming an incomplete
    /// directory: [`latest`] falls back to the newest complete checkpoint, or to none.
    #[test]
    fn latest_skips_an_incomplete_checkpoint() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let out = tempfile::tempdir()?;
        let o = out.path();
        std::fs::write(o.join(LATEST_FILE), r#"{"checkpoint": "checkpoint-000006", "step": 6}"#)?;
        std::fs::create_dir_all(o.join("checkpoint-000006"))?;
        std::fs::write(o.join("checkpoint-000006").join(WEIGHTS_FILE), b"half-deleted")?;
        assert_eq!(latest(o)?, None, "no complete checkpoint: start over");
        for step in ["checkpoint-000002", "checkpoint-000004"] {
            std::fs::create_dir_all(o.join(step))?;
            std::fs::write(o.join(step).join(STATE_FILE), b"{}")?;
        }
        assert_eq!(latest(o)?, Some(o.join("checkpoint-000004")));
        std::fs::write(o.join("checkpoint-000006").join(STATE_FILE), b"{}")?;
        assert_eq!(latest(o)?, Some(o.join("checkpoint-000006")));
        Ok(())
    }
}
