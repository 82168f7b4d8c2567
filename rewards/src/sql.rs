//! Think2SQL's SQL rewards (arXiv 2504.15077; `docs/ALGORITHMS.md`, Rewards): execute the predicted and the gold SQL on a SQLite database
//! (read-only, per-query timeout) and compare the results.
//!
//! * `ex` (execution accuracy): 1 iff the two results are equal as multisets of rows, else 0.
//! * QATCH partial rewards over the result tables, with cells = the *set* of all values:
//!   `cell_precision = |cells_T ∩ cells_P| / |cells_P|`, `cell_recall = |cells_T ∩ cells_P| / |cells_T|`,
//!   `tuple_cardinality = min(|T|, |P|) / max(|T|, |P|)` (both empty → 1, one empty → 0), and `partial` = their
//!   mean (`cp_cr_tc`).
//!
//! Values compare as SQLite values, with an integer equal to a real of the same value (`1` = `1.0`), as Python's
//! `==` does in the reference evaluators.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::outcome::component::CORRECT;
use crate::{Outcome, Reward, Task};

/// Default per-query time limit.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on rows read from one query (a cross join must not exhaust memory).
pub const DEFAULT_MAX_ROWS: usize = 100_000;

/// Component names.
pub mod component {
    /// Execution accuracy.
    pub const EX: &str = "ex";
    /// Cell precision.
    pub const CELL_PRECISION: &str = "cell_precision";
    /// Cell recall.
    pub const CELL_RECALL: &str = "cell_recall";
    /// Tuple cardinality.
    pub const TUPLE_CARDINALITY: &str = "tuple_cardinality";
    /// Mean of the three partial rewards.
    pub const PARTIAL: &str = "partial";
}

/// Which number becomes the score (all of them are always components).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SqlScore {
    /// Execution accuracy (0/1).
    #[default]
    Ex,
    /// Mean of cell precision, cell recall and tuple cardinality.
    Partial,
    /// Think2SQL's "small update": execution error → 0; EX → 1; else max(partial, 0.1).
    SmallUpdate,
}

/// Settings of [`SqlReward`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// Which number is the score. Default `ex`.
    pub score: SqlScore,
    /// Per-query time limit. Default [`DEFAULT_QUERY_TIMEOUT`] (5 s).
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Rows read per query at most; more is an error. Default [`DEFAULT_MAX_ROWS`].
    pub max_rows: usize,
    /// Directory that relative `db` paths are resolved against. Default: none (the working directory).
    pub base_dir: Option<PathBuf>,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig { score: SqlScore::Ex, timeout: DEFAULT_QUERY_TIMEOUT, max_rows: DEFAULT_MAX_ROWS, base_dir: None }
    }
}

/// Execution-based SQL reward.
#[derive(Debug, Clone, Default)]
pub struct SqlReward {
    config: SqlConfig,
}

/// One SQLite value, hashable, with integral reals folded into integers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Cell {
    Null,
    Int(i64),
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

impl Cell {
    fn from_ref(v: ValueRef<'_>) -> Cell {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Int(i),
            ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Cell::Int(f as i64),
            ValueRef::Real(f) => Cell::Real(if f == 0.0 { 0 } else { f.to_bits() }),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }
}

type Rows = Vec<Vec<Cell>>;

impl SqlReward {
    /// A SQL reward with these settings.
    pub fn new(config: SqlConfig) -> Self {
        SqlReward { config }
    }

    fn resolve(&self, db: &Path) -> PathBuf {
        match &self.config.base_dir {
            Some(base) if db.is_relative() => base.join(db),
            _ => db.to_path_buf(),
        }
    }

