//! Shared helpers: tiny models on disk, the default model loaded once.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use orchard_engine::testing::{random_weights, tiny_config, write_gguf, write_hf_dir};
use orchard_engine::{Arch, Chunk, Engine, KvCache, LogitRows, Model, Precision, TokenId};

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

/// A token sequence of length `n` over the tiny vocabulary, different for each `salt`.
pub fn seq(n: usize, salt: u32) -> Vec<TokenId> {
    (0..n as u32).map(|i| (i * 37 + salt * 11 + 5) % 280).collect()
}

/// Logits of every position of `tokens`, run alone from an empty cache.
pub fn full_logits(m: &Model, tokens: &[TokenId], p: Precision) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache();
    let mut chunks = [Chunk { cache: &mut cache, tokens, logits: LogitRows::From(0) }];
    let l = m.forward(&mut chunks, p).expect("forward");
    (0..tokens.len()).map(|i| l.row(0, i).to_vec()).collect()
}

/// Forks of one cache against recompute, in f32: a prefix ending mid-block (a writing fork copies the partial
/// block) is prefilled on `m` and forked into four branches run in one batch, then the parent is continued; every
/// logit row must equal `reference`'s recompute of the whole sequence within `tol`. `inspect(parent, forks)` sees
/// the caches after the branches ran.
pub fn check_forks(m: &Model, reference: &Model, tol: f32, inspect: impl FnOnce(&KvCache, &[KvCache])) {
    let prefix = seq(21, 1);
    let mut parent = m.new_cache();
    let mut chunks = [Chunk { cache: &mut parent, tokens: &prefix, logits: LogitRows::None }];
    m.forward(&mut chunks, Precision::F32).expect("prefix");
    let branches: Vec<Vec<TokenId>> = vec![seq(9, 2), seq(17, 3), seq(3, 4), seq(1, 5)];
    let mut forks: Vec<_> = branches.iter().map(|_| parent.clone()).collect();
    let mut chunks: Vec<Chunk<'_>> = forks
        .iter_mut()
        .zip(&branches)
        .map(|(c, b)| Chunk { cache: c, tokens: b, logits: LogitRows::From(0) })
        .collect();
    let l = m.forward(&mut chunks, Precision::F32).expect("branches");
    drop(chunks);
    inspect(&parent, &forks);
    for (i, b) in branches.iter().enumerate() {
        let whole: Vec<TokenId> = prefix.iter().chain(b).copied().collect();
        let full = full_logits(reference, &whole, Precision::F32);
        for j in 0..b.len() {
            let d = max_abs_diff(l.row(i, j), &full[prefix.len() + j]);
            assert!(d <= tol, "branch {i} pos {j}: {d}");
        }
    }
    // The parent is untouched by its forks' writes: continuing it equals a recompute of prefix + new tokens.
    drop(forks);
    let more = seq(6, 9);
    let mut chunks = [Chunk { cache: &mut parent, tokens: &more, logits: LogitRows::From(0) }];
    let l = m.forward(&mut chunks, Precision::F32).expect("parent");
    let whole: Vec<TokenId> = prefix.iter().chain(&more).copied().collect();
    let full = full_logits(reference, &whole, Precision::F32);
    for j in 0..more.len() {
        assert!(max_abs_diff(l.row(0, j), &full[prefix.len() + j]) <= tol, "parent pos {j}");
    }
}
