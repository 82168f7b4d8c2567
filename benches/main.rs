//! Criterion benches: one module per area.

use criterion::{criterion_group, criterion_main};

mod datasets;

criterion_group!(benches, datasets::bench);
criterion_main!(benches);
