//! [`Rlimits`]: the fallback sandbox when bubblewrap cannot run. See the [module docs](super) for what does not hold.

use super::process::{self, is_root, processes_of, program_dir, sweep_uid, Launch, Limits};
use super::python::{which, PROGRAM_FILE};
use super::slots::Slots;
use super::uid_lease;
use super::{ExecResult, Isolation, Sandbox, SandboxConfig, SandboxInfo, SandboxLimits, Status};
use crate::error::{Error, Result};

/// rlimits + process group + scrubbed environment + private temp dir (+ per-slot uid, network namespace and a uid
/// sweep when running as root).
#[derive(Debug)]
pub struct Rlimits {
    config: SandboxConfig,
    slots: Slots,
    root: bool,
    /// The calling user's uid (for the non-root process count).
    uid: u32,
}

impl Rlimits {
    /// Check that the interpreter runs (one probe run).
    pub fn new(config: SandboxConfig) -> Result<Self> {
        let python = which(&config.python.to_string_lossy())
            .ok_or_else(|| Error::Interpreter { path: config.python.clone(), why: "not found on PATH".into() })?;
        // SAFETY: getuid never fails.
        let uid = unsafe { libc::getuid() };
        let sandbox = Rlimits {
            slots: Slots::new(config.concurrency),
            config: SandboxConfig { python, ..config },
            root: is_root(),
            uid,
        };
        let probe = sandbox.run("import sys; print(sys.version_info[0])", &SandboxLimits::default())?;
        if probe.status != Status::Ok || probe.stdout.trim() != "3" {
            return Err(Error::Interpreter {
                path: sandbox.config.python.clone(),
                why: format!("probe run ended {}: {}", probe.status, probe.stderr.trim()),
            });
        }
        Ok(sandbox)
    }
}

impl Sandbox for Rlimits {
    fn run(&self, program: &str, limits: &SandboxLimits) -> Result<ExecResult> {
        let _slot = self.slots.acquire();
        let lease = if self.root { Some(uid_lease::lease(self.config.uid_base)?) } else { None };
        let run_as = lease.as_ref().map(|l| l.uid);
        let dir = program_dir(program, run_as)?;
        // A dedicated uid counts only this run; the calling user's count includes everything else they run.
        let processes = if self.root { limits.max_processes } else { processes_of(self.uid) + limits.max_processes };
        let home = dir.path().to_string_lossy().into_owned();
        let launch = Launch {
            program: self.config.python.clone(),
            args: limits.python_flags().iter().map(Into::into).chain([PROGRAM_FILE.into()]).collect(),
            cwd: dir.path().to_path_buf(),
            env: process::scrubbed_env(&home),
            limits: Limits::from_limits(limits, Some(processes)),
            run_as,
            new_netns: self.root,
            isolation: Isolation::Rlimits,
            signal_in_exit_code: false,
        };
        let sweep = || {
            if let Some(uid) = run_as {
                sweep_uid(uid);
            }
        };
        process::execute(&launch, limits, &sweep)
    }

    fn info(&self) -> SandboxInfo {
        let mut not_enforced = vec![
            "filesystem isolation: the host filesystem is visible, and writable where the run's uid may write",
            "disk usage: only single files are capped (RLIMIT_FSIZE), not their number",
            "total memory of a run with many processes (RLIMIT_AS is per process)",
        ];
        if !self.root {
            not_enforced.extend([
                "network isolation",
                "processes that leave the process group (setsid) can outlive the deadline",
                "the process limit counts all of the calling user's processes",
                "the program runs as the calling user and can signal that user's processes, Orchard included",
            ]);
        }
        SandboxInfo {
            isolation: Isolation::Rlimits,
            concurrency: self.slots.count(),
            python: self.config.python.clone(),
            not_enforced,
        }
    }
}
