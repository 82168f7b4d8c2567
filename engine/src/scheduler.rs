//! A continuous-batching scheduler with automatic prefix reuse, for callers that grow trees.
//!
//! Callers on any threads submit requests — "continue these tokens" (generate), or score pairs — and get results
//! through channels. One scheduler thread owns the forward loop: every step it admits waiting sequences (starting
//! each from the longest prefix already in the [`PrefixIndex`]), then packs whatever is ready into one batched
//! forward: a decode token for every running sequence and prefill chunks of the admitted ones, sequences from
//! different trees and depths side by side. Finished sequences give their full blocks to the index, so a sibling,
//! a later MCTS iteration or another sample of the same prompt computes only its new suffix.
//!
//! Memory: with a KV budget, unreferenced prefixes are evicted least-recently-used first; when live sequences
//! alone exceed it, admission waits and the most recently admitted sequence is preempted (its cache dropped, its
//! tokens kept) and recomputed later. Kernels are batch-invariant and positions are recomputed bit-for-bit, so
//! neither batching, sharing, eviction nor preemption changes any output: a (seed, tokens) request gives the same
//! sample however the scheduler runs it.
//!
//! Batch shape: the quantized kernels are the fastest path at every batch size on CPU (see BENCHMARKS.md), so the
//! scheduler sizes batches by rows, not by weight path: up to `max_batch` decoding sequences plus prefill rows
//! filling the `step_tokens` budget of a forward.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::{final_text, finish_after, Engine, FinishReason, Sample, Scored};
use crate::error::{Error, Result};
use crate::kv::{KvCache, BLOCK_TOKENS};
use crate::model::{Chunk, LogitRows, Logits, TokenId};
use crate::prefix::PrefixIndex;
use crate::sampling::{sample, Draw, SamplingParams, SeqRng};
use crate::tokenizer::Tokenizer;
use crate::weights::Precision;

/// Default number of sequences decoded together (the scheduler and [`Engine::generate`] alike).
pub const DEFAULT_MAX_BATCH: usize = 128;
/// Default rows (tokens) per forward.
pub const DEFAULT_STEP_TOKENS: usize = 512;

/// How the scheduler batches and how much KV memory it may hold.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most sequences running at once. Default [`DEFAULT_MAX_BATCH`].
    pub max_batch: usize,
    /// Most rows per forward (decode tokens plus prefill chunks). Default [`DEFAULT_STEP_TOKENS`].
    pub step_tokens: usize,
    /// KV memory budget in bytes; `None` = unbounded. Default `None`.
    pub kv_budget: Option<usize>,
    /// Reuse computed prefixes across requests. Default true.
    pub prefix_cache: bool,
    /// Numeric path; `None` lets the engine choose. Default `None`.
    pub precision: Option<Precision>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: DEFAULT_MAX_BATCH,
            step_tokens: DEFAULT_STEP_TOKENS,
            kv_budget: None,
            prefix_cache: true,
            precision: None,
        }
    }
}

/// Continue `tokens` (a prompt, or a prompt plus a partial solution) by one sample.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    /// Everything before the continuation.
    pub tokens: Vec<TokenId>,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// The sample's seed (the continuation is a function of `(tokens, params, seed)`).
    pub seed: u64,
}

/// What the scheduler has done so far.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Metrics {
    /// Generate requests finished.
    pub requests: u64,
    /// Prefix tokens the requests asked for (what recomputing every prefix would prefill).
    pub prefix_tokens_requested: u64,
    /// Prefix tokens found in the prefix index.
    pub prefix_tokens_hit: u64,
    /// Prefill rows actually computed (including recomputation after preemption).
    pub prefill_tokens_computed: u64,
    /// Generated tokens.
    pub decode_tokens: u64,
    /// Forwards run.
    pub forwards: u64,
    /// Sum over forwards of the sequences in each.
    pub sequences_in_forwards: u64,
    /// Sum over forwards of the rows in each.
    pub rows_in_forwards: u64,
    /// KV bytes alive now (running sequences and cached prefixes).
    pub kv_bytes: u64,
    /// Most KV bytes alive at once.
    pub kv_bytes_peak: u64,
    /// Cached prefix blocks now.
    pub cached_blocks: u64,
    /// Blocks evicted from the prefix index.
    pub evicted_blocks: u64,
    /// Sequences preempted under memory pressure.
    pub preemptions: u64,
}

