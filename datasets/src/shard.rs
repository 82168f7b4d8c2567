//! Deterministic task sharding (`--shard i/n`) and per-task seeds, both from SHA-256 of the task id.
//!
//! **The hash:** the first 8 bytes of SHA-256(UTF-8 task id), read as a big-endian `u64`. SHA-256 is specified
//! (FIPS 180-4), so the partition is the same on every platform, Rust version and Orchard version — unlike std's
//! `DefaultHasher`, whose output may change between releases. Task `t` belongs to shard `hash(t) mod n`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// `u64` from the first 8 bytes (big-endian) of SHA-256 over `parts`, concatenated.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The stable hash of a task id that sharding uses.
pub fn task_hash(task_id: &str) -> u64 {
    stable_hash(&[task_id.as_bytes()])
}

/// The RNG seed of a task's samples: the stable hash of (the job seed as 8 little-endian bytes, the task id).
///
/// Seeds depend on the task, not on its position in the run, so a resumed or sharded run draws the same samples
/// for a task as an uninterrupted one (as far as the engine is deterministic for a given seed).
pub fn task_seed(seed: u64, task_id: &str) -> u64 {
    stable_hash(&[&seed.to_le_bytes(), task_id.as_bytes()])
}

/// One of `count` disjoint parts of a task list: `--shard index/count`. The default `0/1` holds every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Shard `index` of `count`; fails unless `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::Shard { spec: format!("{index}/{count}") });
        }
        Ok(Shard { index, count })
    }

    /// 0-based index.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Number of shards.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether this is the whole task list (`0/1`).
    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// Whether `task_id` belongs to this shard.
    pub fn contains(self, task_id: &str) -> bool {
        self.count == 1 || task_hash(task_id) % u64::from(self.count) == u64::from(self.index)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Shard { spec: s.to_string() };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        Shard::new(i, n).map_err(|_| bad())
    }
}

impl TryFrom<String> for Shard {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Shard> for String {
    fn from(s: Shard) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hash_is_pinned_across_versions_and_platforms() {
        // import hashlib, struct
        // h = lambda b: int.from_bytes(hashlib.sha256(b).digest()[:8], "big")
        // h(b"gsm8k/train/0"), h(b"svamp/test/chal-1"), h(struct.pack("<Q", 42) + b"gsm8k/train/0")
        assert_eq!(task_hash("gsm8k/train/0"), 0x990a_8ed6_8fa2_22f9);
        assert_eq!(task_hash("svamp/test/chal-1"), 0x2e68_347a_e027_fe37);
        assert_eq!(task_seed(42, "gsm8k/train/0"), 0x6518_bae3_52fa_5e22);
        // 0x990a8ed68fa222f9 % 4 == 1, 0x2e68347ae027fe37 % 7 == 6
        assert!(Shard::new(1, 4).unwrap().contains("gsm8k/train/0"));
        assert!(Shard::new(6, 7).unwrap().contains("svamp/test/chal-1"));
    }

    #[test]
    fn shard_specs_parse_and_reject_out_of_range() {
        assert_eq!("2/5".parse::<Shard>().unwrap(), Shard::new(2, 5).unwrap());
        for bad in ["5/5", "1/0", "x/2", "3", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&Shard::new(1, 3).unwrap()).unwrap();
        assert_eq!(json, "\"1/3\"");
        assert_eq!(serde_json::from_str::<Shard>(&json).unwrap(), Shard::new(1, 3).unwrap());
    }

    proptest! {
        #[test]
        fn every_task_is_in_exactly_one_shard(ids in proptest::collection::vec("[a-z0-9/]{1,20}", 1..50), n in 1u32..9) {
            for id in &ids {
                let owners = (0..n).filter(|&i| Shard::new(i, n).unwrap().contains(id)).count();
                prop_assert_eq!(owners, 1);
            }
        }
    }
}
