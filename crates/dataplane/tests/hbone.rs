//! HBONE tunnels end to end on loopback sockets: a client pool, a gateway
//! (`serve`) with a test handler, and small upstream servers (SPEC D2, D3, C6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::digest::{Context as Sha, SHA256};
use bytes::Bytes;
use meshpeer_dataplane::hbone::{
    ClientTls, HboneClient, HboneError, HboneMetrics, PoolConfig, RefusalLabels, Refuse, Tunnel,
    TunnelHandler, TunnelLabels, TunnelMeta, TunnelRequest, Upstream, serve,
};
use meshpeer_identity::{
    ALPN_H2, Identity, PeerPolicy, Refusal, RootCa, SpiffeId, TrustRoot, client_config,
    server_config,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

const DAY: Duration = Duration::from_secs(24 * 3600);
const MB: u64 = 1 << 20;
const GATEWAY_TD: &str = "cluster2";

// ---------------------------------------------------------------------------
// PKI

fn root(name: &str) -> RootCa {
    RootCa::generate(name, 365 * DAY, SystemTime::now()).unwrap()
}

fn identity(root: &RootCa, cluster: &str, sa: &str) -> Arc<Identity> {
    let now = SystemTime::now();
    let ca = root
        .issue_intermediate(cluster, cluster, 30 * DAY, now)
        .unwrap();
    let id = SpiffeId::new(cluster, "istio-system", sa).unwrap();
    Arc::new(Identity::new(ca, id, DAY, now).unwrap())
}

fn client_tls(id: Arc<Identity>, trust: TrustRoot) -> ClientTls {
    Arc::new(move |trust_domain: &str| {
        client_config(id.clone(), &trust, trust_domain, &[ALPN_H2]).map_err(|e| e.to_string())
    })
}

// ---------------------------------------------------------------------------
// Upstreams

/// What the `watch` and `greet` upstreams saw of their connection.
#[derive(Debug)]
enum Report {
    /// Read this many bytes, then EOF.
    Eof(u64),
    /// Read this many bytes, then an error.
    Error(u64, std::io::ErrorKind),
}

struct Upstreams {
    /// Echoes everything, shuts down after EOF.
    echo: SocketAddr,
    /// Reads to EOF, then answers "<count> <sha256 hex>\n".
    sink: SocketAddr,
    /// Reads a u64 length and a u64 seed, sends that many seeded bytes, closes.
    source: SocketAddr,
    /// Reads 4 bytes, then closes with RST.
    reset: SocketAddr,
    /// Reads until EOF or error and reports it.
    watch: SocketAddr,
    /// Sends "hello\n", shuts its write side down, reads to EOF and reports.
    greet: SocketAddr,
    /// Reads to EOF, answers the count as a u64 (for throughput, no hashing).
    discard: SocketAddr,
    /// Reads a u64 length, sends that many bytes of one buffer (no generating).
    blast: SocketAddr,
    /// Sends "held\n", reads to EOF, reports, then keeps the connection
    /// open (its write side too) for a minute.
    hold: SocketAddr,
    reports: tokio::sync::Mutex<mpsc::UnboundedReceiver<Report>>,
}

async fn listen<F, Fut>(serve_one: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_one(stream));
        }
    });
    addr
}

async fn drain(stream: &mut (impl AsyncRead + Unpin)) -> Report {
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Report::Eof(count),
            Ok(n) => count += n as u64,
            Err(err) => return Report::Error(count, err.kind()),
        }
    }
}

