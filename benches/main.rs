//! Criterion benches: one module per area.

use criterion::{criterion_group, criterion_main};

mod rewards;

criterion_group!(benches, rewards::bench);
criterion_main!(benches);
