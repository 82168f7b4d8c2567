//! The differentiable forward of the engine's decoder, for training: the architecture of [`crate::model`] on candle
//! tensors with autograd, built from a loaded [`Model`] — its [`ModelConfig`], its weights (dequantized to f32 once
//! and copied into candle tensors, named after the engine's own fields) and its rotary frequencies. There is one
//! architecture definition: a trained [`DiffModel`] goes back into the engine with [`DiffModel::merged_model`].
//!
//! - [`Tuning::Full`] makes every weight a [`Var`]; [`Tuning::Lora`] freezes them and adds low-rank adapters
//!   (Hu et al., "LoRA", arXiv 2106.09685; PEFT's conventions: `A` Kaiming-uniform, `B` zero, scale `alpha / r`,
//!   dropout on the adapter's input) on any of the q/k/v/o/gate/up/down projections.
//! - Sequences are packed row after row without padding ([`Packed`]); each is causal on its own from position 0.
//! - [`DiffModel::token_logprobs`] returns `log p(target | prefix)` at chosen rows: only those rows go through the LM
//!   head, so prompt positions never materialise `vocab`-wide logits.
//!
//! On CPU the heavy operations are fused kernels with their own backward (see `ops`); elsewhere the same forward
//! runs on candle's composed differentiable ops.
//!
//! ```no_run
//! use orchard_engine::autograd::{DiffModel, Mode, Packed, Tuning};
//! # fn main() -> orchard_engine::Result<()> {
//! let engine = orchard_engine::Engine::load("default")?;
//! let model = DiffModel::new(engine.model(), &Tuning::Full, &candle_core::Device::Cpu, 0)?;
//! let batch = Packed::new(&[vec![1u32, 2, 3, 4]]);
//! // log p(token 3 | 1 2) and log p(token 4 | 1 2 3): rows 1 and 2 predict them.
//! let logps = model.token_logprobs(&batch, &[1, 2], &[3, 4], Mode::Train { dropout_seed: 0 })?;
//! let grads = logps.sum_all()?.backward()?;
//! for (name, var) in model.named_parameters() {
//!     assert!(grads.get(var.as_tensor()).is_some(), "{name} has no gradient");
//! }
//! # Ok(()) }
//! ```

mod ops;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::{rope_inv_freq, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{qkv_split, Layer, Model, ModelParts, TokenId};
use crate::weights::Linear;

use ops::{AttnShape, RopeTable};

/// Default LoRA rank.
pub const DEFAULT_LORA_RANK: usize = 16;
/// Default LoRA alpha (scale = alpha / rank).
pub const DEFAULT_LORA_ALPHA: f32 = 32.0;
/// Default LoRA dropout (PEFT's default).
pub const DEFAULT_LORA_DROPOUT: f32 = 0.0;

/// A projection LoRA can adapt, named as PEFT names the module (`q_proj` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// Attention query projection (rows `0..H·hd` of `qkv_proj`).
    #[serde(rename = "q_proj")]
    Q,
    /// Attention key projection.
    #[serde(rename = "k_proj")]
    K,
    /// Attention value projection.
    #[serde(rename = "v_proj")]
    V,
    /// Attention output projection.
    #[serde(rename = "o_proj")]
    O,
    /// MLP gate projection (rows `0..f` of `gate_up_proj`).
    #[serde(rename = "gate_proj")]
    Gate,
    /// MLP up projection.
    #[serde(rename = "up_proj")]
    Up,
    /// MLP down projection.
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    /// Every target, in layer order.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// PEFT's module name (`q_proj` …).
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The module's path inside an HF decoder layer (`self_attn.q_proj` …).
    pub fn hf_path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// `(out, in)` features of the projection.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let [nq, nk, _] = qkv_split(cfg);
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        match self {
            Target::Q => (nq, d),
            Target::K | Target::V => (nk, d),
            Target::O => (d, nq),
            Target::Gate | Target::Up => (f, d),
            Target::Down => (d, f),
        }
    }

    /// Which fused engine weight holds the projection, and its first row there.
    fn fused_rows(self, cfg: &ModelConfig) -> (FusedWeight, usize) {
        let [nq, nk, _] = qkv_split(cfg);
        match self {
            Target::Q => (FusedWeight::Qkv, 0),
            Target::K => (FusedWeight::Qkv, nq),
            Target::V => (FusedWeight::Qkv, nq + nk),
            Target::O => (FusedWeight::O, 0),
            Target::Gate => (FusedWeight::GateUp, 0),
            Target::Up => (FusedWeight::GateUp, cfg.intermediate_size),
            Target::Down => (FusedWeight::Down, 0),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.peft_name())
    }
}

