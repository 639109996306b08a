//! `cargo bench -p meshpeer-model --bench memory`
//!
//! Heap retained per endpoint by peer exports and by the catalog built from
//! them, counted by an instrumented allocator (bytes allocated minus bytes
//! freed, so temporaries do not count). Prints figures; asserts nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::System;

use meshpeer_model::{CatalogConfig, catalog, exports};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn retained(stats: stats_alloc::Stats) -> isize {
    // Reallocations are already counted in both (growth and shrink).
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

fn main() {
    for (clusters, services, endpoints) in [(10, 1_000, 10), (50, 2_000, 5)] {
        let snapshots: Vec<_> = (0..clusters)
            .map(|i| common::cluster(i, clusters, services, endpoints))
            .collect();
        let region = Region::new(GLOBAL);
        let exps: Vec<_> = snapshots[1..].iter().map(exports).collect();
        let for_exports = retained(region.change());
        let region = Region::new(GLOBAL);
        let cat = catalog(&snapshots[0], &exps, &CatalogConfig::default());
        let for_catalog = retained(region.change());
        let peer_endpoints = ((clusters - 1) * services * endpoints) as isize;
        let all_endpoints = (clusters * services * endpoints) as isize;
        println!(
            "{clusters}x{services}x{endpoints}: peer exports {:.1} MiB = {} B/endpoint (services included); catalog on top {:.1} MiB = {} B/endpoint; {} global services",
            for_exports as f64 / 1048576.0,
            for_exports / peer_endpoints,
            for_catalog as f64 / 1048576.0,
            for_catalog / all_endpoints,
            cat.services.len()
        );
    }
}
