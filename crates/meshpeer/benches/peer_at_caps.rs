//! `cargo bench -p meshpeer --bench peer_at_caps`
//!
//! The memory of a controller holding one peer at its caps (SPEC B2, B6;
//! issue 11). The real `meshpeer controller` binary runs cluster1 in file
//! mode with the default caps; this process plays cluster2 with the real
//! peering server over mutual TLS, exporting `SERVICES` services (default
//! 50,000: the service cap) of `ENDPOINTS` endpoints each (default 20:
//! 1,000,000 endpoints, the per-peer endpoint cap), one port each. cluster1
//! links to cluster2 once it is up; measured from `/proc/<pid>/status` of
//! the controller process: its resident memory idle, once its catalog holds
//! every service, once its output (one ServiceEntry file per service) is
//! written, and its peak. Prints one line per figure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshpeer_identity::{ALPN_H2, Identity, PeerPolicy, RootCa, SpiffeId, server_config};
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{NsName, exports};
use meshpeer_peering::{ExportPublisher, Metrics, PeeringService, ServerSettings, serve};

const DAY: Duration = Duration::from_secs(86_400);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `GET /v1/status` of the controller's API, as JSON.
fn status(api: &str) -> serde_json::Value {
    let mut conn = TcpStream::connect(api).unwrap();
    write!(
        conn,
        "GET /v1/status HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_default()
}

/// Polls `pred` on the controller's status every 100 ms, for at most 10 min.
fn until(api: &str, what: &str, mut pred: impl FnMut(&serde_json::Value) -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(600) {
        if pred(&status(api)) {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within 10 min");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `meshpeer controller` on `dir`; returns it and its API address.
fn controller(dir: &Path, cacerts: &Path) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args(["controller", "--cluster-dir"])
        .arg(dir)
        .arg("--cacerts")
        .arg(cacerts)
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--peering-listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start meshpeer controller");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == "API listening (status, catalog, metrics)"
            {
                let _ = tx.send(v["fields"]["address"].as_str().unwrap().to_owned());
            }
        }
    });
    let api = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the controller reports its API address");
    (Killed(child), api)
}

fn peer_gateway(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: istio-remote-peer-cluster2\n  namespace: istio-eastwest\n\
         \x20 labels: {{topology.istio.io/network: cluster2}}\n  annotations: {{gateway.istio.io/trust-domain: cluster2}}\n\
         spec:\n  gatewayClassName: istio-remote\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n\
         \x20 - {{name: cross-network, port: 15008, protocol: HBONE, tls: {{mode: Passthrough}}}}\n\
         \x20 - {{name: xds-tls, port: {port}, protocol: TLS, tls: {{mode: Passthrough}}}}\n"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let services = env("SERVICES", 50_000);
    let endpoints = env("ENDPOINTS", 20);
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let root = RootCa::generate("bench root", DAY * 30, now).unwrap();

    // cluster2's export: `services` copies of one service of `endpoints`.
    let template = exports(
        &ClusterBuilder::new("cluster2")
            .service(svc("shop", "template").global().ready(endpoints))
            .build(),
    );
    let mut export = template.clone();
    let one = template.services.values().next().unwrap().clone();
    export.services = (0..services)
        .map(|i| {
            let mut s = (*one).clone();
            s.name = format!("s{i}");
            s.hostname = format!("s{i}.shop.mesh.internal");
            (NsName::new("shop", &s.name), Arc::new(s))
        })
        .collect();
    let publisher = ExportPublisher::new();
    publisher.publish(&export);
    let peering = PeeringService::new(
        ServerSettings::new("cluster2"),
        &publisher,
        Arc::new(Metrics::default()),
    );
    let ca2 = root
        .issue_intermediate("cluster2", "cluster2", DAY, now)
        .unwrap();
    let id2 = SpiffeId::new("cluster2", "istio-system", "meshpeer").unwrap();
    let identity2 = Arc::new(Identity::new(ca2, id2, DAY, now).unwrap());
    let tls = server_config(
        Arc::clone(&identity2),
        identity2.trust_root(),
        PeerPolicy::AnyTrustDomain,
        &[ALPN_H2],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(listener, tls, peering, std::future::pending()));

    // cluster1: the real binary, idle first.
    let dir = tmp.path().join("cluster1");
    let cacerts = tmp.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    root.issue_intermediate("cluster1", "cluster1", DAY, now)
        .unwrap()
        .write(&cacerts)
        .unwrap();
    std::fs::write(dir.join("cluster.yaml"), "name: cluster1\n").unwrap();
    std::fs::write(
        dir.join("istio-system.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: istio-system\n",
    )
    .unwrap();
    let (child, api) = tokio::task::spawn_blocking({
        let (dir, cacerts) = (dir.clone(), cacerts.clone());
        move || controller(&dir, &cacerts)
    })
    .await
    .unwrap();
    let pid = child.0.id();
    let api: SocketAddr = api.parse().unwrap();
    let api = api.to_string();
    let api2 = api.clone();
    tokio::task::spawn_blocking(move || {
        until(&api2, "the controller answers", |s| {
            s.get("globalServices").is_some()
        })
    })
    .await
    .unwrap();
    let (idle, _) = memory_mib(pid);

    // The link appears: the initial sync at the caps.
    let tmp_file = dir.join(".peer-cluster2.yaml.tmp");
    std::fs::write(&tmp_file, peer_gateway(port)).unwrap();
    std::fs::rename(&tmp_file, dir.join("peer-cluster2.yaml")).unwrap();
    let out = dir.join(".meshpeer").join("out");
    let figures = tokio::task::spawn_blocking(move || {
        let synced = until(&api, "cluster2 synced", |s| {
            s["importedServices"].as_u64() == Some(services as u64)
        });
        let (held, _) = memory_mib(pid);
        let started = Instant::now();
        while std::fs::read_dir(&out).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("autogen."))
                .count()
        }) < services
        {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "output not written"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let written = synced + started.elapsed();
        let (rss, peak) = memory_mib(pid);
        (synced, held, written, rss, peak)
    })
    .await
    .unwrap();
    let (synced, held, written, rss, peak) = figures;
    let total = services * endpoints;
    println!(
        "controller holding one peer of {services} services x {endpoints} endpoints ({total} endpoints), default caps:"
    );
    println!("  idle (own folder loaded, no peer): RSS {idle:.0} MiB");
    println!(
        "  catalog holds every service ({:.1} s after the link appeared): RSS {held:.0} MiB",
        synced.as_secs_f64()
    );
    println!(
        "  output written ({services} ServiceEntry files, {:.1} s): RSS {rss:.0} MiB, peak {peak:.0} MiB",
        written.as_secs_f64()
    );
    println!(
        "  per endpoint held: {:.0} bytes (RSS once written minus idle)",
        (rss - idle) * 1024.0 * 1024.0 / total as f64
    );
    drop(child);
}
