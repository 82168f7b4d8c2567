//! Records Orchard writes, each with its Arrow schema defined once beside the struct, field names as consts, a typed
//! row builder (`append(&Row)`, `finish() -> StructArray`) and a reader (`from_batch`).
//!
//! | record | file dir | written by |
//! |---|---|---|
//! | [`Trajectory`] | `trajectories/` | every sampling job, one row per completion |
//! | [`PreferencePair`] | `pairs/` | pair selection, TRL DPO layout (standard or conversational) + `meta_*` columns |
//! | [`TreeNode`] | `trees/` | tree searches (`orchard search`), one row per node |
//! | [`KtoRow`], [`PrmRow`] | export files | `orchard export --format kto|prm` |
//!
//! `docs/FORMATS.md` documents every column.

mod columns;
mod export;
pub mod pair;
pub mod trajectory;
mod tree;

use std::fmt::Debug;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::error::Result;

pub use columns::{message_fields, message_list_type, MessagesBuilder};
pub use export::{KtoRow, PrmRow};
pub use pair::{PairBuilder, PairFormat, PairKind, PairSide, PreferencePair};
pub use trajectory::{ModelRecord, RewardRecord, SamplingRecord, Trajectory, TrajectoryBuilder};
pub use tree::{NodeDetail, TreeNode, TreeNodeBuilder};

/// A row type with an Arrow schema: what the Parquet writer and reader are generic over.
pub trait Record: Sized + Clone + Debug + PartialEq {
    /// A per-file choice of physical layout (e.g. [`PairFormat`] for pairs); `()` for records with one layout.
    type Layout: Copy + Default + Debug + PartialEq + Send + Sync + 'static;

    /// The record's name, as used for its directory in a run (`trajectories`, `pairs`, `trees`).
    const NAME: &'static str;

    /// The schema of a file in `layout`.
    fn schema(layout: Self::Layout) -> SchemaRef;

    /// Rows as one record batch in `layout`. Fails when a row cannot be represented in that layout.
    fn to_batch(rows: &[Self], layout: Self::Layout) -> Result<RecordBatch>;

    /// Rows back from a batch read from a file this crate wrote (any layout: it is detected from the schema).
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>>;
}

#[cfg(test)]
mod tests;
