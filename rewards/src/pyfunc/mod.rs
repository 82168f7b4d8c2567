//! Reward functions written in Python, with TRL's and verl's signatures (`--reward python:FILE:FUNCTION`, TOML
//! `kind = "python"`).
//!
//! * **TRL** (`reward_funcs`): `f(prompts, completions, **columns) -> list[float | None]`, called once per batch.
//!   `completions` are strings (`completions = "standard"`, the default) or lists of one assistant message
//!   (`"conversational"`, as TRL passes them for chat datasets; `prompts` are then message lists too). Every task
//!   field and every extra column of the row comes as a keyword list, one value per completion: `answer` (the
//!   reference answer Orchard holds, a string), `choices`, `tests`, `entry_point`, `sql`, `db`, `boxes`, and the
//!   source row's other columns.
//! * **verl** (`compute_score`): `f(data_source, solution_str, ground_truth, extra_info) -> float | dict`, called per
//!   row; `data_source` is the row's `data_source` column or the config's, `ground_truth` the row's `ground_truth`
//!   column, else its answer; `extra_info` the other columns plus `prompt`. A returned dict gives `score` and its
//!   other numeric entries become components.
//!
//! The style is detected from the function (`solution_str` in its parameters or the name `compute_score` → verl)
//! unless `signature` names it. `None` (or NaN) means "not applicable": the row is not scored (an outcome with
//! [`Outcome::not_applicable`](crate::Outcome::not_applicable)), and a weighted composite skips the term as TRL's
//! `nansum` does.
//!
//! The function runs in a pool of long-lived worker processes (`workers`, default the number of cores), each call a
//! batch of at most `batch_size` rows with a deadline (`timeout`). Inside bubblewrap by default (`sandbox =
//! "bwrap"`): the host read-only with the reward file, the interpreter and its libraries readable, no network, a
//! private `/tmp` as the only writable place; `"rlimits"` (memory limit and an own session only) and `"none"` (the
//! user's environment, full access) only when named. An exception marks the rows it was raised for (the batch is
//! retried row by row to find them) with its traceback; a worker that hangs past the deadline or dies (`os._exit`,
//! a segfault) is killed and replaced, and its batch is retried row by row so only the rows that cause it are
//! marked. Prints go to the worker's stderr, never into the protocol.

mod pool;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::sandbox::{find_bwrap, is_hidden, mount_args, scrubbed_env, Limits};
use crate::{Outcome, Reward, Task};
use pool::{Failure, Launcher, Pool};

/// The worker program (run with `python -c`).
const WORKER: &str = include_str!("worker.py");

/// Default deadline of one call (one batch).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default most rows per call.
pub const DEFAULT_BATCH_SIZE: usize = 256;
/// Default address-space limit of a sandboxed worker (imports such as torch need a few GiB of address space).
pub const DEFAULT_MEMORY: u64 = 8 << 30;
/// How long a worker may take to import the reward file.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of a sandboxed worker's private `/tmp`.
const TMP_SIZE: u64 = 64 << 20;

/// Which calling convention the function has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    /// From the function: `solution_str` among its parameters or the name `compute_score` → verl, else TRL.
    #[default]
    Auto,
    /// TRL's `reward_funcs(prompts, completions, **kwargs)`.
    Trl,
    /// verl's `compute_score(data_source, solution_str, ground_truth, extra_info)`.
    Verl,
}

impl Signature {
    fn as_str(self) -> &'static str {
        match self {
            Signature::Auto => "auto",
            Signature::Trl => "trl",
            Signature::Verl => "verl",
        }
    }
}

/// How prompts and completions are passed to a TRL-style function (TRL's dataset formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionFormat {
    /// Strings.
    #[default]
    Standard,
    /// `[{"role": "assistant", "content": …}]` per completion and `[{"role": "user", "content": …}]` per prompt.
    Conversational,
}

/// Where the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PySandbox {
    /// bubblewrap: host read-only, no network, private `/tmp` (default).
    #[default]
    Bwrap,
    /// A memory limit and an own session; the host filesystem and network as the user has them.
    Rlimits,
    /// Unsandboxed: the user's environment and permissions.
    None,
}