impl FromStr for Target {
    type Err = Error;

    /// `q`, `q_proj`, … `down_proj`.
    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().strip_suffix("_proj").unwrap_or(s.trim());
        Target::ALL
            .into_iter()
            .find(|t| t.peft_name().strip_suffix("_proj") == Some(name))
            .ok_or_else(|| Error::Request(format!("unknown LoRA target `{s}`: expected q, k, v, o, gate, up or down")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FusedWeight {
    Qkv,
    O,
    GateUp,
    Down,
}

/// LoRA settings (PEFT's `LoraConfig` fields of the same meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r`. Default [`DEFAULT_LORA_RANK`].
    pub rank: usize,
    /// `lora_alpha`; the update is scaled by `alpha / rank`. Default [`DEFAULT_LORA_ALPHA`].
    pub alpha: f32,
    /// Dropout probability on the adapter input while training. Default [`DEFAULT_LORA_DROPOUT`].
    pub dropout: f32,
    /// Projections to adapt. Default: all seven linear layers.
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: DEFAULT_LORA_RANK,
            alpha: DEFAULT_LORA_ALPHA,
            dropout: DEFAULT_LORA_DROPOUT,
            targets: Target::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Request("LoRA rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Request(format!("LoRA dropout {} must be in [0, 1)", self.dropout)));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Request(format!("LoRA alpha {} must be finite", self.alpha)));
        }
        if self.targets.is_empty() {
            return Err(Error::Request("LoRA needs at least one target module".into()));
        }
        Ok(())
    }
}

/// What training updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Tuning {
    /// Every weight (embedding, norms, projections, LM head).
    Full,
    /// Low-rank adapters on frozen weights.
    Lora(LoraConfig),
}

/// A weight of the differentiable model.
#[derive(Debug, Clone)]
pub enum Weight {
    /// Updated by training.
    Trainable(Var),
    /// Held fixed (the base of a LoRA model).
    Frozen(Tensor),
}

impl Weight {
    fn new(data: Vec<f32>, shape: &[usize], trainable: bool, device: &Device) -> Result<Self> {
        let t = Tensor::from_vec(data, shape, device)?;
        Ok(if trainable { Weight::Trainable(Var::from_tensor(&t)?) } else { Weight::Frozen(t) })
    }

    /// The tensor to compute with: tracked for gradients only when training a trainable weight.
    fn get(&self, mode: Mode) -> Tensor {
        match (self, mode) {
            (Weight::Trainable(v), Mode::Train { .. }) => v.as_tensor().clone(),
            (Weight::Trainable(v), Mode::Eval) => v.as_detached_tensor(),
            (Weight::Frozen(t), _) => t.clone(),
        }
    }

    /// The current values (row-major).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let t = match self {
            Weight::Trainable(v) => v.as_tensor(),
            Weight::Frozen(t) => t,
        };
        Ok(t.flatten_all()?.to_vec1()?)
    }

    fn var(&self) -> Option<&Var> {
        match self {
            Weight::Trainable(v) => Some(v),
            Weight::Frozen(_) => None,
        }
    }
}

/// One LoRA adapter: `Δ = scale · B · A`, `A`: `r × in`, `B`: `out × r`.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Down projection `A` (`lora_A` in PEFT).
    pub a: Var,
    /// Up projection `B` (`lora_B` in PEFT).
    pub b: Var,
}