    fn query(&self, conn: &Connection, sql: &str) -> Result<Rows, String> {
        let deadline = Instant::now() + self.config.timeout;
        conn.progress_handler(1000, Some(move || Instant::now() > deadline));
        let result = (|| {
            let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
            let n = stmt.column_count();
            let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(|e| e.to_string())? {
                if out.len() >= self.config.max_rows {
                    return Err(format!("more than {} rows", self.config.max_rows));
                }
                out.push(
                    (0..n)
                        .map(|i| row.get_ref(i).map(Cell::from_ref))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok(out)
        })();
        conn.progress_handler(0, None::<fn() -> bool>);
        result.map_err(
            |e| {
                if Instant::now() > deadline {
                    format!("timed out after {:?}", self.config.timeout)
                } else {
                    e
                }
            },
        )
    }
}

/// Open a database read-only: no writes, no `ATTACH`, no extension loading.
fn open_read_only(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| format!("cannot open database {}: {e}", path.display()))?;
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(|e| format!("cannot configure database {}: {e}", path.display()))?;
    conn.pragma_update(None, "query_only", true).map_err(|e| format!("cannot configure database: {e}"))?;
    Ok(conn)
}

/// The SQL in a completion: inside `<answer>…</answer>` if present, else the first ```` ```sql ```` fence, else
/// the whole text; trimmed.
pub fn extract_sql(completion: &str) -> &str {
    if let Some(start) = completion.rfind("<answer>") {
        let rest = &completion[start + "<answer>".len()..];
        let inner = rest.find("</answer>").map_or(rest, |e| &rest[..e]);
        return crate::code::extract_code(inner).trim();
    }
    crate::code::extract_code(completion).trim()
}

/// Multiset equality of rows (order-insensitive, duplicates counted).
fn same_multiset(a: &Rows, b: &Rows) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a.clone(), b.clone());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// (cell precision, cell recall, tuple cardinality).
fn partial_scores(gold: &Rows, pred: &Rows) -> (f64, f64, f64) {
    let cells = |rows: &Rows| rows.iter().flatten().cloned().collect::<HashSet<Cell>>();
    let (t, p) = (cells(gold), cells(pred));
    let inter = t.intersection(&p).count() as f64;
    let ratio = |num: f64, den: usize, other_empty: bool| match (den, other_empty) {
        (0, true) => 1.0,
        (0, false) => 0.0,
        _ => num / den as f64,
    };
    let cp = ratio(inter, p.len(), t.is_empty());
    let cr = ratio(inter, t.len(), p.is_empty());
    let tc = match (gold.len(), pred.len()) {
        (0, 0) => 1.0,
        (0, _) | (_, 0) => 0.0,
        (g, q) => g.min(q) as f64 / g.max(q) as f64,
    };
    (cp, cr, tc)
}

