//! `orchard-datasets-tool`: test and bench helper for the datasets crate (not part of the user-facing CLI).
//!
//! - `fake-sample`: the fake sampling job of [`orchard_datasets::testing`] — the real job's run-directory pieces with
//!   a deterministic stand-in engine — for the kill -9 resume test and for producing runs in tests.
//! - `write-pairs`: time Orchard's Parquet writer on N synthetic pairs (for `benches/compare/parquet_write.py`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use orchard_datasets::part::{self, ParquetOptions};
use orchard_datasets::testing::{fake_job, synthetic_pairs, FakeJob};
use orchard_datasets::{OnBadRow, PairFormat, PreferencePair, Record, Shard, TaskKind, TaskSource, WriterOptions};

#[derive(Debug, Parser)]
#[command(name = "orchard-datasets-tool", about = "Test and bench helper for orchard-datasets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fake sampling job into --out (created or resumed).
    FakeSample(FakeArgs),
    /// Write N synthetic pairs rows and print timings as one JSON line.
    WritePairs(WriteArgs),
}

#[derive(Debug, clap::Args)]
struct FakeArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "gsm8k")]
    task: TaskKind,
    #[arg(long)]
    split: Option<String>,
    #[arg(long)]
    path: Option<PathBuf>,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    shuffle: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 8)]
    n: u32,
    #[arg(long, default_value = "0/1")]
    shard: Shard,
    #[arg(long, default_value_t = 4)]
    group: usize,
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
    #[arg(long, default_value_t = orchard_datasets::run::DEFAULT_FLUSH_ROWS)]
    flush_rows: usize,
    #[arg(long, default_value = "standard")]
    pair_format: PairFormat,
    /// Also write trees and step pairs.
    #[arg(long)]
    trees: bool,
}

#[derive(Debug, clap::Args)]
struct WriteArgs {
    #[arg(long)]
    rows: usize,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    conversational: bool,
    #[arg(long, default_value_t = part::DEFAULT_ZSTD_LEVEL)]
    zstd_level: i32,
    #[arg(long, default_value_t = part::DEFAULT_ROW_GROUP_ROWS)]
    row_group_rows: usize,
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::FakeSample(a) => fake_sample(a),
        Command::WritePairs(a) => write_pairs(a),
    }
}

fn fake_sample(a: FakeArgs) -> anyhow::Result<()> {
    let job = FakeJob {
        source: TaskSource {
            task: a.task,
            split: a.split,
            path: a.path,
            limit: a.limit,
            shuffle: a.shuffle,
            seed: a.seed,
            on_bad_row: OnBadRow::Skip,
            ..TaskSource::default()
        },
        n: a.n,
        seed: a.seed,
        pair_format: a.pair_format,
        trees: a.trees,
        shard: a.shard,
        group: a.group,
        sleep: Duration::from_millis(a.sleep_ms),
        ..FakeJob::default()
    };
    let opts = WriterOptions { flush_rows: a.flush_rows, ..WriterOptions::default() };
    let manifest = fake_job(&job, &a.out, opts)?;
    println!("{}", serde_json::to_string(&manifest.counts)?);
    Ok(())
}

fn write_pairs(a: WriteArgs) -> anyhow::Result<()> {
    let rows = synthetic_pairs(a.rows, 1);
    let format = if a.conversational { PairFormat::Conversational } else { PairFormat::Standard };
    let opts = ParquetOptions { zstd_level: a.zstd_level, row_group_rows: a.row_group_rows, ..Default::default() };
    let mut times = Vec::new();
    for _ in 0..a.repeat.max(1) {
        let start = Instant::now();
        let file = std::fs::File::create(&a.out)?;
        part::write_to::<PreferencePair, _>(file, &rows, format, &opts)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bytes = std::fs::metadata(&a.out)?.len();
    // The same work split in two: Rust structs -> Arrow batches, then batches -> Parquet file.
    let (mut build, mut encode) = (Vec::new(), Vec::new());
    for _ in 0..a.repeat.max(1) {
        let start = Instant::now();
        let batches = rows
            .chunks(opts.batch_rows)
            .map(|c| <PreferencePair as Record>::to_batch(c, format))
            .collect::<orchard_datasets::Result<Vec<_>>>()?;
        build.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let file = std::fs::File::create(&a.out)?;
        let schema = <PreferencePair as Record>::schema(format);
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(opts.writer_properties()?))?;
        for b in &batches {
            w.write(b)?;
        }
        w.close()?;
        encode.push(start.elapsed().as_secs_f64());
    }
    build.sort_by(f64::total_cmp);
    encode.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "rows": a.rows, "seconds_median": median, "seconds_all": times,
            "rows_per_s": a.rows as f64 / median, "bytes": bytes,
            "build_seconds_median": build[build.len() / 2],
            "encode_write_seconds_median": encode[encode.len() / 2],
        })
    );
    Ok(())
}