async fn upstreams() -> Upstreams {
    let (tx, rx) = mpsc::unbounded_channel();
    let echo = listen(|mut s| async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown().await;
    })
    .await;
    let sink = listen(|mut s| async move {
        let mut sha = Sha::new(&SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut count = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    sha.update(&buf[..n]);
                    count += n as u64;
                }
                Err(_) => return,
            }
        }
        let answer = format!("{count} {}\n", hex(sha.finish().as_ref()));
        let _ = s.write_all(answer.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
    let source = listen(|mut s| async move {
        let (Ok(len), Ok(seed)) = (s.read_u64().await, s.read_u64().await) else {
            return;
        };
        let mut data = Seeded::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            data.fill(&mut buf[..n]);
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
            left -= n as u64;
        }
        let _ = s.shutdown().await;
    })
    .await;
    let reset = listen(|mut s| async move {
        let mut four = [0u8; 4];
        if s.read_exact(&mut four).await.is_ok() {
            s.set_zero_linger().unwrap();
        }
        drop(s);
    })
    .await;
    let watch_tx = tx.clone();
    let watch = listen(move |mut s| {
        let tx = watch_tx.clone();
        async move {
            let _ = tx.send(drain(&mut s).await);
        }
    })
    .await;
    let hold_tx = tx.clone();
    let greet = listen(move |mut s| {
        let tx = tx.clone();
        async move {
            s.write_all(b"hello\n").await.unwrap();
            s.shutdown().await.unwrap();
            let _ = tx.send(drain(&mut s).await);
        }
    })
    .await;
    let discard = listen(|mut s| async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut count = 0u64;
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            count += n as u64;
        }
        let _ = s.write_u64(count).await;
        let _ = s.shutdown().await;
    })
    .await;
    let blast = listen(|mut s| async move {
        let Ok(len) = s.read_u64().await else {
            return;
        };
        let buf = vec![0x5au8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
            left -= n as u64;
        }
        let _ = s.shutdown().await;
    })
    .await;
    let hold = listen(move |mut s| {
        let tx = hold_tx.clone();
        async move {
            s.write_all(b"held\n").await.unwrap();
            let _ = tx.send(drain(&mut s).await);
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
    .await;
    Upstreams {
        hold,
        echo,
        discard,
        blast,
        sink,
        source,
        reset,
        watch,
        greet,
        reports: tokio::sync::Mutex::new(rx),
    }
}

impl Upstreams {
    async fn next_report(&self) -> Report {
        let mut rx = self.reports.lock().await;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no upstream report within 10 s")
            .expect("report channel closed")
    }
}

/// Deterministic test bytes.
struct Seeded(fastrand::Rng);

impl Seeded {
    fn new(seed: u64) -> Self {
        Seeded(fastrand::Rng::with_seed(seed))
    }

    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The gateway

/// Routes by host: `<name>.test` goes to upstream `<name>`; `denied.test`
/// is refused with 403; anything else with 404.
struct TestHandler {
    upstreams: Arc<Upstreams>,
    requests: Mutex<Vec<TunnelRequest>>,
}

impl TestHandler {
    fn requests(&self) -> Vec<TunnelRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl TunnelHandler for TestHandler {
    fn open(
        &self,
        req: TunnelRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Box<dyn Upstream>, Refuse>> + Send>> {
        self.requests.lock().unwrap().push(req.clone());
        let host = req.authority.rsplit_once(':').map_or("", |(host, _)| host);
        let u = &self.upstreams;
        let target = match host {
            "echo.test" => u.echo,
            "sink.test" => u.sink,
            "source.test" => u.source,
            "reset.test" => u.reset,
            "watch.test" => u.watch,
            "greet.test" => u.greet,
            "discard.test" => u.discard,
            "blast.test" => u.blast,
            "hold.test" => u.hold,
            // As a gateway whose endpoint takes a while: echo, after 300 ms.
            "slow.test" => {
                let echo = u.echo;
                return Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    match TcpStream::connect(echo).await {
                        Ok(stream) => Ok(Box::new(stream) as Box<dyn Upstream>),
                        Err(err) => Err(Refuse {
                            status: http::StatusCode::SERVICE_UNAVAILABLE,
                            message: err.to_string(),
                        }),
                    }
                });
            }
            "denied.test" => {
                let message = format!(
                    "{} is not exported to cluster {}",
                    req.authority,
                    req.peer.trust_domain()
                );
                return Box::pin(async move {
                    Err(Refuse {
                        status: http::StatusCode::FORBIDDEN,
                        message,
                    })
                });
            }
            _ => {
                return Box::pin(async move {
                    Err(Refuse {
                        status: http::StatusCode::NOT_FOUND,
                        message: format!("no service {}", req.authority),
                    })
                });
            }
        };
        Box::pin(async move {
            match TcpStream::connect(target).await {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn Upstream>),
                Err(err) => Err(Refuse {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    message: err.to_string(),
                }),
            }
        })
    }
}

struct Gateway {
    addr: SocketAddr,
    metrics: Arc<HboneMetrics>,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    async fn start(id: Arc<Identity>, trust: &TrustRoot, upstreams: Arc<Upstreams>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, id, trust, upstreams)
    }

    fn start_on(
        listener: TcpListener,
        id: Arc<Identity>,
        trust: &TrustRoot,
        upstreams: Arc<Upstreams>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let tls = server_config(id, trust, PeerPolicy::AnyTrustDomain, &[ALPN_H2]).unwrap();
        let handler = Arc::new(TestHandler {
            upstreams,
            requests: Mutex::new(Vec::new()),
        });
        let metrics = Arc::new(HboneMetrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            tls,
            trust.clone(),
            handler.clone(),
            metrics.clone(),
            meshpeer_dataplane::hbone::default_limits(),
            async move {
                let _ = stopped.await;
            },
        ));
        Gateway {
            addr,
            metrics,
            handler,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// One mesh: a root, a gateway in `cluster2`, a client identity in `cluster1`.
struct Mesh {
    root: RootCa,
    upstreams: Arc<Upstreams>,
    gateway: Gateway,
    client_id: Arc<Identity>,
}

impl Mesh {
    async fn new() -> Self {
        let root = root("mesh-root");
        let upstreams = Arc::new(upstreams().await);
        let gateway_id = identity(&root, GATEWAY_TD, "istio-eastwestgateway");
        let gateway = Gateway::start(gateway_id, root.trust_root(), upstreams.clone()).await;
        let client_id = identity(&root, "cluster1", "ztunnel");
        Mesh {
            root,
            upstreams,
            gateway,
            client_id,
        }
    }

    fn client(&self, config: PoolConfig) -> (HboneClient, Arc<HboneMetrics>) {
        let metrics = Arc::new(HboneMetrics::default());
        let tls = client_tls(self.client_id.clone(), self.root.trust_root().clone());
        (HboneClient::new(tls, config, metrics.clone()), metrics)
    }
}

fn opened(metrics: &HboneMetrics, direction: &'static str, outcome: &'static str) -> u64 {
    metrics
        .tunnels_opened
        .get_or_create(&TunnelLabels { direction, outcome })
        .get()
}

fn closed(metrics: &HboneMetrics, direction: &'static str, outcome: &'static str) -> u64 {
    metrics
        .tunnels_closed
        .get_or_create(&TunnelLabels { direction, outcome })
        .get()
}

fn tls_refusals(metrics: &HboneMetrics, direction: &'static str, reason: &'static str) -> u64 {
    metrics
        .tls_refusals
        .get_or_create(&RefusalLabels { direction, reason })
        .get()
}

/// Waits for `cond` (polling), failing the test after 10 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A tunnel to the upstream that greets and then holds its connection
/// open (`hold.test`), its greeting read.
async fn held_tunnel(client: &HboneClient, gateway: SocketAddr) -> Tunnel {
    let mut tunnel = client
        .connect(gateway, GATEWAY_TD, "hold.test:9", &TunnelMeta::default())
        .await
        .unwrap();
    let mut line = [0u8; 5];
    tunnel.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"held\n");
    tunnel
}

async fn echo_once(client: &HboneClient, gateway: SocketAddr, payload: &[u8]) {
    let mut tunnel = client
        .connect(gateway, GATEWAY_TD, "echo.test:7", &TunnelMeta::default())
        .await
        .unwrap();
    tunnel.write_all(payload).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = Vec::new();
    tunnel.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload);
}

// ---------------------------------------------------------------------------
// D2: bytes relayed both ways, intact, at speed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_hundred_megabytes_both_ways_intact() {
    let mesh = Mesh::new().await;
    let (client, metrics) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;
    let total = 100 * MB;

    // Upstream and back: 100 MB out, the same 100 MB echoed.
    let tunnel = client
        .connect(gw, GATEWAY_TD, "echo.test:7", &TunnelMeta::default())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(tunnel);
    let writer = tokio::spawn(async move {
        let mut data = Seeded::new(7);
        let mut sha = Sha::new(&SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            data.fill(&mut buf[..n]);
            sha.update(&buf[..n]);
            wr.write_all(&buf[..n]).await.unwrap();
            left -= n as u64;
        }
        wr.shutdown().await.unwrap();
        (wr, hex(sha.finish().as_ref()))
    });
    let mut sha = Sha::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    loop {
        let n = rd.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        received += n as u64;
    }
    let echo_time = started.elapsed();
    let (wr, sent_sha) = writer.await.unwrap();
    assert_eq!(received, total);
    assert_eq!(hex(sha.finish().as_ref()), sent_sha);
    drop(rd.unsplit(wr));
    eprintln!(
        "echo: {} MB each way in {:.2?} ({:.0} MB/s each way)",
        total / MB,
        echo_time,
        (total / MB) as f64 / echo_time.as_secs_f64()
    );

    // Downstream only: 100 MB from the upstream.
    let mut tunnel = client
        .connect(gw, GATEWAY_TD, "source.test:9", &TunnelMeta::default())
        .await
        .unwrap();
    let started = Instant::now();
    tunnel.write_u64(total).await.unwrap();
    tunnel.write_u64(11).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut got = Sha::new(&SHA256);
    let mut received = 0u64;
    loop {
        let n = tunnel.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        received += n as u64;
    }
    let source_time = started.elapsed();
    let mut want = Sha::new(&SHA256);
    let mut data = Seeded::new(11);
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        data.fill(&mut buf[..n]);
        want.update(&buf[..n]);
        left -= n as u64;
    }
    assert_eq!(received, total);
    assert_eq!(hex(got.finish().as_ref()), hex(want.finish().as_ref()));
    drop(tunnel);
    eprintln!(
        "downstream: {} MB in {:.2?} ({:.0} MB/s)",
        total / MB,
        source_time,
        (total / MB) as f64 / source_time.as_secs_f64()
    );

    assert_eq!(
        client.pooled_connections(),
        1,
        "both tunnels share one connection"
    );
    assert_eq!(opened(&metrics, "outbound", "ok"), 2);
    let gw_metrics = mesh.gateway.metrics.clone();
    wait_until("the gateway counts both tunnels closed", || {
        closed(&gw_metrics, "inbound", "ok") == 2
    })
    .await;
    assert_eq!(closed(&metrics, "outbound", "ok"), 2);
    let bytes = |m: &HboneMetrics, direction, way| {
        m.bytes
            .get_or_create(&meshpeer_dataplane::hbone::TrafficLabels { direction, way })
            .get()
    };
    assert_eq!(bytes(&metrics, "outbound", "sent"), total + 16);
    assert_eq!(bytes(&metrics, "outbound", "received"), 2 * total);
    assert_eq!(bytes(&gw_metrics, "inbound", "received"), total + 16);
    assert_eq!(bytes(&gw_metrics, "inbound", "sent"), 2 * total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_two_hundred_concurrent_tunnels() {
    let mesh = Mesh::new().await;
    let (client, _) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;
    let n = 200;
    // Everyone (and the test) meets here once all tunnels are open.
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut tunnel = client
                    .connect(gw, GATEWAY_TD, "echo.test:7", &TunnelMeta::default())
                    .await
                    .unwrap();
                barrier.wait().await;
                let mut payload = vec![0u8; 32 * 1024 + i * 97];
                Seeded::new(i as u64).fill(&mut payload);
                tunnel.write_all(&payload).await.unwrap();
                tunnel.shutdown().await.unwrap();
                let mut back = Vec::new();
                tunnel.read_to_end(&mut back).await.unwrap();
                assert!(back == payload, "tunnel {i} got someone else's bytes");
            })
        })
        .collect();
    barrier.wait().await;
    assert_eq!(client.pooled_connections(), 2, "100 streams per connection");
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(client.pooled_connections(), 2);
    let remotes: HashSet<SocketAddr> = mesh
        .gateway
        .handler
        .requests()
        .iter()
        .map(|r| r.remote)
        .collect();
    assert_eq!(remotes.len(), 2, "the gateway saw two connections");
    assert_eq!(mesh.gateway.handler.requests().len(), n);
}

