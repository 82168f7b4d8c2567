//! [`Bwrap`]: runs each program under bubblewrap, on top of the rlimits of [`process`](super::process).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::forkserver::{self, Failure, Server, ServerKey};
use super::process::{self, is_root, program_dir, Launch, Limits};
use super::python::{which, PROGRAM_FILE};
use super::slots::Slots;
use super::uid_lease;
use super::{ExecResult, Isolation, Sandbox, SandboxConfig, SandboxInfo, SandboxLimits, Status};
use crate::error::{Error, Result};

/// Directories replaced by empty ones inside the sandbox: home directories (keys, tokens, shell history) and
/// `/run` (sockets of the container runtime, systemd, user sessions).
pub const HIDDEN_DIRS: [&str; 3] = ["/root", "/home", "/run"];

/// Size of `/dev/shm` inside the sandbox (enough for multiprocessing's semaphores).
const SHM_SIZE: u64 = 8 << 20;

/// After this many fork servers in a row fail, runs go to one-shot sandboxes only.
const MAX_SERVER_FAILURES: u32 = 3;

/// The bubblewrap sandbox (see the [module docs](super) for what it enforces).
#[derive(Debug)]
pub struct Bwrap {
    config: SandboxConfig,
    bwrap: PathBuf,
    slots: Slots,
    root: bool,
    /// bwrap ≥ 0.7 understands `--size` for tmpfs mounts.
    tmpfs_size: bool,
    /// Extra read-only binds: an interpreter that lives under a hidden directory.
    reexpose: Vec<PathBuf>,
    /// Idle fork servers (at most one per slot and key).
    servers: Mutex<Vec<Server>>,
    /// Consecutive fork-server failures; at [`MAX_SERVER_FAILURES`] the fast path is switched off.
    server_failures: AtomicU32,
    /// Runs a fork server delivered.
    forked: AtomicU64,
}

impl Bwrap {
    /// Find `bwrap`, check that it can create namespaces here and that the interpreter runs inside (one probe run).
    pub fn new(config: SandboxConfig) -> Result<Self> {
        let unavailable = |why: String| Error::SandboxUnavailable { kind: "bwrap", why };
        let (bwrap, tmpfs_size) = find_bwrap(&config.bwrap)?;
        let python = std::fs::canonicalize(which(&config.python.to_string_lossy()).unwrap_or(config.python.clone()))
            .map_err(|e| Error::Interpreter { path: config.python.clone(), why: e.to_string() })?;
        let reexpose = python_prefix_under_hidden(&python).into_iter().collect();
        let sandbox = Bwrap {
            slots: Slots::new(config.concurrency),
            config: SandboxConfig { python, ..config },
            bwrap,
            root: is_root(),
            tmpfs_size,
            reexpose,
            servers: Mutex::new(Vec::new()),
            server_failures: AtomicU32::new(0),
            forked: AtomicU64::new(0),
        };
        let probe = sandbox.run("import sys; print(sys.version_info[0])", &SandboxLimits::default())?;
        if probe.status != Status::Ok || probe.stdout.trim() != "3" {
            return Err(unavailable(format!(
                "probe run ended {} ({}): {}",
                probe.status,
                probe.reason.unwrap_or_default(),
                probe.stderr.trim()
            )));
        }
        Ok(sandbox)
    }

    /// How many runs were forked from a fork server (the rest ran in one-shot sandboxes).
    pub fn forked_runs(&self) -> u64 {
        self.forked.load(Ordering::Relaxed)
    }

    fn base_args(&self) -> Vec<OsString> {
        base_args(&self.reexpose)
    }

    /// A one-shot sandbox's mounts: a size-capped private `/tmp` (the working directory) and `/dev/shm`, its own
    /// mqueue; `/dev` read-only.
    fn mount_args(&self, tmp_size: u64) -> Vec<OsString> {
        mount_args(&self.reexpose, self.tmpfs_size, tmp_size)
    }

