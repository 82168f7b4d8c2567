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
//! Batch shape: the int8 kernels are the fastest path at every batch size on CPU (see BENCHMARKS.md), so the
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
use crate::model::{LogitRows, Step, TokenId};
use crate::prefix::PrefixIndex;
use crate::sampling::{sample, SamplingParams, SeqRng};
use crate::weights::Precision;

/// Default number of sequences decoded together.
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

/// One sequence: waiting (no cache) or running.
struct Seq {
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
    reply: Sender<Result<Sample>>,
}

impl Seq {
    fn generated(&self) -> &[TokenId] {
        &self.tokens[self.prompt_len..]
    }
}

struct Worker {
    engine: Arc<Engine>,
    config: SchedulerConfig,
    precision: Precision,
    index: PrefixIndex,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    metrics: Metrics,
    shared: Arc<Mutex<Metrics>>,
}

impl Worker {
    fn new(engine: Arc<Engine>, config: SchedulerConfig, shared: Arc<Mutex<Metrics>>) -> Self {
        let precision = config.precision.unwrap_or_else(|| engine.model().default_precision());
        let index = PrefixIndex::new(engine.model().version());
        Worker {
            engine,
            config,
            precision,
            index,
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics: Metrics::default(),
            shared,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            // 1. Take new work: block when idle, drain otherwise.
            if self.waiting.is_empty() && self.running.is_empty() {
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
            if let Err(e) = self.step() {
                self.fail_all(&e.to_string());
            }
            self.publish();
        }
    }

    /// Returns false on `Stop`.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Generate(req, reply) => self.enqueue(req, reply),
            Msg::Score(pairs, reply) => {
                let scored = self.engine.score(&pairs);
                let _ = reply.send(scored);
            }
            Msg::ClearCache => self.index.clear(),
            Msg::Stop => return false,
        }
        true
    }

    fn enqueue(&mut self, req: SeqRequest, reply: Sender<Result<Sample>>) {
        let ctx = self.engine.model().config().max_position_embeddings;
        let check = req.params.validate().and_then(|_| {
            if req.tokens.is_empty() {
                Err(Error::Request("the request has no tokens".into()))
            } else if req.tokens.len() >= ctx {
                Err(Error::Request(format!(
                    "the request has {} tokens, the model's context is {ctx}",
                    req.tokens.len()
                )))
            } else {
                Ok(())
            }
        });
        if let Err(e) = check {
            let _ = reply.send(Err(e));
            return;
        }
        self.metrics.prefix_tokens_requested += req.tokens.len() as u64;
        self.waiting.push_back(Seq {
            prompt_len: req.tokens.len(),
            tokens: req.tokens,
            rng: SeqRng::new(req.seed),
            seed: req.seed,
            params: req.params,
            logprobs: Vec::new(),
            text_len: 0,
            cache: None,
            shared: false,
            reply,
        });
    }

    fn fail_all(&mut self, why: &str) {
        for s in self.running.drain(..).chain(self.waiting.drain(..)) {
            let _ = s.reply.send(Err(Error::Request(why.to_string())));
        }
    }

    fn budget_ok(&self, extra_bytes: usize) -> bool {
        match self.config.kv_budget {
            None => true,
            Some(b) => self.engine.model().kv_pool().live_bytes() + extra_bytes <= b,
        }
    }

    fn make_room(&mut self, extra_bytes: usize) {
        if self.config.kv_budget.is_none() {
            return;
        }
        let pool = self.engine.model().kv_pool().clone();
        let budget = self.config.kv_budget.unwrap_or(usize::MAX);
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

    fn admit(&mut self) {
        let engine = self.engine.clone();
        let model = engine.model();
        let block_bytes = model.kv_layout().block_floats() * 4;
        let mut deferred = VecDeque::new();
        while self.running.len() < self.config.max_batch {
            let Some(mut seq) = self.waiting.pop_front() else { break };
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
            if !self.budget_ok(need) {
                self.make_room(need);
                if !self.budget_ok(need) && !self.running.is_empty() {
                    self.waiting.push_front(seq);
                    break;
                }
            }
            if seq.generated().is_empty() {
                self.metrics.prefix_tokens_hit += hit as u64;
            }
            seq.cache = Some(KvCache::from_blocks(model.kv_layout(), model.kv_pool().clone(), blocks));
            self.running.push(seq);
        }
        while let Some(s) = deferred.pop_back() {
            self.waiting.push_front(s);
        }
    }

    fn step(&mut self) -> Result<()> {
        self.admit();
        if self.running.is_empty() {
            return Ok(());
        }
        let engine = self.engine.clone();
        let model = engine.model();
        // Plan: decode rows first (one token each), then prefill chunks in admission order.
        let mut budget = self.config.step_tokens.max(1);
        let mut plan: Vec<(usize, usize, usize)> = Vec::new(); // (running index, start, end)
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
        if plan.is_empty() {
            return Ok(());
        }
        let logits = {
            let mut caches: Vec<(usize, KvCache)> = plan
                .iter()
                .map(|&(i, _, _)| (i, self.running[i].cache.take().expect("running sequences hold a cache")))
                .collect();
            let mut steps: Vec<Step<'_>> = Vec::with_capacity(plan.len());
            for ((_, cache), &(i, start, end)) in caches.iter_mut().zip(&plan) {
                let s = &self.running[i];
                let rows = if end == s.tokens.len() { LogitRows::Last } else { LogitRows::None };
                steps.push(Step { cache, tokens: &s.tokens[start..end], logits: rows });
            }
            let out = model.forward(&mut steps, self.precision);
            drop(steps);
            for (i, cache) in caches {
                self.running[i].cache = Some(cache);
            }
            out?
        };
        let rows: usize = plan.iter().map(|&(_, a, b)| b - a).sum();
        self.metrics.forwards += 1;
        self.metrics.sequences_in_forwards += plan.len() as u64;
        self.metrics.rows_in_forwards += rows as u64;
        let ctx = model.config().max_position_embeddings;
        // Draw every sequence's next token in parallel (each from its own logits and RNG: order-independent).
        let mut rngs: Vec<Option<SeqRng>> = plan
            .iter()
            .enumerate()
            .map(|(k, &(i, _, _))| (logits.rows(k) > 0).then(|| self.running[i].rng.clone()))
            .collect();
        let draws: Vec<Option<crate::sampling::Draw>> = rngs
            .par_iter_mut()
            .enumerate()
            .map(|(k, rng)| {
                let params = &self.running[plan[k].0].params;
                rng.as_mut().map(|r| sample(logits.row(k, 0), params, r))
            })
            .collect();
        let mut finished = Vec::new();
        for (k, &(i, start, end)) in plan.iter().enumerate() {
            let s = &mut self.running[i];
            let decoding = end - start == 1 && end > s.prompt_len;
            if !decoding {
                self.metrics.prefill_tokens_computed += (end - start) as u64;
            }
            let (Some(draw), Some(rng)) = (draws[k], rngs[k].take()) else { continue };
            s.rng = rng;
            s.tokens.push(draw.token);
            s.logprobs.push(draw.logprob);
            self.metrics.decode_tokens += 1;
            let cache_len = s.cache.as_ref().map_or(0, KvCache::len);
            let generated = &s.tokens[s.prompt_len..];
            let done = finish_after(self.engine.tokenizer(), generated, &s.params, cache_len, ctx, &mut s.text_len)?;
            if !s.shared && self.config.prefix_cache {
                // The prompt is computed: siblings waiting for it can start from it now.
                let cache = s.cache.as_ref().expect("running");
                self.index.insert(model.version(), &s.tokens, cache);
                s.shared = true;
            }
            if let Some(reason) = done {
                finished.push((i, reason));
            }
        }
        finished.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in finished {
            let s = self.running.remove(i);
            self.finish(s, reason)?;
        }
        // Memory pressure: evict cached prefixes, then preempt the newest sequences.
        if self.config.kv_budget.is_some() && !self.budget_ok(0) {
            self.make_room(0);
            while !self.budget_ok(0) && self.running.len() > 1 {
                let mut s = self.running.pop().expect("more than one running");
                s.cache = None;
                s.shared = false;
                self.metrics.preemptions += 1;
                self.waiting.push_front(s);
            }
        }
        Ok(())
    }

    fn finish(&mut self, s: Seq, reason: FinishReason) -> Result<()> {
        let engine = self.engine.clone();
        let model = engine.model();
        if self.config.prefix_cache {
            if let Some(cache) = &s.cache {
                self.index.insert(model.version(), &s.tokens, cache);
            }
        }
        let generated = s.generated().to_vec();
        let text = final_text(self.engine.tokenizer(), &generated, &s.params)?;
        self.metrics.requests += 1;
        let _ = s.reply.send(Ok(Sample {
            text,
            token_ids: generated,
            token_logprobs: s.logprobs,
            finish_reason: reason,
            seed: s.seed,
        }));
        Ok(())
    }

    fn publish(&mut self) {
        let pool = self.engine.model().kv_pool();
        self.metrics.kv_bytes = pool.live_bytes() as u64;
        self.metrics.kv_bytes_peak = self.metrics.kv_bytes_peak.max(self.metrics.kv_bytes);
        self.metrics.cached_blocks = self.index.blocks() as u64;
        if let Ok(mut m) = self.shared.lock() {
            *m = self.metrics;
        }
    }
}