#[tokio::test]
async fn d2_half_close_is_propagated() {
    let mesh = Mesh::new().await;
    let (client, _) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;

    // Client shutdown -> the upstream reads EOF, and its reply still arrives.
    let mut tunnel = client
        .connect(gw, GATEWAY_TD, "sink.test:9", &TunnelMeta::default())
        .await
        .unwrap();
    let mut payload = vec![0u8; 3 * MB as usize + 5];
    Seeded::new(3).fill(&mut payload);
    tunnel.write_all(&payload).await.unwrap();
    tunnel.shutdown().await.unwrap();
    assert_eq!(
        tunnel.write(b"late").await.unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
    let mut answer = String::new();
    tunnel.read_to_string(&mut answer).await.unwrap();
    let mut sha = Sha::new(&SHA256);
    sha.update(&payload);
    assert_eq!(
        answer,
        format!("{} {}\n", payload.len(), hex(sha.finish().as_ref()))
    );
    drop(tunnel);

    // Upstream shutdown -> we read EOF, and can still send.
    let mut tunnel = client
        .connect(gw, GATEWAY_TD, "greet.test:9", &TunnelMeta::default())
        .await
        .unwrap();
    let mut greeting = String::new();
    tunnel.read_to_string(&mut greeting).await.unwrap();
    assert_eq!(greeting, "hello\n");
    tunnel.write_all(&[1u8; 100_000]).await.unwrap();
    tunnel.shutdown().await.unwrap();
    match mesh.upstreams.next_report().await {
        Report::Eof(100_000) => {}
        other => panic!("the upstream should read 100000 bytes then EOF, got {other:?}"),
    }
    drop(tunnel);
    let gw_metrics = mesh.gateway.metrics.clone();
    wait_until("both inbound tunnels closed cleanly", || {
        closed(&gw_metrics, "inbound", "ok") == 2
    })
    .await;
}

#[tokio::test]
async fn d2_resets_are_propagated() {
    let mesh = Mesh::new().await;
    let (client, metrics) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;
    let gw_metrics = mesh.gateway.metrics.clone();

    // The upstream closes with RST -> our read fails with ConnectionReset.
    let mut tunnel = client
        .connect(gw, GATEWAY_TD, "reset.test:9", &TunnelMeta::default())
        .await
        .unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let err = tunnel.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let err = tunnel.write_all(b"more").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    drop(tunnel);
    assert_eq!(closed(&metrics, "outbound", "error"), 1);
    wait_until("the gateway counts the reset tunnel", || {
        closed(&gw_metrics, "inbound", "error") == 1
    })
    .await;

    // We drop a tunnel mid-transfer -> the upstream connection ends.
    let mut tunnel = client
        .connect(gw, GATEWAY_TD, "watch.test:9", &TunnelMeta::default())
        .await
        .unwrap();
    tunnel.write_all(&[7u8; 200_000]).await.unwrap();
    drop(tunnel);
    match mesh.upstreams.next_report().await {
        Report::Eof(n) => assert!(n <= 200_000),
        Report::Error(n, kind) => assert!(n <= 200_000, "{kind:?}"),
    }
    // A cancel by the caller: counted apart from errors.
    wait_until("the gateway counts the cancelled tunnel", || {
        closed(&gw_metrics, "inbound", "cancelled") == 1
    })
    .await;
    assert_eq!(closed(&gw_metrics, "inbound", "error"), 1);

    // The connection survives stream resets.
    echo_once(&client, gw, b"still fine").await;
    assert_eq!(client.pooled_connections(), 1);
}

/// Issue 17 (INTEROP.md observation 3): ztunnel ends a tunnel it is done
/// with by sending END_STREAM and then dropping the stream (RST_STREAM
/// CANCEL) while the upstream may still be open; that is a clean close,
/// not a caller failure. A cancel before END_STREAM stays an error.
#[tokio::test]
async fn d2_a_caller_that_ends_its_side_then_cancels_closes_cleanly() {
    let mesh = Mesh::new().await;
    let (client, _) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;
    let gw_metrics = mesh.gateway.metrics.clone();
    let mut tunnel = held_tunnel(&client, gw).await;
    tunnel.write_all(b"request").await.unwrap();
    tunnel.shutdown().await.unwrap();
    // The upstream saw the whole request, then EOF; it stays open.
    match mesh.upstreams.next_report().await {
        Report::Eof(7) => {}
        other => panic!("the upstream should read 7 bytes then EOF, got {other:?}"),
    }
    drop(tunnel);
    wait_until("the gateway counts a clean close", || {
        closed(&gw_metrics, "inbound", "ok") == 1
    })
    .await;
    assert_eq!(closed(&gw_metrics, "inbound", "error"), 0);
}

/// INTEROP.md, run I: ztunnel also drops the stream (RST_STREAM CANCEL)
/// without its own END_STREAM, while the gateway's connection to the
/// destination is still open. That is counted `cancelled`, not `error`
/// (the gateway's error rate counts failures), and logged
/// `caller_cancelled`; a caller that ended its side first is `ok`.
#[tokio::test]
async fn d2_a_caller_that_cancels_without_ending_its_side_is_counted_cancelled_not_failed() {
    let mesh = Mesh::new().await;
    let (client, _) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;
    let gw_metrics = mesh.gateway.metrics.clone();
    for n in 1..=3u64 {
        drop(held_tunnel(&client, gw).await);
        wait_until("the gateway counts the cancel", || {
            closed(&gw_metrics, "inbound", "cancelled") == n
        })
        .await;
    }
    assert_eq!(closed(&gw_metrics, "inbound", "error"), 0);
    assert_eq!(closed(&gw_metrics, "inbound", "ok"), 0);
}

// ---------------------------------------------------------------------------
// D3: the gateway refuses with a status and says why

#[tokio::test]
async fn d3_the_gateway_refuses_with_a_status_and_says_why() {
    let mesh = Mesh::new().await;
    let (client, metrics) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;

    let err = client
        .connect(gw, GATEWAY_TD, "denied.test:80", &TunnelMeta::default())
        .await
        .unwrap_err();
    match &err {
        HboneError::Refused { status, message } => {
            assert_eq!(*status, 403);
            assert_eq!(
                message,
                "denied.test:80 is not exported to cluster cluster1"
            );
        }
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    assert_eq!(err.reason(), "refused");
    assert_eq!(opened(&metrics, "outbound", "refused"), 1);

    // A target without a port never reaches the handler.
    let err = client
        .connect(gw, GATEWAY_TD, "noport.test", &TunnelMeta::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HboneError::Refused { status: 400, message } if message.contains("host:port")),
        "{err:?}"
    );
    assert_eq!(mesh.gateway.handler.requests().len(), 1);

    // A refusal does not hurt the connection.
    echo_once(&client, gw, b"after refusals").await;
    assert_eq!(client.pooled_connections(), 1);
    let gw_metrics = mesh.gateway.metrics.clone();
    wait_until("the gateway counts two refusals", || {
        opened(&gw_metrics, "inbound", "refused") == 2
    })
    .await;
}

#[tokio::test]
async fn d3_requests_other_than_connect_get_405() {
    let mesh = Mesh::new().await;
    let tls = client_config(
        mesh.client_id.clone(),
        mesh.root.trust_root(),
        GATEWAY_TD,
        &[ALPN_H2],
    )
    .unwrap();
    let tcp = TcpStream::connect(mesh.gateway.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gateway.test").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("https://echo.test:7/").body(()).unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::METHOD_NOT_ALLOWED);
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.unwrap();
        text.extend_from_slice(&chunk);
    }
    assert_eq!(text, b"HBONE accepts only CONNECT");
    assert!(mesh.gateway.handler.requests().is_empty());
}

#[tokio::test]
async fn tunnel_headers_reach_the_handler() {
    let mesh = Mesh::new().await;
    let (client, _) = mesh.client(PoolConfig::default());
    let meta = TunnelMeta {
        forwarded: Some("for=\"10.1.2.3:41000\"".into()),
        baggage: Some("k8s.cluster.name=cluster1,k8s.namespace.name=bookinfo".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        payload: Some("tcp".into()),
        locality: Some("eu-west1/eu-west1-b".into()),
    };
    let mut tunnel = client
        .connect(mesh.gateway.addr, GATEWAY_TD, "echo.test:7", &meta)
        .await
        .unwrap();
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).await.unwrap();
    let requests = mesh.gateway.handler.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.meta, meta);
    assert_eq!(req.authority, "echo.test:7");
    assert_eq!(
        req.peer.to_string(),
        "spiffe://cluster1/ns/istio-system/sa/ztunnel"
    );
    assert_eq!(req.remote.ip(), mesh.gateway.addr.ip());
}