/// One decoder layer's weights, named as in [`Layer`], plus its adapters.
#[derive(Debug)]
pub struct DiffLayer {
    /// RMSNorm weight before attention.
    pub input_layernorm: Weight,
    /// Fused q/k/v projection.
    pub qkv_proj: Weight,
    /// Fused q/k/v bias (Qwen2).
    pub qkv_bias: Option<Weight>,
    /// Per-head query and key RMSNorm weights (Qwen3).
    pub qk_norm: Option<(Weight, Weight)>,
    /// Attention output projection.
    pub o_proj: Weight,
    /// RMSNorm weight before the MLP.
    pub post_attention_layernorm: Weight,
    /// Fused gate/up projection.
    pub gate_up_proj: Weight,
    /// MLP down projection.
    pub down_proj: Weight,
    /// Gemma's norms of the attention and MLP outputs.
    pub sandwich: Option<(Weight, Weight)>,
    /// Adapters, indexed by [`Target`] order.
    adapters: [Option<Adapter>; 7],
}

impl DiffLayer {
    /// The adapter on `target`, if any.
    pub fn adapter(&self, target: Target) -> Option<&Adapter> {
        self.adapters[target.index()].as_ref()
    }
}

/// Sequences packed row after row: sequence `i` occupies rows `seqs[i].0 .. seqs[i].0 + seqs[i].1`.
#[derive(Debug, Clone)]
pub struct Packed {
    tokens: Vec<TokenId>,
    seqs: Arc<Vec<(usize, usize)>>,
    /// Per sequence, its branches when it packs several continuations of one prompt.
    forks: Arc<Vec<Option<ops::Fork>>>,
    positions: Vec<usize>,
}

impl Packed {
    /// Packs `seqs` in order.
    pub fn new<S: AsRef<[TokenId]>>(seqs: &[S]) -> Self {
        let mut tokens = Vec::new();
        let mut spans = Vec::with_capacity(seqs.len());
        let mut positions = Vec::new();
        for s in seqs {
            let s = s.as_ref();
            spans.push((tokens.len(), s.len()));
            positions.extend(0..s.len());
            tokens.extend_from_slice(s);
        }
        let forks = Arc::new(vec![None; spans.len()]);
        Packed { tokens, seqs: Arc::new(spans), forks, positions }
    }

    /// Packs two continuations of each prompt into one sequence `prompt ‖ a ‖ b`: the rows of `b` attend to the
    /// prompt and to `b`'s own earlier rows but not to `a`, at the positions that follow the prompt. Every row
    /// computes what it computes in `Packed::new(&[prompt ‖ a, prompt ‖ b])`, with the prompt run once — how a
    /// preference pair's chosen and rejected completions share their prompt's forward and backward.
    pub fn forked(items: &[(&[TokenId], &[TokenId], &[TokenId])]) -> Self {
        let groups: Vec<(&[TokenId], Vec<&[TokenId]>)> = items.iter().map(|&(p, a, b)| (p, vec![a, b])).collect();
        Self::groups(&groups)
    }

    /// Packs each prompt with all its continuations as one sequence `prompt ‖ c_0 ‖ c_1 ‖ …`, every branch seeing
    /// the prompt and itself only, at positions following the prompt: a group of G sampled completions (GRPO)
    /// runs its prompt once instead of G times.
    pub fn groups(items: &[(&[TokenId], Vec<&[TokenId]>)]) -> Self {
        let mut tokens = Vec::new();
        let mut spans = Vec::with_capacity(items.len());
        let mut forks = Vec::with_capacity(items.len());
        let mut positions = Vec::new();
        for (p, branches) in items {
            let start = tokens.len();
            tokens.extend_from_slice(p);
            positions.extend(0..p.len());
            let mut starts = Vec::with_capacity(branches.len());
            for b in branches {
                starts.push(tokens.len() - start);
                tokens.extend_from_slice(b);
                positions.extend(p.len()..p.len() + b.len());
            }
            spans.push((start, tokens.len() - start));
            forks.push(Some(ops::Fork { prompt: p.len(), starts }));
        }
        Packed { tokens, seqs: Arc::new(spans), forks: Arc::new(forks), positions }
    }

