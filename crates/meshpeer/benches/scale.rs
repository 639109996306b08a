//! `cargo bench -p meshpeer --bench scale`
//!
//! SPEC I2 with real controllers (peering over mutual TLS on 127.0.0.1,
//! output written to folders) fed by in-memory sources, so that what is
//! measured is the control plane, not file watching:
//!
//! 1. initial sync: cluster A exports 10,000 services x 10 endpoints; B
//!    links to it; time until B's catalog holds them all; the process's
//!    memory (RSS) once synced;
//! 2. endpoint churn: 100 readiness flips per second on random pods of A for
//!    30 s (`CHURN_SECS`); the controllers' CPU time (process user+system)
//!    and how long each flip takes to show in B's catalog (p50/p99);
//! 3. 20 clusters in one process, each linked to every other, 50 services
//!    each; a burst of 1,000 changes spread over them; time until every
//!    cluster's catalog shows every change.
//!
//! Scale with `SERVICES`, `ENDPOINTS`, `CLUSTERS` (env); `FLAVOR=solo`
//! renders Solo's ServiceEntries instead of upstream Istio's (the default:
//! ServiceEntries and a WorkloadEntry per endpoint).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshpeer::controller::{Controller, ControllerConfig};
use meshpeer_identity::{Identity, RootCa, SpiffeId};
use meshpeer_model::testing::{endpoint_slice, namespace, peer_gateway, slice_endpoint, svc};
use meshpeer_model::{Change, ClusterConfig, Kind, Object};
use meshpeer_store::file_sink::FileSink;
use meshpeer_store::{ClusterSource, SourceError, Update};
use tokio::sync::mpsc;

/// A source fed by the bench: the first update is the complete state.
struct ChannelSource {
    rx: mpsc::Receiver<Update>,
}

impl ClusterSource for ChannelSource {
    fn describe(&self) -> String {
        "bench channel".into()
    }