impl Reward for SqlReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        use component::*;
        let (Some(gold_sql), Some(db)) = (task.sql.as_deref(), task.db.as_deref()) else {
            return Outcome::task_error("task needs both `sql` (gold SQL) and `db` (SQLite database path)");
        };
        let path = self.resolve(db);
        if !path.is_file() {
            return Outcome::task_error(format!("database not found: {}", path.display()));
        }
        let conn = match open_read_only(&path) {
            Ok(c) => c,
            Err(e) => return Outcome::task_error(e),
        };
        let gold = match self.query(&conn, gold_sql) {
            Ok(rows) => rows,
            Err(e) => return Outcome::task_error(format!("gold SQL failed: {e}")),
        };
        let pred_sql = extract_sql(completion);
        let zero = |why: String| {
            let mut o = Outcome::new(0.0).with_extracted(pred_sql).with_failure(why);
            for k in [EX, CORRECT, CELL_PRECISION, CELL_RECALL, TUPLE_CARDINALITY, PARTIAL] {
                o = o.with_component(k, 0.0);
            }
            o
        };
        if pred_sql.is_empty() {
            return zero("no SQL in the completion".into());
        }
        let pred = match self.query(&conn, pred_sql) {
            Ok(rows) => rows,
            Err(e) => return zero(format!("predicted SQL failed: {e}")),
        };
        let ex = f64::from(u8::from(same_multiset(&gold, &pred)));
        let (cp, cr, tc) = partial_scores(&gold, &pred);
        let partial = (cp + cr + tc) / 3.0;
        let score = match self.config.score {
            SqlScore::Ex => ex,
            SqlScore::Partial => partial,
            SqlScore::SmallUpdate if ex == 1.0 => 1.0,
            SqlScore::SmallUpdate => partial.max(0.1),
        };
        let mut o = Outcome::new(score)
            .with_extracted(pred_sql)
            .with_component(EX, ex)
            .with_component(CORRECT, ex)
            .with_component(CELL_PRECISION, cp)
            .with_component(CELL_RECALL, cr)
            .with_component(TUPLE_CARDINALITY, tc)
            .with_component(PARTIAL, partial);
        if ex == 0.0 {
            o = o.with_failure(format!("result differs from gold: {} rows vs {} gold rows", pred.len(), gold.len()));
        }
        o
    }
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        crate::units::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> anyhow::Result<(tempfile::TempDir, Task)> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("shop.sqlite");
        let conn = Connection::open(&db)?;
        conn.execute_batch(
            "CREATE TABLE items(id INTEGER, name TEXT, price REAL);
             INSERT INTO items VALUES (1, 'pen', 1.5), (2, 'ink', 3.0), (3, 'pad', 2.0), (4, 'pen', 1.5);",
        )?;
        drop(conn);
        let task = Task::default().with_sql("SELECT name, price FROM items WHERE price < 2.5", &db);
        Ok((dir, task))
    }

    #[test]
    fn execution_accuracy_compares_multisets() -> anyhow::Result<()> {
        let (_d, task) = fixture()?;
        let r = SqlReward::default();
        let same = r.score(&task, "<answer>SELECT name, price FROM items WHERE price <= 2 ORDER BY id DESC</answer>");
        assert_eq!(same.score, 1.0, "{same:?}");
        // Same set, different multiset (DISTINCT drops the duplicate pen).
        let distinct = r.score(&task, "SELECT DISTINCT name, price FROM items WHERE price < 2.5");
        assert_eq!(distinct.score, 0.0);
        assert_eq!(distinct.components[component::CELL_PRECISION], 1.0);
        assert_eq!(distinct.components[component::CELL_RECALL], 1.0);
        assert!((distinct.components[component::TUPLE_CARDINALITY] - 2.0 / 3.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn integer_and_real_values_compare_equal() -> anyhow::Result<()> {
        let (_d, task) = fixture()?;
        let task = Task { sql: Some("SELECT 2".into()), ..task };
        assert_eq!(SqlReward::default().score(&task, "SELECT 2.0").score, 1.0);
        Ok(())
    }

    #[test]
    fn partial_scores_follow_qatch() {
        let row = |v: &[i64]| v.iter().map(|&x| Cell::Int(x)).collect::<Vec<_>>();
        let gold = vec![row(&[1, 2]), row(&[3, 4])];
        let pred = vec![row(&[1, 2])];
        let (cp, cr, tc) = partial_scores(&gold, &pred);
        assert_eq!((cp, cr, tc), (1.0, 0.5, 0.5));
        assert_eq!(partial_scores(&vec![], &vec![]), (1.0, 1.0, 1.0));
        assert_eq!(partial_scores(&gold, &vec![]), (0.0, 0.0, 0.0));
    }

    #[test]
    fn writes_are_refused_and_errors_are_reported() -> anyhow::Result<()> {
        let (_d, task) = fixture()?;
        let r = SqlReward::default();
        let w = r.score(&task, "DELETE FROM items");
        assert_eq!(w.score, 0.0);
        assert!(w.failure.as_deref().is_some_and(|f| f.contains("predicted SQL failed")), "{w:?}");
        let a = r.score(&task, "ATTACH DATABASE '/tmp/x.sqlite' AS x");
        assert_eq!(a.score, 0.0);
        let check = r.score(&task, "SELECT name, price FROM items WHERE price < 2.5");
        assert_eq!(check.score, 1.0, "the data survived");
        let syntax = r.score(&task, "SELEC nonsense");
        assert!(syntax.failure.is_some() && syntax.error.is_none());
        Ok(())
    }

    #[test]
    fn missing_database_is_a_task_error() {
        let task = Task::default().with_sql("SELECT 1", "/nonexistent/db.sqlite");
        let o = SqlReward::default().score(&task, "SELECT 1");
        assert_eq!(o.error.as_deref(), Some("database not found: /nonexistent/db.sqlite"));
    }

    #[test]
    fn slow_queries_time_out() -> anyhow::Result<()> {
        let (_d, task) = fixture()?;
        let r = SqlReward::new(SqlConfig { timeout: Duration::from_millis(200), ..Default::default() });
        let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        let t = Instant::now();
        let o = r.score(&task, slow);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(o.failure.as_deref().is_some_and(|f| f.contains("timed out")), "{o:?}");
        Ok(())
    }
}
