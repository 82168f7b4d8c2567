//! Long-lived Python worker processes for [`PythonReward`](super::PythonReward): how one is started, one call with a
//! deadline, and a bounded pool that replaces workers that died or were killed.
//!
//! Workers are spawned by one thread the pool owns, because the parent-death signal a sandboxed child gets (and
//! bubblewrap's `--die-with-parent`) fires when the spawning *thread* exits: spawned from a short-lived scoped
//! thread, a worker would die with it. When the pool (and so that thread) goes, every worker is killed.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::sandbox::{child_setup, Limits};

/// How much of a worker's stderr is kept for the message when it dies.
const STDERR_TAIL: usize = 4 << 10;

/// How to start one worker.
#[derive(Debug, Clone)]
pub(super) struct Launcher {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// rlimits and an own session (setsid) set before `exec`; `None`: only an own process group.
    pub limits: Option<Limits>,
}

impl Launcher {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).current_dir(&self.cwd).env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        match self.limits {
            Some(limits) => {
                // SAFETY: child_setup makes only async-signal-safe system calls (setsid, setrlimit, prctl).
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || child_setup(limits, None, false));
                }
            }
            None => {
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
        }
        cmd
    }
}

/// The first line a worker writes: whether the file imported and the function exists.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Hello {
    pub ready: bool,
    #[serde(default)]
    pub style: Option<String>,
    #[serde(default)]
    pub functions: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub missing: Option<String>,
    #[serde(default)]
    pub python: Option<String>,
}

/// Why a call gave no answer. The worker is gone (killed) after either.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Failure {
    /// No answer within the deadline; the worker was killed.
    Timeout(Duration),
    /// The worker exited (or could not start); what it said last on stderr.
    Exited(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(d) => write!(f, "timed out after {:.1} s (the worker was killed)", d.as_secs_f64()),
            Failure::Exited(why) => write!(f, "the worker process died during the call: {why}"),
        }
    }
}

/// One running worker: its stdin, a channel of its stdout lines, the tail of its stderr.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<io::Result<String>>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
}

impl Worker {
    fn new(mut child: Child) -> io::Result<Worker> {
        let missing = || io::Error::other("worker pipes missing");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let mut stderr_pipe = child.stderr.take().ok_or_else(missing)?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let tail = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut chunk) {
                let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
                t.extend(&chunk[..n]);
                let excess = t.len().saturating_sub(STDERR_TAIL);
                t.drain(..excess);
            }
        });
        Ok(Worker { child, stdin, lines, stderr })
    }

    /// The next protocol line within `timeout`.
    fn read_line(&mut self, timeout: Duration) -> Result<String, Failure> {
        match self.lines.recv_timeout(timeout) {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => Err(Failure::Exited(format!("reading its answer: {e}"))),
            Err(RecvTimeoutError::Timeout) => Err(Failure::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(Failure::Exited(self.death())),
        }
    }

    /// Send one request line and wait for the answer line.
    fn call(&mut self, request: &str, timeout: Duration) -> Result<String, Failure> {
        let sent = self.stdin.write_all(request.as_bytes()).and_then(|()| self.stdin.write_all(b"\n"));
        if sent.and_then(|()| self.stdin.flush()).is_err() {
            return Err(Failure::Exited(self.death()));
        }
        self.read_line(timeout)
    }

    /// How the worker ended: exit status and the end of its stderr.
    fn death(&mut self) -> String {
        // The stdout reader sees EOF a moment before the process is reaped.
        let mut status = None;
        for _ in 0..50 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(5));
        let tail = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes: Vec<u8> = tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        let how = match status {
            Some(s) => describe_status(s),
            None => "it closed its output".to_string(),
        };
        if text.is_empty() {
            how
        } else {
            format!("{how}; its stderr ended with:\n{text}")
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("it exited with status {c}"),
        (None, Some(sig)) => format!("it was killed by signal {sig}"),
        _ => "it ended".to_string(),
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Its own process group (setsid / process_group(0)): kill everything it started.
        // SAFETY: plain kill(2) on the group the child leads.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

type SpawnRequest = (Command, Sender<io::Result<Child>>);

/// A bounded set of workers; callers wait when all are busy.
pub(super) struct Pool {
    launcher: Launcher,
    max: usize,
    startup: Duration,
    state: Mutex<State>,
    freed: Condvar,
    spawner: Mutex<Sender<SpawnRequest>>,
}

struct State {
    idle: Vec<Worker>,
    live: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("launcher", &self.launcher).field("max", &self.max).finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of at most `max` workers; starts the first one and returns what it said (import errors, a missing
    /// function), so that a bad reward file is reported before any job starts.
    pub fn start(launcher: Launcher, max: usize, startup: Duration) -> io::Result<(Pool, Result<Hello, String>)> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new().name("orchard-pyreward-spawner".into()).spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
        let pool = Pool {
            launcher,
            max: max.max(1),
            startup,
            state: Mutex::new(State { idle: Vec::new(), live: 0 }),
            freed: Condvar::new(),
            spawner: Mutex::new(tx),
        };
        let hello = match pool.spawn() {
            Ok((worker, hello)) => {
                if hello.ready {
                    let mut st = pool.lock();
                    st.live += 1;
                    st.idle.push(worker);
                }
                Ok(hello)
            }
            Err(f) => Err(f.to_string()),
        };
        Ok((pool, hello))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&self) -> Result<(Worker, Hello), Failure> {
        let (reply, answer) = mpsc::channel();
        let sent = self.spawner.lock().unwrap_or_else(PoisonError::into_inner).send((self.launcher.command(), reply));
        let child = sent
            .ok()
            .and_then(|()| answer.recv().ok())
            .ok_or_else(|| Failure::Exited("the spawner thread is gone".into()))?
            .map_err(|e| Failure::Exited(format!("cannot start {}: {e}", self.launcher.program.display())))?;
        let mut worker = Worker::new(child).map_err(|e| Failure::Exited(e.to_string()))?;
        let line = worker.read_line(self.startup)?;
        let hello: Hello = serde_json::from_str(&line)
            .map_err(|e| Failure::Exited(format!("unexpected first line from the worker ({e}): {line}")))?;
        Ok((worker, hello))
    }

    /// One request on an idle (or new) worker. A worker that failed is dropped (killed) and replaced later.
    pub fn call(&self, request: &str, timeout: Duration) -> Result<String, Failure> {
        let mut worker = self.acquire()?;
        let result = worker.call(request, timeout);
        let mut st = self.lock();
        if result.is_ok() && worker.alive() {
            st.idle.push(worker);
        } else {
            st.live -= 1;
            drop(st);
            drop(worker);
        }
        self.freed.notify_one();
        result
    }

    fn acquire(&self) -> Result<Worker, Failure> {
        let mut st = self.lock();
        loop {
            if let Some(w) = st.idle.pop() {
                return Ok(w);
            }
            if st.live < self.max {
                st.live += 1;
                drop(st);
                return match self.spawn() {
                    Ok((w, hello)) if hello.ready => Ok(w),
                    other => {
                        self.lock().live -= 1;
                        self.freed.notify_one();
                        Err(match other {
                            Err(f) => f,
                            Ok(_) => Failure::Exited("a new worker could not import the reward file".into()),
                        })
                    }
                };
            }
            st = self.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}
