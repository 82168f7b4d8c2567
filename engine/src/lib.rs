//! Orchard's inference engine: llama-family models (Llama, SmolLM, Mistral without a sliding window, Qwen2, Qwen3)
//! from GGUF files or HF directories, their exact tokenizers and chat templates, batched sampling with per-sequence seeds, and teacher-forced scoring.
//!
//! Principal types:
//! - [`Engine`]: a loaded model with its tokenizer and chat template; [`Engine::generate`] and [`Engine::score`].
//! - [`Model`]: the decoder; [`Model::forward`] runs the new tokens of many sequences (ragged, each with its own
//!   position and [`KvCache`]) in one batched forward.
//! - [`KvCache`]: a sequence's cache as a value; `clone()` forks it, sharing every full block.
//! - [`Tokenizer`], [`ChatTemplate`], [`SamplingParams`].
//!
//! ```no_run
//! use orchard_engine::{Engine, GenerateOptions, GenerateRequest, Prompt, SamplingParams};
//! # fn main() -> orchard_engine::Result<()> {
//! let engine = Engine::load("default")?; // SmolLM2-135M-Instruct, fetched once into the cache
//! let prompt = engine.prompt_tokens(&Prompt::Text("What is 2 + 3?".into()), None, false)?;
//! let request = GenerateRequest { prompt, n: 4, params: SamplingParams::default(), seed: 0 };
//! let samples = engine.generate(&[request], &GenerateOptions::default(), &mut |_| {})?;
//! println!("{}", samples[0][0].text);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod arch;
pub mod autograd;
pub mod bench;
pub mod chat;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod generic;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod prefix;
pub mod sampling;
pub mod scheduler;
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use arch::{Arch, ArchSpec, ARCHITECTURES};
pub use chat::{ChatTemplate, Message};
pub use config::{Activation, ModelConfig, SlidingWindow};
pub use device::Placement;
pub use engine::{
    Engine, FinishReason, GenerateOptions, GenerateRequest, Handoff, ModelInfo, Progress, Prompt, Sample, Scored,
};
pub use error::{Error, Result};
pub use generic::{AnyEngine, GenericEngine};
pub use kv::KvCache;
pub use model::{Chunk, LogitRows, Logits, Model, QkNorm, SandwichNorms, TokenId};
pub use sampling::SamplingParams;
pub use scheduler::{Metrics, Scheduler, SchedulerConfig, SeqRequest};
pub use tokenizer::Tokenizer;
pub use weights::Precision;

/// Sets the compute thread count once, before any parallel work (`RAYON_NUM_THREADS` wins when set). Without it,
/// every f32 matmul in candle re-reads `/proc/cpuinfo` (see ENGINE_NOTES).
pub fn init_threads(threads: Option<usize>) {
    let n = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}

/// Threads the compute pool uses.
pub fn compute_threads() -> usize {
    rayon::current_num_threads()
}
