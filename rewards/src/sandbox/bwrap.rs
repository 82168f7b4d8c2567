//! [`Bwrap`]: runs each program under bubblewrap, on top of the rlimits of [`process`](super::process).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{self, is_root, program_dir, Launch, Limits};
use super::python::{which, PROGRAM_FILE};
use super::slots::Slots;
use super::uid_lease;
use super::{ExecResult, Isolation, Sandbox, SandboxConfig, SandboxInfo, SandboxPolicy, Status};
use crate::error::{Error, Result};

/// Directories replaced by empty ones inside the sandbox: home directories (keys, tokens, shell history) and
/// `/run` (sockets of the container runtime, systemd, user sessions).
pub const HIDDEN_DIRS: [&str; 3] = ["/root", "/home", "/run"];

/// Size of `/dev/shm` inside the sandbox (enough for multiprocessing's semaphores).
const SHM_SIZE: u64 = 8 << 20;

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
}

impl Bwrap {
    /// Find `bwrap`, check that it can create namespaces here and that the interpreter runs inside (one probe run).
    pub fn new(config: SandboxConfig) -> Result<Self> {
        let unavailable = |why: String| Error::SandboxUnavailable { kind: "bwrap", why };
        let bwrap = which(&config.bwrap.to_string_lossy())
            .filter(|p| p.is_file())
            .ok_or_else(|| unavailable(format!("`{}` not found on PATH", config.bwrap.display())))?;
        let help = Command::new(&bwrap)
            .arg("--help")
            .output()
            .map_err(|e| unavailable(format!("cannot run {}: {e}", bwrap.display())))?;
        let tmpfs_size = String::from_utf8_lossy(&help.stdout).contains("--size");
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
        };
        let probe = sandbox.run("import sys; print(sys.version_info[0])", &SandboxPolicy::default())?;
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

    fn args(&self, policy: &SandboxPolicy, dir: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(48);
        push(&mut a, &["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]);
        push(&mut a, &["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--ro-bind", "/", "/"]);
        for hidden in HIDDEN_DIRS {
            let p = Path::new(hidden);
            if p.is_dir() && !p.is_symlink() {
                push(&mut a, &["--tmpfs", hidden]);
            }
        }
        for keep in &self.reexpose {
            a.extend(["--ro-bind".into(), keep.clone().into_os_string(), keep.clone().into_os_string()]);
        }
        let shm = SHM_SIZE.to_string();
        let tmp = policy.max_file_size.to_string();
        // /dev is the host's, read-only (from the `/` bind above): device nodes work per their permissions, nothing
        // can be created there, and the sandbox holds no capabilities. A fresh `--dev /dev` (a tmpfs with copies of
        // the basic nodes) would cost ~3 ms per run, a fifth of a whole run.
        if self.tmpfs_size {
            push(&mut a, &["--size", &shm]);
        }
        push(&mut a, &["--tmpfs", "/dev/shm", "--proc", "/proc"]);
        if self.tmpfs_size {
            push(&mut a, &["--size", &tmp]);
        }
        push(&mut a, &["--tmpfs", "/tmp"]);
        a.push("--ro-bind".into());
        a.push(dir.join(PROGRAM_FILE).into_os_string());
        a.push(format!("/tmp/{PROGRAM_FILE}").into());
        push(&mut a, &["--chdir", "/tmp", "--"]);
        a.push(self.config.python.clone().into_os_string());
        a.extend(policy.python_flags().iter().map(OsString::from));
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
                    n = policy.max_processes + 1
                )
                .into(),
            );
        }
        a
    }
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

/// If the interpreter lives under a hidden directory (a pyenv under `/root`), the installation prefix to bind back
/// read-only: the parent of its `bin/`.
fn python_prefix_under_hidden(python: &Path) -> Option<PathBuf> {
    let hidden = HIDDEN_DIRS.iter().any(|h| python.starts_with(h));
    let prefix = python.parent()?.parent()?;
    (hidden && prefix.components().count() > 2).then(|| prefix.to_path_buf())
}

impl Sandbox for Bwrap {
    fn run(&self, program: &str, policy: &SandboxPolicy) -> Result<ExecResult> {
        let _slot = self.slots.acquire();
        let lease = if self.root { Some(uid_lease::lease(self.config.uid_base)?) } else { None };
        let run_as = lease.as_ref().map(|l| l.uid);
        let dir = program_dir(program, run_as)?;
        // As root the limit is set before bwrap and counts the outer bwrap and its init too (2 processes).
        let processes = self.root.then_some(policy.max_processes + 2);
        let launch = Launch {
            program: self.bwrap.clone(),
            args: self.args(policy, dir.path()),
            cwd: dir.path().to_path_buf(),
            env: process::scrubbed_env("/tmp"),
            limits: Limits::from_policy(policy, processes),
            run_as,
            new_netns: false,
            isolation: Isolation::Bwrap,
            signal_in_exit_code: true,
        };
        let result = process::execute(&launch, policy, &|| {})?;
        // bwrap's own failures (before the interpreter starts) are the sandbox's, not the program's.
        if result.exit_code == Some(1) && result.stdout.is_empty() && result.stderr.starts_with("bwrap: ") {
            return Err(Error::io("starting bubblewrap", std::io::Error::other(result.stderr.trim().to_string())));
        }
        Ok(result)
    }

    fn info(&self) -> SandboxInfo {
        let mut not_enforced = vec!["total memory of a run with many processes (RLIMIT_AS is per process)"];
        if !self.tmpfs_size {
            not_enforced.push("size of the private /tmp (bwrap older than 0.7 has no --size)");
        }
        SandboxInfo {
            isolation: Isolation::Bwrap,
            concurrency: self.slots.count(),
            python: self.config.python.clone(),
            not_enforced,
        }
    }
}
