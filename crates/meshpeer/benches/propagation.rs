//! `cargo bench -p meshpeer --bench propagation`
//!
//! Propagation of an edit: a Service is labelled in cluster A's folder (file
//! written, then renamed into place, as editors do); the time until cluster
//! B's controller has the new global service in its catalog. Two real
//! controllers in one process, peering over mutual TLS on 127.0.0.1, file
//! watching with the default 20 ms debounce. 200 edits, each waiting for the
//! previous to land; first with nothing else exported, then with 1,000
//! services already exported by A. Prints p50/p90/p99/max.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Mesh, namespace, service};

const EDITS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(preexisting: usize) {
    let mut mesh = Mesh::new(&["cluster-a", "cluster-b"]);
    if preexisting > 0 {
        let mut bulk = namespace("bulk", &[]);
        for i in 0..preexisting {
            bulk.push_str("---\n");
            bulk.push_str(&service(
                "bulk",
                &format!("s{i}"),
                Some("global"),
                &format!("10.9.{}.{}", i / 250, i % 250 + 1),
            ));
        }
        mesh.cluster("cluster-a").write("bulk.yaml", &bulk);
    }
    mesh.cluster("cluster-a")
        .write("ns.yaml", &namespace("edit", &[]));
    mesh.start().await;
    mesh.link("cluster-b", "cluster-a").await;
    let b = mesh.cluster("cluster-b");
    b.wait("initial sync", |v| v.catalog.services.len() == preexisting)
        .await;

    let mut view = b.controller().view();
    let mut samples = Vec::with_capacity(EDITS);
    for i in 0..EDITS {
        let host = format!("e{i}.edit.mesh.internal");
        let started = Instant::now();
        mesh.cluster("cluster-a").write(
            "edit.yaml",
            &service("edit", &format!("e{i}"), Some("global"), "10.8.0.1"),
        );
        loop {
            if view.borrow_and_update().catalog.service(&host).is_some() {
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), view.changed())
                .await
                .expect("edit did not propagate within 10s")
                .unwrap();
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "edit in A -> catalog of B, {EDITS} edits, {preexisting} services already exported: p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
    );
    mesh.shutdown().await;
}

fn main() {
    if std::env::var("TRACE").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        run(0).await;
        run(1_000).await;
    });
}