impl Metrics {
    /// Share of requested prefix tokens served from the index.
    pub fn prefix_hit_rate(&self) -> f64 {
        ratio(self.prefix_tokens_hit, self.prefix_tokens_requested)
    }
    /// Average sequences per forward.
    pub fn batch_occupancy(&self) -> f64 {
        ratio(self.sequences_in_forwards, self.forwards)
    }
    /// Average rows per forward.
    pub fn rows_per_forward(&self) -> f64 {
        ratio(self.rows_in_forwards, self.forwards)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

enum Msg {
    Generate(SeqRequest, Sender<Result<Sample>>),
    Score(Vec<(Vec<TokenId>, Vec<TokenId>)>, Sender<Result<Vec<Scored>>>),
    ClearCache,
    Stop,
}

/// A handle to the scheduler thread; cheap to share by reference across worker threads. Dropping it stops the
/// thread after the work in flight.
#[derive(Debug)]
pub struct Scheduler {
    tx: Sender<Msg>,
    metrics: Arc<Mutex<Metrics>>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the scheduler thread over `engine`.
    pub fn start(engine: Arc<Engine>, config: SchedulerConfig) -> Self {
        let (tx, rx) = unbounded();
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("orchard-scheduler".into())
            .spawn(move || Worker::new(engine, config, m).run(rx))
            .expect("spawning the scheduler thread");
        Scheduler { tx, metrics, thread: Some(thread) }
    }

    /// Submits one request; the sample arrives on the returned channel.
    pub fn submit(&self, req: SeqRequest) -> Receiver<Result<Sample>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Generate(req, tx.clone())).is_err() {
            let _ = tx.send(Err(Error::Request("the scheduler has stopped".into())));
        }
        rx
    }

    /// Submits every request and waits for all samples (in request order).
    pub fn generate(&self, reqs: Vec<SeqRequest>) -> Result<Vec<Sample>> {
        let pending: Vec<_> = reqs.into_iter().map(|r| self.submit(r)).collect();
        pending.into_iter().map(recv).collect()
    }

