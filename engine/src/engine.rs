//! The engine: a model with its tokenizer and chat template, batched generation and scoring.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::chat::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::hub::{self, ModelSource};
use crate::kernels::ops::log_sum_exp;
use crate::kv::KvCache;
use crate::model::{Chunk, LogitRows, Model, TokenId};
use crate::sampling::{sample_seed, SamplingParams};
use crate::scheduler::{check_request, Batcher, SchedulerConfig};
use crate::tokenizer::Tokenizer;
use crate::weights::Precision;

pub use crate::scheduler::DEFAULT_MAX_BATCH;
/// Default number of prompt tokens run per forward while prefilling.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// A prompt as the user gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Chat messages, rendered with the model's template (with the generation prompt appended).
    Messages(Vec<Message>),
    /// Plain text: templated as one user turn, or used as-is when raw.
    Text(String),
}

/// Where a model came from and how to identify it in outputs.
#[derive(Debug)]
pub struct ModelInfo {
    /// A short name: the file stem or directory name.
    pub id: String,
    /// The GGUF file or HF directory (for weights handed over in memory: the file the lineage started from).
    pub path: PathBuf,
    hash: OnceLock<String>,
    /// The weights came from memory, not from `path`: the identity is their digest.
    in_memory: bool,
}

impl ModelInfo {
    /// SHA-256 over the model's weight files (computed once, on first call); for weights handed over in memory,
    /// their digest once [`Engine::identity`] computed it.
    pub fn hash(&self) -> Result<String> {
        if let Some(h) = self.hash.get() {
            return Ok(h.clone());
        }
        if self.in_memory {
            return Err(Error::Request(format!(
                "{}: weights held in memory are identified by Engine::identity, not by a file",
                self.id
            )));
        }
        let h = hash_model_files(&self.path)?;
        Ok(self.hash.get_or_init(|| h).clone())
    }
}

fn hash_model_files(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut files = Vec::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path).map_err(|e| Error::io(path, e))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "safetensors" || x == "json") {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(&f, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Why a sample stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An EOS/stop token or a stop string.
    Stop,
    /// `max_new_tokens` or the model's context was reached.
    Length,
}

/// One generated sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The completion text (special tokens removed, cut before a matched stop string).
    pub text: String,
    /// Every generated token, including the stop token that ended it.
    pub token_ids: Vec<TokenId>,
    /// The model's log-prob of each generated token (raw logits, temperature 1).
    pub token_logprobs: Vec<f32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The seed of this sample's random stream.
    pub seed: u64,
}

/// A generation request: one prompt, `n` samples.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids (already templated).
    pub prompt: Vec<TokenId>,
    /// Number of samples.
    pub n: usize,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// Base seed; sample `j` uses [`sample_seed`]`(seed, j)`.
    pub seed: u64,
}

/// Knobs of a generation call.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Numeric path; `None` lets the engine choose ([`Model::default_precision`]).
    pub precision: Option<Precision>,
    /// Most sequences decoded together. Default [`DEFAULT_MAX_BATCH`].
    pub max_batch: usize,
    /// Most rows (decode tokens plus prompt tokens) per forward. Default [`DEFAULT_PREFILL_CHUNK`].
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { precision: None, max_batch: DEFAULT_MAX_BATCH, prefill_chunk: DEFAULT_PREFILL_CHUNK }
    }
}

/// Progress of a generation call, reported after every forward.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Samples finished so far.
    pub samples_done: usize,
    /// Samples asked for.
    pub samples_total: usize,
    /// Tokens generated so far.
    pub generated_tokens: usize,
    /// Prompt tokens run so far.
    pub prompt_tokens: usize,
}

/// Teacher-forced log-probs of one completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Sum of the token log-probs.
    pub logprob_sum: f64,
    /// `log p(completion[i] | prompt, completion[..i])`.
    pub token_logprobs: Vec<f32>,
    /// Number of completion tokens.
    pub n_tokens: usize,
}

/// A model ready to generate and score.
#[derive(Debug)]
pub struct Engine {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    info: ModelInfo,
}

/// How weights handed to [`Engine::with_weights`] are held for generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handoff {
    /// Re-quantized to Q8_0: the fast quantized path.
    #[default]
    Q8,
    /// As given (f32): the trainer's exact numerics, slower decode.
    F32,
}

impl Engine {
    /// Loads `spec`: `default` (fetched on first use), a `.gguf` file or an HF model directory.
    pub fn load(spec: &str) -> Result<Self> {
        Self::from_source(&hub::resolve_model(spec)?)
    }

