//! Leasing a dedicated uid per run when Orchard runs as root.
//!
//! Two concurrent runs must never share a uid: RLIMIT_NPROC is counted per uid, and the fallback's clean-up
//! (`kill(-1)` as the run's uid) would kill the other run. Runs of *different* Orchard processes (parallel test
//! binaries, two jobs on one host) must not either, so leases are `flock(2)` locks on one file per uid in a
//! root-owned directory; the kernel drops a lease when its holder dies.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// How many uids above the base may be leased at once (across all Orchard processes on the host).
pub const UID_RANGE: u32 = 1024;

/// A leased uid; released on drop.
#[derive(Debug)]
pub(crate) struct UidLease {
    pub(crate) uid: u32,
    _lock: File,
}

fn lock_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("orchard-sandbox-uids");
    match std::fs::symlink_metadata(&dir) {
        Ok(m) => {
            // Refuse a directory someone else could have planted (it decides which uids look free).
            if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
                return Err(Error::io(
                    "checking the uid lease directory",
                    std::io::Error::other(format!("{} is not a root-owned private directory", dir.display())),
                ));
            }
        }
        Err(_) => {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating the uid lease directory", e))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("securing the uid lease directory", e))?;
        }
    }
    Ok(dir)
}

/// Where the next lease search starts. Leases go round-robin rather than lowest-free: the processes of a finished
/// run may still be exiting (and still count against RLIMIT_NPROC of their uid) for a moment after its lease ends.
/// Each Orchard process starts at an offset from its pid so that concurrent processes rarely probe the same files.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// Lease a free uid in `base .. base + UID_RANGE`, round-robin.
pub(crate) fn lease(base: u32) -> Result<UidLease> {
    let dir = lock_dir()?;
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id() % UID_RANGE, Ordering::Relaxed, Ordering::Relaxed);
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    for k in 0..UID_RANGE {
        let uid = base + (start.wrapping_add(k) % UID_RANGE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(uid.to_string()))
            .map_err(|e| Error::io("opening a uid lease file", e))?;
        // SAFETY: flock on an fd we own; LOCK_NB makes it fail instead of blocking when the uid is in use.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(UidLease { uid, _lock: file });
        }
    }
    Err(Error::io(
        "leasing a sandbox uid",
        std::io::Error::other(format!("all {UID_RANGE} uids from {base} are in use")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_leases_get_distinct_uids() -> anyhow::Result<()> {
        if !super::super::process::is_root() {
            return Ok(());
        }
        let base = super::super::DEFAULT_UID_BASE;
        let held: Vec<UidLease> = (0..8).map(|_| lease(base)).collect::<Result<_>>()?;
        let mut uids: Vec<u32> = held.iter().map(|l| l.uid).collect();
        uids.sort_unstable();
        uids.dedup();
        assert_eq!(uids.len(), 8);
        assert!(uids.iter().all(|u| (base..base + UID_RANGE).contains(u)));
        Ok(())
    }
}
