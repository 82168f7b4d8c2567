//! The generic backend: HF model directories whose architecture the native engine does not have, run by
//! candle-transformers' own model files (today: `phi3`). One sequence per forward, a fork (the `n` samples of a
//! prompt) is a clone of the prefilled model's KV state, no prefix sharing, no batching across sequences, no
//! training: a user's model works in `generate` and `score` before it is fast. The native engine stays the default
//! wherever it supports the architecture ([`crate::config::Arch`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::chat::ChatTemplate;
use crate::engine::{check_vocab, final_text, finish_after, hf_chat_template, render_prompt};
use crate::error::{Error, Result};
use crate::sampling::{sample, sample_seed, SamplingParams, SeqRng};
use crate::scheduler::check_request;
use crate::tokenizer::Tokenizer;
use crate::{GenerateRequest, Progress, Prompt, Sample, Scored, TokenId};

/// The HF `model_type`s the generic backend runs.
pub const GENERIC_ARCHITECTURES: &[&str] = &["phi3"];

/// A candle-transformers model with its own KV state (cloned to fork).
#[derive(Debug, Clone)]
enum Net {
    Phi3(candle_transformers::models::phi3::Model),
}

impl Net {
    /// Appends `ids` at position `offset` and returns the logits of the last one.
    fn forward(&mut self, ids: &[TokenId], offset: usize) -> Result<Vec<f32>> {
        let input = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        let logits = match self {
            Net::Phi3(m) => m.forward(&input, offset)?,
        };
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }
}

/// What `orchard info` tells about a generic-backend model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenericInfo {
    /// HF `model_type`.
    pub architecture: String,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest sequence.
    pub context: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Model width.
    pub hidden: usize,
}

/// A model on the generic backend, ready to generate and score.
#[derive(Debug)]
pub struct GenericEngine {
    net: Mutex<Net>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    path: PathBuf,
    info: GenericInfo,
}

/// The `model_type` of an HF directory's `config.json`, if it names one.
pub fn hf_model_type(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("model_type")?.as_str().map(str::to_string)
}

impl GenericEngine {
    /// Loads an HF directory (config.json, safetensors, tokenizer.json) of a [`GENERIC_ARCHITECTURES`] model, in f32.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let model_type = hf_model_type(dir).unwrap_or_default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::bad_model(dir, "no .safetensors file"));
        }
        // SAFETY: the files are memory-mapped read-only for the life of the weights, as candle's loaders do.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu)? };
        let bad = |e: serde_json::Error| Error::bad_model(&config_path, format!("invalid {model_type} config: {e}"));
        let (net, info) = match model_type.as_str() {
            "phi3" => {
                let cfg: candle_transformers::models::phi3::Config = serde_json::from_str(&text).map_err(bad)?;
                let info = GenericInfo {
                    architecture: model_type.clone(),
                    vocab: cfg.vocab_size,
                    context: cfg.max_position_embeddings,
                    layers: cfg.num_hidden_layers,
                    hidden: cfg.hidden_size,
                };
                let model = candle_transformers::models::phi3::Model::new(&cfg, vb)
                    .map_err(|e| Error::bad_model(dir, format!("phi3 weights: {e}")))?;
                (Net::Phi3(model), info)
            }
            other => {
                return Err(Error::unsupported(
                    &config_path,
                    format!("model_type `{other}`: neither the native engine nor the generic backend ({}) runs it", {
                        GENERIC_ARCHITECTURES.join(", ")
                    }),
                ))
            }
        };
        let tokenizer = Tokenizer::from_hf_dir(dir)?;
        check_vocab(dir, &tokenizer, info.vocab)?;
        let template = hf_chat_template(dir)?.map(|src| ChatTemplate::for_tokenizer(&src, &tokenizer)).transpose()?;
        Ok(GenericEngine { net: Mutex::new(net), tokenizer, template, path: dir.to_path_buf(), info })
    }

    /// Architecture, vocabulary, context.
    pub fn info(&self) -> &GenericInfo {
        &self.info
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The chat template, if the model has one.
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }
    /// The model directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renders and tokenizes a prompt (as [`crate::Engine::prompt_tokens`]).
    pub fn prompt_tokens(&self, prompt: &Prompt, system: Option<&str>, raw: bool) -> Result<Vec<TokenId>> {
        let text = render_prompt(self.template.as_ref(), &self.path, prompt, system, raw)?;
        self.tokenizer.encode(&text, raw)
    }

    fn fresh(&self) -> Result<Net> {
        let mut net = self.net.lock().map_err(|_| Error::Request("the model lock is poisoned".into()))?.clone();
        match &mut net {
            Net::Phi3(m) => m.clear_kv_cache(),
        }
        Ok(net)
    }

    fn check(&self, ids: &[TokenId], what: &str) -> Result<()> {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= self.info.vocab) {
            return Err(Error::Request(format!(
                "{what}: token id {t} is outside the vocabulary ({})",
                self.info.vocab
            )));
        }
        Ok(())
    }

    /// `n` samples per request, one sequence at a time (the prompt prefilled once, each sample continuing a clone),
    /// with the native engine's sampling, seeds, stop rules and outputs.
    pub fn generate(
        &self,
        requests: &[GenerateRequest],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Vec<Sample>>> {
        let ctx = self.info.context;
        let mut stats = Progress { samples_total: requests.iter().map(|r| r.n).sum(), ..Default::default() };
        let mut out = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            check_request(&r.prompt, &r.params, ctx).map_err(|e| Error::Request(format!("request {i}: {e}")))?;
            self.check(&r.prompt, &format!("request {i}"))?;
            let mut prefilled = self.fresh()?;
            let first = prefilled.forward(&r.prompt, 0)?;
            let mut samples = Vec::with_capacity(r.n);
            for j in 0..r.n {
                let seed = sample_seed(r.seed, j as u64);
                samples.push(self.continue_sample(prefilled.clone(), &first, r, seed, &mut stats, progress)?);
                stats.samples_done += 1;
                progress(&stats);
            }
            out.push(samples);
        }
        Ok(out)
    }

    fn continue_sample(
        &self,
        mut net: Net,
        first: &[f32],
        r: &GenerateRequest,
        seed: u64,
        stats: &mut Progress,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Sample> {
        let p: &SamplingParams = &r.params;
        let mut rng = SeqRng::new(seed);
        let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
        let mut logits = first.to_vec();
        let mut text_len = 0;
        loop {
            let draw = sample(&logits, p, &mut rng);
            tokens.push(draw.token);
            logprobs.push(draw.logprob);
            stats.generated_tokens += 1;
            let len = r.prompt.len() + tokens.len() - 1;
            if let Some(reason) = finish_after(&self.tokenizer, &tokens, p, len, self.info.context, &mut text_len)? {
                let text = final_text(&self.tokenizer, &tokens, p)?;
                return Ok(Sample { text, token_ids: tokens, token_logprobs: logprobs, finish_reason: reason, seed });
            }
            if tokens.len() % 16 == 0 {
                progress(stats);
            }
            logits = net.forward(&[draw.token], len)?;
        }
    }

    /// The full next-token log-softmax after `ids`.
    pub fn next_token_logprobs(&self, ids: &[TokenId]) -> Result<Vec<f32>> {
        if ids.is_empty() || ids.len() > self.info.context {
            return Err(Error::Request(format!("{} tokens: outside 1..={}", ids.len(), self.info.context)));
        }
        self.check(ids, "next_token_logprobs")?;
        let logits = self.fresh()?.forward(ids, 0)?;
        let lse = crate::kernels::ops::log_sum_exp(&logits);
        Ok(logits.iter().map(|&v| (v as f64 - lse) as f32).collect())
    }

    /// Teacher-forced log-probs of each completion given its prompt: the prompt in one forward, then the
    /// completion a token at a time (the model returns the last position's logits only).
    pub fn score(&self, pairs: &[(Vec<TokenId>, Vec<TokenId>)]) -> Result<Vec<Scored>> {
        let mut out = Vec::with_capacity(pairs.len());
        for (i, (prompt, completion)) in pairs.iter().enumerate() {
            if prompt.is_empty() {
                return Err(Error::Request(format!("pair {i}: the prompt is empty")));
            }
            if prompt.len() + completion.len() > self.info.context {
                return Err(Error::Request(format!(
                    "pair {i}: {} tokens are longer than the model's context ({})",
                    prompt.len() + completion.len(),
                    self.info.context
                )));
            }
            self.check(prompt, &format!("pair {i}"))?;
            self.check(completion, &format!("pair {i}"))?;
            let mut net = self.fresh()?;
            let mut logits = net.forward(prompt, 0)?;
            let mut lps = Vec::with_capacity(completion.len());
            for (k, &t) in completion.iter().enumerate() {
                let lse = crate::kernels::ops::log_sum_exp(&logits);
                lps.push((logits[t as usize] as f64 - lse) as f32);
                if k + 1 < completion.len() {
                    logits = net.forward(&[t], prompt.len() + k)?;
                }
            }
            let sum = lps.iter().map(|&x| x as f64).sum();
            out.push(Scored { logprob_sum: sum, n_tokens: lps.len(), token_logprobs: lps });
        }
        Ok(out)
    }
}

