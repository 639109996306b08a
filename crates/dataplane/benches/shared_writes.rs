//! `cargo bench -p meshpeer-dataplane --bench shared_writes`
//!
//! What a metric write costs when every L7 loop writes it: two threads
//! observe into one histogram (or count into one counter) in turn with a
//! little work between writes, as loops serving requests do, through
//! `prometheus_client`'s types (one lock or atomic shared by both) and
//! through `dataplane::sharded`'s (a slot per thread). The figure is the
//! time a round (the work and a write, on both threads at once); "no
//! write" is the work alone (BENCHMARKS.md, L7).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use meshpeer_dataplane::sharded;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// About a request's worth of other work between writes, scaled down.
fn work() {
    let mut x = 0u64;
    for i in 0..200 {
        x = x.wrapping_mul(31).wrapping_add(black_box(i));
    }
    black_box(x);
}

/// Time for `iters` rounds of work and a write on each of two threads.
fn two_threads(iters: u64, write: &(dyn Fn() + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters {
                    work();
                    write();
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("two threads, a write each between work");
    g.sample_size(20);
    g.bench_function("no write (the work alone)", |b| {
        b.iter_custom(|iters| two_threads(iters, &|| {}));
    });
    let theirs = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
    g.bench_function("histogram observe: prometheus_client (shared lock)", |b| {
        b.iter_custom(|iters| two_threads(iters, &|| theirs.observe(black_box(0.0004))));
    });
    let ours = sharded::Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
    g.bench_function("histogram observe: sharded (a slot per thread)", |b| {
        b.iter_custom(|iters| two_threads(iters, &|| ours.observe(black_box(0.0004))));
    });
    let theirs = Counter::<u64>::default();
    g.bench_function("counter inc: prometheus_client (shared atomic)", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &|| {
                theirs.inc();
            })
        });
    });
    let ours = sharded::Counter::default();
    g.bench_function("counter inc: sharded (a slot per thread)", |b| {
        b.iter_custom(|iters| two_threads(iters, &|| ours.inc()));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
