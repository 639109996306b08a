//! `cargo bench -p meshpeer --bench propagation`
//!
//! Propagation of an edit as a user sees it (SPEC I2): a Service is labelled
//! global in cluster A's folder (written to a temp file, then renamed into
//! place, as editors do); measured: the time until cluster B's controller
//! has it in its catalog, and until B's proxy answers its name over UDP DNS
//! (a hand-made A query, as `dig` sends). Two real controllers and B's
//! gateway and proxy in one process, peering over mutual TLS on 127.0.0.1, file
//! watching with the default debounce. `EDITS` edits (env, default 100),
//! each after the previous one is answered; with 0, 1,000 and 10,000
//! services already exported by A (`SIZES`, comma-separated, overrides).
//! Prints p50/p90/p99/max of both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use support::{Mesh, namespace, service};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// An A query for `name` (RD set), as `dig` sends it.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `dns` answers `name` with at least one address.
fn answered(sock: &UdpSocket, dns: SocketAddr, name: &str, id: u16) -> bool {
    if sock.send_to(&query(id, name), dns).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                return rcode == 0 && answers > 0;
            }
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

fn line(what: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    format!(
        "{what}: p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.90)),
        ms(percentile(samples, 0.99)),
        ms(samples[samples.len() - 1]),
    )
}

async fn run(preexisting: usize, edits: usize) {
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
    // B's proxy only: A's would hold another listener per VIP:port.
    mesh.start_dataplane_of(&["cluster-b".to_owned()]).await;
    mesh.link("cluster-b", "cluster-a").await;
    let synced = Instant::now();
    let b = mesh.cluster("cluster-b");
    b.wait("initial sync", |v| v.catalog.services.len() == preexisting)
        .await;
    let dns = b.proxy().dns.local_addr();
    println!(
        "{preexisting} services: B synced in {:.0} ms",
        synced.elapsed().as_secs_f64() * 1000.0
    );

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut view = b.controller().view();
    let mut to_catalog = Vec::with_capacity(edits);
    let mut to_dns = Vec::with_capacity(edits);
    for i in 0..edits {
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
                .expect("edit did not reach B's catalog within 10s")
                .unwrap();
        }
        to_catalog.push(started.elapsed());
        let deadline = started + Duration::from_secs(10);
        let mut id = 0u16;
        loop {
            id = id.wrapping_add(1);
            let (s, h) = (sock.try_clone().unwrap(), host.clone());
            if tokio::task::spawn_blocking(move || answered(&s, dns, &h, id))
                .await
                .unwrap()
            {
                break;
            }
            assert!(Instant::now() < deadline, "{host} not answered within 10s");
        }
        to_dns.push(started.elapsed());
    }
    println!(
        "{}",
        line(
            &format!(
                "edit in A -> B's catalog, {edits} edits, {preexisting} services already exported"
            ),
            &mut to_catalog
        )
    );
    println!(
        "{}",
        line(
            &format!(
                "edit in A -> B's proxy answers over UDP DNS, {edits} edits, {preexisting} services"
            ),
            &mut to_dns
        )
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
    let edits: usize = std::env::var("EDITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let sizes: Vec<usize> = std::env::var("SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 1_000, 10_000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for n in sizes {
            run(n, edits).await;
        }
    });
}