    /// Teacher-forced log-probs (f32 path), run between generation steps.
    pub fn score(&self, pairs: Vec<(Vec<TokenId>, Vec<TokenId>)>) -> Result<Vec<Scored>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Msg::Score(pairs, tx)).map_err(|_| Error::Request("the scheduler has stopped".into()))?;
        recv(rx)
    }

    /// Drops every cached prefix (running sequences keep theirs).
    pub fn clear_cache(&self) {
        let _ = self.tx.send(Msg::ClearCache);
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        *self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn recv<T>(rx: Receiver<Result<T>>) -> Result<T> {
    rx.recv().unwrap_or_else(|_| Err(Error::Request("the scheduler stopped before answering".into())))
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The one check of a continuation before it is batched: sampling parameters, a non-empty prompt that leaves room
/// in the model's context (`ctx`).
pub(crate) fn check_request(tokens: &[TokenId], params: &SamplingParams, ctx: usize) -> Result<()> {
    params.validate()?;
    if tokens.is_empty() {
        return Err(Error::Request("the prompt is empty".into()));
    }
    if tokens.len() >= ctx {
        return Err(Error::Request(format!("the prompt has {} tokens, the model's context is {ctx}", tokens.len())));
    }
    Ok(())
}

/// One sequence: waiting (no cache) or running. Its sample goes to `tag`; `twins` are further samples of the same
/// tokens (their seeds and tags), forked from this sequence's cache and last logits when its prompt is computed.
struct Seq<T> {
    tokens: Vec<TokenId>,
    prompt_len: usize,
    params: SamplingParams,
    seed: u64,
    rng: SeqRng,
    logprobs: Vec<f32>,
    text_len: usize,
    cache: Option<KvCache>,
    /// Whether the prompt's blocks went to the index already.
    shared: bool,
    tag: T,
    twins: Vec<(u64, T)>,
}

impl<T> Seq<T> {
    fn new(tokens: Vec<TokenId>, params: SamplingParams, seed: u64, tag: T) -> Self {
        Seq {
            prompt_len: tokens.len(),
            tokens,
            rng: SeqRng::new(seed),
            seed,
            params,
            logprobs: Vec::new(),
            text_len: 0,
            cache: None,
            shared: false,
            tag,
            twins: Vec::new(),
        }
    }

    fn generated(&self) -> &[TokenId] {
        &self.tokens[self.prompt_len..]
    }

    /// Batch slots this sequence holds: itself and the twins it will fork.
    fn slots(&self) -> usize {
        1 + self.twins.len()
    }
}

/// The batching loop, synchronous: sequences are pushed with a tag, every [`Batcher::step`] runs one batched
/// forward and hands back the samples that finished. The scheduler thread drives one for its callers and
/// [`Engine::generate`] drives one for a list of requests, so both batch, share prefixes and sample the same way.
pub(crate) struct Batcher<T> {
    config: SchedulerConfig,
    precision: Precision,
    index: PrefixIndex,
    waiting: VecDeque<Seq<T>>,
    running: Vec<Seq<T>>,
    metrics: Metrics,
}

/// A planned row range of one running sequence: (running index, first position, end).
type Planned = (usize, usize, usize);

impl<T> Batcher<T> {
    pub(crate) fn new(engine: &Engine, config: SchedulerConfig) -> Self {
        Batcher {
            precision: config.precision.unwrap_or_else(|| engine.model().default_precision()),
            index: PrefixIndex::new(engine.model().version()),
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics: Metrics::default(),
        }
    }

    /// Nothing waiting or running.
    pub(crate) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues samples of one checked ([`check_request`]) prompt: `samples` are their seeds and tags. Samples of one
    /// push compute the prompt once and are admitted together.
    pub(crate) fn push(&mut self, tokens: Vec<TokenId>, params: SamplingParams, samples: Vec<(u64, T)>) {
        let mut samples = samples.into_iter();
        let Some((seed, tag)) = samples.next() else { return };
        self.metrics.prefix_tokens_requested += tokens.len() as u64;
        let mut seq = Seq::new(tokens, params, seed, tag);
        seq.twins = samples.collect();
        self.waiting.push_back(seq);
    }

    /// Removes every sequence, handing back the tags of their samples.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let seqs = self.running.drain(..).chain(self.waiting.drain(..));
        seqs.flat_map(|s| std::iter::once(s.tag).chain(s.twins.into_iter().map(|(_, t)| t))).collect()
    }

    /// Drops every cached prefix (running sequences keep theirs).
    pub(crate) fn clear_cache(&mut self) {
        self.index.clear();
    }

    /// The counters, with the KV figures of now.
    pub(crate) fn metrics(&mut self, engine: &Engine) -> Metrics {
        let pool = engine.model().kv_pool();
        self.metrics.kv_bytes = pool.live_bytes() as u64;
        self.metrics.kv_bytes_peak = self.metrics.kv_bytes_peak.max(self.metrics.kv_bytes);
        self.metrics.cached_blocks = self.index.blocks() as u64;
        self.metrics
    }

    fn budget_ok(&self, engine: &Engine, extra_bytes: usize) -> bool {
        match self.config.kv_budget {
            None => true,
            Some(b) => engine.model().kv_pool().live_bytes() + extra_bytes <= b,
        }
    }

    fn make_room(&mut self, engine: &Engine, extra_bytes: usize) {
        let Some(budget) = self.config.kv_budget else { return };
        let pool = engine.model().kv_pool().clone();
        let dropped = self.index.evict(|| pool.live_bytes() + extra_bytes <= budget);
        self.metrics.evicted_blocks += dropped as u64;
    }

    /// Whether a running sequence is about to compute the block `seq` needs next (then `seq` waits for it).
    fn sibling_computing(&self, tokens: &[TokenId], from: usize) -> bool {
        let upto = from + BLOCK_TOKENS;
        if tokens.len() <= upto {
            return false;
        }
        self.running.iter().any(|r| {
            let cached = r.cache.as_ref().map_or(0, KvCache::len);
            !r.shared && cached < upto && r.tokens.len() > upto && r.tokens[..upto] == tokens[..upto]
        })
    }

    fn admit(&mut self, engine: &Engine) {
        let model = engine.model();
        let block_bytes = model.kv_layout().block_floats() * 4;
        let mut deferred = VecDeque::new();
        let mut slots: usize = self.running.iter().map(Seq::slots).sum();
        while slots < self.config.max_batch {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            if slots > 0 && slots + seq.slots() > self.config.max_batch {
                self.waiting.push_front(seq);
                break;
            }
            // Leave at least one token to run: its logits start the continuation.
            let runnable = seq.tokens.len() - 1;
            let blocks = if self.config.prefix_cache {
                self.index.lookup(model.version(), &seq.tokens[..runnable])
            } else {
                Vec::new()
            };
            let hit = blocks.len() * BLOCK_TOKENS;
            if self.config.prefix_cache && self.sibling_computing(&seq.tokens, hit) {
                deferred.push_back(seq);
                continue;
            }
            let need = (seq.tokens.len() - hit).div_ceil(BLOCK_TOKENS) * block_bytes;
            if !self.budget_ok(engine, need) {
                self.make_room(engine, need);
                if !self.budget_ok(engine, need) && !self.running.is_empty() {
                    self.waiting.push_front(seq);
                    break;
                }
            }
            if seq.generated().is_empty() {
                self.metrics.prefix_tokens_hit += hit as u64;
            }
            seq.cache = Some(KvCache::from_blocks(model.kv_layout(), model.kv_pool().clone(), blocks));
            slots += seq.slots();
            self.running.push(seq);
        }
        while let Some(s) = deferred.pop_back() {
            self.waiting.push_front(s);
        }
    }

    /// Decode rows first (one token each), then prefill chunks in admission order, within `step_tokens`.
    fn plan(&self) -> Vec<Planned> {
        let mut budget = self.config.step_tokens.max(1);
        let mut plan = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            let cached = s.cache.as_ref().map_or(0, KvCache::len);
            if s.tokens.len() - cached == 1 {
                plan.push((i, cached, cached + 1));
                budget = budget.saturating_sub(1);
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            let cached = s.cache.as_ref().map_or(0, KvCache::len);
            let left = s.tokens.len() - cached;
            if left > 1 && budget > 0 {
                let take = left.min(budget);
                plan.push((i, cached, cached + take));
                budget -= take;
            }
        }
        plan
    }

    /// One batched forward over the planned rows.
    fn forward(&mut self, engine: &Engine, plan: &[Planned]) -> Result<Logits> {
        let mut caches: Vec<(usize, KvCache)> = plan
            .iter()
            .map(|&(i, _, _)| (i, self.running[i].cache.take().expect("running sequences hold a cache")))
            .collect();
        let mut chunks: Vec<Chunk<'_>> = Vec::with_capacity(plan.len());
        for ((_, cache), &(i, start, end)) in caches.iter_mut().zip(plan) {
            let s = &self.running[i];
            let rows = if end == s.tokens.len() { LogitRows::Last } else { LogitRows::None };
            chunks.push(Chunk { cache, tokens: &s.tokens[start..end], logits: rows });
        }
        let out = engine.model().forward(&mut chunks, self.precision);
        drop(chunks);
        for (i, cache) in caches {
            self.running[i].cache = Some(cache);
        }
        let rows: usize = plan.iter().map(|&(_, a, b)| b - a).sum();
        self.metrics.forwards += 1;
        self.metrics.sequences_in_forwards += plan.len() as u64;
        self.metrics.rows_in_forwards += rows as u64;
        out
    }

    /// Runs one forward over everything ready and returns the samples that finished in it.
    pub(crate) fn step(&mut self, engine: &Engine) -> Result<Vec<(T, Sample)>> {
        self.admit(engine);
        let plan = self.plan();
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.forward(engine, &plan)?;
        let model = engine.model();
        let ctx = model.config().max_position_embeddings;
        // Draw every sequence's next token in parallel (each from its own logits and RNG: order-independent).
        let mut rngs: Vec<Option<SeqRng>> = plan
            .iter()
            .enumerate()
            .map(|(k, &(i, _, _))| (logits.rows(k) > 0).then(|| self.running[i].rng.clone()))
            .collect();
        let params: Vec<&SamplingParams> = plan.iter().map(|&(i, _, _)| &self.running[i].params).collect();
        let draws: Vec<Option<Draw>> = rngs
            .par_iter_mut()
            .enumerate()
            .map(|(k, rng)| rng.as_mut().map(|r| sample(logits.row(k, 0), params[k], r)))
            .collect();
        let mut finished = Vec::new();
        for (k, &(i, start, end)) in plan.iter().enumerate() {
            let s = &mut self.running[i];
            if !(end - start == 1 && end > s.prompt_len) {
                self.metrics.prefill_tokens_computed += (end - start) as u64;
            }
            let (Some(draw), Some(rng)) = (draws[k], rngs[k].take()) else { continue };
            s.rng = rng;
            if !s.twins.is_empty() {
                self.fork_twins(engine, i, logits.row(k, 0), &mut finished)?;
            }
            let s = &mut self.running[i];
            self.metrics.decode_tokens += 1;
            if let Some(reason) = s.accept(engine.tokenizer(), draw, ctx)? {
                finished.push((i, reason));
            }
            if !s.shared && self.config.prefix_cache {
                // The prompt is computed: siblings waiting for it can start from it now.
                self.index.insert(model.version(), &s.tokens, s.cache.as_ref().expect("running"));
                s.shared = true;
            }
        }
        finished.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        let mut done = Vec::with_capacity(finished.len());
        for (i, reason) in finished {
            let s = self.running.remove(i);
            done.push(self.finish(engine, s, reason)?);
        }
        self.relieve_pressure(engine);
        Ok(done)
    }

    /// Forks the twins of running sequence `i`, whose prompt was just computed: each continues a clone of its cache
    /// from the same last-position logits `row` with its own seed.
    fn fork_twins(
        &mut self,
        engine: &Engine,
        i: usize,
        row: &[f32],
        finished: &mut Vec<(usize, FinishReason)>,
    ) -> Result<()> {
        let ctx = engine.model().config().max_position_embeddings;
        let parent = &mut self.running[i];
        let twins = std::mem::take(&mut parent.twins);
        let (tokens, params, cache) = (parent.tokens.clone(), parent.params.clone(), parent.cache.clone());
        for (seed, tag) in twins {
            let mut twin = Seq::new(tokens.clone(), params.clone(), seed, tag);
            twin.cache = cache.clone();
            twin.shared = true;
            let draw = sample(row, &twin.params, &mut twin.rng);
            self.metrics.prefix_tokens_hit += twin.prompt_len as u64;
            self.metrics.decode_tokens += 1;
            if let Some(reason) = twin.accept(engine.tokenizer(), draw, ctx)? {
                finished.push((self.running.len(), reason));
            }
            self.running.push(twin);
        }
        Ok(())
    }

    /// A finished sequence's sample; its blocks go to the prefix index.
    fn finish(&mut self, engine: &Engine, s: Seq<T>, reason: FinishReason) -> Result<(T, Sample)> {
        if self.config.prefix_cache {
            if let Some(cache) = &s.cache {
                self.index.insert(engine.model().version(), &s.tokens, cache);
            }
        }
        let text = final_text(engine.tokenizer(), s.generated(), &s.params)?;
        self.metrics.requests += 1;
        let token_ids = s.tokens[s.prompt_len..].to_vec();
        let sample = Sample { text, token_ids, token_logprobs: s.logprobs, finish_reason: reason, seed: s.seed };
        Ok((s.tag, sample))
    }

    /// Memory pressure: evict cached prefixes, then preempt the newest sequences (their tokens kept, their caches
    /// recomputed when they are admitted again).
    fn relieve_pressure(&mut self, engine: &Engine) {
        if self.config.kv_budget.is_none() || self.budget_ok(engine, 0) {
            return;
        }
        self.make_room(engine, 0);
        while !self.budget_ok(engine, 0) && self.running.len() > 1 {
            let mut s = self.running.pop().expect("more than one running");
            s.cache = None;
            s.shared = false;
            self.metrics.preemptions += 1;
            self.waiting.push_front(s);
        }
    }
}

impl<T> Seq<T> {
    /// Records a drawn token; the finish reason when the sequence is done.
    fn accept(&mut self, tokenizer: &Tokenizer, draw: Draw, ctx: usize) -> Result<Option<FinishReason>> {
        self.tokens.push(draw.token);
        self.logprobs.push(draw.logprob);
        let cache_len = self.cache.as_ref().map_or(0, KvCache::len);
        finish_after(tokenizer, &self.tokens[self.prompt_len..], &self.params, cache_len, ctx, &mut self.text_len)
    }
}

/// The scheduler thread: a [`Batcher`] whose samples go back on their callers' channels.
struct Worker {
    engine: Arc<Engine>,
    batcher: Batcher<Sender<Result<Sample>>>,
    shared: Arc<Mutex<Metrics>>,
}

impl Worker {
    fn new(engine: Arc<Engine>, config: SchedulerConfig, shared: Arc<Mutex<Metrics>>) -> Self {
        let batcher = Batcher::new(&engine, config);
        Worker { engine, batcher, shared }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            // 1. Take new work: block when idle, drain otherwise.
            if self.batcher.is_idle() {
                match rx.recv() {
                    Ok(msg) => {
                        if !self.handle(msg) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            while let Ok(msg) = rx.try_recv() {
                if !self.handle(msg) {
                    self.fail_all("the scheduler was stopped");
                    return;
                }
            }
            // 2. One step.
            match self.batcher.step(&self.engine) {
                Ok(done) => {
                    for (reply, sample) in done {
                        let _ = reply.send(Ok(sample));
                    }
                }
                Err(e) => self.fail_all(&e.to_string()),
            }
            let metrics = self.batcher.metrics(&self.engine);
            if let Ok(mut m) = self.shared.lock() {
                *m = metrics;
            }
        }
    }

    /// Returns false on `Stop`.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Generate(req, reply) => {
                let ctx = self.engine.model().config().max_position_embeddings;
                match check_request(&req.tokens, &req.params, ctx) {
                    Ok(()) => self.batcher.push(req.tokens, req.params, vec![(req.seed, reply)]),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Msg::Score(pairs, reply) => {
                let _ = reply.send(self.engine.score(&pairs));
            }
            Msg::ClearCache => self.batcher.clear_cache(),
            Msg::Stop => return false,
        }
        true
    }

    fn fail_all(&mut self, why: &str) {
        for reply in self.batcher.drain() {
            let _ = reply.send(Err(Error::Request(why.to_string())));
        }
    }
}