/// Settings of a Python reward. TOML: `{ kind = "python", file = "reward.py", function = "f", … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// The Python file defining the function.
    pub file: PathBuf,
    /// The function's name.
    pub function: String,
    /// Calling convention. Default `auto`.
    #[serde(default)]
    pub signature: Signature,
    /// TRL-style prompt/completion format. Default `standard` (strings).
    #[serde(default)]
    pub completions: CompletionFormat,
    /// verl's `data_source` for rows without that column. Default `orchard`.
    #[serde(default)]
    pub data_source: Option<String>,
    /// Deadline of one call. Default [`DEFAULT_TIMEOUT`] (60 s).
    #[serde(default = "default_timeout", with = "crate::sandbox::human_duration")]
    pub timeout: Duration,
    /// Most rows per call. Default [`DEFAULT_BATCH_SIZE`] (256).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Worker processes. Default: the number of cores.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Where the workers run. Default `bwrap`.
    #[serde(default)]
    pub sandbox: PySandbox,
    /// Address-space limit of a sandboxed worker, in bytes or `8GiB`. Default [`DEFAULT_MEMORY`].
    #[serde(default = "default_memory", with = "crate::sandbox::human_size")]
    pub memory: u64,
    /// The interpreter. Default: `python3` on `PATH`.
    #[serde(default)]
    pub python: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY
}

impl PythonConfig {
    /// A config for `file` and `function` with every default.
    pub fn new(file: impl Into<PathBuf>, function: impl Into<String>) -> Self {
        PythonConfig {
            file: file.into(),
            function: function.into(),
            signature: Signature::Auto,
            completions: CompletionFormat::Standard,
            data_source: None,
            timeout: DEFAULT_TIMEOUT,
            batch_size: DEFAULT_BATCH_SIZE,
            workers: None,
            sandbox: PySandbox::Bwrap,
            memory: DEFAULT_MEMORY,
            python: None,
        }
    }

    /// Parse the `--reward` form `python:FILE:FUNCTION`.
    pub fn from_spec(spec: &str) -> Result<Self> {
        let rest = spec.strip_prefix("python:").unwrap_or(spec);
        match rest.rsplit_once(':') {
            Some((file, function)) if !file.is_empty() && !function.is_empty() && !function.contains('/') => {
                Ok(PythonConfig::new(file, function))
            }
            _ => Err(Error::InvalidConfig(format!(
                "`{spec}`: a Python reward is named `python:FILE:FUNCTION`, e.g. `python:rewards.py:format_reward`"
            ))),
        }
    }
}

/// What the interpreter says about itself (probed unsandboxed, once).
struct Interpreter {
    executable: PathBuf,
    prefixes: Vec<PathBuf>,
}

