//! A sandbox for untrusted, model-written Python.
//!
//! Every run is a fresh process (a new interpreter, or under bubblewrap a child forked from a clean, already started
//! interpreter in a per-slot sandbox — see below; no state of one run reaches the next) in its own session and
//! process group, with a scrubbed environment, a private temporary directory, rlimits, a wall-clock deadline and
//! capped output. At the deadline, or as soon as the main process exits, everything the run started is killed.
//!
//! Two implementations of [`Sandbox`]:
//!
//! * [`Bwrap`] runs the interpreter under [bubblewrap](https://github.com/containers/bubblewrap) (`bwrap`, Debian
//!   package `bubblewrap`), the tool Flatpak uses. On top of the rlimits it gives: fresh user, PID, network, IPC and
//!   UTS namespaces (no network at all, only a private loopback; all processes die with the PID namespace, including
//!   ones that left the process group); the host filesystem read-only, with `/root`, `/home` and `/run` replaced by
//!   empty read-only directories; a size-capped `tmpfs` as the only writable place (`/tmp`, also the working
//!   directory, plus a small `/dev/shm`); a fresh read-only `/dev` with only the basic device nodes (`null`, `zero`,
//!   `full`, `random`, `urandom`, `tty`). By default each slot keeps one such sandbox alive with a fork server as
//!   its PID 1 and forks every run from it into mount, PID, network, IPC and UTS namespaces of its own, with fresh
//!   `/tmp`, `/dev/shm` and `/proc` mounts, no capabilities and the kernel keyring calls refused (see
//!   `forkserver.rs`); a fresh sandbox and interpreter per run (`SandboxConfig::fork_server = false`) costs
//!   ~15–25 ms more per run.
//! * [`Rlimits`] is the fallback when `bwrap` is missing or user namespaces are disabled. It is chosen only
//!   explicitly (`SandboxChoice::Rlimits`, `--sandbox rlimits`); `SandboxChoice::Auto` without a working bwrap is
//!   an error that says how to install it (fail closed), and every result
//!   carries `isolation: "rlimits"`. **What does NOT hold then**: the program sees the whole host filesystem with the
//!   permissions of the user it runs as, and can write wherever that user can (only files are size-capped, not the
//!   disk); there is no network isolation unless Orchard runs as root (then a fresh network namespace is made); a
//!   process that leaves the process group (`setsid`) can outlive the deadline unless Orchard runs as root (then the
//!   per-slot uid is swept with `kill(-1)`); when not root, the process limit is counted over all of the user's
//!   processes, the program runs as the user, and it can signal the user's other processes, the caller included.
//!
//! In both, when Orchard runs as root each run executes as its own unprivileged uid, leased from
//! [`DEFAULT_UID_BASE`] upwards with a lock file so that no two concurrent runs share one, even across Orchard
//! processes. So `RLIMIT_NPROC` (which the kernel does not enforce for uid 0) stops fork bombs, and one run cannot
//! signal another. Limits are per process (`RLIMIT_AS`, `RLIMIT_CPU`, `RLIMIT_FSIZE`);
//! the total memory of a run with many children is bounded by `max_processes × memory`, not by `memory` (cgroups
//! would bound it; they are not used because they need privileges a developer machine does not grant).
//!
//! Concurrency is bounded inside the sandbox: at most [`SandboxConfig::concurrency`] runs execute at once (default:
//! the number of cores) and further callers wait, so 100 queued executions do not overload 2 cores.
//! [`Executor`] adds a cache of results keyed by (program, limits) and a parallel batch API.

mod bwrap;
mod executor;
mod forkserver;
mod process;
pub mod python;
mod rlimits;
#[cfg(test)]
mod sandbox_tests;
mod slots;
mod uid_lease;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use bwrap::Bwrap;
pub(crate) use bwrap::{find_bwrap, is_hidden, mount_args};
pub use executor::{CacheStats, Executor, DEFAULT_CACHE_CAPACITY};
pub(crate) use process::{child_setup, scrubbed_env, Limits};
pub use rlimits::Rlimits;

use crate::error::{Error, Result};

/// Default wall-clock limit of one run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default address-space limit (`RLIMIT_AS`) of each process of a run.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default limit on processes (`RLIMIT_NPROC`) of a run; the interpreter (and, under bwrap, bwrap's own init)
/// count against it.
pub const DEFAULT_MAX_PROCESSES: u64 = 32;
/// Default cap on each of stdout and stderr.
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 10;
/// Default largest file a run may write (`RLIMIT_FSIZE`), and the size of the private `/tmp` under bwrap.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 16 << 20;
/// First uid leased to runs when Orchard runs as root (runs take the lowest free uid from here up). Chosen above
/// systemd's container range (up to 0x6FFFFFFF) and below 2^31.
pub const DEFAULT_UID_BASE: u32 = 1_999_000_000;

