//! `journal.jsonl`: the commit log of a run. One line per committed group of tasks, appended (and fsynced) only
//! after that group's part files have been renamed into place. A line is the commit point: tasks in it are done;
//! part files not named by any line are leftovers of an interrupted commit and are deleted on resume.
//!
//! A kill can leave at most one torn line, at the end, without its newline; it was never committed, so opening the
//! journal for writing truncates it (readers skip it). A malformed line *before* the end is corruption and an error.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{Counts, Timings};
use crate::error::{Error, IoContext, Result};

/// The journal's file name in a run directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// One committed group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Commit sequence number (part files carry it in their names).
    pub seq: u64,
    /// Part files of this commit, relative to the run directory (`pairs/part-0000-000003.parquet`).
    pub files: Vec<String>,
    /// Task ids completed by this commit.
    pub tasks: Vec<String>,
    /// Rows in this commit.
    pub counts: Counts,
    /// Seconds spent per phase since the previous commit.
    #[serde(default)]
    pub timings: Timings,
}

/// An open journal, for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: Vec<JournalEntry>,
}

impl Journal {
    /// Open (creating it if missing), truncate a torn last line, and parse every entry.
    pub fn open(path: &Path) -> Result<Journal> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).at(path)?;
        let bytes = std::fs::read(path).at(path)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::info!("{}: dropping a torn last entry ({} bytes)", path.display(), bytes.len() - complete);
            file.set_len(complete as u64).at(path)?;
            file.sync_all().at(path)?;
        }
        let entries = parse(path, &bytes[..complete])?;
        file.flush().at(path)?;
        Ok(Journal { path: path.to_path_buf(), file, entries })
    }

    /// Read the committed entries without modifying the file (a torn last line is ignored).
    pub fn read(path: &Path) -> Result<Vec<JournalEntry>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(path),
        };
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        parse(path, &bytes[..complete])
    }

    /// Append one entry as a single write of one line, then fsync: after this returns, the entry is committed.
    pub fn append(&mut self, entry: JournalEntry) -> Result<()> {
        let mut line = serde_json::to_string(&entry).map_err(|e| Error::json(&self.path, e))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        self.entries.push(entry);
        Ok(())
    }

    /// The committed entries, in order.
    pub fn entries(&self) -> &[JournalEntry] {
        &self.entries
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<JournalEntry>> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Journal {
        path: path.to_path_buf(),
        line: 0,
        reason: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Journal {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}
