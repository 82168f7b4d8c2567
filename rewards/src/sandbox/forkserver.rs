//! Persistent bubblewrap sandboxes with a fork server inside: the fast path of [`Bwrap`](super::Bwrap).
//!
//! Starting a sandbox and an interpreter costs ~15–25 ms, most of a HumanEval-sized run. A [`Server`] is one
//! bubblewrap sandbox (the same namespaces, read-only host and uid as a one-shot run, nothing writable) whose PID 1
//! is `forkserver.py`, an interpreter that has already started (and imported `site`). Every run is forked from it
//! into namespaces of its own — mount (fresh tmpfs `/tmp` holding `main.py`, `/dev/shm`, mqueue, `/proc`), PID
//! (the run's init is PID 1, its program PID 2, as in a one-shot sandbox), network (loopback only), IPC and UTS —
//! with no capabilities, `no_new_privs`, a seccomp filter refusing the kernel keyring calls, and its own rlimits.
//! The namespaces of the next run are made while the server waits for its request. When the program exits, at the
//! deadline or when output passes the cap, the run's init is killed and with it everything the run started, its
//! mounts and its network: nothing of one run reaches the next, and the server (whose PID a run cannot even see,
//! and which is not dumpable) is out of reach. To make the namespaces the server holds CAP_SYS_ADMIN and
//! CAP_NET_ADMIN inside the sandbox's user namespace, which grant nothing outside it.
//!
//! If a server dies or cannot set a run up, the run is repeated in a one-shot sandbox (after
//! three failures in a row every run is); if it does not answer by the deadline plus
//! [`BACKSTOP`] it is killed and the run reported as a timeout. Known residual: the forked interpreter's memory
//! holds the server's freed heap, where bytes of earlier requests (programs of the same slot) may remain.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::process::{classify, Stop};
use super::uid_lease::UidLease;
use super::{ExecResult, Isolation, SandboxLimits};

/// The server's source, passed with `python -c` (no file to bind into the sandbox).
const SOURCE: &str = include_str!("forkserver.py");

/// How long past a run's deadline the server may take to answer before it is killed.
pub(crate) const BACKSTOP: Duration = Duration::from_millis(750);

/// What a server was started for: runs with another `site` setting or `/tmp` size need another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerKey {
    pub site_packages: bool,
    pub tmp_size: u64,
}

impl ServerKey {
    pub(crate) fn of(limits: &SandboxLimits) -> Self {
        ServerKey { site_packages: limits.site_packages, tmp_size: limits.max_file_size }
    }
}

/// A running fork server. Dropping it kills the sandbox.
#[derive(Debug)]
pub(crate) struct Server {
    pub key: ServerKey,
    child: Child,
    requests: ChildStdin,
    replies: ChildStdout,
    /// Bytes read past the end of the last reply.
    pending: Vec<u8>,
    /// Killed by the backstop: never reused.
    killed: bool,
    _lease: Option<UidLease>,
}

/// Why a server could not deliver a result; the caller drops it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request could not be sent: the server was already gone, the run never started.
    NotStarted(String),
    /// The server died or broke the protocol during the run.
    Died(String),
}

#[derive(Deserialize)]
struct Head {
    exit_code: Option<i32>,
    signal: Option<i32>,
    stop: Option<String>,
    out: usize,
    err: usize,
    /// The sandbox could not set the run up (the run never started).
    error: Option<String>,
}

/// The command line that starts the server inside bubblewrap (after the mount arguments): PID 1 of the namespace.
pub(crate) fn command_tail(python: &std::path::Path, key: ServerKey) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--as-pid-1".into(), "--".into(), python.as_os_str().to_owned(), "-I".into()];
    if !key.site_packages {
        a.push("-S".into());
    }
    a.extend(["-c".into(), SOURCE.into(), key.tmp_size.to_string().into()]);
    a
}

