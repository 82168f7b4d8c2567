//! Shared helpers: tiny models on disk, the default model loaded once.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use orchard_engine::testing::{random_weights, tiny_config, write_gguf, write_hf_dir};
use orchard_engine::{Arch, Engine};

/// A tiny model written to a temp dir (kept alive by the returned guard).
pub struct Tiny {
    pub _dir: tempfile::TempDir,
    pub engine: Engine,
}

pub enum Format {
    Hf,
    Gguf(GgmlDType),
}

pub fn tiny(arch: Arch, format: Format, seed: u64) -> Tiny {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = tiny_config(arch);
    let w = random_weights(&cfg, seed);
    let path: PathBuf = match format {
        Format::Hf => {
            let p = dir.path().join("hf");
            write_hf_dir(&p, &cfg, &w).expect("write hf dir");
            p
        }
        Format::Gguf(dt) => {
            let p = dir.path().join("tiny.gguf");
            write_gguf(&p, &cfg, &w, dt).expect("write gguf");
            p
        }
    };
    let engine = Engine::load(path.to_str().expect("utf-8 path")).expect("load tiny model");
    Tiny { _dir: dir, engine }
}

/// The default model (fetched on first use: a missing model fails loudly, it never skips).
pub fn default_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        orchard_engine::init_threads(None);
        Engine::load("default").expect("the default model must be available (run `orchard fetch-model`)")
    })
}

pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = orchard_engine::kernels::ops::log_sum_exp(logits);
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// Token ids by decreasing log-prob.
pub fn ranked(logprobs: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]));
    order
}

/// The largest |ours − reference| over the reference's top tokens (`ids` with their log-probs `lps`).
pub fn top_gap(ours: &[f32], ids: &[usize], lps: &[f32]) -> f32 {
    assert_eq!(ids.len(), lps.len());
    ids.iter().zip(lps).map(|(&id, &lp)| (ours[id] - lp).abs()).fold(0.0, f32::max)
}