    /// Loads a resolved model source.
    pub fn from_source(source: &ModelSource) -> Result<Self> {
        let (model, tokenizer, template_src) = match source {
            ModelSource::Gguf(p) => {
                let g = GgufFile::open(p)?;
                let tokenizer = Tokenizer::from_gguf(&g)?;
                let template = g.meta_str("tokenizer.chat_template").map(str::to_string).or_else(|| {
                    // Gemma GGUF files often come without a template; llama.cpp then applies Gemma's built in.
                    let gemma = g.meta_str("general.architecture").is_some_and(|a| a.starts_with("gemma"));
                    (gemma && tokenizer.token_id("<start_of_turn>").is_some()).then(|| GEMMA_TEMPLATE.to_string())
                });
                (g.load_model()?, tokenizer, template)
            }
            ModelSource::HfDir(d) => {
                let tokenizer = Tokenizer::from_hf_dir(d)?;
                (crate::hf::load_model(d)?, tokenizer, hf_chat_template(d)?)
            }
        };
        let path = source.path();
        check_vocab(path, &tokenizer, model.config().vocab_size)?;
        let template = template_src.map(|src| ChatTemplate::for_tokenizer(&src, &tokenizer)).transpose()?;
        let id =
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        let info = ModelInfo { id, path: path.to_path_buf(), hash: OnceLock::new(), in_memory: false };
        Ok(Engine { model, tokenizer: Arc::new(tokenizer), template: template.map(Arc::new), info })
    }

    /// Assembles an engine from parts (tests, in-process training). Its identity is the digest of `model`'s weights.
    pub fn from_parts(model: Model, tokenizer: Tokenizer, template: Option<ChatTemplate>, id: &str) -> Self {
        let info = ModelInfo { id: id.to_string(), path: PathBuf::from(id), hash: OnceLock::new(), in_memory: true };
        Engine { model, tokenizer: Arc::new(tokenizer), template: template.map(Arc::new), info }
    }

    /// An engine over new weights — a trained model handed back in memory, no file written or read — sharing this
    /// engine's tokenizer and chat template. `handoff` says how the weights are held for generation; the new
    /// engine's identity ([`Engine::identity`]) is the digest of the weights it holds, computed when first asked.
    pub fn with_weights(&self, model: Model, handoff: Handoff, id: &str) -> Result<Self> {
        if model.config().vocab_size != self.model.config().vocab_size {
            return Err(Error::Request(format!(
                "new weights have a vocabulary of {}, the engine's tokenizer {}",
                model.config().vocab_size,
                self.model.config().vocab_size
            )));
        }
        let model = match (handoff, self.model.device()) {
            // On a device the weights are uploaded in its dtype: re-quantizing first would only lose precision.
            (_, Some(dev)) => model.on_device(dev.placement(), dev.dtype())?,
            (Handoff::Q8, None) => model.to_q8(),
            (Handoff::F32, None) => model,
        };
        let info =
            ModelInfo { id: id.to_string(), path: self.info.path.clone(), hash: OnceLock::new(), in_memory: true };
        Ok(Engine { model, tokenizer: self.tokenizer.clone(), template: self.template.clone(), info })
    }

    /// This engine with its model on `placement` (weights uploaded once in `dtype`; see [`Model::on_device`]).
    /// Engines made from it by [`Engine::with_weights`] run on the same device.
    pub fn on_device(self, placement: crate::Placement, dtype: crate::device::DType) -> Result<Self> {
        Ok(Engine { model: self.model.on_device(placement, dtype)?, ..self })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The chat template, if the model has one.
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_deref()
    }
    /// Where the model came from.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The model's identity for caches, checkpoints and resume: the SHA-256 of the file(s) it was loaded from, or,
    /// for weights handed over in memory, of the weights held ([`Model::weights_digest`]). Computed once.
    pub fn identity(&self) -> Result<String> {
        if self.info.in_memory {
            return Ok(self.info.hash.get_or_init(|| self.model.weights_digest()).clone());
        }
        self.info.hash()
    }

    /// Renders a prompt to text: templated (`system` prepended when given) unless `raw`.
    pub fn render_prompt(&self, prompt: &Prompt, system: Option<&str>, raw: bool) -> Result<String> {
        render_prompt(self.template.as_deref(), &self.info.path, prompt, system, raw)
    }

    /// Renders and tokenizes a prompt.
    pub fn prompt_tokens(&self, prompt: &Prompt, system: Option<&str>, raw: bool) -> Result<Vec<TokenId>> {
        let text = self.render_prompt(prompt, system, raw)?;
        self.tokenizer.encode(&text, raw)
    }