impl Server {
    /// Start `cmd` (bwrap with [`command_tail`]) from a thread that lives as long as the process, so the
    /// parent-death signals of bwrap and its pre-exec setup fire when Orchard dies, not when the calling worker
    /// thread ends.
    pub(crate) fn start(mut cmd: Command, key: ServerKey, lease: Option<UidLease>) -> io::Result<Self> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = spawn_from_keeper(cmd)?;
        let (Some(requests), Some(replies)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the fork server's pipes were not created"));
        };
        Ok(Server { key, child, requests, replies, pending: Vec::new(), killed: false, _lease: lease })
    }

    /// Run one program. `Err` means the server is unusable and must be dropped.
    pub(crate) fn run(&mut self, program: &str, limits: &SandboxLimits) -> Result<ExecResult, Failure> {
        let start = Instant::now();
        let request = serde_json::json!({
            "program": program,
            "timeout": limits.timeout.as_secs_f64(),
            "cpu": limits.cpu_seconds(),
            "memory": limits.memory,
            // The server, the run's keeper and its init (same uid, same user namespace) count against the limit.
            "nproc": limits.max_processes.saturating_add(3),
            "fsize": limits.max_file_size,
            "max_output": limits.max_output,
        });
        let mut line = serde_json::to_vec(&request).map_err(|e| Failure::NotStarted(e.to_string()))?;
        line.push(b'\n');
        self.requests.write_all(&line).map_err(|e| Failure::NotStarted(format!("sending the program: {e}")))?;
        let deadline = start + limits.timeout + BACKSTOP;
        let head_len = match self.read_until(deadline, |buf| buf.iter().position(|&b| b == b'\n'))? {
            Some(n) => n,
            None => return Ok(backstop_result(limits, start)),
        };
        let head: Head = serde_json::from_slice(&self.pending[..head_len])
            .map_err(|e| Failure::Died(format!("unreadable reply from the fork server: {e}")))?;
        let total = head_len + 1 + head.out + head.err;
        if self.read_until(deadline, |buf| (buf.len() >= total).then_some(total))?.is_none() {
            return Ok(backstop_result(limits, start));
        }
        let body: Vec<u8> = self.pending.drain(..total).skip(head_len + 1).collect();
        if let Some(why) = head.error {
            return Err(Failure::Died(format!("the fork server could not set the run up: {why}")));
        }
        let (out, err) = body.split_at(head.out);
        let stop = match head.stop.as_deref() {
            None => None,
            Some("timeout") => Some(Stop::Timeout),
            Some("stdout") => Some(Stop::OutputLimit("stdout")),
            Some("stderr") => Some(Stop::OutputLimit("stderr")),
            Some(other) => return Err(Failure::Died(format!("unknown stop `{other}` from the fork server"))),
        };
        let cap = limits.max_output;
        let stdout = String::from_utf8_lossy(&out[..out.len().min(cap)]).into_owned();
        let stderr = String::from_utf8_lossy(&err[..err.len().min(cap)]).into_owned();
        let (status, reason) = classify(stop, head.exit_code, head.signal, &stderr, limits);
        Ok(ExecResult {
            status,
            exit_code: head.exit_code,
            signal: head.signal,
            stdout,
            stderr,
            wall_ms: start.elapsed().as_millis() as u64,
            reason,
            isolation: Isolation::Bwrap,
            cached: false,
        })
    }

    /// Read replies into `pending` until `done` finds what it needs (returns `Some(n)`), or the deadline passes
    /// (`Ok(None)`: the server is killed by the caller dropping it... after this result is returned).
    fn read_until(
        &mut self,
        deadline: Instant,
        done: impl Fn(&[u8]) -> Option<usize>,
    ) -> Result<Option<usize>, Failure> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            if let Some(n) = done(&self.pending) {
                return Ok(Some(n));
            }
            let now = Instant::now();
            if now >= deadline {
                // The server hung: kill it now so that the run's processes die with it.
                let _ = self.child.kill();
                self.killed = true;
                return Ok(None);
            }
            let mut fd = libc::pollfd { fd: self.replies.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd on a pipe we own.
            let n = unsafe { libc::poll(&mut fd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::Died(format!("waiting for the fork server: {e}")));
            }
            if n == 0 {
                continue;
            }
            match self.replies.read(&mut chunk) {
                Ok(0) => return Err(Failure::Died("the fork server exited during the run".into())),
                Ok(k) => self.pending.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Died(format!("reading from the fork server: {e}"))),
            }
        }
    }

    /// Whether the server has exited (then it must not be reused).
    pub(crate) fn exited(&mut self) -> bool {
        self.killed || !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // bwrap runs with --die-with-parent: killing it kills the server and, with PID 1 gone, the namespace.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backstop_result(limits: &SandboxLimits, start: Instant) -> ExecResult {
    ExecResult {
        status: super::Status::Timeout,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        wall_ms: start.elapsed().as_millis() as u64,
        reason: Some(format!(
            "wall-clock limit of {} ms reached (the sandbox did not answer within {} ms more and was killed)",
            limits.timeout.as_millis(),
            BACKSTOP.as_millis()
        )),
        isolation: Isolation::Bwrap,
        cached: false,
    }
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawn `cmd` from a dedicated thread that never exits (parent-death signals are tied to the spawning thread).
/// Falls back to spawning here if that thread cannot be started.
fn spawn_from_keeper(cmd: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<Option<Mutex<mpsc::Sender<SpawnJob>>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let thread = std::thread::Builder::new().name("orchard-sandbox-spawner".into()).spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        thread.ok().map(|_| Mutex::new(tx))
    });
    let Some(keeper) = keeper else {
        let mut cmd = cmd;
        return cmd.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the sandbox spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("the sandbox spawner thread is gone"))?
}
