//! [`RunReader`]: read a run directory's committed rows (for merge, export, trainers and tests).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::journal::{Journal, JournalEntry, JOURNAL_FILE};
use super::manifest::Manifest;
use crate::error::Result;
use crate::part;
use crate::record::{PreferencePair, Record, Trajectory, TreeNode};

/// A run directory opened for reading. Only committed parts (named by the journal) are read, so a run that is being
/// written, or was killed, reads consistently; no lock is taken.
#[derive(Debug, Clone)]
pub struct RunReader {
    path: PathBuf,
    manifest: Manifest,
    entries: Vec<JournalEntry>,
}

impl RunReader {
    /// Open the run at `path`.
    pub fn open(path: &Path) -> Result<RunReader> {
        let manifest = Manifest::read(path)?;
        let entries = Journal::read(&path.join(JOURNAL_FILE))?;
        Ok(RunReader { path: path.to_path_buf(), manifest, entries })
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its committed journal entries.
    pub fn entries(&self) -> &[JournalEntry] {
        &self.entries
    }

    /// Every committed task id.
    pub fn task_ids(&self) -> HashSet<&str> {
        self.entries.iter().flat_map(|e| e.tasks.iter().map(String::as_str)).collect()
    }

    /// The committed part files of record `R`, in commit order.
    pub fn parts<R: Record>(&self) -> Vec<PathBuf> {
        let prefix = format!("{}/", R::NAME);
        self.entries
            .iter()
            .flat_map(|e| e.files.iter())
            .filter(|f| f.starts_with(&prefix))
            .map(|f| self.path.join(f))
            .collect()
    }

    /// Call `f` with the rows of each committed part of `R` in turn (bounded memory for large runs).
    pub fn for_each_part<R: Record>(&self, mut f: impl FnMut(Vec<R>) -> Result<()>) -> Result<()> {
        for file in self.parts::<R>() {
            f(part::read_file::<R>(&file)?)?;
        }
        Ok(())
    }

    /// All committed rows of `R`.
    pub fn read_all<R: Record>(&self) -> Result<Vec<R>> {
        let mut out = Vec::new();
        self.for_each_part::<R>(|rows| {
            out.extend(rows);
            Ok(())
        })?;
        Ok(out)
    }

    /// All trajectories.
    pub fn trajectories(&self) -> Result<Vec<Trajectory>> {
        self.read_all()
    }

    /// All pairs.
    pub fn pairs(&self) -> Result<Vec<PreferencePair>> {
        self.read_all()
    }

    /// All tree nodes.
    pub fn nodes(&self) -> Result<Vec<TreeNode>> {
        self.read_all()
    }
}