/// Limits of one run. Serde struct: every field optional in TOML/JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxLimits {
    /// Wall-clock limit; everything is killed when it passes. Default [`DEFAULT_TIMEOUT`] (5 s).
    #[serde(with = "human_duration")]
    pub timeout: Duration,
    /// CPU-time limit per process (`RLIMIT_CPU`, whole seconds, rounded up). Default: `None` = the timeout.
    #[serde(with = "human_duration_opt")]
    pub cpu_time: Option<Duration>,
    /// Address-space limit per process (`RLIMIT_AS`) in bytes. Default [`DEFAULT_MEMORY`] (512 MiB).
    #[serde(with = "human_size")]
    pub memory: u64,
    /// Process limit (`RLIMIT_NPROC`). Default [`DEFAULT_MAX_PROCESSES`] (32).
    pub max_processes: u64,
    /// Cap on each of stdout and stderr in bytes; a run that writes more is killed with status `output_limit`.
    /// Default [`DEFAULT_MAX_OUTPUT`] (64 KiB).
    pub max_output: usize,
    /// Largest file a run may write, and the size of its private `/tmp` under bwrap. Default
    /// [`DEFAULT_MAX_FILE_SIZE`] (16 MiB).
    #[serde(with = "human_size")]
    pub max_file_size: u64,
    /// Import `site` at start-up (third-party packages such as `sympy` importable). Off (`python -S`) saves 2–4 ms
    /// of the ~10 ms interpreter start (more where `.pth` hooks are installed) and leaves only the standard
    /// library. Default true.
    pub site_packages: bool,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            timeout: DEFAULT_TIMEOUT,
            cpu_time: None,
            memory: DEFAULT_MEMORY,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_output: DEFAULT_MAX_OUTPUT,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            site_packages: true,
        }
    }
}

impl SandboxLimits {
    /// Interpreter flags: `-I` (isolated: no environment variables, no user site, no script directory on the
    /// path) and `-S` when `site_packages` is off.
    pub(crate) fn python_flags(&self) -> &'static [&'static str] {
        if self.site_packages {
            &["-I"]
        } else {
            &["-I", "-S"]
        }
    }

    /// CPU seconds for `RLIMIT_CPU`: the configured CPU time or the timeout, rounded up, at least 1.
    pub fn cpu_seconds(&self) -> u64 {
        let d = self.cpu_time.unwrap_or(self.timeout);
        d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exit status 0.
    Ok,
    /// Non-zero exit status (an exception, a failing assertion, `sys.exit(1)`).
    Error,
    /// The wall-clock deadline or the CPU-time limit was reached.
    Timeout,
    /// The memory limit was reached (`MemoryError`, or an allocation failure that killed the process).
    Memory,
    /// Killed by a signal the sandbox did not send for a limit (`SIGSEGV`, `SIGABRT`, a self-kill ...).
    Killed,
    /// stdout or stderr passed `max_output`; the run was killed.
    OutputLimit,
}

impl Status {
    /// The JSON name (`ok`, `error`, `timeout`, `memory`, `killed`, `output_limit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::Memory => "memory",
            Status::Killed => "killed",
            Status::OutputLimit => "output_limit",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which isolation a result was produced under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// bubblewrap namespaces + rlimits.
    Bwrap,
    /// rlimits, process group, scrubbed environment and temp dir only (see the module docs for what does not hold).
    Rlimits,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExecResult {
    /// How it ended.
    pub status: Status,
    /// Exit status, when the process exited (not when killed by a signal).
    pub exit_code: Option<i32>,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
    /// Captured stdout (lossy UTF-8, at most `max_output` bytes).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8, at most `max_output` bytes).
    pub stderr: String,
    /// Wall-clock time from spawn to the end of the run, in milliseconds.
    pub wall_ms: u64,
    /// Why it did not end `ok`: the exception line and the failing source line for errors, the limit for
    /// timeouts/memory/output, the signal for kills.
    pub reason: Option<String>,
    /// The isolation it ran under.
    pub isolation: Isolation,
    /// Whether this result came from the [`Executor`] cache.
    #[serde(default)]
    pub cached: bool,
}

/// What a sandbox enforces, for logs, `--help` and results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxInfo {
    /// The isolation kind.
    pub isolation: Isolation,
    /// How many runs may execute at once.
    pub concurrency: usize,
    /// The interpreter.
    pub python: PathBuf,
    /// Guarantees that do not hold with this sandbox on this machine (empty for bwrap as root).
    pub not_enforced: Vec<&'static str>,
}

/// Runs one program under limits. Implementations are thread-safe and bound their own concurrency.
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Run Python `program` (the source of a `__main__` script) under `limits`. `Err` only when the sandbox
    /// itself fails (cannot spawn, cannot make a temp dir); anything the program does is an [`ExecResult`].
    fn run(&self, program: &str, limits: &SandboxLimits) -> Result<ExecResult>;

    /// What this sandbox enforces.
    fn info(&self) -> SandboxInfo;
}

