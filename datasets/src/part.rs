//! Parquet files of [`Record`]s: Arrow record batches through `parquet::arrow::ArrowWriter` with zstd and explicit
//! row-group sizes, written under a temporary name and renamed when complete, so that no reader ever sees a torn
//! file.
//!
//! Temporary files are named `.{final name}.tmp`: a leading dot and a non-`.parquet` suffix, so that pyarrow's
//! dataset discovery (which skips `.`/`_` files), HF `datasets` globs (`*.parquet`) and [`read_dir`] all ignore
//! them.

use std::fs::{self, File};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::record::Record;

/// Default zstd level (zstd's own default; 1–22, higher is smaller and slower).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Default maximum rows per row group.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 8192;
/// Default rows per Arrow batch handed to the writer (bounds the memory of one conversion).
pub const DEFAULT_BATCH_ROWS: usize = 1024;
/// Buffered bytes after which an open row group is flushed early, whatever its row count.
pub const DEFAULT_ROW_GROUP_BYTES: usize = 128 << 20;
/// File extension of part files.
pub const PARQUET_EXT: &str = "parquet";

/// Compression and layout of written Parquet files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParquetOptions {
    /// zstd level. Default [`DEFAULT_ZSTD_LEVEL`].
    pub zstd_level: i32,
    /// Maximum rows per row group. Default [`DEFAULT_ROW_GROUP_ROWS`].
    pub row_group_rows: usize,
    /// Rows per Arrow batch. Default [`DEFAULT_BATCH_ROWS`].
    pub batch_rows: usize,
    /// Flush a row group early once this many bytes are buffered. Default [`DEFAULT_ROW_GROUP_BYTES`].
    pub row_group_bytes: usize,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            zstd_level: DEFAULT_ZSTD_LEVEL,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            batch_rows: DEFAULT_BATCH_ROWS,
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
        }
    }
}

impl ParquetOptions {
    /// The writer properties: zstd at `zstd_level`, `row_group_rows` rows per group, creator `orchard <version>`.
    pub fn writer_properties(&self) -> Result<WriterProperties> {
        Ok(WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(self.zstd_level)?))
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_created_by(format!("orchard {}", env!("CARGO_PKG_VERSION")))
            .build())
    }
}

/// Write `rows` as one Parquet file into `sink` (a `Vec<u8>`, a file ...) and return the sink.
pub fn write_to<R: Record, W: Write + Send>(
    sink: W,
    rows: &[R],
    layout: R::Layout,
    opts: &ParquetOptions,
) -> Result<W> {
    let mut writer = ArrowWriter::try_new(sink, R::schema(layout), Some(opts.writer_properties()?))?;
    for chunk in rows.chunks(opts.batch_rows.max(1)) {
        writer.write(&R::to_batch(chunk, layout)?)?;
        if writer.in_progress_size() > opts.row_group_bytes {
            writer.flush()?;
        }
    }
    Ok(writer.into_inner()?)
}

/// Write `rows` to `path` atomically: into `.{name}.tmp` beside it, fsync, rename, fsync the directory.
pub fn write_file<R: Record>(path: &Path, rows: &[R], layout: R::Layout, opts: &ParquetOptions) -> Result<()> {
    let mut w = AtomicWriter::<R>::create(path, layout, opts)?;
    w.write(rows)?;
    w.commit()
}

/// Streams record batches into one Parquet file that appears under its final name only when [`commit`] succeeds.
/// Dropped without commit, it removes its temporary file.
///
/// [`commit`]: AtomicWriter::commit
pub struct AtomicWriter<R: Record> {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    layout: R::Layout,
    opts: ParquetOptions,
    rows: usize,
    _record: PhantomData<R>,
}

impl<R: Record> AtomicWriter<R> {
    /// Open `.{name}.tmp` beside `path` for writing.
    pub fn create(path: &Path, layout: R::Layout, opts: &ParquetOptions) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).at(&tmp)?;
        let writer = ArrowWriter::try_new(file, R::schema(layout), Some(opts.writer_properties()?))?;
        Ok(AtomicWriter {
            path: path.to_path_buf(),
            tmp,
            writer: Some(writer),
            layout,
            opts: *opts,
            rows: 0,
            _record: PhantomData,
        })
    }

    /// Append rows.
    pub fn write(&mut self, rows: &[R]) -> Result<()> {
        let writer = self.writer.as_mut().expect("the writer is only taken by commit, which consumes self");
        for chunk in rows.chunks(self.opts.batch_rows.max(1)) {
            writer.write(&R::to_batch(chunk, self.layout)?)?;
            if writer.in_progress_size() > self.opts.row_group_bytes {
                writer.flush()?;
            }
        }
        self.rows += rows.len();
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Close the file (writing the footer), fsync it, rename it to its final name and fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("commit runs once");
        let file = writer.into_inner()?;
        file.sync_all().at(&self.tmp)?;
        drop(file);
        fs::rename(&self.tmp, &self.path).at(&self.path)?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

impl<R: Record> Drop for AtomicWriter<R> {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `.{name}.tmp` beside `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Whether `name` is a temporary file left by an interrupted write.
pub fn is_tmp_name(name: &str) -> bool {
    name.ends_with(".tmp")
}

/// fsync a directory, so that a rename or create in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Read every row of a Parquet file held in memory.
pub fn read_bytes<R: Record>(bytes: impl Into<Bytes>) -> Result<Vec<R>> {
    read_chunks(bytes.into())
}

/// Read every row of a Parquet file.
pub fn read_file<R: Record>(path: &Path) -> Result<Vec<R>> {
    read_chunks(File::open(path).at(path)?)
}

fn read_chunks<R: Record, C: ChunkReader + 'static>(input: C) -> Result<Vec<R>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(input)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        out.extend(R::from_batch(&batch?)?);
    }
    Ok(out)
}

/// The `*.parquet` files of a directory, sorted by name (temporary files excluded). A missing directory has none.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.at(dir)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.starts_with('.') && path.extension().is_some_and(|e| e == PARQUET_EXT) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Read every row of every `*.parquet` file of a directory, in file-name order.
pub fn read_dir<R: Record>(dir: &Path) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for file in parquet_files(dir)? {
        out.extend(read_file::<R>(&file)?);
    }
    Ok(out)
}