    /// Generates `n` samples for each request, batching every open sequence into each forward (the scheduler's
    /// batching loop, driven synchronously: a request's prompt is computed once and its samples fork from it).
    /// Results come back in request order, samples in index order.
    pub fn generate(
        &self,
        requests: &[GenerateRequest],
        opts: &GenerateOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Vec<Sample>>> {
        let _span = tracing::debug_span!("generate", requests = requests.len()).entered();
        let ctx = self.model.config().max_position_embeddings;
        for (i, r) in requests.iter().enumerate() {
            check_request(&r.prompt, &r.params, ctx).map_err(|e| Error::Request(format!("request {i}: {e}")))?;
            if r.n == 0 {
                return Err(Error::Request(format!("request {i}: n must be at least 1")));
            }
        }
        let config = SchedulerConfig {
            max_batch: opts.max_batch.max(1),
            step_tokens: opts.prefill_chunk.max(1),
            kv_budget: None,
            // Within a request the samples fork from its prompt; across requests nothing is kept (the index holds
            // every finished sequence's blocks until it is cleared, which a long unbudgeted call cannot afford).
            prefix_cache: false,
            precision: opts.precision,
        };
        let mut batcher = Batcher::new(self, config);
        for (i, r) in requests.iter().enumerate() {
            let samples = (0..r.n).map(|j| (sample_seed(r.seed, j as u64), (i, j))).collect();
            batcher.push(r.prompt.clone(), r.params.clone(), samples);
        }
        let mut results: Vec<Vec<Option<Sample>>> = requests.iter().map(|r| vec![None; r.n]).collect();
        let mut stats = Progress { samples_total: requests.iter().map(|r| r.n).sum(), ..Default::default() };
        while !batcher.is_idle() {
            for ((i, j), sample) in batcher.step(self)? {
                results[i][j] = Some(sample);
                stats.samples_done += 1;
            }
            let m = batcher.metrics(self);
            stats.generated_tokens = m.decode_tokens as usize;
            stats.prompt_tokens = m.prefill_tokens_computed as usize;
            progress(&stats);
        }
        Ok(results.into_iter().map(|r| r.into_iter().map(|s| s.expect("every sample finishes")).collect()).collect())
    }

    /// Teacher-forced log-probs of each completion given its prompt, on the f32 path (the trainer's numerics).
    pub fn score(&self, pairs: &[(Vec<TokenId>, Vec<TokenId>)]) -> Result<Vec<Scored>> {
        self.score_with(pairs, Precision::F32, DEFAULT_PREFILL_CHUNK)
    }

    /// [`Engine::score`] with an explicit precision and tokens-per-forward budget.
    pub fn score_with(
        &self,
        pairs: &[(Vec<TokenId>, Vec<TokenId>)],
        precision: Precision,
        chunk: usize,
    ) -> Result<Vec<Scored>> {
        let _span = tracing::debug_span!("score", rows = pairs.len()).entered();
        let ctx = self.model.config().max_position_embeddings;
        for (i, (p, c)) in pairs.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::Request(format!("pair {i}: the prompt has no tokens")));
            }
            if p.len() + c.len() > ctx {
                return Err(Error::Request(format!(
                    "pair {i}: prompt + completion is {} tokens, the model's context is {ctx}",
                    p.len() + c.len()
                )));
            }
        }
        let mut out: Vec<Scored> = pairs
            .iter()
            .map(|(_, c)| Scored { logprob_sum: 0.0, token_logprobs: Vec::with_capacity(c.len()), n_tokens: c.len() })
            .collect();
        // Each pair is one sequence of prompt ‖ completion; the positions from prompt_len − 1 on predict the
        // completion's tokens.
        let seqs: Vec<Vec<TokenId>> = pairs.iter().map(|(p, c)| [p.as_slice(), c.as_slice()].concat()).collect();
        let runs: Vec<(usize, usize)> = seqs.iter().zip(pairs).map(|(s, (p, _))| (s.len() - 1, p.len() - 1)).collect();
        let caches = self.shared_prompts(pairs, precision, chunk)?;
        self.forward_rows(&seqs, &runs, caches, precision, chunk, &mut |pi, pos, row| {
            let lp = (row[seqs[pi][pos + 1] as usize] as f64 - log_sum_exp(row)) as f32;
            out[pi].token_logprobs.push(lp);
            out[pi].logprob_sum += lp as f64;
        })?;
        Ok(out)
    }

    /// For each prompt, the log-probability of each of `candidates` as the next token (one forward over the
    /// prompt, however many candidates): a judge's choice among single-token replies.
    pub fn next_token_logprobs(
        &self,
        prompts: &[Vec<TokenId>],
        candidates: &[TokenId],
        precision: Precision,
    ) -> Result<Vec<Vec<f32>>> {
        let ctx = self.model.config().max_position_embeddings;
        let vocab = self.model.config().vocab_size;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() || p.len() > ctx {
                return Err(Error::Request(format!("prompt {i}: {} tokens (context {ctx})", p.len())));
            }
        }
        if let Some(c) = candidates.iter().find(|c| **c as usize >= vocab) {
            return Err(Error::Request(format!("candidate token {c} is outside the vocabulary ({vocab})")));
        }
        let mut out = vec![Vec::new(); prompts.len()];
        let runs: Vec<(usize, usize)> = prompts.iter().map(|p| (p.len(), p.len() - 1)).collect();
        let caches = vec![None; prompts.len()];
        self.forward_rows(prompts, &runs, caches, precision, DEFAULT_PREFILL_CHUNK, &mut |pi, _, row| {
            let z = log_sum_exp(row);
            out[pi] = candidates.iter().map(|&c| (row[c as usize] as f64 - z) as f32).collect();
        })?;
        Ok(out)
    }

    /// For pairs whose prompt another pair shares: a cache holding the prompt's tokens but its last (whose row
    /// predicts the completion's first token), computed once per distinct prompt and forked for each pair — the G
    /// completions of a group, or a preference pair's two, run their prompt once. `None` for the other pairs.
    fn shared_prompts(
        &self,
        pairs: &[(Vec<TokenId>, Vec<TokenId>)],
        precision: Precision,
        chunk: usize,
    ) -> Result<Vec<Option<KvCache>>> {
        let mut by_prompt: std::collections::HashMap<&[TokenId], Vec<usize>> = std::collections::HashMap::new();
        for (i, (p, _)) in pairs.iter().enumerate() {
            by_prompt.entry(p.as_slice()).or_default().push(i);
        }
        let mut caches = vec![None; pairs.len()];
        for (prompt, users) in by_prompt {
            if users.len() < 2 || prompt.len() < 2 {
                continue;
            }
            let mut cache = self.model.new_cache();
            for piece in prompt[..prompt.len() - 1].chunks(chunk.max(1)) {
                let mut chunks = [Chunk { cache: &mut cache, tokens: piece, logits: LogitRows::None }];
                self.model.forward(&mut chunks, precision)?;
            }
            for i in users {
                caches[i] = Some(cache.clone());
            }
        }
        Ok(caches)
    }

    /// Run `seqs[i][..runs[i].0]` through the model in chunks of at most `chunk` tokens, many sequences per
    /// forward, and call `visit(i, position, logits)` for every position from `runs[i].1` on, in order. A sequence
    /// with a cache in `caches` starts after the tokens that cache holds.
    fn forward_rows(
        &self,
        seqs: &[Vec<TokenId>],
        runs: &[(usize, usize)],
        mut caches: Vec<Option<KvCache>>,
        precision: Precision,
        chunk: usize,
        visit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let chunk = chunk.max(1);
        // A sequence with no wanted position has nothing to run; one with a cache starts after what it holds.
        let mut done: Vec<usize> = runs
            .iter()
            .zip(&caches)
            .map(|(&(total, first), c)| if first >= total { total } else { c.as_ref().map_or(0, KvCache::len) })
            .collect();
        let mut next = 0;
        while next < seqs.len() {
            let mut budget = chunk;
            let mut batch: Vec<(usize, usize, usize)> = Vec::new(); // (sequence, start, end)
            let mut i = next;
            while i < seqs.len() && budget > 0 {
                let total = runs[i].0;
                if done[i] < total {
                    let take = (total - done[i]).min(budget);
                    batch.push((i, done[i], done[i] + take));
                    budget -= take;
                }
                i += 1;
            }
            if batch.is_empty() {
                next = i;
                continue;
            }
            let logits = {
                let mut taken: Vec<(usize, KvCache)> = batch
                    .iter()
                    .map(|&(si, _, _)| (si, caches[si].take().unwrap_or_else(|| self.model.new_cache())))
                    .collect();
                let mut chunks: Vec<Chunk<'_>> = Vec::with_capacity(batch.len());
                for ((_, cache), &(si, start, end)) in taken.iter_mut().zip(&batch) {
                    let first = runs[si].1.saturating_sub(start).min(end - start);
                    let rows = if first < end - start { LogitRows::From(first) } else { LogitRows::None };
                    chunks.push(Chunk { cache, tokens: &seqs[si][start..end], logits: rows });
                }
                let logits = self.model.forward(&mut chunks, precision)?;
                drop(chunks);
                for (si, cache) in taken {
                    caches[si] = Some(cache);
                }
                logits
            };
            for (s, &(si, start, end)) in batch.iter().enumerate() {
                for r in 0..logits.rows(s) {
                    let pos = end - logits.rows(s) + r; // position of the row
                    debug_assert!(pos >= runs[si].1);
                    visit(si, pos, logits.row(s, r));
                }
                debug_assert!(start < end);
                done[si] = end;
                if end == runs[si].0 {
                    caches[si] = None;
                }
            }
            while next < seqs.len() && done[next] >= runs[next].0 {
                next += 1;
            }
        }
        Ok(())
    }
}

