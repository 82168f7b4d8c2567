//! Spawning one sandboxed process and supervising it: rlimits and identity set between `fork` and `exec`, output
//! read from both pipes as it comes (capped), a wall-clock deadline, and the whole process group killed at the end.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::python::{failure_reason, is_memory_error};
use super::{ExecResult, Isolation, SandboxLimits, Status};
use crate::error::{Error, Result};
use crate::units::format_size;

/// After the main process exits and the group is killed, how long to keep reading what is left in the pipes.
/// Bounded because, without a PID namespace, a process that escaped the group may keep a pipe open.
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Limits applied with `setrlimit` in the child before `exec`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub address_space: u64,
    pub cpu_seconds: u64,
    /// `None`: not set here (set inside the namespace instead, or not at all).
    pub processes: Option<u64>,
    pub file_size: u64,
}

impl Limits {
    pub(crate) fn from_limits(limits: &SandboxLimits, processes: Option<u64>) -> Self {
        Limits {
            address_space: limits.memory,
            cpu_seconds: limits.cpu_seconds(),
            processes,
            file_size: limits.max_file_size,
        }
    }

    /// No limits (`RLIM_INFINITY`): for a fork server, whose runs lower their own.
    pub(crate) fn unlimited() -> Self {
        let inf = u64::MAX; // RLIM_INFINITY
        Limits { address_space: inf, cpu_seconds: inf, processes: None, file_size: inf }
    }
}

/// One process to start.
#[derive(Debug)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub limits: Limits,
    /// Switch to this uid (and gid) before `exec`; only possible as root.
    pub run_as: Option<u32>,
    /// `unshare(CLONE_NEWNET)` before `exec`; only possible as root.
    pub new_netns: bool,
    pub isolation: Isolation,
    /// bwrap reports a child killed by signal N as exit status 128 + N.
    pub signal_in_exit_code: bool,
}

/// Why supervision stopped before the process ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Timeout,
    OutputLimit(&'static str),
}

/// Run `launch` under `limits`; `after_kill` runs once the process group has been killed (the root fallback
/// sweeps its uid there).
pub(crate) fn execute(launch: &Launch, limits: &SandboxLimits, after_kill: &dyn Fn()) -> Result<ExecResult> {
    let mut cmd = command(launch);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| Error::io("spawning the sandboxed process", e))?;
    let supervised = supervise(&mut child, start, limits);
    // Kill the whole group: leftovers after a normal exit, everything after a timeout or output overflow.
    // SAFETY: plain kill(2) on the group the child created with setsid (pgid == pid).
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    after_kill();
    let (mut out, mut err, stop) = match supervised {
        Ok(s) => s,
        Err(e) => {
            let _ = child.wait();
            return Err(e);
        }
    };
    let status = child.wait().map_err(|e| Error::io("waiting for the sandboxed process", e))?;
    let wall_ms = start.elapsed().as_millis() as u64;
    out.truncate(limits.max_output);
    err.truncate(limits.max_output);
    let stdout = String::from_utf8_lossy(&out).into_owned();
    let stderr = String::from_utf8_lossy(&err).into_owned();
    let (exit_code, signal) = decode_status(status, launch.signal_in_exit_code);
    let (status, reason) = classify(stop, exit_code, signal, &stderr, limits);
    Ok(ExecResult {
        status,
        exit_code,
        signal,
        stdout,
        stderr,
        wall_ms,
        reason,
        isolation: launch.isolation,
        cached: false,
    })
}

/// The command for `launch`: arguments, working directory, scrubbed environment, and the child set-up (own
/// session, rlimits, identity, parent-death signal) between `fork` and `exec`. Standard streams are the caller's.
pub(crate) fn command(launch: &Launch) -> Command {
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args).current_dir(&launch.cwd).env_clear().envs(launch.env.iter().map(|(k, v)| (*k, v.as_str())));
    let limits = launch.limits;
    let run_as = launch.run_as;
    let new_netns = launch.new_netns;
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe system calls
    // (no allocation, no locks): setsid, unshare, setrlimit, setgroups, setgid, setuid, prctl.
    unsafe {
        cmd.pre_exec(move || child_setup(limits, run_as, new_netns));
    }
    cmd
}

/// The child's set-up between `fork` and `exec`: own session, rlimits, identity, parent-death signal (tied to the
/// spawning *thread*). Async-signal-safe system calls only.
pub(crate) fn child_setup(limits: Limits, run_as: Option<u32>, new_netns: bool) -> io::Result<()> {
    // SAFETY: async-signal-safe system calls only; arguments are plain integers and null pointers.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if new_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(io::Error::last_os_error());
        }
        set_limit(libc::RLIMIT_AS, limits.address_space, limits.address_space)?;
        set_limit(libc::RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds.saturating_add(1))?;
        set_limit(libc::RLIMIT_FSIZE, limits.file_size, limits.file_size)?;
        set_limit(libc::RLIMIT_CORE, 0, 0)?;
        if let Some(n) = limits.processes {
            set_limit(libc::RLIMIT_NPROC, n, n)?;
        }
        if let Some(uid) = run_as {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid as libc::gid_t) != 0
                || libc::setuid(uid as libc::uid_t) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // Die with the spawning thread (set after setuid, which clears it).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

