//! Datasets: Parquet write throughput of preference pairs (rows/s) with Orchard's writer, both TRL forms, zstd.
//! `benches/compare/parquet_write.py` runs the same rows through pyarrow for comparison.

use criterion::{BatchSize, Criterion, Throughput};
use orchard_datasets::part::{write_to, ParquetOptions};
use orchard_datasets::testing::synthetic_pairs;
use orchard_datasets::{PairFormat, PreferencePair};

const ROWS: usize = 10_000;

pub fn bench(c: &mut Criterion) {
    let rows = synthetic_pairs(ROWS, 1);
    let opts = ParquetOptions::default();
    let mut group = c.benchmark_group("datasets/pairs_write");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    for (name, format) in [("standard", PairFormat::Standard), ("conversational", PairFormat::Conversational)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || Vec::with_capacity(8 << 20),
                |sink| write_to::<PreferencePair, _>(sink, &rows, format, &opts).expect("writes to memory"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}
