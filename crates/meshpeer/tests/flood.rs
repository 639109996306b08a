//! SPEC B5 under a flood, with real controllers, gateways and proxies in
//! one process (file mode, mutual TLS on 127.0.0.1): thousands of idle and
//! garbage connections on cluster2's HBONE port and on its controller's
//! peering port, while cluster1's traffic to cluster2 (proxy -> HBONE ->
//! gateway -> backend) and the peering between the two keep working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use meshpeer_dataplane::hbone::{HboneClient, HboneMetrics, PoolConfig, TunnelMeta};
use meshpeer_identity::{ALPN_H2, Identity, SpiffeId, client_config};
use prometheus_client::registry::Registry;
use support::{Backend, Mesh, WITHIN, contributors, namespace, service_with, tally};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const HOST: &str = "in-ambient.httpbin.mesh.internal";
const GLOBAL: (&str, &str) = ("solo.io/service-scope", "global");

/// Idle connections opened on each port at once.
const IDLE: usize = 2_500;
/// Garbage connections (random bytes, half a TLS handshake) on each port
/// at once, then more, one after another, while the checks run.
const GARBAGE: usize = 500;
/// What each listener holds before authentication (the default).
const MAX_PENDING: usize = 1_024;

/// The first bytes of a TLS 1.2/1.3 ClientHello record: a handshake that
/// never completes.
const HALF_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a, 0x5a, 0x5a,
];

/// Open files this test needs: both ends of every flood connection that
/// the listeners have not shed yet, and the mesh's own.
fn check_open_files_limit() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: Option<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    let need = (2 * (IDLE + GARBAGE) + 2 * 2 * MAX_PENDING + 1_000) as u64;
    if let Some(soft) = soft {
        assert!(
            soft >= need,
            "this test holds ~{need} open files; the soft limit is {soft} (raise it: ulimit -n {need})"
        );
    }
}

/// What became of a flood's connections.
#[derive(Default)]
struct Counts {
    /// Connects that completed, successfully or not.
    attempted: AtomicUsize,
    opened: AtomicUsize,
    /// Closed by the server.
    closed: AtomicUsize,
}

/// A connection of the flood: held open until the server closes it; counts
/// that closing. `speak`: what it sends first (nothing: idle).
fn flood_conn(target: SocketAddr, speak: Vec<u8>, counts: Arc<Counts>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let conn = TcpStream::connect(target).await;
        counts.attempted.fetch_add(1, Ordering::Relaxed);
        let Ok(mut conn) = conn else {
            return;
        };
        counts.opened.fetch_add(1, Ordering::Relaxed);
        let closed = &counts.closed;
        if !speak.is_empty() && conn.write_all(&speak).await.is_err() {
            closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Whatever the server answers (an alert, a 400), then its close.
        let mut buf = [0u8; 512];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
            }
        }
    })
}

/// Garbage: random bytes, or the start of a ClientHello.
fn garbage(i: usize) -> Vec<u8> {
    if i.is_multiple_of(2) {
        HALF_HELLO.to_vec()
    } else {
        let n = fastrand::usize(1..2_000);
        std::iter::repeat_with(|| fastrand::u8(..))
            .take(n)
            .collect()
    }
}

/// The flood on one port.
struct Flood {
    target: SocketAddr,
    conns: Vec<JoinHandle<()>>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    stream: Option<JoinHandle<usize>>,
}