    /// Total rows.
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// `(first row, length)` of each sequence.
    pub fn seqs(&self) -> &[(usize, usize)] {
        &self.seqs
    }
}

/// Whether a forward records gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Trainable weights are tracked; LoRA dropout masks are drawn from this seed (same seed, same masks).
    Train {
        /// Seed of the dropout masks.
        dropout_seed: u64,
    },
    /// Nothing is tracked, no dropout (reference log-probs, evaluation).
    Eval,
}

/// The engine's decoder as a differentiable function of its weights.
#[derive(Debug)]
pub struct DiffModel {
    config: ModelConfig,
    inv_freq: Vec<f32>,
    local_inv_freq: Option<Vec<f32>>,
    device: Device,
    fused: bool,
    embed_tokens: Weight,
    lm_head: Option<Weight>,
    norm: Weight,
    layers: Vec<DiffLayer>,
    tuning: Tuning,
}

impl DiffModel {
    /// Copies `model`'s weights (as f32) into tensors on `device`. `seed` initialises LoRA's `A` matrices.
    pub fn new(model: &Model, tuning: &Tuning, device: &Device, seed: u64) -> Result<Self> {
        let cfg = model.config().clone();
        let full = matches!(tuning, Tuning::Full);
        let lora = match tuning {
            Tuning::Lora(l) => {
                l.validate()?;
                Some(l)
            }
            Tuning::Full => None,
        };
        let linear = |l: &Linear| Weight::new(l.to_f32(), &[l.rows(), l.cols()], full, device);
        let vector = |v: &[f32]| Weight::new(v.to_vec(), &[v.len()], full, device);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for layer in model.layers() {
            let mut adapters: [Option<Adapter>; 7] = Default::default();
            if let Some(l) = lora {
                for &t in &l.targets {
                    let (out, inp) = t.shape(&cfg);
                    // PEFT: kaiming_uniform_(A, a=√5) = U(−1/√in, 1/√in); B = 0.
                    let bound = 1.0 / (inp as f32).sqrt();
                    let a: Vec<f32> = (0..l.rank * inp).map(|_| rng.random_range(-bound..bound)).collect();
                    let a = Var::from_tensor(&Tensor::from_vec(a, (l.rank, inp), device)?)?;
                    let b = Var::zeros((out, l.rank), candle_core::DType::F32, device)?;
                    adapters[t.index()] = Some(Adapter { a, b });
                }
            }
            layers.push(DiffLayer {
                input_layernorm: vector(&layer.input_layernorm)?,
                qkv_proj: linear(&layer.qkv_proj)?,
                qkv_bias: layer.qkv_bias.as_deref().map(vector).transpose()?,
                qk_norm: match &layer.qk_norm {
                    Some(n) => Some((vector(&n.q)?, vector(&n.k)?)),
                    None => None,
                },
                o_proj: linear(&layer.o_proj)?,
                post_attention_layernorm: vector(&layer.post_attention_layernorm)?,
                gate_up_proj: linear(&layer.gate_up_proj)?,
                down_proj: linear(&layer.down_proj)?,
                sandwich: match &layer.sandwich {
                    Some(n) => Some((vector(&n.after_attention)?, vector(&n.after_mlp)?)),
                    None => None,
                },
                adapters,
            });
        }
        Ok(DiffModel {
            embed_tokens: linear(model.embed_tokens())?,
            lm_head: if model.is_tied() { None } else { Some(linear(model.lm_head())?) },
            norm: vector(model.norm())?,
            inv_freq: model.inv_freq().to_vec(),
            local_inv_freq: model.local_inv_freq().map(<[f32]>::to_vec),
            config: cfg,
            device: device.clone(),
            fused: device.is_cpu(),
            layers,
            tuning: tuning.clone(),
        })
    }