fn probe_interpreter(python: &Path) -> Result<Interpreter> {
    let resolved = crate::sandbox::python::which(&python.to_string_lossy()).unwrap_or_else(|| python.to_path_buf());
    let out = std::process::Command::new(&resolved)
        .args(["-c", "import sys; print(sys.executable); print(sys.prefix); print(sys.base_prefix)"])
        .output()
        .map_err(|e| Error::Interpreter { path: python.to_path_buf(), why: e.to_string() })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    if !out.status.success() || lines.len() < 3 || lines[0].is_empty() {
        return Err(Error::Interpreter {
            path: python.to_path_buf(),
            why: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(Interpreter { executable: PathBuf::from(lines[0]), prefixes: lines[1..3].iter().map(PathBuf::from).collect() })
}

/// A Python reward function and the worker pool that runs it.
#[derive(Debug)]
pub struct PythonReward {
    config: PythonConfig,
    file: PathBuf,
    pool: Pool,
    style: String,
    functions: Vec<String>,
}

impl PythonReward {
    /// Check the interpreter, start the first worker, import the file and find the function: every way the
    /// reward cannot work is an error here, before a job starts, naming the file (and the functions it has).
    pub fn new(config: PythonConfig) -> Result<Self> {
        let fail = |why: String| Error::PythonReward { file: config.file.clone(), why };
        let file = std::fs::canonicalize(&config.file).map_err(|e| fail(format!("cannot read it: {e}")))?;
        if config.batch_size == 0 {
            return Err(fail("batch_size must be at least 1".into()));
        }
        let python = config.python.clone().unwrap_or_else(|| PathBuf::from("python3"));
        let interpreter = probe_interpreter(&python)?;
        let launcher = launcher(&config, &file, &interpreter)?;
        let workers = config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let (pool, hello) = Pool::start(launcher, workers, STARTUP_TIMEOUT)
            .map_err(|e| fail(format!("cannot start the worker pool: {e}")))?;
        let hello = hello.map_err(|e| fail(format!("the worker did not start: {e}")))?;
        if let Some(trace) = &hello.error {
            return Err(fail(format!("importing it failed:\n{}", trace.trim_end())));
        }
        if !hello.ready {
            let name = hello.missing.as_deref().unwrap_or(&config.function);
            let known = if hello.functions.is_empty() { "none".to_string() } else { hello.functions.join(", ") };
            return Err(fail(format!("it defines no function `{name}` (functions defined there: {known})")));
        }
        let style = hello.style.clone().unwrap_or_else(|| "trl".into());
        tracing::info!(file = %file.display(), function = %config.function, %style,
            python = hello.python.as_deref().unwrap_or("?"), sandbox = ?config.sandbox, "python reward ready");
        Ok(PythonReward { config, file, pool, style, functions: hello.functions })
    }

    /// The calling convention in use (`trl` or `verl`).
    pub fn style(&self) -> &str {
        &self.style
    }

    /// The reward file (absolute).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The public functions the file defines.
    pub fn functions(&self) -> &[String] {
        &self.functions
    }

    /// The request line for `items` (their index in the caller's batch starts at `offset`).
    fn request(&self, items: &[(&Task, &str)], offset: usize) -> String {
        let conversational = self.config.completions == CompletionFormat::Conversational && self.style == "trl";
        let (prompts, completions): (Vec<Value>, Vec<Value>) = items
            .iter()
            .map(|(t, c)| {
                if conversational {
                    (json!([{"role": "user", "content": t.prompt}]), json!([{"role": "assistant", "content": c}]))
                } else {
                    (json!(t.prompt), json!(c))
                }
            })
            .unzip();
        let tasks: Vec<&Task> = items.iter().map(|(t, _)| *t).collect();
        json!({
            "prompts": prompts, "completions": completions, "columns": columns(&tasks), "offset": offset,
            "data_source": self.config.data_source,
        })
        .to_string()
    }

    /// Score one chunk; a dead or hung worker's chunk is retried row by row so only the rows that cause it fail.
    fn score_chunk(&self, items: &[(&Task, &str)], offset: usize) -> Vec<Outcome> {
        match self.call(items, offset) {
            Ok(outcomes) => outcomes,
            Err(failure) if items.len() > 1 => {
                tracing::warn!(rows = items.len(), %failure, "python reward batch failed; retrying row by row");
                (0..items.len())
                    .flat_map(|i| {
                        self.call(&items[i..i + 1], offset + i).unwrap_or_else(|f| vec![self.failed(offset + i, &f)])
                    })
                    .collect()
            }
            Err(failure) => vec![self.failed(offset, &failure)],
        }
    }

    fn failed(&self, row: usize, failure: &Failure) -> Outcome {
        Outcome::task_error(format!("python reward `{}` on row {row}: {failure}", self.config.function))
    }

    fn call(&self, items: &[(&Task, &str)], offset: usize) -> std::result::Result<Vec<Outcome>, Failure> {
        let answer = self.pool.call(&self.request(items, offset), self.config.timeout)?;
        let parsed: Value = serde_json::from_str(&answer)
            .map_err(|e| Failure::Exited(format!("unreadable answer from the worker ({e})")))?;
        let results = parsed["results"].as_array().filter(|r| r.len() == items.len()).ok_or_else(|| {
            Failure::Exited(format!("the worker answered with the wrong number of results: {answer:.200}"))
        })?;
        Ok(results.iter().map(|r| self.outcome(r)).collect())
    }

    fn outcome(&self, result: &Value) -> Outcome {
        if let Some(e) = result["error"].as_str() {
            return Outcome::task_error(format!("python reward `{}`: {}", self.config.function, e.trim_end()));
        }
        let Some(score) = result["score"].as_f64() else {
            return Outcome::not_applicable(format!("`{}` returned None", self.config.function));
        };
        let mut o = Outcome::new(score);
        if let Some(parts) = result["components"].as_object() {
            for (k, v) in parts {
                if let Some(v) = v.as_f64() {
                    o.components.insert(k.clone(), v);
                }
            }
        }
        o
    }
}

impl Reward for PythonReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        self.score_chunk(&[(task, completion)], 0).pop().unwrap_or_default()
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<Outcome> {
        let size = self.config.batch_size;
        let chunks: Vec<(usize, &[(&Task, &str)])> =
            items.chunks(size).enumerate().map(|(k, c)| (k * size, c)).collect();
        if chunks.len() <= 1 {
            return chunks.into_iter().flat_map(|(o, c)| self.score_chunk(c, o)).collect();
        }
        // One thread per chunk in flight; the pool bounds how many run at once.
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks.iter().map(|&(o, c)| s.spawn(move || self.score_chunk(c, o))).collect();
            handles
                .into_iter()
                .zip(&chunks)
                .flat_map(|(h, (o, c))| {
                    h.join().unwrap_or_else(|_| {
                        (0..c.len())
                            .map(|i| Outcome::task_error(format!("row {}: scoring thread panicked", o + i)))
                            .collect()
                    })
                })
                .collect()
        })
    }
}

