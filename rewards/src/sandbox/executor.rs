//! [`Executor`]: a sandbox plus a limits, a bounded cache of results for identical programs, and a parallel batch
//! path. Rewards hold an `Arc<Executor>`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use super::{ExecResult, Sandbox, SandboxLimits};
use crate::error::Result;

/// Default number of cached results.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

type Key = [u8; 32];

/// Cache counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Results served from the cache.
    pub hits: u64,
    /// Runs that executed.
    pub misses: u64,
}

#[derive(Debug, Default)]
struct Cache {
    map: HashMap<Key, ExecResult>,
    order: VecDeque<Key>,
}

/// Runs programs through a sandbox under one limits, caching results by SHA-256 of (limits, program): the same
/// (code, tests) pair is executed once. Timeouts are cached too (a program that timed out once is not retried);
/// sandbox failures (`Err`) are not.
#[derive(Debug)]
pub struct Executor {
    sandbox: Arc<dyn Sandbox>,
    limits: SandboxLimits,
    capacity: usize,
    cache: Mutex<Cache>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Executor {
    /// An executor with the default cache capacity ([`DEFAULT_CACHE_CAPACITY`]).
    pub fn new(sandbox: Arc<dyn Sandbox>, limits: SandboxLimits) -> Self {
        Self::with_cache_capacity(sandbox, limits, DEFAULT_CACHE_CAPACITY)
    }

    /// An executor caching at most `capacity` results (0 disables the cache); the oldest entry is evicted first.
    pub fn with_cache_capacity(sandbox: Arc<dyn Sandbox>, limits: SandboxLimits, capacity: usize) -> Self {
        Executor {
            sandbox,
            limits,
            capacity,
            cache: Mutex::new(Cache::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &dyn Sandbox {
        self.sandbox.as_ref()
    }

    /// The limits every run gets.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Run one program (cached).
    pub fn run(&self, program: &str) -> Result<ExecResult> {
        let key = self.key(program);
        if self.capacity > 0 {
            if let Some(hit) = self.lock().map.get(&key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(ExecResult { cached: true, ..hit.clone() });
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let result = self.sandbox.run(program, &self.limits)?;
        if self.capacity > 0 {
            let mut cache = self.lock();
            if cache.map.insert(key, result.clone()).is_none() {
                cache.order.push_back(key);
                while cache.order.len() > self.capacity {
                    if let Some(old) = cache.order.pop_front() {
                        cache.map.remove(&old);
                    }
                }
            }
        }
        Ok(result)
    }

    /// Run many programs with as many threads as the sandbox runs at once; results in input order.
    pub fn run_batch<S: AsRef<str> + Sync>(&self, programs: &[S]) -> Vec<Result<ExecResult>> {
        let workers = self.sandbox.info().concurrency.clamp(1, programs.len().max(1));
        let next = AtomicU64::new(0);
        let results: Vec<Mutex<Option<Result<ExecResult>>>> = programs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(program) = programs.get(i) else {
                        break;
                    };
                    let r = self.run(program.as_ref());
                    *results[i].lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expect("every index below programs.len() is taken by exactly one worker")
            })
            .collect()
    }

    /// Cache counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats { hits: self.hits.load(Ordering::Relaxed), misses: self.misses.load(Ordering::Relaxed) }
    }

    fn key(&self, program: &str) -> Key {
        let mut h = Sha256::new();
        // The limits is part of the key: the same program may time out under a shorter limit.
        h.update(serde_json::to_vec(&self.limits).unwrap_or_default());
        h.update([0u8]);
        h.update(program.as_bytes());
        h.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds plain values; a poisoned lock still guards a consistent map.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