    fn run(
        mut self: Box<Self>,
        tx: mpsc::Sender<Update>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        Box::pin(async move {
            while let Some(u) = self.rx.recv().await {
                if tx.send(u).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }
}

struct Cluster {
    name: String,
    controller: Controller,
    tx: mpsc::Sender<Update>,
}

/// A Service `shop/svc<i>` (global) and its EndpointSlice of `endpoints`
/// addresses, all ready unless `unready` says which one is not.
fn service_objects(
    cluster: u16,
    i: usize,
    endpoints: usize,
    unready: Option<usize>,
) -> [Object; 2] {
    let name = format!("svc{i}");
    let eps = (0..endpoints)
        .map(|e| {
            let ip = format!(
                "10.{}.{}.{}",
                cluster % 250,
                (i * endpoints + e) / 250 % 250,
                (i * endpoints + e) % 250 + 1
            );
            slice_endpoint(&ip, Some(unready != Some(e)), None)
        })
        .collect();
    [
        Object::Service(svc("shop", &name).global().selectorless().service()),
        Object::EndpointSlice(endpoint_slice("shop", &name, &format!("{name}-0"), eps)),
    ]
}

fn replace_all(config: ClusterConfig, objects: Vec<Object>) -> Update {
    let mut changes = vec![Change::Config(config)];
    for kind in Kind::ALL {
        changes.push(Change::Replace(
            kind,
            objects
                .iter()
                .filter(|o| o.kind() == kind)
                .cloned()
                .collect(),
        ));
    }
    changes.push(Change::SourceDiagnostics(Vec::new()));
    Update { changes }
}

async fn start(
    root: &RootCa,
    name: &str,
    tmp: &std::path::Path,
    n: u16,
) -> (Controller, mpsc::Sender<Update>) {
    let now = SystemTime::now();
    let ca = root
        .issue_intermediate(name, name, Duration::from_secs(86_400), now)
        .unwrap();
    let trust_root = ca.trust_root().clone();
    let id = SpiffeId::new(name, "istio-system", "meshpeer").unwrap();
    let identity = Arc::new(Identity::new(ca, id, Duration::from_secs(3600), now).unwrap());
    let (tx, rx) = mpsc::channel(1024);
    let mut cfg = ControllerConfig::new(
        Box::new(ChannelSource { rx }),
        Box::new(FileSink::new(tmp.join(name))),
        identity,
        trust_root,
        "127.0.0.1:0".parse().unwrap(),
    );
    cfg.vip_range = format!("10.{}.0.0/16", 100 + n).parse().unwrap();
    if std::env::var("FLAVOR").is_ok_and(|f| f == "solo") {
        cfg.istio_flavor = meshpeer_model::render::IstioFlavor::Solo;
    }
    let controller = Controller::start(cfg).await.unwrap();
    (controller, tx)
}

/// Waits until a controller's view satisfies `pred` (its output may still
/// be being written).
async fn until(c: &Controller, mut pred: impl FnMut(&meshpeer::controller::View) -> bool) {
    let mut view = c.view();
    loop {
        if pred(&view.borrow_and_update()) {
            return;
        }
        tokio::time::timeout(Duration::from_secs(300), view.changed())
            .await
            .expect("no change within 300 s")
            .unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Resident memory of this process, from /proc.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat (1-based), here 12 and 13.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A's state: `services` x `endpoints`; B links to A.
async fn initial_sync_and_churn(root: &RootCa, tmp: &std::path::Path) {
    let services = env("SERVICES", 10_000);
    let endpoints = env("ENDPOINTS", 10);
    let churn_secs = env("CHURN_SECS", 30);
    let rss_before = rss_mib();
    let (a, a_tx) = start(root, "cluster-a", tmp, 1).await;
    let (b, b_tx) = start(root, "cluster-b", tmp, 2).await;
    let mut objects = vec![
        Object::Namespace(namespace("istio-system", &[])),
        Object::Namespace(namespace("shop", &[])),
    ];
    for i in 0..services {
        objects.extend(service_objects(1, i, endpoints, None));
    }
    let loaded = Instant::now();
    a_tx.send(replace_all(ClusterConfig::new("cluster-a"), objects))
        .await
        .unwrap();
    until(&a, |v| v.status.exported_services == services).await;
    let a_loaded = loaded.elapsed();
    a.wait_for(Duration::from_secs(300), |v| {
        v.status.exported_services == services
    })
    .await
    .unwrap();
    let a_written = loaded.elapsed();
    // B links to A: the initial sync.
    let port = a.peering_addr.port();
    let mut gw = peer_gateway("cluster-a", "cluster-a", "cluster-a", "127.0.0.1");
    for l in &mut gw.spec.listeners {
        if l.name == "xds-tls" {
            l.port = i32::from(port);
        }
    }
    let started = Instant::now();
    b_tx.send(replace_all(
        ClusterConfig::new("cluster-b"),
        vec![
            Object::Namespace(namespace("istio-system", &[])),
            Object::Gateway(gw),
        ],
    ))
    .await
    .unwrap();
    until(&b, |v| v.catalog.services.len() == services).await;
    let synced = started.elapsed();
    b.wait_for(Duration::from_secs(300), |v| {
        v.catalog.services.len() == services
    })
    .await
    .unwrap();
    let b_written = started.elapsed();
    println!(
        "initial sync of {services} services x {endpoints} endpoints: B's catalog holds them {} after the link appears ({} with its {services} ServiceEntry files written); A exported them {} after its state arrived ({} written); RSS of both controllers {:.0} MiB ({:.0} MiB before)",
        ms(synced),
        ms(b_written),
        ms(a_loaded),
        ms(a_written),
        rss_mib(),
        rss_before
    );

    // Churn: 100 readiness flips per second on random services of A.
    let flips = churn_secs * 100;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut lags = Vec::with_capacity(flips);
    let mut view = b.view();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut unready: BTreeMap<usize, Option<usize>> = BTreeMap::new();
    for k in 0..flips {
        let due = t0 + Duration::from_millis(10 * k as u64);
        tokio::time::sleep_until(due.into()).await;
        let i = rng.usize(0..services);
        let next = match unready.get(&i).copied().flatten() {
            Some(_) => None,
            None => Some(rng.usize(0..endpoints)),
        };
        unready.insert(i, next);
        let [_, slice] = service_objects(1, i, endpoints, next);
        let host = format!("svc{i}.shop.mesh.internal");
        let want = endpoints - usize::from(next.is_some());
        let sent = Instant::now();
        a_tx.send(Update {
            changes: vec![Change::Apply(slice)],
        })
        .await
        .unwrap();
        // B's lag for this flip (the next flip waits its turn).
        loop {
            let ok = view
                .borrow_and_update()
                .catalog
                .service(&host)
                .is_some_and(|s| s.endpoint_count() == want);
            if ok {
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), view.changed())
                .await
                .expect("flip did not reach B within 10s")
                .unwrap();
        }
        lags.push(sent.elapsed());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    lags.sort();
    println!(
        "churn: {flips} readiness flips over {wall:.1} s on {services} services: both controllers used {:.0}% of one core ({cpu:.1} s CPU); B's lag p50 {} p99 {} max {}",
        100.0 * cpu / wall,
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.99)),
        ms(lags[lags.len() - 1])
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// `clusters` controllers, every one linked to every other.
async fn many_clusters(root: &RootCa, tmp: &std::path::Path) {
    let n = env("CLUSTERS", 20);
    let per = 50;
    let changes = 1_000;
    let mut clusters = Vec::new();
    for i in 0..n {
        let name = format!("c{i:02}");
        let (controller, tx) = start(root, &name, tmp, 10 + i as u16).await;
        clusters.push(Cluster {
            name,
            controller,
            tx,
        });
    }
    let ports: Vec<u16> = clusters
        .iter()
        .map(|c| c.controller.peering_addr.port())
        .collect();
    for (i, c) in clusters.iter().enumerate() {
        let mut objects = vec![
            Object::Namespace(namespace("istio-system", &[])),
            Object::Namespace(namespace("shop", &[])),
        ];
        for (j, other) in clusters.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut gw = peer_gateway(&other.name, &other.name, &other.name, "127.0.0.1");
            for l in &mut gw.spec.listeners {
                if l.name == "xds-tls" {
                    l.port = i32::from(ports[j]);
                }
            }
            objects.push(Object::Gateway(gw));
        }
        for s in 0..per {
            objects.extend(service_objects(i as u16, s, 2, None));
        }
        c.tx.send(replace_all(ClusterConfig::new(&c.name), objects))
            .await
            .unwrap();
    }
    // Namespace sameness: every cluster sees `per` services, each from all.
    for c in &clusters {
        c.controller
            .wait_for(Duration::from_secs(120), |v| {
                v.catalog.services.len() == per
                    && v.catalog
                        .services
                        .values()
                        .all(|s| s.contributions.len() == n)
            })
            .await
            .unwrap();
    }
    // The burst: 1,000 readiness changes spread over the clusters; each
    // marks one endpoint of one service not ready.
    let mut rng = fastrand::Rng::with_seed(11);
    let mut wanted: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..changes {
        let (c, s) = (rng.usize(0..n), rng.usize(0..per));
        let e = rng.usize(0..2);
        wanted.insert((c, s), e);
        let [_, slice] = service_objects(c as u16, s, 2, Some(e));
        clusters[c]
            .tx
            .send(Update {
                changes: vec![Change::Apply(slice)],
            })
            .await
            .unwrap();
    }
    for c in &clusters {
        c.controller
            .wait_for(Duration::from_secs(120), |v| {
                wanted.keys().all(|(ci, s)| {
                    v.catalog
                        .service(&format!("svc{s}.shop.mesh.internal"))
                        .and_then(|svc| {
                            svc.contributions
                                .iter()
                                .find(|k| k.cluster == clusters[*ci].name)
                        })
                        .is_some_and(|k| k.service.endpoint_count() == 1)
                })
            })
            .await
            .unwrap();
    }
    println!(
        "{n} clusters linked both ways, {per} services each: a burst of {changes} changes converged everywhere in {}",
        ms(started.elapsed())
    );
    for c in clusters {
        c.controller.shutdown().await;
    }
}

fn main() {
    meshpeer_identity::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(
        "bench root",
        Duration::from_secs(86_400 * 30),
        SystemTime::now(),
    )
    .unwrap();
    rt.block_on(async {
        if std::env::var("ONLY").map_or(true, |o| o == "sync") {
            initial_sync_and_churn(&root, tmp.path()).await;
        }
        if std::env::var("ONLY").map_or(true, |o| o == "many") {
            many_clusters(&root, tmp.path()).await;
        }
    });
}