impl Flood {
    /// Opens `IDLE` idle and `GARBAGE` garbage connections to `target`,
    /// returning once all were attempted.
    async fn start(target: SocketAddr) -> Flood {
        let counts = Arc::new(Counts::default());
        let mut conns = Vec::with_capacity(IDLE + GARBAGE);
        for i in 0..IDLE + GARBAGE {
            let speak = if i < IDLE { Vec::new() } else { garbage(i) };
            conns.push(flood_conn(target, speak, Arc::clone(&counts)));
            // Connect in waves: the kernel's accept queue is 1,024 long.
            if i % 256 == 255 {
                tokio::time::timeout(WITHIN, async {
                    while counts.attempted.load(Ordering::Relaxed) < i + 1 - 64 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
                .await
                .expect("flood connections never connected");
            }
        }
        assert!(
            counts.opened.load(Ordering::Relaxed) >= IDLE,
            "only {} flood connections to {target} connected",
            counts.opened.load(Ordering::Relaxed)
        );
        Flood {
            target,
            conns,
            counts,
            stop: Arc::new(AtomicBool::new(false)),
            stream: None,
        }
    }

    /// Keeps opening garbage connections, one after another, until
    /// stopped: a flood that goes on while the legitimate work runs.
    fn keep_going(&mut self) {
        let (target, stop) = (self.target, Arc::clone(&self.stop));
        let counts = Arc::clone(&self.counts);
        self.stream = Some(tokio::spawn(async move {
            let mut held: std::collections::VecDeque<JoinHandle<()>> = Default::default();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                held.push_back(flood_conn(target, garbage(n), Arc::clone(&counts)));
                n += 1;
                if held.len() > GARBAGE
                    && let Some(oldest) = held.pop_front()
                {
                    oldest.abort();
                }
                tokio::task::yield_now().await;
            }
            for h in held {
                h.abort();
            }
            n
        }));
    }

    /// Waits until the server has closed at least `n` flood connections.
    async fn wait_closed(&self, n: usize, what: &str) {
        tokio::time::timeout(WITHIN, async {
            while self.counts.closed.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: {} of {} flood connections closed by the server, expected {n}",
                self.counts.closed.load(Ordering::Relaxed),
                self.counts.opened.load(Ordering::Relaxed)
            )
        });
    }

    async fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let streamed = match self.stream.take() {
            Some(s) => s.await.unwrap(),
            None => 0,
        };
        for c in self.conns {
            c.abort();
        }
        streamed
    }
}

/// An HBONE client holding cluster1's proxy identity: a new pool, so its
/// first tunnel makes a new TLS connection to the flooded gateway.
fn hbone_client(mesh: &Mesh) -> HboneClient {
    let now = SystemTime::now();
    let ca = mesh
        .root
        .issue_intermediate("cluster1", "cluster1", Duration::from_secs(3600), now)
        .unwrap();
    let root = ca.trust_root().clone();
    let id = SpiffeId::new("cluster1", "istio-system", "meshpeer-proxy").unwrap();
    let identity = Arc::new(Identity::new(ca, id, Duration::from_secs(3600), now).unwrap());
    HboneClient::new(
        Arc::new(move |td: &str| {
            client_config(Arc::clone(&identity), &root, td, &[ALPN_H2]).map_err(|e| e.to_string())
        }),
        PoolConfig::default(),
        HboneMetrics::register(&mut Registry::default()),
    )
}