    /// A fork server's mounts: nothing writable; each run mounts its own `/tmp`, `/dev/shm`, mqueue and `/proc`
    /// in namespaces of its own (see [`forkserver`]), for which the server holds CAP_SYS_ADMIN and CAP_NET_ADMIN
    /// in the sandbox's user namespace (and no capability outside it; runs drop them).
    fn server_args(&self, key: ServerKey) -> Vec<OsString> {
        let mut a = self.base_args();
        push(&mut a, &["--dir", "/dev/mqueue", "--remount-ro", "/dev", "--tmpfs", "/tmp", "--remount-ro", "/tmp"]);
        push(&mut a, &["--chdir", "/tmp", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_NET_ADMIN"]);
        a.extend(forkserver::command_tail(&self.config.python, key));
        a
    }

    /// A one-shot sandbox: the program bound in as `/tmp/main.py`, a fresh interpreter.
    fn args(&self, limits: &SandboxLimits, dir: &Path) -> Vec<OsString> {
        let mut a = self.mount_args(limits.max_file_size);
        a.push("--ro-bind".into());
        a.push(dir.join(PROGRAM_FILE).into_os_string());
        a.push(format!("/tmp/{PROGRAM_FILE}").into());
        a.push("--".into());
        a.push(self.config.python.clone().into_os_string());
        a.extend(limits.python_flags().iter().map(OsString::from));
        if self.root {
            a.push(PROGRAM_FILE.into());
        } else {
            // Not root: RLIMIT_NPROC set before bwrap would also cap the namespace's parent count, which holds
            // all of the user's host processes; set it inside instead, where it counts only this run.
            a.push("-c".into());
            a.push(
                format!(
                    "import resource as _r; _r.setrlimit(_r.RLIMIT_NPROC, ({n}, {n})); del _r\n\
                     import runpy as _p, sys as _s; _s.argv = ['{PROGRAM_FILE}']\n\
                     _p.run_path('{PROGRAM_FILE}', run_name='__main__')",
                    n = limits.max_processes.saturating_add(1)
                )
                .into(),
            );
        }
        a
    }

    /// Run in a fork server (see [`forkserver`]); `None` when no server could deliver a result, so the caller runs
    /// the program in a one-shot sandbox instead.
    fn run_in_server(&self, program: &str, limits: &SandboxLimits) -> Option<ExecResult> {
        if self.server_failures.load(Ordering::Relaxed) >= MAX_SERVER_FAILURES {
            return None;
        }
        // A program that would not fit the run's /tmp (where the server writes it) runs in a one-shot sandbox,
        // which binds it in from the host.
        if program.len() as u64 + (64 << 10) > limits.max_file_size {
            return None;
        }
        let key = ServerKey::of(limits);
        // A server found dead when the request is sent never started the run: one retry with a fresh one.
        for _ in 0..2 {
            let mut server = match self.idle_server(key) {
                Some(s) => s,
                None => match self.start_server(key) {
                    Ok(s) => s,
                    Err(e) => {
                        self.server_failed(&e.to_string());
                        return None;
                    }
                },
            };
            match server.run(program, limits) {
                Ok(result) => {
                    self.server_failures.store(0, Ordering::Relaxed);
                    self.forked.fetch_add(1, Ordering::Relaxed);
                    if !server.exited() {
                        self.servers.lock().unwrap_or_else(PoisonError::into_inner).push(server);
                    }
                    return Some(result);
                }
                Err(Failure::NotStarted(why)) => tracing::debug!("fork server gone before the run ({why})"),
                Err(Failure::Died(why)) => {
                    self.server_failed(&why);
                    return None;
                }
            }
        }
        None
    }

    fn server_failed(&self, why: &str) {
        let n = self.server_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= MAX_SERVER_FAILURES {
            tracing::warn!(
                "sandbox fork server failed {n} times in a row ({why}); every run now starts its own sandbox"
            );
        } else {
            tracing::debug!("sandbox fork server failed ({why}); the run is repeated in a one-shot sandbox");
        }
    }

    /// An idle live server for `key`. Servers for other keys are dropped when the pool is full.
    fn idle_server(&self, key: ServerKey) -> Option<Server> {
        let mut pool = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        pool.retain_mut(|s| !s.exited());
        let found = pool.iter().position(|s| s.key == key).map(|i| pool.swap_remove(i));
        if found.is_none() && pool.len() >= self.slots.count() {
            pool.remove(0);
        }
        found
    }

    fn start_server(&self, key: ServerKey) -> Result<Server> {
        let lease = if self.root { Some(uid_lease::lease(self.config.uid_base)?) } else { None };
        let launch = Launch {
            program: self.bwrap.clone(),
            args: self.server_args(key),
            cwd: PathBuf::from("/"),
            env: process::scrubbed_env("/tmp"),
            limits: Limits::unlimited(),
            run_as: lease.as_ref().map(|l| l.uid),
            new_netns: false,
            isolation: Isolation::Bwrap,
            signal_in_exit_code: true,
        };
        Server::start(process::command(&launch), key, lease).map_err(|e| Error::io("starting a sandbox fork server", e))
    }

    /// A fresh sandbox and interpreter for this run alone.
    fn run_one_shot(&self, program: &str, limits: &SandboxLimits) -> Result<ExecResult> {
        let lease = if self.root { Some(uid_lease::lease(self.config.uid_base)?) } else { None };
        let run_as = lease.as_ref().map(|l| l.uid);
        let dir = program_dir(program, run_as)?;
        // As root the limit is set before bwrap and counts the outer bwrap and its init too (2 processes).
        let processes = self.root.then_some(limits.max_processes.saturating_add(2));
        let launch = Launch {
            program: self.bwrap.clone(),
            args: self.args(limits, dir.path()),
            cwd: dir.path().to_path_buf(),
            env: process::scrubbed_env("/tmp"),
            limits: Limits::from_limits(limits, processes),
            run_as,
            new_netns: false,
            isolation: Isolation::Bwrap,
            signal_in_exit_code: true,
        };
        let result = process::execute(&launch, limits, &|| {})?;
        // Descriptors the run left in flight on a Unix socket outlive it until the kernel's Unix-socket garbage
        // collector runs, which closing a Unix socket triggers.
        drop(std::os::unix::net::UnixStream::pair());
        // bwrap's own failures (before the interpreter starts) are the sandbox's, not the program's.
        if result.exit_code == Some(1) && result.stdout.is_empty() && result.stderr.starts_with("bwrap: ") {
            return Err(Error::io("starting bubblewrap", std::io::Error::other(result.stderr.trim().to_string())));
        }
        Ok(result)
    }
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

/// Namespaces and mounts shared by one-shot sandboxes, fork servers and Python reward workers: the host read-only,
/// home directories and `/run` empty and read-only (but for `reexpose`, bound back read-only), a fresh `/dev`
/// (tmpfs with the basic nodes: null, zero, full, random, urandom, tty; the host's, seen through the `/` bind, is
/// mounted nodev inside a user namespace, so not even /dev/null would open), a `/proc` of the sandbox's PID
/// namespace.
pub(crate) fn base_args(reexpose: &[PathBuf]) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::with_capacity(64);
    push(&mut a, &["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]);
    push(&mut a, &["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--ro-bind", "/", "/"]);
    let hidden: Vec<&str> =
        HIDDEN_DIRS.into_iter().filter(|h| Path::new(h).is_dir() && !Path::new(h).is_symlink()).collect();
    for dir in &hidden {
        push(&mut a, &["--tmpfs", dir]);
    }
    for keep in reexpose {
        a.extend(["--ro-bind".into(), keep.clone().into_os_string(), keep.clone().into_os_string()]);
    }
    for dir in &hidden {
        push(&mut a, &["--remount-ro", dir]);
    }
    push(&mut a, &["--dev", "/dev", "--dir", "/dev/shm", "--proc", "/proc"]);
    a
}

/// [`base_args`] plus a size-capped private `/tmp` (the working directory, the only writable place) and
/// `/dev/shm`, its own mqueue; `/dev` read-only. `tmpfs_size`: whether this bwrap knows `--size` (≥ 0.7).
pub(crate) fn mount_args(reexpose: &[PathBuf], tmpfs_size: bool, tmp_size: u64) -> Vec<OsString> {
    let mut a = base_args(reexpose);
    let shm = SHM_SIZE.to_string();
    let tmp = tmp_size.to_string();
    push(&mut a, &["--mqueue", "/dev/mqueue"]);
    if tmpfs_size {
        push(&mut a, &["--size", &shm]);
    }
    push(&mut a, &["--tmpfs", "/dev/shm", "--remount-ro", "/dev"]);
    if tmpfs_size {
        push(&mut a, &["--size", &tmp]);
    }
    push(&mut a, &["--tmpfs", "/tmp", "--chdir", "/tmp"]);
    a
}

/// The `bwrap` binary on `PATH` and whether it knows `--size`; an error names what is missing.
pub(crate) fn find_bwrap(name: &Path) -> Result<(PathBuf, bool)> {
    let unavailable = |why: String| Error::SandboxUnavailable { kind: "bwrap", why };
    let bwrap = which(&name.to_string_lossy())
        .filter(|p| p.is_file())
        .ok_or_else(|| unavailable(format!("`{}` not found on PATH", name.display())))?;
    let help = Command::new(&bwrap)
        .arg("--help")
        .output()
        .map_err(|e| unavailable(format!("cannot run {}: {e}", bwrap.display())))?;
    let tmpfs_size = String::from_utf8_lossy(&help.stdout).contains("--size");
    Ok((bwrap, tmpfs_size))
}

/// Whether `path` lies under a directory the sandbox hides (and so must be bound back to be seen).
pub(crate) fn is_hidden(path: &Path) -> bool {
    HIDDEN_DIRS.iter().any(|h| path.starts_with(h))
}

/// If the interpreter lives under a hidden directory (a pyenv under `/root`), the installation prefix to bind back
/// read-only: the parent of its `bin/`.
fn python_prefix_under_hidden(python: &Path) -> Option<PathBuf> {
    let hidden = is_hidden(python);
    let prefix = python.parent()?.parent()?;
    (hidden && prefix.components().count() > 2).then(|| prefix.to_path_buf())
}

impl Sandbox for Bwrap {
    fn run(&self, program: &str, limits: &SandboxLimits) -> Result<ExecResult> {
        let _slot = self.slots.acquire();
        if self.config.fork_server {
            if let Some(result) = self.run_in_server(program, limits) {
                return Ok(result);
            }
        }
        self.run_one_shot(program, limits)
    }

    fn info(&self) -> SandboxInfo {
        let mut not_enforced = vec!["total memory of a run with many processes (RLIMIT_AS is per process)"];
        if !self.tmpfs_size {
            not_enforced.push("size of the private /tmp (bwrap older than 0.7 has no --size)");
        }
        if self.config.fork_server {
            not_enforced.push(
                "secrecy of earlier programs of the same slot: a run forked from the fork server can read the \
                 server's freed memory (pass --no-fork-server / fork_server = false for a fresh sandbox per run)",
            );
        }
        SandboxInfo {
            isolation: Isolation::Bwrap,
            concurrency: self.slots.count(),
            python: self.config.python.clone(),
            not_enforced,
        }
    }
}
