//! `orchard._native`: the Rust side of Orchard's Python package. The typed, documented API is the Python package
//! `orchard` (`python/orchard/`); it calls these functions with JSON text for the structured arguments and
//! results, so every job, reward and configuration goes through the same serde types as the CLI and its errors
//! carry the same messages (file, line, field). Every call that computes releases the GIL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use orchard_engine::{GenerateOptions, GenerateRequest, Message, Prompt, SamplingParams};
use orchard_jobs::reward::JobReward;
use orchard_jobs::rounds::{LoopConfig, LoopMode};
use orchard_jobs::run::{run_sample, run_search, Runtime};
use orchard_jobs::sample::SampleJob;
use orchard_jobs::search::SearchJob;
use orchard_jobs::Progress;
use orchard_rewards::sandbox::{self, SandboxChoice, SandboxConfig, SandboxLimits};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde::Deserialize;

create_exception!(_native, OrchardError, PyException, "An Orchard job, model, reward or configuration failed.");

fn err(e: impl std::fmt::Display) -> PyErr {
    OrchardError::new_err(e.to_string())
}

/// Progress lines on stderr, as the CLI prints them (`orchard: …`); phases are announced, not drawn.
struct Lines;

impl Progress for Lines {
    fn start(&mut self, what: &str, total: usize) {
        if total > 0 {
            eprintln!("orchard: {what} ({total})");
        }
    }
    fn advance(&mut self, _: usize, _: &str) {}
    fn position(&mut self, _: &str, _: usize, _: usize) {}
    fn finish(&mut self) {}
    fn log(&mut self, line: &str) {
        eprintln!("orchard: {line}");
    }
}

/// A prompt as the Python side passes it: a string or a list of chat messages.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptArg {
    Text(String),
    Messages(Vec<Message>),
}

