//! `cargo bench -p meshpeer-model --bench catalog`
//!
//! The catalog of cluster0 in meshes of 10 x 1,000 x 10 and 50 x 2,000 x 5
//! (clusters x services x endpoints per service per cluster), all services
//! exported by every cluster. Also the parts: cluster0's export, the catalog
//! from a precomputed export (what the controller does when only a peer
//! changed), and rendering.

#![allow(clippy::unwrap_used)]

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use meshpeer_model::render::render;
use meshpeer_model::{CatalogConfig, catalog, catalog_with, exports};

fn bench(c: &mut Criterion) {
    for (clusters, services, endpoints) in [(10, 1_000, 10), (50, 2_000, 5)] {
        let (own, peers) = common::mesh(clusters, services, endpoints);
        let config = CatalogConfig::default();
        let label = format!("{clusters}x{services}x{endpoints}");
        let mut g = c.benchmark_group(&label);
        g.sample_size(20);
        g.bench_function("catalog", |b| {
            b.iter(|| catalog(&own, &peers, &config));
        });
        g.bench_function("exports(own)", |b| b.iter(|| exports(&own)));
        let own_export = exports(&own);
        g.bench_function("catalog_with(own export)", |b| {
            b.iter(|| catalog_with(&own, &own_export, &peers, &config));
        });
        let cat = catalog(&own, &peers, &config);
        assert_eq!(cat.services.len(), services);
        g.bench_function("render", |b| b.iter(|| render(&cat)));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