/// Refuses a tokenizer with more tokens than the model has rows (`path` names the model).
pub(crate) fn check_vocab(path: &Path, tokenizer: &Tokenizer, model_vocab: usize) -> Result<()> {
    if tokenizer.vocab_size() > model_vocab {
        return Err(Error::bad_model(
            path,
            format!("the tokenizer has {} tokens but the model only {model_vocab}", tokenizer.vocab_size()),
        ));
    }
    Ok(())
}

/// A prompt as text: templated with `template` (`system` prepended when given) unless `raw`; `path` names the model
/// in the error when it has no template.
pub(crate) fn render_prompt(
    template: Option<&ChatTemplate>,
    path: &Path,
    prompt: &Prompt,
    system: Option<&str>,
    raw: bool,
) -> Result<String> {
    match (prompt, raw) {
        (Prompt::Text(t), true) => Ok(t.clone()),
        (Prompt::Messages(_), true) => {
            Err(Error::Request("a raw prompt must be a string, not a list of messages".into()))
        }
        (p, false) => {
            let template = template.ok_or_else(|| {
                Error::Request(format!("{} has no chat template: pass raw prompts (--raw) instead", path.display()))
            })?;
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(Message::new("system", s));
            }
            match p {
                Prompt::Text(t) => messages.push(Message::new("user", t.clone())),
                Prompt::Messages(m) => messages.extend(m.iter().cloned()),
            }
            template.render(&messages, true)
        }
    }
}