/// Reaching the gateway and waiting for its answer are bounded apart
/// (issue 14): a gateway that takes longer to reach its endpoint than the
/// connect timeout still gets its tunnel opened; past the answer timeout,
/// the tunnel fails and says which wait ran out.
#[tokio::test]
async fn d2_the_gateways_answer_is_waited_for_apart_from_reaching_it() {
    let mesh = Mesh::new().await;
    // A tunnel to the upstream the gateway reaches in 300 ms.
    let slow_tunnel = |connect_timeout, answer_timeout| {
        let (client, _) = mesh.client(PoolConfig {
            connect_timeout,
            answer_timeout,
            ..PoolConfig::default()
        });
        async move {
            client
                .connect(
                    mesh.gateway.addr,
                    GATEWAY_TD,
                    "slow.test:7",
                    &TunnelMeta::default(),
                )
                .await
        }
    };
    let mut tunnel = slow_tunnel(Duration::from_millis(200), Duration::from_secs(5))
        .await
        .expect("a 300 ms answer is within the answer timeout");
    tunnel.write_all(b"ping").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = Vec::new();
    tunnel.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ping");

    let err = slow_tunnel(Duration::from_secs(5), Duration::from_millis(100))
        .await
        .expect_err("a 300 ms answer is past a 100 ms answer timeout");
    assert!(
        err.to_string()
            .contains("the gateway did not answer the CONNECT within 100ms"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// C6: one root of trust; refusals are explicit and never reach the handler

#[tokio::test]
async fn c6_callers_from_another_root_are_refused() {
    let mesh = Mesh::new().await;
    let stranger = identity(&root("other-root"), "cluster9", "ztunnel");
    // The stranger trusts our root, so only the gateway can refuse.
    let metrics = Arc::new(HboneMetrics::default());
    let tls = client_tls(stranger, mesh.root.trust_root().clone());
    let client = HboneClient::new(tls, PoolConfig::default(), metrics.clone());

    let err = client
        .connect(
            mesh.gateway.addr,
            GATEWAY_TD,
            "echo.test:7",
            &TunnelMeta::default(),
        )
        .await
        .unwrap_err();
    match &err {
        HboneError::Tls {
            refusal: Refusal::RefusedByPeer { .. },
            gateway,
        } => assert_eq!(*gateway, mesh.gateway.addr),
        other => panic!("expected the gateway to refuse us, got {other:?}"),
    }
    assert_eq!(err.reason(), "refused_by_peer");
    assert_eq!(tls_refusals(&metrics, "outbound", "refused_by_peer"), 1);
    assert_eq!(opened(&metrics, "outbound", "refused"), 1);
    let gw_metrics = mesh.gateway.metrics.clone();
    wait_until("the gateway counts an unknown_root refusal", || {
        tls_refusals(&gw_metrics, "inbound", "unknown_root") == 1
    })
    .await;
    assert!(mesh.gateway.handler.requests().is_empty());
    assert_eq!(client.pooled_connections(), 0);
}

#[tokio::test]
async fn c6_a_gateway_with_an_unexpected_trust_domain_is_refused() {
    let mesh = Mesh::new().await;
    let (client, metrics) = mesh.client(PoolConfig::default());
    let err = client
        .connect(
            mesh.gateway.addr,
            "cluster3",
            "echo.test:7",
            &TunnelMeta::default(),
        )
        .await
        .unwrap_err();
    match &err {
        HboneError::Tls {
            refusal: Refusal::WrongTrustDomain { expected, got },
            ..
        } => {
            assert_eq!(expected, &["cluster3".to_owned()]);
            assert_eq!(got, GATEWAY_TD);
        }
        other => panic!("expected a wrong-trust-domain refusal, got {other:?}"),
    }
    assert_eq!(tls_refusals(&metrics, "outbound", "wrong_trust_domain"), 1);
    assert!(mesh.gateway.handler.requests().is_empty());
    assert_eq!(client.pooled_connections(), 0);
    // The gateway hears our alert: a refusal on its side too.
    let gw_metrics = mesh.gateway.metrics.clone();
    wait_until("the gateway counts the aborted handshake", || {
        tls_refusals(&gw_metrics, "inbound", "refused_by_peer") == 1
    })
    .await;
}

// ---------------------------------------------------------------------------
// Pool lifecycle

#[tokio::test]
async fn idle_pooled_connections_are_released() {
    let mesh = Mesh::new().await;
    let config = PoolConfig {
        idle_timeout: Duration::from_millis(200),
        ..PoolConfig::default()
    };
    let (client, metrics) = mesh.client(config);
    let gw = mesh.gateway.addr;

    // A tunnel held open keeps its connection, however long.
    let mut held = client
        .connect(gw, GATEWAY_TD, "echo.test:7", &TunnelMeta::default())
        .await
        .unwrap();
    echo_once(&client, gw, b"one").await;
    assert_eq!(client.pooled_connections(), 1);
    assert_eq!(metrics.pooled_connections.get(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.pooled_connections(), 1);
    held.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).await.unwrap();
    drop(held);

    wait_until("the idle connection is closed", || {
        client.pooled_connections() == 0
    })
    .await;
    assert_eq!(metrics.pooled_connections.get(), 0);
    let gw_metrics = mesh.gateway.metrics.clone();
    wait_until("the gateway sees the connection close", || {
        gw_metrics.inbound_connections.get() == 0
    })
    .await;

    // The next tunnel dials again.
    echo_once(&client, gw, b"two").await;
    let remotes: HashSet<SocketAddr> = mesh
        .gateway
        .handler
        .requests()
        .iter()
        .map(|r| r.remote)
        .collect();
    assert_eq!(remotes.len(), 2);
}

/// A TCP relay in front of the gateway that can cut or freeze its connections.
struct Relay {
    addr: SocketAddr,
    /// 1: cut (close) every connection; 2: freeze them (stop relaying).
    mode: watch::Sender<u8>,
    accepted: Arc<Mutex<usize>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(0u8);
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                let mut mode = mode_rx.clone();
                mode.mark_unchanged();
                tokio::spawn(async move {
                    let mut outbound = TcpStream::connect(target).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = mode.changed() => {}
                    }
                    if *mode.borrow() == 2 {
                        // Frozen: keep both sockets open, relay nothing.
                        let _ = mode.wait_for(|m| *m == 1).await;
                    }
                });
            }
        });
        Relay {
            addr,
            mode,
            accepted,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

#[tokio::test]
async fn a_dead_connection_is_replaced() {
    let mesh = Mesh::new().await;
    let relay = Relay::start(mesh.gateway.addr).await;
    let (client, _) = mesh.client(PoolConfig::default());
    echo_once(&client, relay.addr, b"before").await;
    assert_eq!(client.pooled_connections(), 1);

    relay.mode.send_replace(1);
    wait_until("the dead connection leaves the pool", || {
        client.pooled_connections() == 0
    })
    .await;
    relay.mode.send_replace(0);
    echo_once(&client, relay.addr, b"after").await;
    assert_eq!(relay.accepted(), 2, "a new connection was dialed");
}

#[tokio::test]
async fn keepalive_drops_a_silent_gateway() {
    let mesh = Mesh::new().await;
    let relay = Relay::start(mesh.gateway.addr).await;
    let config = PoolConfig {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(500),
        ..PoolConfig::default()
    };
    let (client, _) = mesh.client(config);
    echo_once(&client, relay.addr, b"before").await;
    // Answered pings keep an idle connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.pooled_connections(), 1);

    relay.mode.send_replace(2);
    wait_until("the silent connection leaves the pool", || {
        client.pooled_connections() == 0
    })
    .await;
    relay.mode.send_replace(0);
    echo_once(&client, relay.addr, b"after").await;
    assert_eq!(relay.accepted(), 2);
}

#[tokio::test]
async fn a_gateway_restart_is_survived() {
    let mesh = Mesh::new().await;
    let (client, _) = mesh.client(PoolConfig::default());
    let Mesh {
        root,
        upstreams,
        gateway,
        ..
    } = mesh;
    let gw = gateway.addr;
    let mut open = client
        .connect(gw, GATEWAY_TD, "echo.test:7", &TunnelMeta::default())
        .await
        .unwrap();

    // Shutdown: GOAWAY, no new connections, open tunnels run to their end.
    gateway.shutdown().await;
    open.write_all(b"still open").await.unwrap();
    open.shutdown().await.unwrap();
    let mut back = Vec::new();
    open.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still open");
    drop(open);
    wait_until("the drained connection leaves the pool", || {
        client.pooled_connections() == 0
    })
    .await;
    let err = client
        .connect(gw, GATEWAY_TD, "echo.test:7", &TunnelMeta::default())
        .await
        .unwrap_err();
    assert!(matches!(err, HboneError::Connect { .. }), "{err:?}");
    assert_eq!(err.reason(), "unreachable");

    // The gateway comes back on the same address.
    let listener = TcpListener::bind(gw).await.unwrap();
    let gateway_id = identity(&root, GATEWAY_TD, "istio-eastwestgateway");
    let _back = Gateway::start_on(listener, gateway_id, root.trust_root(), upstreams);
    echo_once(&client, gw, b"back again").await;
}

// ---------------------------------------------------------------------------
// Throughput, side by side with direct TCP in the same harness. Run with
// `cargo test --release -p meshpeer-dataplane --test hbone -- --ignored --nocapture`.

/// Sends `total` bytes and reads the u64 count the discard upstream answers.
async fn upload(
    mut stream: impl AsyncRead + tokio::io::AsyncWrite + Unpin,
    total: u64,
) -> Duration {
    let buf = vec![0xa5u8; 256 * 1024];
    let started = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n]).await.unwrap();
        left -= n as u64;
    }
    stream.shutdown().await.unwrap();
    assert_eq!(stream.read_u64().await.unwrap(), total);
    started.elapsed()
}