unsafe fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: the caller is in pre_exec; setrlimit with a valid pointer to a stack value.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

type Captured = (Vec<u8>, Vec<u8>, Option<Stop>);

/// Read both pipes until the process exits, the deadline passes or output passes the cap.
fn supervise(child: &mut Child, start: Instant, limits: &SandboxLimits) -> Result<Captured> {
    let deadline = start + limits.timeout;
    let pidfd = pidfd_open(child.id());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [stdout.as_ref().map(AsRawFd::as_raw_fd), stderr.as_ref().map(AsRawFd::as_raw_fd)].into_iter().flatten() {
        set_nonblocking(fd).map_err(|e| Error::io("configuring output pipes", e))?;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let cap = limits.max_output;
    let mut stop = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            stop = Some(Stop::Timeout);
            break;
        }
        // Without a pidfd the exit is noticed by polling every 5 ms.
        let tick = if pidfd.is_some() { deadline - now } else { (deadline - now).min(Duration::from_millis(5)) };
        let exited = wait_ready(&mut stdout, &mut stderr, pidfd.as_ref(), tick, &mut out, &mut err)?;
        if out.len() > cap {
            stop = Some(Stop::OutputLimit("stdout"));
            break;
        }
        if err.len() > cap {
            stop = Some(Stop::OutputLimit("stderr"));
            break;
        }
        let exited =
            exited || (pidfd.is_none() && child.try_wait().map_err(|e| Error::io("polling the process", e))?.is_some());
        if exited {
            break;
        }
    }
    if stop.is_none() {
        // The main process is gone; the caller kills the group. Collect what is still buffered in the pipes.
        let grace_end = Instant::now() + DRAIN_GRACE;
        while stdout.is_some() || stderr.is_some() {
            let now = Instant::now();
            if now >= grace_end || out.len() > cap || err.len() > cap {
                break;
            }
            wait_ready(&mut stdout, &mut stderr, None, grace_end - now, &mut out, &mut err)?;
        }
        if out.len() > cap {
            stop = Some(Stop::OutputLimit("stdout"));
        } else if err.len() > cap {
            stop = Some(Stop::OutputLimit("stderr"));
        }
    }
    Ok((out, err, stop))
}

/// poll(2) the open pipes (and the pidfd) for up to `timeout`, then read what is ready. Returns whether the pidfd
/// reported the exit. A pipe that reaches EOF is closed (set to `None`).
fn wait_ready<R: Read + AsRawFd>(
    stdout: &mut Option<R>,
    stderr: &mut Option<impl Read + AsRawFd>,
    pidfd: Option<&OwnedFd>,
    timeout: Duration,
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
) -> Result<bool> {
    let mut fds: [libc::pollfd; 3] = [libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }; 3];
    if let Some(s) = stdout.as_ref() {
        fds[0].fd = s.as_raw_fd();
    }
    if let Some(s) = stderr.as_ref() {
        fds[1].fd = s.as_raw_fd();
    }
    if let Some(p) = pidfd {
        fds[2].fd = p.as_raw_fd();
    }
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
    // SAFETY: fds is a valid array of 3 pollfd; negative fds are ignored by poll.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::io("polling output pipes", e));
    }
    if fds[0].revents != 0 && drain(stdout, out)? {
        *stdout = None;
    }
    if fds[1].revents != 0 && drain(stderr, err)? {
        *stderr = None;
    }
    Ok(fds[2].fd >= 0 && fds[2].revents != 0)
}