/// Gemma's chat template (text only): a system message joins the first user turn, the assistant is `model`.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = \
messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' \
-%}{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}{%- if message['role'] == \
'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}{{ \
'<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ \
'<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

pub(crate) fn hf_chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja).map(Some).map_err(|e| Error::io(&jinja, e));
    }
    let config = crate::tokenizer::read_optional_json(&dir.join("tokenizer_config.json"))?;
    Ok(match config.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// Whether a sequence whose generated tokens are `generated` (the last one just sampled, not yet in a cache of
/// `cache_len` positions) is done: a stop token, a stop string (searched from `text_len` on, which is advanced),
/// the budget or the context.
pub(crate) fn finish_after(
    tokenizer: &Tokenizer,
    generated: &[TokenId],
    p: &SamplingParams,
    cache_len: usize,
    ctx: usize,
    text_len: &mut usize,
) -> Result<Option<FinishReason>> {
    let Some(&token) = generated.last() else { return Ok(None) };
    let is_eos = !p.ignore_eos && tokenizer.eos().contains(&token);
    if is_eos || p.stop_token_ids.contains(&token) {
        return Ok(Some(FinishReason::Stop));
    }
    if !p.stop.is_empty() {
        let text = tokenizer.decode(generated, true)?;
        let longest = p.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = text_len.saturating_sub(longest).min(text.len());
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        if p.stop.iter().any(|s| text[from..].contains(s.as_str())) {
            return Ok(Some(FinishReason::Stop));
        }
        *text_len = text.len();
    }
    if generated.len() >= p.max_new_tokens || cache_len + 1 >= ctx {
        return Ok(Some(FinishReason::Length));
    }
    Ok(None)
}

/// The text of generated tokens: special tokens dropped, cut before the first stop string.
pub(crate) fn final_text(tokenizer: &Tokenizer, generated: &[TokenId], p: &SamplingParams) -> Result<String> {
    let mut text = tokenizer.decode(generated, true)?;
    if let Some(cut) = p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
    }
    Ok(text)
}