/// A sandbox that refuses to run anything: the test double for rewards that need one, and the explicit choice
/// for pipelines that must never execute model code.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSandbox;

impl Sandbox for NullSandbox {
    fn run(&self, _program: &str, _limits: &SandboxLimits) -> Result<ExecResult> {
        Err(Error::SandboxUnavailable { kind: "null", why: "the null sandbox never executes code".into() })
    }

    fn info(&self) -> SandboxInfo {
        SandboxInfo {
            isolation: Isolation::Bwrap,
            concurrency: 1,
            python: PathBuf::new(),
            not_enforced: vec!["executes nothing"],
        }
    }
}

/// Which sandbox to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxChoice {
    /// bubblewrap if it works here, else an error saying how to install it (fail closed: the rlimits fallback
    /// runs only when asked for by name).
    #[default]
    Auto,
    /// bubblewrap or an error.
    Bwrap,
    /// The rlimits fallback, explicitly.
    Rlimits,
}

impl std::str::FromStr for SandboxChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(SandboxChoice::Auto),
            "bwrap" => Ok(SandboxChoice::Bwrap),
            "rlimits" => Ok(SandboxChoice::Rlimits),
            _ => Err(format!("unknown sandbox `{s}` (use auto, bwrap or rlimits)")),
        }
    }
}

/// Settings shared by both sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The Python interpreter. Default: [`python::default_interpreter`] (`$ORCHARD_PYTHON`, else
    /// `/usr/bin/python3`, else `python3` on `PATH`).
    pub python: PathBuf,
    /// How many runs execute at once. Default: the number of available cores.
    pub concurrency: usize,
    /// First uid leased to runs when running as root. Default [`DEFAULT_UID_BASE`].
    pub uid_base: u32,
    /// The `bwrap` binary. Default `bwrap` (looked up on `PATH`).
    pub bwrap: PathBuf,
    /// Under bubblewrap, fork each run from a warm interpreter in a persistent per-slot sandbox (default true);
    /// false starts a fresh sandbox and interpreter for every run.
    pub fork_server: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: python::default_interpreter(),
            concurrency: std::thread::available_parallelism().map_or(1, usize::from),
            uid_base: DEFAULT_UID_BASE,
            bwrap: PathBuf::from("bwrap"),
            fork_server: true,
        }
    }
}

/// Open the sandbox `choice` asks for. Both sandboxes probe the interpreter once here (a run of `pass`), so a
/// sandbox that is returned works. `Auto` logs a warning naming what does not hold when it falls back.
pub fn open(choice: SandboxChoice, config: SandboxConfig) -> Result<Arc<dyn Sandbox>> {
    match choice {
        SandboxChoice::Bwrap => Ok(Arc::new(Bwrap::new(config)?)),
        SandboxChoice::Rlimits => Ok(Arc::new(Rlimits::new(config)?)),
        // Fail closed: model-written code never runs with write access to the host unless the user names the
        // rlimits-only sandbox.
        SandboxChoice::Auto => {
            Bwrap::new(config).map(|b| Arc::new(b) as Arc<dyn Sandbox>).map_err(|err| Error::SandboxUnavailable {
                kind: "bwrap",
                why: format!(
                    "{err}. Code rewards run model-written programs, and without bubblewrap they would run with \
                     write access to this machine: install it (`apt-get install bubblewrap`), or pass \
                     `--sandbox rlimits` (TOML: `sandbox = \"rlimits\"`) to accept the rlimits-only sandbox, which \
                     does not isolate the filesystem or the network"
                ),
            })
        }
    }
}

pub(crate) mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod human_duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| crate::units::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

pub(crate) mod human_size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::units::format_size(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(b) => Ok(b),
            Size::Text(t) => crate::units::parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_human_units_from_toml() -> anyhow::Result<()> {
        let p: SandboxLimits = toml::from_str("timeout = \"500ms\"\nmemory = \"1GiB\"\nmax_processes = 8")?;
        assert_eq!(p.timeout, Duration::from_millis(500));
        assert_eq!(p.memory, 1 << 30);
        assert_eq!(p.max_processes, 8);
        assert_eq!(p.max_output, DEFAULT_MAX_OUTPUT);
        assert_eq!(p.cpu_seconds(), 1);
        let back: SandboxLimits = toml::from_str(&toml::to_string(&p)?)?;
        assert_eq!(back, p);
        Ok(())
    }

    #[test]
    fn cpu_seconds_round_up() {
        let p = SandboxLimits { timeout: Duration::from_millis(2100), ..Default::default() };
        assert_eq!(p.cpu_seconds(), 3);
        let p = SandboxLimits { timeout: Duration::from_secs(5), ..Default::default() };
        assert_eq!(p.cpu_seconds(), 5);
    }
}
