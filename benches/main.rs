//! Criterion benches: one module per area.

use criterion::{criterion_group, criterion_main};

mod datasets;
mod engine;
mod rewards;

criterion_group!(benches, engine::bench, rewards::bench, datasets::bench);
criterion_main!(benches);