/// The keyword columns of a batch: each task field some row has, then each extra column, one value per row
/// (`null` where a row lacks it).
fn columns(tasks: &[&Task]) -> Map<String, Value> {
    let rows: Vec<Map<String, Value>> = tasks.iter().map(|t| row_columns(t)).collect();
    let mut names: Vec<&String> = Vec::new();
    for r in &rows {
        for k in r.keys() {
            if !names.contains(&k) {
                names.push(k);
            }
        }
    }
    names
        .into_iter()
        .map(|k| (k.clone(), rows.iter().map(|r| r.get(k).cloned().unwrap_or(Value::Null)).collect()))
        .collect()
}

fn row_columns(t: &Task) -> Map<String, Value> {
    let mut m = Map::new();
    match t.answer.as_slice() {
        [] => {}
        [one] => {
            m.insert("answer".into(), json!(one));
        }
        many => {
            m.insert("answer".into(), json!(many));
        }
    }
    if !t.choices.is_empty() {
        m.insert("choices".into(), json!(t.choices));
    }
    let optional = [
        ("tests", t.tests.as_ref().map(|v| json!(v))),
        ("entry_point", t.entry_point.as_ref().map(|v| json!(v))),
        ("sql", t.sql.as_ref().map(|v| json!(v))),
        ("db", t.db.as_ref().map(|v| json!(v))),
        ("boxes", t.boxes.as_ref().map(|v| json!(v))),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    }
    for (k, v) in &t.extra {
        if !m.contains_key(k) && k != "prompt" && k != "completion" && k != "completions" && k != "prompts" {
            m.insert(k.clone(), v.clone());
        }
    }
    m
}

/// How to start a worker for `config`: the interpreter running [`WORKER`] on the file, in the chosen sandbox.
fn launcher(config: &PythonConfig, file: &Path, py: &Interpreter) -> Result<Launcher> {
    let mut args: Vec<std::ffi::OsString> = vec!["-c".into(), WORKER.into()];
    args.extend([file.as_os_str().into(), config.function.clone().into(), config.signature.as_str().into()]);
    let limits = Limits { address_space: config.memory, cpu_seconds: u64::MAX, processes: None, file_size: TMP_SIZE };
    let sandbox_env = || scrubbed_env("/tmp").into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Vec<_>>();
    Ok(match config.sandbox {
        PySandbox::None => Launcher {
            program: py.executable.clone(),
            args,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            env: std::env::vars().collect(),
            limits: None,
        },
        PySandbox::Rlimits => Launcher {
            program: py.executable.clone(),
            args,
            cwd: file.parent().unwrap_or(Path::new("/")).to_path_buf(),
            env: sandbox_env(),
            limits: Some(limits),
        },
        PySandbox::Bwrap => {
            let (bwrap, tmpfs_size) = find_bwrap(Path::new("bwrap")).map_err(|e| Error::PythonReward {
                file: config.file.clone(),
                why: format!(
                    "{e}. Python rewards run in bubblewrap by default: install it (`apt-get install bubblewrap`), or \
                     name another sandbox (TOML `sandbox = \"rlimits\"` or `\"none\"`; flag `--sandbox rlimits` or \
                     `--no-reward-sandbox`)"
                ),
            })?;
            // Paths the sandbox would not show: under a hidden directory (bound back before those are made
            // read-only) or under /tmp (bound over the private /tmp, after it is mounted).
            let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
            let mut wanted: Vec<PathBuf> = py.prefixes.clone();
            wanted.push(dir);
            wanted.dedup();
            let reexpose: Vec<PathBuf> = wanted.iter().filter(|p| is_hidden(p)).cloned().collect();
            let mut full = mount_args(&reexpose, tmpfs_size, TMP_SIZE);
            for p in wanted.iter().filter(|p| p.starts_with("/tmp")) {
                full.extend(["--ro-bind".into(), p.clone().into_os_string(), p.clone().into_os_string()]);
            }
            full.push("--".into());
            full.push(py.executable.clone().into_os_string());
            full.extend(args);
            Launcher { program: bwrap, args: full, cwd: PathBuf::from("/"), env: sandbox_env(), limits: Some(limits) }
        }
    })
}

#[cfg(test)]
mod tests;