/// Whatever serves a `--model`: the native engine, or the generic backend for an HF directory of an architecture
/// only candle-transformers runs.
#[derive(Debug)]
pub enum AnyEngine {
    /// The native engine (every job).
    Native(Box<crate::Engine>),
    /// The generic backend (`generate`, `score`, `info`).
    Generic(Box<GenericEngine>),
}

impl AnyEngine {
    /// Loads `spec` natively when the native engine supports its architecture, else on the generic backend.
    pub fn load(spec: &str) -> Result<Self> {
        let source = crate::hub::resolve_model(spec)?;
        if let crate::hub::ModelSource::HfDir(dir) = &source {
            if hf_model_type(dir).is_some_and(|t| GENERIC_ARCHITECTURES.contains(&t.as_str())) {
                return GenericEngine::load(dir).map(|g| AnyEngine::Generic(Box::new(g)));
            }
        }
        crate::Engine::from_source(&source).map(|e| AnyEngine::Native(Box::new(e)))
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            AnyEngine::Native(e) => e.tokenizer(),
            AnyEngine::Generic(g) => g.tokenizer(),
        }
    }

    /// Renders and tokenizes a prompt.
    pub fn prompt_tokens(&self, prompt: &Prompt, system: Option<&str>, raw: bool) -> Result<Vec<TokenId>> {
        match self {
            AnyEngine::Native(e) => e.prompt_tokens(prompt, system, raw),
            AnyEngine::Generic(g) => g.prompt_tokens(prompt, system, raw),
        }
    }

    /// Samples (the generic backend ignores the batching options).
    pub fn generate(
        &self,
        requests: &[GenerateRequest],
        opts: &crate::GenerateOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Vec<Sample>>> {
        match self {
            AnyEngine::Native(e) => e.generate(requests, opts, progress),
            AnyEngine::Generic(g) => g.generate(requests, progress),
        }
    }

    /// Teacher-forced log-probs.
    pub fn score(&self, pairs: &[(Vec<TokenId>, Vec<TokenId>)]) -> Result<Vec<Scored>> {
        match self {
            AnyEngine::Native(e) => e.score(pairs),
            AnyEngine::Generic(g) => g.score(pairs),
        }
    }
}