/// Read everything available without blocking; returns true at EOF. Stops reading a little past the point where
/// the caller's cap will trip, so an endless writer cannot grow the buffer.
fn drain<R: Read>(pipe: &mut Option<R>, buf: &mut Vec<u8>) -> Result<bool> {
    let Some(p) = pipe.as_mut() else {
        return Ok(true);
    };
    let mut chunk = [0u8; 16 << 10];
    loop {
        match p.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > (64 << 20) {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading process output", e)),
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a pipe fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A pidfd for the child (Linux ≥ 5.3), readable when it exits; `None` where unsupported.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with a pid we own and no flags; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn decode_status(status: std::process::ExitStatus, signal_in_exit_code: bool) -> (Option<i32>, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) if signal_in_exit_code && (129..=128 + 64).contains(&code) => (None, Some(code - 128)),
        (code, signal) => (code, signal),
    }
}

pub(crate) fn classify(
    stop: Option<Stop>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    stderr: &str,
    limits: &SandboxLimits,
) -> (Status, Option<String>) {
    match stop {
        Some(Stop::Timeout) => {
            return (Status::Timeout, Some(format!("wall-clock limit of {} ms reached", limits.timeout.as_millis())))
        }
        Some(Stop::OutputLimit(stream)) => {
            let cap = format_size(limits.max_output as u64);
            return (Status::OutputLimit, Some(format!("{stream} passed the output cap of {cap}")));
        }
        None => {}
    }
    if signal == Some(libc::SIGXCPU) {
        return (Status::Timeout, Some(format!("CPU time limit of {} s reached", limits.cpu_seconds())));
    }
    if exit_code == Some(0) {
        return (Status::Ok, None);
    }
    if is_memory_error(stderr) {
        let why = failure_reason(stderr).unwrap_or_else(|| "MemoryError".into());
        return (Status::Memory, Some(format!("memory limit of {} reached: {why}", format_size(limits.memory))));
    }
    match (exit_code, signal) {
        (_, Some(sig)) => (Status::Killed, Some(format!("killed by signal {sig} ({})", signal_name(sig)))),
        (Some(code), None) => {
            let why = failure_reason(stderr)
                .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string()));
            (Status::Error, Some(why.unwrap_or_else(|| format!("exit status {code}"))))
        }
        (None, None) => (Status::Killed, Some("ended without exit status or signal".into())),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// Kill every process owned by `uid` (as that uid, `kill(-1, SIGKILL)` reaches exactly its own processes). Used by
/// the root fallback to catch processes that left the process group. Only meaningful for a dedicated uid.
pub(crate) fn sweep_uid(uid: u32) {
    // SAFETY: fork in a possibly multi-threaded process; the child only makes async-signal-safe system calls
    // (setgroups, setgid, setuid, kill, _exit) and never returns into Rust code.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(uid as libc::gid_t) == 0
                && libc::setuid(uid as libc::uid_t) == 0
            {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

/// Whether this process runs as root (then sandbox slots switch to dedicated uids).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

/// The scrubbed environment every run gets: nothing from the host but a fixed `PATH` and UTF-8 locale.
pub(crate) fn scrubbed_env(home: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("HOME", home.to_string()),
        ("TMPDIR", home.to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("LC_ALL", "C.UTF-8".to_string()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
        ("PYTHONHASHSEED", "0".to_string()),
    ]
}

/// Number of processes owned by `uid` right now (scan of `/proc`); used by the non-root fallback, where
/// RLIMIT_NPROC counts all of the user's processes.
pub(crate) fn processes_of(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .count() as u64
}

/// A fresh private directory holding the program as [`PROGRAM_FILE`](super::python::PROGRAM_FILE), owned by
/// `owner` when running as root (so that a dropped uid can read it, and write beside it in the fallback).
pub(crate) fn program_dir(program: &str, owner: Option<u32>) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("orchard-run-")
        .tempdir()
        .map_err(|e| Error::io("creating the run's temporary directory", e))?;
    let file = dir.path().join(super::python::PROGRAM_FILE);
    std::fs::write(&file, program).map_err(|e| Error::io("writing the program file", e))?;
    if let Some(uid) = owner {
        for p in [dir.path(), file.as_path()] {
            std::os::unix::fs::chown(p, Some(uid), Some(uid))
                .map_err(|e| Error::io("handing the run directory to the sandbox uid", e))?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwrap_signal_exit_codes_decode_to_signals() {
        let st = std::process::ExitStatus::from_raw(139 << 8);
        assert_eq!(decode_status(st, true), (None, Some(11)));
        assert_eq!(decode_status(st, false), (Some(139), None));
        let st = std::process::ExitStatus::from_raw(3 << 8);
        assert_eq!(decode_status(st, true), (Some(3), None));
    }

    #[test]
    fn classification_prefers_limits_over_exit_codes() {
        let p = SandboxLimits::default();
        assert_eq!(classify(Some(Stop::Timeout), None, Some(9), "", &p).0, Status::Timeout);
        assert_eq!(classify(None, None, Some(libc::SIGXCPU), "", &p).0, Status::Timeout);
        assert_eq!(
            classify(None, Some(1), None, "Traceback (most recent call last):\nMemoryError\n", &p).0,
            Status::Memory
        );
        assert_eq!(classify(None, Some(1), None, "boom\n", &p), (Status::Error, Some("boom".into())));
        assert_eq!(classify(None, None, Some(11), "", &p).0, Status::Killed);
        assert_eq!(classify(None, Some(0), None, "", &p), (Status::Ok, None));
    }
}
