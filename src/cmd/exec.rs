//! `orchard exec`: run a Python file (or a JSONL batch of programs) in the sandbox and print the result as JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orchard_rewards::sandbox::{self, Executor, Sandbox, SandboxChoice, SandboxConfig, SandboxLimits, Status};
use orchard_rewards::units::{parse_duration, parse_size};

/// Sandbox flags shared by `orchard exec` and `orchard reward`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Wall-clock limit per run (`500ms`, `5s`).
    #[arg(long, value_parser = parse_duration_arg)]
    pub timeout: Option<Duration>,
    /// Address-space limit per process (`512MiB`, `1GiB`).
    #[arg(long, value_parser = parse_size_arg)]
    pub memory: Option<u64>,
    /// Process limit per run (fork bombs stop here).
    #[arg(long)]
    pub max_processes: Option<u64>,
    /// Cap on each of stdout and stderr (`64KiB`); more ends the run with status output_limit.
    #[arg(long, value_parser = parse_size_arg)]
    pub max_output: Option<u64>,
    /// Start Python without `site` (`python -S`): standard library only, 2–4 ms faster per run.
    #[arg(long)]
    pub no_site_packages: bool,
    /// Which sandbox: `bwrap` (bubblewrap namespaces + rlimits), `rlimits` (fallback: no filesystem or network
    /// isolation, see the docs; only when named), or `auto` (bwrap, else an error saying how to install it).
    #[arg(long, default_value = "auto")]
    pub sandbox: SandboxChoice,
    /// Python interpreter (default: $ORCHARD_PYTHON, else /usr/bin/python3, else python3 on PATH).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Under bwrap, start a fresh sandbox and interpreter for every run instead of forking each run from a warm
    /// interpreter in a per-slot sandbox (slower by ~15 ms a run; the same limits hold either way).
    #[arg(long)]
    pub no_fork_server: bool,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

impl SandboxArgs {
    /// Apply the flags that were given to `limits`.
    pub fn apply(&self, limits: &mut SandboxLimits) {
        if let Some(t) = self.timeout {
            limits.timeout = t;
        }
        if let Some(m) = self.memory {
            limits.memory = m;
        }
        if let Some(n) = self.max_processes {
            limits.max_processes = n;
        }
        if let Some(o) = self.max_output {
            limits.max_output = o as usize;
        }
        if self.no_site_packages {
            limits.site_packages = false;
        }
    }

    /// Open the sandbox the flags ask for.
    pub fn open(&self) -> anyhow::Result<Arc<dyn Sandbox>> {
        let mut config = SandboxConfig::default();
        if let Some(p) = &self.python {
            config.python = p.clone();
        }
        config.fork_server = !self.no_fork_server;
        let sb = sandbox::open(self.sandbox, config)?;
        let info = sb.info();
        tracing::info!(isolation = ?info.isolation, python = %info.python.display(), "sandbox ready");
        Ok(sb)
    }
}

/// Run FILE (Python source) in the sandbox and print one JSON object: `{status, exit_code, signal, stdout, stderr,
/// wall_ms, reason, isolation, cached}`, `status` one of ok / error / timeout / memory / killed / output_limit.
/// Exit code 0 when the status is ok, 1 otherwise, 2 when the sandbox itself failed.
///
/// With `--jsonl`, FILE holds one program per line (a JSON string, or an object with a `program` field); they run
/// in parallel (as many at once as the sandbox allows) and one JSON object per program is printed in input order,
/// with its `row`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Python file to run (`-` for stdin).
    pub file: PathBuf,
    /// FILE is JSONL: one program per line.
    #[arg(long)]
    pub jsonl: bool,
    /// Do not reuse results of identical programs within this batch.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = read_input(&args.file)?;
    let mut limits = SandboxLimits::default();
    args.sandbox.apply(&mut limits);
    let sb = args.sandbox.open()?;
    let capacity = if args.no_cache { 0 } else { orchard_rewards::sandbox::DEFAULT_CACHE_CAPACITY };
    let executor = Executor::with_cache_capacity(sb, limits, capacity);
    if args.jsonl {
        return run_batch(&executor, &args.file, &bytes);
    }
    let program = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not valid UTF-8 (at byte {})", args.file.display(), e.utf8_error().valid_up_to())
    })?;
    let result = executor.run(&program)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(if result.status == Status::Ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub(crate) fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn run_batch(executor: &Executor, file: &Path, bytes: &[u8]) -> anyhow::Result<ExitCode> {
    #[derive(serde::Deserialize)]
    struct Row {
        program: String,
    }
    // Parse every line first so that errors name their line; bad lines become error rows, not aborts.
    let mut programs = Vec::new();
    let mut rows: Vec<(usize, Result<usize, String>)> = Vec::new();
    for (k, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(line)
            .map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))
            .and_then(|text| {
                let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
                match v {
                    serde_json::Value::String(s) => Ok(s),
                    other => serde_json::from_value::<Row>(other)
                        .map(|r| r.program)
                        .map_err(|e| format!("field `program`: {e}")),
                }
            });
        rows.push((
            k + 1,
            parsed.map(|p| {
                programs.push(p);
                programs.len() - 1
            }),
        ));
    }
    let results = executor.run_batch(&programs);
    let mut out = std::io::stdout().lock();
    let mut failures = 0usize;
    for (row, (line, parsed)) in rows.into_iter().enumerate() {
        let mut obj = match parsed {
            Ok(i) => match &results[i] {
                Ok(r) => serde_json::to_value(r)?,
                Err(e) => serde_json::json!({ "error": format!("sandbox: {e}") }),
            },
            Err(e) => serde_json::json!({ "error": format!("{}:{line}: {e}", file.display()) }),
        };
        if obj.get("status").and_then(|s| s.as_str()) != Some("ok") {
            failures += 1;
        }
        obj["row"] = row.into();
        obj["line"] = line.into();
        writeln!(out, "{obj}")?;
    }
    out.flush()?;
    let stats = executor.stats();
    tracing::info!(runs = stats.misses, cached = stats.hits, "batch done");
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