fn metric(registry: &Registry, contains: &[&str]) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && contains.iter().all(|c| l.contains(c)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes `text` and reads it back through an echoing connection.
async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    text: &str,
) {
    let fut = async {
        conn.get_mut()
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        line
    };
    let line = tokio::time::timeout(WITHIN, fut)
        .await
        .unwrap_or_else(|_| panic!("no echo of {text} within {WITHIN:?}"));
    assert_eq!(line.trim_end(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b5_a_flood_of_idle_and_garbage_connections_does_not_stop_a_tunnel_or_a_peer() {
    check_open_files_limit();
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link_all().await;
    // cluster2 serves in-ambient; cluster1 has a global service of its own.
    let c2 = mesh.cluster("cluster2");
    let ip = c2.pod_ip(1);
    c2.write("httpbin-ns.yaml", &namespace("httpbin", &[]));
    c2.write(
        "in-ambient.yaml",
        &service_with(
            "httpbin",
            "in-ambient",
            &[GLOBAL],
            &[],
            &[("in-ambient-0", &ip, &[])],
        ),
    );
    let _backend = Backend::start(format!("{ip}:8080").parse().unwrap(), "cluster2").await;
    let c1 = mesh.cluster("cluster1");
    let ip1 = c1.pod_ip(1);
    c1.write("shop-ns.yaml", &namespace("shop", &[]));
    c1.write(
        "cart.yaml",
        &service_with("shop", "cart", &[GLOBAL], &[], &[("cart-0", &ip1, &[])]),
    );
    c2.wait_caller("cluster1").await;
    c1.wait_caller("cluster2").await;
    let vip = c1.wait_route(HOST, 8000, &["cluster2"]).await;
    c2.wait("cluster1's cart", |v| {
        contributors(v, "cart.shop.mesh.internal").is_some()
    })
    .await;

    // A tunnel open before the flood: cluster1's proxy -> HBONE ->
    // cluster2's gateway -> the backend, which names itself and echoes.
    let mut before = BufReader::new(TcpStream::connect(vip).await.unwrap());
    let mut hello = String::new();
    before.read_line(&mut hello).await.unwrap();
    assert_eq!(hello.trim_end(), "cluster2");
    echo(&mut before, "before the flood").await;

    // The flood: on cluster2's HBONE port and its controller's peering
    // port, thousands of connections that never speak, and garbage.
    let gateway = SocketAddr::from(([127, 0, 0, 1], c2.gateway().addr.port()));
    let peering = c2.controller().peering_addr;
    let mut floods = Vec::new();
    for target in [gateway, peering] {
        floods.push(Flood::start(target).await);
    }
    for f in &mut floods {
        f.keep_going();
    }
    // The listeners shed the oldest beyond what they hold (B5): the flood
    // really reached them, and what they hold stays bounded.
    for (f, name) in floods.iter().zip(["HBONE", "peering"]) {
        f.wait_closed(IDLE + GARBAGE - MAX_PENDING, name).await;
    }
    // The gateway counts the oldest shed (garbage that is not TLS is
    // refused by the handshake instead, counted as such). On a slow
    // machine the flood outlasts the handshake timeout (10 s), and the
    // oldest idle connections are closed by it before a newer one would
    // have shed them: both keep what is pending bounded.
    let closed = |reason: &str| {
        metric(
            &c2.registry,
            &[
                "listener_connections_closed_total",
                &format!("reason=\"{reason}\""),
            ],
        )
    };
    let (shed, timed_out) = (closed("shed"), closed("handshake_timeout"));
    assert!(
        shed > 0.0 && shed + timed_out >= (IDLE - MAX_PENDING) as f64,
        "cluster2's gateway shed {shed} connections and timed out {timed_out}"
    );

    // The tunnel opened before carries bytes end to end.
    for i in 0..10 {
        echo(&mut before, &format!("during the flood {i}")).await;
    }
    // New connections through cluster1's proxy land in cluster2.
    assert_eq!(
        tally(vip, 20).await,
        std::collections::BTreeMap::from([("cluster2".to_owned(), 20)])
    );
    // A new HBONE connection (a new TLS handshake at the flooded gateway)
    // opens a tunnel that carries bytes.
    let client = hbone_client(&mesh);
    let tunnel = tokio::time::timeout(
        WITHIN,
        client.connect(
            gateway,
            "cluster2",
            &format!("{HOST}:8000"),
            // As meshpeer's proxy sends them: the bytes are the application's.
            &TunnelMeta {
                payload: Some(meshpeer_dataplane::hbone::PAYLOAD_TCP.into()),
                ..TunnelMeta::default()
            },
        ),
    )
    .await
    .expect("no tunnel through the flooded gateway within the deadline")
    .unwrap();
    let mut fresh = BufReader::new(tunnel);
    let mut hello = String::new();
    fresh.read_line(&mut hello).await.unwrap();
    assert_eq!(hello.trim_end(), "cluster2");
    echo(&mut fresh, "a new tunnel during the flood").await;

    // The peer: its services stay in the other cluster's catalog.
    let now = c1.controller().current();
    assert_eq!(
        contributors(&now, HOST),
        Some(vec!["cluster2".to_owned()]),
        "cluster1 lost cluster2's service during the flood"
    );
    // cluster1's peering connection to cluster2 is cut: it must connect
    // again through the flooded peering port (a new TLS handshake) to
    // learn anything more from cluster2.
    mesh.relays[&("cluster1".to_owned(), "cluster2".to_owned())].cut();
    c2.write(
        "late.yaml",
        &service_with("httpbin", "late", &[GLOBAL], &[], &[("late-0", &ip, &[])]),
    );
    c1.wait("cluster2's new service, learned during the flood", |v| {
        contributors(v, "late.httpbin.mesh.internal").is_some() && contributors(v, HOST).is_some()
    })
    .await;
    // And cluster2 still has cluster1's service.
    assert!(
        contributors(&c2.controller().current(), "cart.shop.mesh.internal").is_some(),
        "cluster2 lost cluster1's service during the flood"
    );

    let mut streamed = 0;
    for f in floods {
        streamed += f.stop().await;
    }
    eprintln!("{streamed} more garbage connections opened during the checks");
    assert!(streamed > 0, "the flood did not go on during the checks");
    echo(&mut before, "after the flood").await;
    mesh.shutdown().await;
}
