//! The harness the B7 property tests share (feature `testing`): each test
//! binary installs `stats_alloc`'s instrumented allocator as its global
//! allocator, runs its properties one at a time through [`run`], and
//! measures what a case allocates with [`allocated`].

use std::alloc::System;
use std::sync::Mutex;

use proptest::prelude::*;
use stats_alloc::{Region, StatsAlloc};

/// Cases of one test binary run one at a time, so that what one case
/// allocates is measured alone.
static MEASURE: Mutex<()> = Mutex::new(());

/// Bytes allocated (and grown by reallocation) through `alloc` while `f`
/// runs.
pub fn allocated<T>(alloc: &'static StatsAlloc<System>, f: impl FnOnce() -> T) -> (T, usize) {
    let region = Region::new(alloc);
    let out = f();
    let change = region.change();
    let grown = usize::try_from(change.bytes_reallocated).unwrap_or(0);
    (out, change.bytes_allocated + grown)
}

/// Holds the binary's measurements to the caller alone (what [`run`] does
/// for its cases), for a test that measures outside [`run`].
pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    MEASURE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `test` over `strategy`'s cases (`PROPTEST_CASES`, default 256),
/// alone among this binary's property runs; panics with the smallest
/// failing input. No failure persistence: the inputs are printed instead.
pub fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let _one = alone();
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}