impl From<PromptArg> for Prompt {
    fn from(p: PromptArg) -> Prompt {
        match p {
            PromptArg::Text(t) => Prompt::Text(t),
            PromptArg::Messages(m) => Prompt::Messages(m),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateArgs {
    prompts: Vec<PromptArg>,
    n: usize,
    sampling: SamplingParams,
    seed: u64,
    system: Option<String>,
    raw: bool,
    max_batch: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreArgs {
    prompts: Vec<PromptArg>,
    completions: Vec<String>,
    system: Option<String>,
    raw: bool,
}

/// A loaded model (`orchard.Engine` wraps it).
#[pyclass(frozen, module = "orchard._native")]
struct NativeEngine {
    inner: Arc<orchard_engine::Engine>,
}

#[pymethods]
impl NativeEngine {
    #[new]
    #[pyo3(signature = (model, threads=None))]
    fn new(py: Python<'_>, model: String, threads: Option<usize>) -> PyResult<Self> {
        orchard_engine::init_threads(threads);
        let engine = py.detach(|| orchard_engine::Engine::load(&model)).map_err(err)?;
        Ok(NativeEngine { inner: Arc::new(engine) })
    }

    /// `{"id", "path", "architecture", "vocab_size", "context", "parameters"}` as JSON.
    fn info(&self) -> PyResult<String> {
        let cfg = self.inner.model().config();
        let info = self.inner.info();
        let v = serde_json::json!({
            "id": info.id,
            "path": info.path,
            "architecture": cfg.arch.name(),
            "vocab_size": cfg.vocab_size,
            "context": cfg.max_position_embeddings,
            "parameters": cfg.num_parameters(),
        });
        Ok(v.to_string())
    }

    /// Samples for each prompt (JSON in: prompts, n, sampling, seed, system, raw, max_batch; JSON out: a list per
    /// prompt of samples with text, token_ids, token_logprobs, finish_reason, seed).
    fn generate(&self, py: Python<'_>, args: &str) -> PyResult<String> {
        let a: GenerateArgs = serde_json::from_str(args).map_err(err)?;
        a.sampling.validate().map_err(err)?;
        if a.n == 0 {
            return Err(err("n must be at least 1"));
        }
        let engine = Arc::clone(&self.inner);
        py.detach(move || -> Result<String, String> {
            let mut requests = Vec::with_capacity(a.prompts.len());
            for (i, p) in a.prompts.into_iter().enumerate() {
                let prompt = engine
                    .prompt_tokens(&p.into(), a.system.as_deref(), a.raw)
                    .map_err(|e| format!("prompt {i}: {e}"))?;
                requests.push(GenerateRequest { prompt, n: a.n, params: a.sampling.clone(), seed: a.seed });
            }
            let opts = GenerateOptions { max_batch: a.max_batch, ..GenerateOptions::default() };
            let samples = engine.generate(&requests, &opts, &mut |_| {}).map_err(|e| e.to_string())?;
            serde_json::to_string(&samples).map_err(|e| e.to_string())
        })
        .map_err(err)
    }

    /// Teacher-forced log-probs of each completion given its prompt (JSON in: prompts, completions, system, raw;
    /// JSON out: a list of {logprob_sum, token_logprobs, n_tokens, token_ids}).
    fn score(&self, py: Python<'_>, args: &str) -> PyResult<String> {
        let a: ScoreArgs = serde_json::from_str(args).map_err(err)?;
        if a.prompts.len() != a.completions.len() {
            return Err(err(format!(
                "{} prompts but {} completions: give one completion per prompt",
                a.prompts.len(),
                a.completions.len()
            )));
        }
        let engine = Arc::clone(&self.inner);
        py.detach(move || -> Result<String, String> {
            let mut pairs = Vec::with_capacity(a.prompts.len());
            for (i, (p, c)) in a.prompts.into_iter().zip(&a.completions).enumerate() {
                let p = engine
                    .prompt_tokens(&p.into(), a.system.as_deref(), a.raw)
                    .map_err(|e| format!("prompt {i}: {e}"))?;
                let c = engine.tokenizer().encode(c, false).map_err(|e| format!("completion {i}: {e}"))?;
                pairs.push((p, c));
            }
            let scored = engine.score(&pairs).map_err(|e| e.to_string())?;
            let rows: Vec<serde_json::Value> = scored
                .iter()
                .zip(&pairs)
                .map(|(s, (_, c))| {
                    serde_json::json!({
                        "logprob_sum": s.logprob_sum,
                        "token_logprobs": s.token_logprobs,
                        "n_tokens": s.n_tokens,
                        "token_ids": c,
                    })
                })
                .collect();
            serde_json::to_string(&rows).map_err(|e| e.to_string())
        })
        .map_err(err)
    }
}

/// Every built-in reward: `[{name, summary, reads, defaults}]` as JSON.
#[pyfunction]
fn reward_catalog() -> PyResult<String> {
    serde_json::to_string(&orchard_rewards::catalog()).map_err(err)
}

/// Builds the reward `name` (a registry name or `python:FILE:FUNCTION`) or described by the TOML file `config`,
/// with the sandbox `choice` (bubblewrap by default; `rlimits` only when asked) for code rewards.
fn build_reward(
    name: Option<&str>,
    config: Option<&Path>,
    choice: SandboxChoice,
    model: Option<&str>,
) -> Result<JobReward, String> {
    let spec = JobReward::spec(name, config).map_err(|e| e.to_string())?;
    let sb = if spec.needs_sandbox() {
        Some(sandbox::open(choice, SandboxConfig::default()).map_err(|e| e.to_string())?)
    } else {
        None
    };
    JobReward::new(spec, sb, model.unwrap_or("default").to_string()).map_err(|e| e.to_string())
}

fn parse_choice(sandbox: &str) -> PyResult<SandboxChoice> {
    sandbox.parse::<SandboxChoice>().map_err(err)
}

/// Scores rows (JSON: a list of objects with `completion` and the task's fields: `answer`, `tests`, …) with the
/// reward `name`; JSON out: a list of `{score, error}`.
#[pyfunction]
#[pyo3(signature = (name, rows, sandbox="auto"))]
fn score_rewards(py: Python<'_>, name: String, rows: String, sandbox: &str) -> PyResult<String> {
    let choice = parse_choice(sandbox)?;
    py.detach(move || -> Result<String, String> {
        let values: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(&rows).map_err(|e| e.to_string())?;
        let mut items = Vec::with_capacity(values.len());
        for (i, mut obj) in values.into_iter().enumerate() {
            let completion = match obj.remove("completion") {
                Some(serde_json::Value::String(s)) => s,
                _ => return Err(format!("row {i}: `completion` must be a string")),
            };
            let task: orchard_rewards::Task =
                serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| format!("row {i}: {e}"))?;
            items.push((task, completion));
        }
        let built = build_reward(Some(&name), None, choice, None)?;
        let refs: Vec<(&orchard_rewards::Task, &str)> = items.iter().map(|(t, c)| (t, c.as_str())).collect();
        let outcomes = orchard_rewards::score_batch_caught(built.reward(), &refs);
        let rows: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| match &o.error {
                None => serde_json::json!({ "score": o.score, "error": null }),
                Some(e) => serde_json::json!({ "score": null, "error": e }),
            })
            .collect();
        serde_json::to_string(&rows).map_err(|e| e.to_string())
    })
    .map_err(err)
}

/// Runs one Python program in the sandbox; JSON in `policy`: the limits' fields (`timeout`, `memory`, …); JSON out: the
/// result (`status`, `exit_code`, `stdout`, `stderr`, `wall_ms`, …).
#[pyfunction]
#[pyo3(signature = (program, policy="{}", sandbox="auto"))]
fn sandbox_run(py: Python<'_>, program: String, policy: &str, sandbox: &str) -> PyResult<String> {
    let limits: SandboxLimits = serde_json::from_str(policy).map_err(err)?;
    let choice = parse_choice(sandbox)?;
    py.detach(move || -> Result<String, String> {
        let sb = sandbox::open(choice, SandboxConfig::default()).map_err(|e| e.to_string())?;
        let r = sb.run(&program, &limits).map_err(|e| e.to_string())?;
        serde_json::to_string(&r).map_err(|e| e.to_string())
    })
    .map_err(err)
}

/// A job configuration: a TOML file's path, or JSON text (a Python dict).
fn read_config<T: serde::de::DeserializeOwned>(config: &str, is_path: bool) -> Result<T, String> {
    if is_path {
        let text = std::fs::read_to_string(config).map_err(|e| format!("{config}: cannot read: {e}"))?;
        toml::from_str(&text).map_err(|e| format!("{config}: {e}"))
    } else {
        serde_json::from_str(config).map_err(|e| format!("configuration: {e}"))
    }
}

fn load_engine(model: &Option<String>) -> Result<orchard_engine::Engine, String> {
    let spec = model.clone().unwrap_or_else(|| "default".into());
    orchard_engine::Engine::load(&spec).map_err(|e| e.to_string())
}

/// Runs (or resumes) a sampling job; returns the run directory.
#[pyfunction]
#[pyo3(signature = (config, is_path, out=None, sandbox="auto"))]
fn sample(py: Python<'_>, config: String, is_path: bool, out: Option<PathBuf>, sandbox: &str) -> PyResult<String> {
    let choice = parse_choice(sandbox)?;
    py.detach(move || -> Result<String, String> {
        let mut job: SampleJob = read_config(&config, is_path)?;
        job.model = Some(job.model.unwrap_or_else(|| "default".into()));
        job.source.seed = job.seed;
        if out.is_some() {
            job.out = out;
        }
        let reward = build_reward(job.reward.as_deref(), job.reward_config.as_deref(), choice, job.model.as_deref())?;
        let engine = load_engine(&job.model)?;
        let done =
            run_sample(&engine, &job, reward.reward(), &Runtime::default(), &mut Lines).map_err(|e| e.to_string())?;
        Ok(done.out.display().to_string())
    })
    .map_err(err)
}

/// Runs (or resumes) a search job; returns the run directory.
#[pyfunction]
#[pyo3(signature = (config, is_path, out=None, sandbox="auto"))]
fn search(py: Python<'_>, config: String, is_path: bool, out: Option<PathBuf>, sandbox: &str) -> PyResult<String> {
    let choice = parse_choice(sandbox)?;
    py.detach(move || -> Result<String, String> {
        let mut job: SearchJob = read_config(&config, is_path)?;
        job.model = Some(job.model.unwrap_or_else(|| "default".into()));
        job.source.seed = job.seed;
        if out.is_some() {
            job.out = out;
        }
        job.resolve_defaults();
        let reward = build_reward(job.reward.as_deref(), job.reward_config.as_deref(), choice, job.model.as_deref())?;
        let engine = Arc::new(load_engine(&job.model)?);
        let done =
            run_search(engine, &job, reward.reward(), &Runtime::default(), &mut Lines).map_err(|e| e.to_string())?;
        Ok(done.job.out.display().to_string())
    })
    .map_err(err)
}

/// Runs (or resumes) a loop (iterative or online) into `out`; returns its report as JSON.
#[pyfunction]
#[pyo3(signature = (config, is_path, out, sandbox="auto"))]
fn run_loop(py: Python<'_>, config: String, is_path: bool, out: PathBuf, sandbox: &str) -> PyResult<String> {
    let choice = parse_choice(sandbox)?;
    py.detach(move || -> Result<String, String> {
        let cfg: LoopConfig = read_config(&config, is_path)?;
        orchard_jobs::rounds::check(&cfg).map_err(|e| e.to_string())?;
        let reward = build_reward(Some(&cfg.reward), None, choice, Some(&cfg.model))?;
        let engine = Arc::new(orchard_engine::Engine::load(&cfg.model).map_err(|e| e.to_string())?);
        let r = reward.reward();
        let report = if cfg.mode == LoopMode::Online {
            let rep = orchard_jobs::rounds::run_online(&cfg, engine, r, &out, &mut Lines).map_err(|e| e.to_string())?;
            serde_json::to_value(&rep)
        } else {
            let rep = orchard_jobs::rounds::run_loop(&cfg, engine, r, &out, &mut Lines).map_err(|e| e.to_string())?;
            serde_json::to_value(&rep)
        };
        report.map(|v| v.to_string()).map_err(|e| e.to_string())
    })
    .map_err(err)
}

/// The Rust side of the `orchard` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("OrchardError", m.py().get_type::<OrchardError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_MAX_BATCH", orchard_engine::engine::DEFAULT_MAX_BATCH)?;
    m.add_class::<NativeEngine>()?;
    m.add_function(wrap_pyfunction!(reward_catalog, m)?)?;
    m.add_function(wrap_pyfunction!(score_rewards, m)?)?;
    m.add_function(wrap_pyfunction!(sandbox_run, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(search, m)?)?;
    m.add_function(wrap_pyfunction!(run_loop, m)?)?;
    Ok(())
}