    /// Uses candle's composed ops instead of the fused CPU kernels (the reference the kernels are tested against).
    pub fn with_fused_kernels(mut self, fused: bool) -> Self {
        self.fused = fused && self.device.is_cpu();
        self
    }

    /// The configuration (the engine model's).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// What training updates.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }
    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The decoder layers.
    pub fn layers(&self) -> &[DiffLayer] {
        &self.layers
    }

    /// Every trainable tensor with a stable name: the engine's field names (`layers.3.qkv_proj`, `embed_tokens`,
    /// `lm_head`, `norm`), and `layers.3.q_proj.lora_a` / `.lora_b` for adapters. Order is fixed.
    pub fn named_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        let mut push = |name: String, w: &Weight| {
            if let Some(v) = w.var() {
                out.push((name, v.clone()));
            }
        };
        push("embed_tokens".into(), &self.embed_tokens);
        for (i, l) in self.layers.iter().enumerate() {
            push(format!("layers.{i}.input_layernorm"), &l.input_layernorm);
            push(format!("layers.{i}.qkv_proj"), &l.qkv_proj);
            if let Some(b) = &l.qkv_bias {
                push(format!("layers.{i}.qkv_bias"), b);
            }
            if let Some((q, k)) = &l.qk_norm {
                push(format!("layers.{i}.q_norm"), q);
                push(format!("layers.{i}.k_norm"), k);
            }
            push(format!("layers.{i}.o_proj"), &l.o_proj);
            push(format!("layers.{i}.post_attention_layernorm"), &l.post_attention_layernorm);
            push(format!("layers.{i}.gate_up_proj"), &l.gate_up_proj);
            push(format!("layers.{i}.down_proj"), &l.down_proj);
            if let Some((a, m)) = &l.sandwich {
                push(format!("layers.{i}.post_attention_norm"), a);
                push(format!("layers.{i}.post_mlp_norm"), m);
            }
        }
        push("norm".into(), &self.norm);
        if let Some(h) = &self.lm_head {
            push("lm_head".into(), h);
        }
        for (i, l) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(a) = l.adapter(t) {
                    out.push((format!("layers.{i}.{t}.lora_a"), a.a.clone()));
                    out.push((format!("layers.{i}.{t}.lora_b"), a.b.clone()));
                }
            }
        }
        out
    }

    /// Number of trainable values.
    pub fn num_trainable(&self) -> usize {
        self.named_parameters().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Hidden states after the last decoder layer (before the final norm): `T × hidden_size`.
    pub fn hidden(&self, batch: &Packed, mode: Mode) -> Result<Tensor> {
        let cfg = &self.config;
        for &(start, len) in batch.seqs.iter() {
            // A forked sequence's branches each continue the prompt: its longest position is what must fit.
            let span = batch.positions[start..start + len].iter().max().map_or(0, |&p| p + 1);
            if span > cfg.max_position_embeddings {
                return Err(Error::Request(format!(
                    "sequence of {span} tokens is longer than the model's context ({} tokens)",
                    cfg.max_position_embeddings
                )));
            }
            if let Some(&t) = batch.tokens[start..start + len].iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(Error::Request(format!("token id {t} is outside the vocabulary ({})", cfg.vocab_size)));
            }
        }
        if batch.rows() == 0 {
            return Err(Error::Request("an empty batch has nothing to run".into()));
        }
        // 1. Embed.
        let ids = Tensor::new(batch.tokens.as_slice(), &self.device)?;
        let mut x = self.embed_tokens.get(mode).index_select(&ids, 0)?;
        if cfg.arch.scales_embedding() {
            // As the inference forward: the factor √d rounded to f32 first.
            x = (x * f64::from((cfg.hidden_size as f32).sqrt()))?;
        }
        let global = RopeTable::new(&batch.positions, &self.inv_freq);
        let local = self.local_inv_freq.as_ref().map(|f| RopeTable::new(&batch.positions, f));
        for (li, layer) in self.layers.iter().enumerate() {
            let sliding = cfg.sliding_window.as_ref().is_some_and(|sw| sw.layers[li]);
            let rope = match (&local, sliding) {
                (Some(l), true) => l,
                _ => &global,
            };
            x = self.layer(li, layer, &x, rope, batch, mode)?;
        }
        Ok(x)
    }

    fn layer(
        &self,
        li: usize,
        layer: &DiffLayer,
        x: &Tensor,
        rope: &RopeTable,
        b: &Packed,
        mode: Mode,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (eps, fused) = (cfg.rms_norm_eps, self.fused);
        let window = cfg.sliding_window.as_ref().filter(|sw| sw.layers[li]).map(|sw| sw.window);
        let scale = 1.0 / cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim as f32).sqrt();
        let shape =
            AttnShape { heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim, scale, window };
        // 2. Attention block: norm, fused q/k/v (+ adapters, + bias), rotary on q and k, causal attention, output.
        let h = ops::rms_norm(x, &layer.input_layernorm.get(mode), eps, fused)?;
        let mut qkv = self.project(li, layer, &h, FusedWeight::Qkv, mode)?;
        if let Some(bias) = &layer.qkv_bias {
            qkv = qkv.broadcast_add(&bias.get(mode))?;
        }
        if let Some((qn, kn)) = &layer.qk_norm {
            qkv = self.qk_norm(&qkv, (&qn.get(mode), &kn.get(mode)))?;
        }
        let qkv = ops::rope(&qkv, rope, cfg.num_heads + cfg.num_kv_heads, fused)?;
        let attn = ops::attention(&qkv, (&b.seqs, &b.forks), shape, fused)?;
        let mut out = self.project(li, layer, &attn, FusedWeight::O, mode)?;
        if let Some((after, _)) = &layer.sandwich {
            out = ops::rms_norm(&out, &after.get(mode), eps, fused)?;
        }
        let x = (x + out)?;
        // 3. MLP block: norm, fused gate/up (+ adapters), SwiGLU or GeGLU, down (+ adapter).
        let h = ops::rms_norm(&x, &layer.post_attention_layernorm.get(mode), eps, fused)?;
        let gu = self.project(li, layer, &h, FusedWeight::GateUp, mode)?;
        let act = ops::gated(&gu, cfg.hidden_act, fused)?;
        let mut out = self.project(li, layer, &act, FusedWeight::Down, mode)?;
        if let Some((_, after)) = &layer.sandwich {
            out = ops::rms_norm(&out, &after.get(mode), eps, fused)?;
        }
        Ok((x + out)?)
    }

    /// Qwen3's per-head RMSNorm of the query and key heads of fused `qkv` rows `(T, qkv_width)`.
    fn qk_norm(&self, qkv: &Tensor, (q_w, k_w): (&Tensor, &Tensor)) -> Result<Tensor> {
        let cfg = &self.config;
        let (t, _) = qkv.dims2()?;
        let hd = cfg.head_dim;
        let (nq, nk) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let heads = |start: usize, width: usize| -> Result<Tensor> {
            Ok(qkv.narrow(1, start, width)?.contiguous()?.reshape((t * width / hd, hd))?)
        };
        let eps = cfg.rms_norm_eps;
        let q = ops::rms_norm(&heads(0, nq)?, q_w, eps, self.fused)?.reshape((t, nq))?;
        let k = ops::rms_norm(&heads(nq, nk)?, k_w, eps, self.fused)?.reshape((t, nk))?;
        Ok(Tensor::cat(&[&q, &k, &qkv.narrow(1, nq + nk, nk)?], 1)?)
    }

    /// `x · Wᵀ` for fused weight `which` of a layer, with the adapters on its rows.
    fn project(&self, li: usize, layer: &DiffLayer, x: &Tensor, which: FusedWeight, mode: Mode) -> Result<Tensor> {
        let base = match which {
            FusedWeight::Qkv => &layer.qkv_proj,
            FusedWeight::O => &layer.o_proj,
            FusedWeight::GateUp => &layer.gate_up_proj,
            FusedWeight::Down => &layer.down_proj,
        };
        let w = base.get(mode);
        let Tuning::Lora(cfg) = &self.tuning else {
            return Ok(ops::linear(x, &w, self.fused)?);
        };
        let weights: Vec<(Target, Tensor, Tensor)> = Target::ALL
            .into_iter()
            .filter(|t| t.fused_rows(&self.config).0 == which)
            .filter_map(|t| {
                let ad = layer.adapter(t)?;
                Some(match mode {
                    Mode::Train { .. } => (t, ad.a.as_tensor().clone(), ad.b.as_tensor().clone()),
                    Mode::Eval => (t, ad.a.as_detached_tensor(), ad.b.as_detached_tensor()),
                })
            })
            .collect();
        if weights.is_empty() {
            return Ok(ops::linear(x, &w, self.fused)?);
        }
        let dropout_seed = match mode {
            Mode::Train { dropout_seed } => Some(dropout_seed),
            Mode::Eval => None,
        };
        let blocks = weights
            .iter()
            .map(|(t, a, b)| {
                let (out_row, rows) = (t.fused_rows(&self.config).1, t.shape(&self.config).0);
                let seed = dropout_seed.unwrap_or(0)
                    ^ ((li as u64) << 32 | t.index() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (ops::LoraBlock { out_row, rows, b_row: 0, seed }, a, b)
            })
            .collect();
        let dropout = if dropout_seed.is_some() { cfg.dropout } else { 0.0 };
        let parts = ops::LoraParts { blocks, rank: cfg.rank, scale: cfg.scale(), dropout };
        Ok(ops::lora_linear(x, &w, &parts, self.fused)?)
    }

    fn lm_head(&self, mode: Mode) -> Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens).get(mode)
    }

    /// Logits of every row (`T × vocab`), without gradients: what [`Model::forward`] computes for the same tokens.
    pub fn logits_all(&self, batch: &Packed) -> Result<Tensor> {
        let h = self.hidden(batch, Mode::Eval)?;
        let n = ops::rms_norm(&h, &self.norm.get(Mode::Eval), self.config.rms_norm_eps, self.fused)?;
        Ok(ops::linear(&n, &self.lm_head(Mode::Eval), self.fused)?)
    }

    /// `log p(targets[n] | the tokens of its sequence up to row rows[n])` for each `n`: the log-probability the
    /// logits of row `rows[n]` give to `targets[n]`. Returns `N` values (differentiable in [`Mode::Train`]).
    pub fn token_logprobs(&self, batch: &Packed, rows: &[usize], targets: &[TokenId], mode: Mode) -> Result<Tensor> {
        if rows.len() != targets.len() {
            return Err(Error::Request(format!("{} rows but {} targets", rows.len(), targets.len())));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= batch.rows()) {
            return Err(Error::Request(format!("row {r} is outside the batch ({} rows)", batch.rows())));
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::Request(format!("target {t} is outside the vocabulary")));
        }
        let h = self.hidden(batch, mode)?;
        let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>().as_slice(), &self.device)?;
        let picked = h.index_select(&idx, 0)?;
        let n = ops::rms_norm(&picked, &self.norm.get(mode), self.config.rms_norm_eps, self.fused)?;
        let logits = ops::linear(&n, &self.lm_head(mode), self.fused)?;
        Ok(ops::token_logprobs(&logits, targets, self.fused)?)
    }

    /// Sets trainable tensors by name (resuming a checkpoint); every trainable tensor must be given, with its shape.
    pub fn set_parameters(&self, values: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.named_parameters() {
            let t = values.get(&name).ok_or_else(|| Error::Request(format!("tensor `{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(Error::Request(format!(
                    "tensor `{name}` has shape {:?}, the model needs {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// The effective dense weights of fused engine weight `which` of layer `layer`: the base plus every adapter's
    /// `scale · B · A` on its rows.
    fn merged(&self, layer: &DiffLayer, base: &Weight, which: FusedWeight) -> Result<Vec<f32>> {
        let mut w = base.to_vec()?;
        let Tuning::Lora(cfg) = &self.tuning else {
            return Ok(w);
        };
        for t in Target::ALL {
            let (fw, first) = t.fused_rows(&self.config);
            let Some(ad) = layer.adapter(t).filter(|_| fw == which) else {
                continue;
            };
            let (out, inp) = t.shape(&self.config);
            let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * cfg.scale() as f64)?;
            let delta: Vec<f32> = delta.flatten_all()?.to_vec1()?;
            for (dst, src) in w[first * inp..(first + out) * inp].iter_mut().zip(&delta) {
                *dst += src;
            }
        }
        Ok(w)
    }

    /// An engine [`Model`] with the current weights (adapters merged): the trained model, ready to generate and
    /// score. `source` names it in error messages.
    pub fn merged_model(&self, source: &Path) -> Result<Model> {
        self.merged_as(source, Linear::from_f32)
    }

    /// [`DiffModel::merged_model`] with every projection, the embedding and the LM head quantized to Q8_0 straight
    /// from the trained values (no f32 engine copy in between): the fast path of the loop's weight hand-off. The
    /// same weights as `merged_model(..).to_q8()`, bit for bit.
    pub fn merged_q8_model(&self, source: &Path) -> Result<Model> {
        self.merged_as(source, Linear::q8_from_f32)
    }

    fn merged_as(&self, source: &Path, linear: impl Fn(&[f32], usize, usize) -> Linear) -> Result<Model> {
        let cfg = &self.config;
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let nq = cfg.num_heads * cfg.head_dim;
        // Full fine-tuning reads the trained values in place; LoRA adds each adapter's delta to a copy.
        let project = |l: &DiffLayer, w: &Weight, which: FusedWeight, rows: usize, cols: usize| -> Result<Linear> {
            if matches!(self.tuning, Tuning::Lora(_)) {
                return Ok(linear(&self.merged(l, w, which)?, rows, cols));
            }
            let t = match w {
                Weight::Trainable(v) => v.as_tensor(),
                Weight::Frozen(t) => t,
            };
            Ok(ops::with_values(t, "merge", |v| Ok(linear(v, rows, cols)))?)
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(Layer {
                input_layernorm: l.input_layernorm.to_vec()?,
                qkv_proj: project(l, &l.qkv_proj, FusedWeight::Qkv, cfg.qkv_width(), d)?,
                qkv_bias: l.qkv_bias.as_ref().map(Weight::to_vec).transpose()?,
                qk_norm: match &l.qk_norm {
                    Some((q, k)) => Some(crate::model::QkNorm { q: q.to_vec()?, k: k.to_vec()? }),
                    None => None,
                },
                o_proj: project(l, &l.o_proj, FusedWeight::O, d, nq)?,
                post_attention_layernorm: l.post_attention_layernorm.to_vec()?,
                gate_up_proj: project(l, &l.gate_up_proj, FusedWeight::GateUp, 2 * f, d)?,
                down_proj: project(l, &l.down_proj, FusedWeight::Down, d, f)?,
                sandwich: match &l.sandwich {
                    Some((a, m)) => {
                        Some(crate::model::SandwichNorms { after_attention: a.to_vec()?, after_mlp: m.to_vec()? })
                    }
                    None => None,
                },
            });
        }
        // The engine recomputes inverse frequencies from the config; carry any per-frequency factors over.
        let base = rope_inv_freq(cfg);
        let factors = (base != self.inv_freq).then(|| base.iter().zip(&self.inv_freq).map(|(b, i)| b / i).collect());
        let parts = ModelParts {
            config: cfg.clone(),
            embed_tokens: linear(&self.embed_tokens.to_vec()?, cfg.vocab_size, d),
            lm_head: self.lm_head.as_ref().map(|h| h.to_vec().map(|v| linear(&v, cfg.vocab_size, d))).transpose()?,
            layers,
            norm: self.norm.to_vec()?,
            rope_freq_factors: factors,
        };
        Model::new(parts, source)
    }
}
