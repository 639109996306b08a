//! Metrics that several threads write on every request (the L7 loops):
//! each thread writes a slot of its own, cache-line aligned, and a scrape
//! adds the slots up. `prometheus_client`'s histogram takes a lock, 0.41 µs
//! a write with two threads writing (`benches/shared_writes.rs`); a shared
//! atomic moves its cache line from the core that wrote it last (15-115 ns
//! on the machines measured). With slots, a loop writes lines no other
//! core writes.
//!
//! Threads take slots in turn as they first write; past [`SLOTS`] threads,
//! slots are shared, which costs speed, never counts (the writes stay
//! atomic).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Slots per metric.
const SLOTS: usize = 16;

/// Buckets a [`Histogram`] has at most, `+Inf` included.
const MAX_BUCKETS: usize = 32;

/// The calling thread's slot.
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|s| *s)
}

/// A value on cache lines of its own (128 bytes: x86's prefetcher fetches
/// lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter (`_total`), as `prometheus_client`'s.
#[derive(Clone, Debug)]
pub struct Counter {
    slots: Arc<[Padded<AtomicU64>; SLOTS]>,
}

impl Default for Counter {
    fn default() -> Counter {
        Counter {
            slots: Arc::new(std::array::from_fn(|_| Padded::default())),
        }
    }
}

impl Counter {
    pub fn inc(&self) {
        self.slots[slot()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A histogram with fixed bucket bounds, as `prometheus_client`'s.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds, ascending, `+Inf` last.
    bounds: Arc<[f64]>,
    slots: Arc<[Padded<HistogramSlot>; SLOTS]>,
}

#[derive(Debug)]
struct HistogramSlot {
    /// The sum's `f64` bits.
    sum: AtomicU64,
    count: AtomicU64,
    buckets: [AtomicU64; MAX_BUCKETS],
}

impl Default for HistogramSlot {
    fn default() -> HistogramSlot {
        HistogramSlot {
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    /// A histogram with these upper bounds (ascending; `+Inf` is added);
    /// bounds past the first `MAX_BUCKETS - 1` are dropped.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Histogram {
        let bounds: Arc<[f64]> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .take(MAX_BUCKETS - 1)
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        Histogram {
            bounds,
            slots: Arc::new(std::array::from_fn(|_| Padded::default())),
        }
    }

    pub fn observe(&self, v: f64) {
        let slot = &self.slots[slot()].0;
        // Another thread writes this slot only when threads outnumber
        // slots: then the update may have to be tried again.
        let _ = slot
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        slot.count.fetch_add(1, Ordering::Relaxed);
        // NaN goes to +Inf, as prometheus_client's does.
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len() - 1);
        slot.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The sum, the count, and each bucket's count (not cumulative).
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut sum = 0.0;
        let mut count = 0;
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().map(|b| (*b, 0)).collect();
        for slot in self.slots.iter() {
            sum += f64::from_bits(slot.0.sum.load(Ordering::Relaxed));
            count += slot.0.count.load(Ordering::Relaxed);
            for (b, n) in buckets.iter_mut().zip(&slot.0.buckets) {
                b.1 += n.load(Ordering::Relaxed);
            }
        }
        (sum, count, buckets)
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]

    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    /// Threads write their own slots; a scrape sees every write, and the
    /// text is what `prometheus_client`'s own metrics give for the same
    /// observations.
    #[test]
    fn l8_sharded_metrics_add_up_every_threads_writes_and_encode_as_prometheus_clients_do() {
        let counter = Counter::default();
        let ours = Histogram::new([0.001, 0.01, 0.1]);
        let theirs = prometheus_client::metrics::histogram::Histogram::new([0.001, 0.01, 0.1]);
        let values = [0.0005, 0.001, 0.002, 0.05, 0.5, 3.0, f64::NAN];
        std::thread::scope(|s| {
            for _ in 0..SLOTS + 3 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.inc();
                        for v in values {
                            ours.observe(v);
                            theirs.observe(v);
                        }
                    }
                });
            }
        });
        let threads = (SLOTS + 3) as u64;
        assert_eq!(counter.get(), threads * 1000);
        let (_, count, buckets) = ours.get();
        assert_eq!(count, threads * 1000 * values.len() as u64);
        assert_eq!(
            buckets,
            vec![
                (0.001, threads * 2000),
                (0.01, threads * 1000),
                (0.1, threads * 1000),
                (f64::INFINITY, threads * 3000),
            ]
        );

        let ours_text = text(|r| {
            r.register("requests", "requests", counter.clone());
            r.register("seconds", "seconds", ours.clone());
        });
        let theirs_counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        theirs_counter.inc_by(threads * 1000);
        let theirs_text = text(|r| {
            r.register("requests", "requests", theirs_counter);
            r.register("seconds", "seconds", theirs);
        });
        // The sums may differ in their last bits (added in another order,
        // and NaN in both): compare all but the sum's line.
        let lines = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with("seconds_sum"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&ours_text), lines(&theirs_text));
        assert!(ours_text.contains("seconds_bucket{le=\"+Inf\"}"));
    }

    #[test]
    fn l8_a_histograms_sum_is_the_sum_of_its_observations() {
        let h = Histogram::new([1.0]);
        for v in [0.25, 0.5, 2.0] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.get();
        assert_eq!(sum, 2.75);
        assert_eq!(count, 3);
        assert_eq!(buckets, vec![(1.0, 2), (f64::INFINITY, 1)]);
    }
}