/// Asks the blast upstream for `total` bytes and reads them.
async fn download(
    mut stream: impl AsyncRead + tokio::io::AsyncWrite + Unpin,
    total: u64,
) -> Duration {
    let mut buf = vec![0u8; 256 * 1024];
    let started = Instant::now();
    stream.write_u64(total).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut received = 0u64;
    while let n @ 1.. = stream.read(&mut buf).await.unwrap() {
        received += n as u64;
    }
    assert_eq!(received, total);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
async fn throughput_hbone_vs_direct() {
    let mesh = Mesh::new().await;
    let (client, _) = mesh.client(PoolConfig::default());
    let gw = mesh.gateway.addr;
    let total = 1024 * MB;
    let gbit = |d: Duration| (total * 8) as f64 / d.as_secs_f64() / 1e9;
    let meta = TunnelMeta::default();
    for round in 0..3 {
        let direct_up = upload(
            TcpStream::connect(mesh.upstreams.discard).await.unwrap(),
            total,
        )
        .await;
        let hbone_up = upload(
            client
                .connect(gw, GATEWAY_TD, "discard.test:9", &meta)
                .await
                .unwrap(),
            total,
        )
        .await;
        let direct_down = download(
            TcpStream::connect(mesh.upstreams.blast).await.unwrap(),
            total,
        )
        .await;
        let hbone_down = download(
            client
                .connect(gw, GATEWAY_TD, "blast.test:9", &meta)
                .await
                .unwrap(),
            total,
        )
        .await;
        eprintln!(
            "round {round}: 1 GiB up: direct {:.1} Gbit/s, HBONE {:.1} Gbit/s ({:.2}x); \
             down: direct {:.1} Gbit/s, HBONE {:.1} Gbit/s ({:.2}x)",
            gbit(direct_up),
            gbit(hbone_up),
            direct_up.as_secs_f64() / hbone_up.as_secs_f64(),
            gbit(direct_down),
            gbit(hbone_down),
            direct_down.as_secs_f64() / hbone_down.as_secs_f64(),
        );
    }
}
