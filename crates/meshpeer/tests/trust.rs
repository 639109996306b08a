//! SPEC P7 and P8 on a running controller (in this process, real sockets on
//! port 0): a proxy holding only the shared root and a token gets its
//! certificate from the controller's signing endpoint and follows the
//! catalog over mutual TLS; the catalog goes to nobody else: not to
//! another identity of the cluster, not to another cluster's proxy, not to a
//! client without a certificate, and on the plain API only to loopback.
//! The Global services page stays read-only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer::api::StatusDoc;
use meshpeer::cluster_api::ClusterListener;
use meshpeer::controller::{Controller, ControllerConfig};
use meshpeer_ca::{CaClient, CaClientConfig, StaticTokens, TokenSource};
use meshpeer_dataplane::feed::{self, CatalogFeed, Follower};
use meshpeer_identity::{ClusterCa, Identity, RootCa, SpiffeId, client_config_for};
use meshpeer_store::file_sink::FileSink;
use meshpeer_store::file_source::FileSource;
use rustls::client::ResolvesClientCert;
use support::WITHIN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const DAY: Duration = Duration::from_secs(86_400);
const PROXY_TOKEN: &str = "a-proxy-token-for-c1";

fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td, ns, sa).unwrap()
}

/// Cluster c1 with one global service, its controller running with a
/// cluster listener on 127.0.0.1:0 and its API on `api`.
struct C1 {
    _tmp: tempfile::TempDir,
    root: RootCa,
    ca: Arc<ClusterCa>,
    controller: Controller,
    cluster: SocketAddr,
}

fn folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), "name: c1\n").unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "{}---\n{}",
            support::namespace("ns1", &[]),
            support::service("ns1", "echo", Some("global"), "10.1.0.5")
        ),
    )
    .unwrap();
}

async fn c1(api: &str) -> C1 {
    meshpeer_identity::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c1");
    folder(&dir);
    let now = SystemTime::now();
    let root = RootCa::generate("test root", 30 * DAY, now - DAY).unwrap();
    let ca = Arc::new(
        root.issue_intermediate("c1", "c1", 10 * DAY, now - DAY)
            .unwrap(),
    );
    let identity = Arc::new(
        Identity::new(
            Arc::clone(&ca),
            id("c1", "istio-system", "meshpeer"),
            DAY,
            now,
        )
        .unwrap(),
    );
    let mut cfg = ControllerConfig::new(
        Box::new(FileSource::new(dir.clone(), Duration::from_millis(20))),
        Box::new(FileSink::new(dir.join(".meshpeer/out"))),
        identity,
        root.trust_root().clone(),
        "127.0.0.1:0".parse().unwrap(),
    );
    cfg.api_listen = Some(api.parse().unwrap());
    let mut cluster = ClusterListener::new("127.0.0.1:0".parse().unwrap(), "c1");
    cluster.ca.authenticators = vec![Arc::new(
        StaticTokens::from_entries([(PROXY_TOKEN, "istio-system", "meshpeer-proxy")]).unwrap(),
    )];
    cfg.cluster = Some(cluster);
    let controller = Controller::start(cfg).await.unwrap();
    controller
        .wait_for(WITHIN, |v| v.status.global_services == 1)
        .await
        .unwrap();
    let cluster = controller.cluster_addr.expect("the cluster listener runs");
    C1 {
        _tmp: tmp,
        root,
        ca,
        controller,
        cluster,
    }
}

impl C1 {
    /// An identity the test mints itself with c1's CA (a workload of c1).
    fn minted(&self, ns: &str, sa: &str) -> Arc<Identity> {
        Arc::new(
            Identity::new(
                Arc::clone(&self.ca),
                id("c1", ns, sa),
                DAY,
                SystemTime::now(),
            )
            .unwrap(),
        )
    }

    /// The controller's catalog feed over mutual TLS as `client` (or without
    /// a certificate): the status line and the body's first line.
    async fn get_feed(&self, client: Option<Arc<Identity>>, path: &str) -> (u16, String) {
        let resolver = client.map(|c| c as Arc<dyn ResolvesClientCert>);
        let tls = client_config_for(
            resolver,
            self.root.trust_root(),
            &id("c1", "istio-system", "meshpeer"),
            &[b"http/1.1"],
        )
        .unwrap();
        let tcp = TcpStream::connect(self.cluster).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("meshpeer-controller").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .unwrap();
        http_get(&mut tls, path).await
    }

    async fn metrics(&self) -> String {
        let mut tcp = TcpStream::connect(self.controller.api_addr.unwrap())
            .await
            .unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// GET `path` (HTTP/1.1) on `io`: the status code and the first line of the
/// body (a feed never ends, so only its first document is read).
async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    path: &str,
) -> (u16, String) {
    io.write_all(format!("GET {path} HTTP/1.1\r\nHost: meshpeer-controller\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let chunked = head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked");
                // A chunked body starts with its size line.
                let body = if chunked {
                    body.split_once("\r\n").map_or("", |(_, rest)| rest)
                } else {
                    body
                };
                if let Some((line, _)) = body.split_once('\n') {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, line.trim_end().to_owned());
                }
            }
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed: {text}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WITHIN, read)
        .await
        .expect("an answer in time")
}

#[tokio::test]
async fn p7_p8_a_proxy_with_a_root_and_a_token_gets_its_certificate_and_follows_the_catalog() {
    let c = c1("127.0.0.1:0").await;
    let proxy_id = id("c1", "istio-system", "meshpeer-proxy");
    let controller_id = id("c1", "istio-system", "meshpeer");
    // What a proxy holds: the root certificate and a token. No CA key.
    let client = CaClient::new(CaClientConfig {
        address: c.cluster.to_string(),
        root: c.root.trust_root().clone(),
        server: controller_id.clone(),
        token: TokenSource::Value(PROXY_TOKEN.to_owned()),
        timeout: Duration::from_secs(10),
    });
    let identity = Arc::new(
        Identity::from_issuer(
            Arc::new(client),
            c.root.trust_root().clone(),
            proxy_id.clone(),
            DAY,
        )
        .await
        .unwrap(),
    );
    assert!(identity.cluster_ca().is_none());
    assert_eq!(
        meshpeer_identity::peer_identity(&identity.current().chain).unwrap(),
        proxy_id
    );

    // The catalog, over mutual TLS, as `meshpeer proxy` follows it.
    let tls = client_config_for(
        Some(Arc::clone(&identity) as Arc<dyn ResolvesClientCert>),
        c.root.trust_root(),
        &controller_id,
        &[b"http/1.1"],
    )
    .unwrap();
    let (tx, mut rx) = watch::channel(Arc::new(CatalogFeed::default()));
    let who = Follower {
        role: "proxy".into(),
        name: proxy_id.to_string(),
        health: None,
    };
    let follow = tokio::spawn(feed::follow_tls(c.cluster.to_string(), tls, who, tx));
    let got = tokio::time::timeout(WITHIN, rx.wait_for(|f| f.version > 0))
        .await
        .expect("the catalog in time")
        .unwrap()
        .clone();
    assert_eq!(got.catalog.services.len(), 1);
    assert_eq!(
        got.catalog.services.values().next().unwrap().hostname,
        "echo.ns1.mesh.internal"
    );

    // The controller lists it among its data plane.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let api = c.controller.api_addr.unwrap();
        let mut tcp = TcpStream::connect(api).await.unwrap();
        tcp.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1;
        let doc: StatusDoc = serde_json::from_str(body).unwrap();
        if doc
            .data_plane
            .iter()
            .any(|f| f.role == "proxy" && f.name == proxy_id.to_string())
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not listed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    follow.abort();
    c.controller.shutdown().await;
}

#[tokio::test]
async fn p8_feed_refuses_a_workload_certificate() {
    let c = c1("127.0.0.1:0").await;
    // A certificate of this cluster, under the shared root, but a workload's.
    let workload = c.minted("default", "sleep");
    for path in ["/v1/catalog", "/v1/catalog/watch"] {
        let (status, body) = c.get_feed(Some(Arc::clone(&workload)), path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(
            body,
            "spiffe://c1/ns/default/sa/sleep may not follow the catalog feed; allowed: \
             spiffe://c1/ns/istio-eastwest/sa/istio-eastwest, spiffe://c1/ns/istio-system/sa/meshpeer-proxy"
        );
    }
    // The gateway's identity may.
    let (status, body) = c
        .get_feed(
            Some(c.minted("istio-eastwest", "istio-eastwest")),
            "/v1/catalog",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let m = c.metrics().await;
    assert!(
        m.contains(
            "meshpeer_feed_refusals_total{listener=\"cluster\",reason=\"identity_not_allowed\"} 2"
        ),
        "{m}"
    );
    c.controller.shutdown().await;
}

#[tokio::test]
async fn p8_feed_refuses_a_client_without_a_certificate_or_of_another_trust_domain() {
    let c = c1("127.0.0.1:0").await;
    let (status, body) = c.get_feed(None, "/v1/catalog/watch").await;
    assert_eq!(status, 403);
    assert!(body.contains("needs a client certificate"), "{body}");

    // cluster2's proxy: the right name, under the shared root, another trust domain.
    let ca2 = c
        .root
        .issue_intermediate("c2", "c2", DAY, SystemTime::now() - DAY)
        .unwrap();
    let other = Arc::new(
        Identity::new(
            ca2,
            id("c2", "istio-system", "meshpeer-proxy"),
            DAY,
            SystemTime::now(),
        )
        .unwrap(),
    );
    let (status, body) = c.get_feed(Some(other), "/v1/catalog/watch").await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "the client certificate spiffe://c2/ns/istio-system/sa/meshpeer-proxy is not of this cluster's trust domain c1"
    );
    let m = c.metrics().await;
    for reason in ["no_client_certificate", "other_trust_domain"] {
        assert!(
            m.contains(&format!(
                "meshpeer_feed_refusals_total{{listener=\"cluster\",reason=\"{reason}\"}} 1"
            )),
            "{m}"
        );
    }
    c.controller.shutdown().await;
}

/// SPEC P6, P8 where clusters share a trust domain: a proxy of another
/// cluster of c1's trust domain (its intermediate bound to c9 by the root)
/// has the very SPIFFE ID c1's proxy has, yet c1's cluster listener refuses
/// its certificate: it may neither follow c1's catalog nor renew there.
#[tokio::test]
async fn p8_p6_a_proxy_of_another_cluster_of_the_same_trust_domain_is_refused_at_the_cluster_listener()
 {
    let c = c1("127.0.0.1:0").await;
    let ca9 = c
        .root
        .issue_intermediate("c9", "c1", DAY, SystemTime::now() - DAY)
        .unwrap();
    let other = Arc::new(
        Identity::new(
            ca9,
            id("c1", "istio-system", "meshpeer-proxy"),
            DAY,
            SystemTime::now(),
        )
        .unwrap(),
    );
    let tls = client_config_for(
        Some(other as Arc<dyn ResolvesClientCert>),
        c.root.trust_root(),
        &id("c1", "istio-system", "meshpeer"),
        &[b"http/1.1"],
    )
    .unwrap();
    let tcp = TcpStream::connect(c.cluster).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("meshpeer-controller").unwrap();
    // TLS 1.3: the client learns of the refusal when it next reads.
    let outcome = tokio::time::timeout(WITHIN, async {
        let mut tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"GET /v1/catalog/watch HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await
    .unwrap();
    match outcome {
        Err(e) => assert!(e.to_string().contains("alert"), "{e}"),
        Ok(answer) => assert!(answer.is_empty(), "served: {answer}"),
    }
    let m = c.metrics().await;
    assert!(
        m.contains("meshpeer_ca_listener_tls_refusals_total{reason=\"wrong_cluster\"} 1"),
        "{m}"
    );
    // c1's own proxy (its chain bound to c1) still follows.
    let (status, _) = c
        .get_feed(
            Some(c.minted("istio-system", "meshpeer-proxy")),
            "/v1/catalog",
        )
        .await;
    assert_eq!(status, 200);
    c.controller.shutdown().await;
}

/// This machine's address toward the outside, as a local connection's source.
fn non_loopback_address() -> IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9")
        .expect("this test needs a non-loopback IPv4 interface (none found)");
    let ip = s.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no non-loopback IPv4 address: {ip}");
    ip
}

#[tokio::test]
async fn p8_plain_api_serves_the_feed_to_loopback_callers_only() {
    let c = c1("0.0.0.0:0").await;
    let port = c.controller.api_addr.unwrap().port();
    // From loopback: served.
    let mut local = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (status, body) = http_get(&mut local, "/v1/catalog/watch").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("echo.ns1.mesh.internal"), "{body}");

    // From this machine's other address: refused, with the way to do it.
    let outside = non_loopback_address();
    for path in ["/v1/catalog", "/v1/catalog/watch"] {
        let mut tcp = TcpStream::connect((outside, port)).await.unwrap();
        let (status, body) = http_get(&mut tcp, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains(&format!("{outside}"))
                && body.contains("follow it over mutual TLS on the controller's cluster listener"),
            "{body}"
        );
    }
    // Status and metrics stay readable from there.
    let mut tcp = TcpStream::connect((outside, port)).await.unwrap();
    let (status, _) = http_get(&mut tcp, "/healthz").await;
    assert_eq!(status, 200);
    let m = c.metrics().await;
    assert!(
        m.contains("meshpeer_feed_refusals_total{listener=\"api\",reason=\"not_loopback\"} 2"),
        "{m}"
    );
    c.controller.shutdown().await;
}

#[tokio::test]
async fn p8_the_global_services_page_and_its_api_are_read_only() {
    let c = c1("127.0.0.1:0").await;
    let router = meshpeer::web::router(vec![("c1".to_owned(), c.controller.view())]);
    let (addr, task) = meshpeer::web::serve("127.0.0.1:0".parse().unwrap(), router)
        .await
        .unwrap();
    for path in [
        "/",
        "/api/v1/clusters",
        "/api/v1/services",
        "/api/v1/peers",
        "/api/v1/diagnostics",
        "/api/v1/events",
    ] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            assert!(
                out.starts_with("HTTP/1.1 405"),
                "{method} {path} is not refused: {out}"
            );
        }
    }
    task.abort();
    c.controller.shutdown().await;
}

// SPEC P1, P6, D3 where cluster1, cluster2 and cluster3 share the trust
// domain cluster.local (Istio's multi-network model, what a real ztunnel's
// inbound needs): each cluster's intermediate is bound to its cluster by
// the root, and that binding, never a leaf's claim, says which cluster a
// chain speaks for. The attacker holds cluster3 (its intermediate's key).

mod shared_trust_domain {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use meshpeer::controller::{Controller, ControllerConfig};
    use meshpeer_dataplane::hbone::{
        ClientTls, ClusterTls, HboneClient, HboneError, HboneMetrics, PAYLOAD_TCP, PoolConfig,
        TunnelMeta,
    };
    use meshpeer_identity::{
        ClusterCa, Identity, SpiffeId, client_config, client_config_for_cluster,
    };
    use meshpeer_store::file_sink::FileSink;
    use meshpeer_store::file_source::FileSource;

    use super::support::{Backend, Mesh, WITHIN, ask, namespace, peer_gateway_td, service_with};

    const TD: &str = "cluster.local";
    const HOST: &str = "web.shop.mesh.internal";

    /// cluster1 (allowing only cluster2 to peer) and cluster2 linked both
    /// ways; cluster3 runs, linked from nobody. cluster2 exports shop/web,
    /// whose pod answers with "cluster2".
    async fn mesh() -> (Mesh, Backend) {
        let mut mesh = Mesh::shared(&["cluster1", "cluster2", "cluster3"], TD);
        let mut cfg = mesh.controller_config("cluster1", "127.0.0.1:0".parse().unwrap(), None);
        cfg.allowed_peers = Some(["cluster2".to_owned()].into());
        mesh.start_with("cluster1", cfg).await;
        for c in ["cluster2", "cluster3"] {
            mesh.start_controller(c, "127.0.0.1:0".parse().unwrap(), None)
                .await;
        }
        mesh.start_dataplane().await;
        mesh.link("cluster1", "cluster2").await;
        mesh.link("cluster2", "cluster1").await;
        let c2 = mesh.cluster("cluster2");
        let ip = c2.pod_ip(1);
        c2.write("shop-ns.yaml", &namespace("shop", &[]));
        c2.write(
            "web.yaml",
            &service_with(
                "shop",
                "web",
                &[("solo.io/service-scope", "global")],
                &[],
                &[("web-0", &ip, &[])],
            ),
        );
        let backend = Backend::start(format!("{ip}:8080").parse().unwrap(), "cluster2").await;
        mesh.cluster("cluster2").wait_caller("cluster1").await;
        (mesh, backend)
    }

    /// A controller of the shared trust domain whose folder says it is
    /// `claims`, holding a chain from `ca`, linked to cluster1's peering
    /// port.
    async fn rogue(mesh: &Mesh, claims: &str, ca: ClusterCa) -> Controller {
        let dir = mesh
            .tmp
            .path()
            .join(format!("rogue-{claims}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cluster.yaml"),
            format!("name: {claims}\nregion: r1\nzone: z1\ntrustDomain: {TD}\n"),
        )
        .unwrap();
        let port = mesh.cluster("cluster1").controller().peering_addr.port();
        std::fs::write(
            dir.join("peer-cluster1.yaml"),
            peer_gateway_td("cluster1", TD, 15008, port, None),
        )
        .unwrap();
        let trust_root = ca.trust_root().clone();
        let id = SpiffeId::new(TD, "istio-system", "meshpeer").unwrap();
        let identity =
            Arc::new(Identity::new(ca, id, Duration::from_secs(3600), SystemTime::now()).unwrap());
        let mut cfg = ControllerConfig::new(
            Box::new(FileSource::new(dir.clone(), Duration::from_millis(20))),
            Box::new(FileSink::new(dir.join(".out"))),
            identity,
            trust_root,
            "127.0.0.1:0".parse().unwrap(),
        );
        cfg.heartbeat = Duration::from_secs(2);
        Controller::start(cfg).await.unwrap()
    }

    fn rand_suffix() -> u128 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn intermediate(mesh: &Mesh, cluster: &str) -> ClusterCa {
        mesh.root
            .issue_intermediate(cluster, TD, Duration::from_secs(86_400), SystemTime::now())
            .unwrap()
    }

    /// Waits until `linking` (a controller that links to cluster1) is told
    /// cluster1 refuses it, then returns the message cluster1 keeps for
    /// that refusal, whose reason must be `reason`.
    async fn refused_by_cluster1(mesh: &Mesh, linking: &Controller, reason: &str) -> String {
        let told = linking
            .wait_for(WITHIN, |v| {
                v.status.peers.iter().any(|p| {
                    p.cluster == "cluster1"
                        && p.last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("refuses peering"))
                })
            })
            .await;
        assert!(told.is_ok(), "cluster1 never refused: {told:?}");
        let v = mesh.cluster("cluster1").controller().current();
        let found = v.status.refused.iter().find(|r| r.reason == reason);
        found
            .unwrap_or_else(|| panic!("no {reason} refusal: {:?}", v.status.refused))
            .message
            .clone()
    }

    /// The outer HBONE client of a proxy of `cluster` (its intermediate
    /// bound to it), checking the gateway's trust domain.
    fn proxy_of(mesh: &Mesh, cluster: &str) -> HboneClient {
        let ca = intermediate(mesh, cluster);
        let id = SpiffeId::new(TD, "istio-system", "meshpeer-proxy").unwrap();
        let identity =
            Arc::new(Identity::new(ca, id, Duration::from_secs(3600), SystemTime::now()).unwrap());
        let root = mesh.root.trust_root().clone();
        let tls: ClientTls = Arc::new(move |td: &str| {
            client_config(identity.clone(), &root, td, &[meshpeer_identity::ALPN_H2])
                .map_err(|e| e.to_string())
        });
        HboneClient::new(
            tls,
            PoolConfig::default(),
            Arc::new(HboneMetrics::default()),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn p1_d3_linked_clusters_of_one_trust_domain_peer_and_route_over_real_mtls() {
        let (mesh, _backend) = mesh().await;
        let c1 = mesh.cluster("cluster1");
        let vip = c1.wait_route(HOST, 8000, &["cluster2"]).await;
        // cluster1's proxy -> cluster2's gateway (the caller is told by its
        // chain's cluster binding) -> cluster2's pod.
        assert_eq!(ask(vip).await.unwrap(), "cluster2");
        let v = c1.controller().current();
        let peer = v
            .status
            .peers
            .iter()
            .find(|p| p.cluster == "cluster2")
            .unwrap();
        assert!(peer.last_sync.is_some(), "{peer:?}");
        // cluster2 serves cluster1 as a linked peer.
        let v2 = mesh.cluster("cluster2").controller().current();
        assert!(
            v2.status
                .served
                .iter()
                .any(|s| s.cluster == "cluster1" && s.linked),
            "{:?}",
            v2.status.served
        );
        mesh.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn p1_a_chain_of_our_own_clusters_intermediate_is_refused_as_a_peer() {
        let (mesh, _backend) = mesh().await;
        // Same SPIFFE ID as every controller of the mesh, from an
        // intermediate the root bound to cluster1 itself.
        let own = rogue(&mesh, "cluster9", intermediate(&mesh, "cluster1")).await;
        let message = refused_by_cluster1(&mesh, &own, "own_cluster").await;
        assert!(
            message.contains("bound to this cluster cluster1"),
            "{message}"
        );
        own.shutdown().await;
        mesh.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn p1_an_unlinked_cluster_is_refused_and_cannot_pose_as_a_linked_one() {
        let (mut mesh, _backend) = mesh().await;
        // cluster3 links to cluster1, which allows cluster2 only.
        mesh.link("cluster3", "cluster1").await;
        let message = refused_by_cluster1(
            &mesh,
            mesh.cluster("cluster3").controller(),
            "peer_not_allowed",
        )
        .await;
        assert!(
            message.contains("cluster cluster3 (trust domain cluster.local) is not among the allowed peers (cluster2)"),
            "{message}"
        );
        // cluster3's key, its folder saying it is cluster2: its leaf is the
        // same SPIFFE ID as cluster2's controller, its intermediate is not.
        let pose = rogue(&mesh, "cluster2", intermediate(&mesh, "cluster3")).await;
        refused_by_cluster1(&mesh, &pose, "peer_not_allowed").await;
        // Refused as cluster3 whatever it says; cluster2 stays the only
        // peer served.
        let v = mesh.cluster("cluster1").controller().current();
        assert!(
            v.status
                .refused
                .iter()
                .all(|r| r.reason != "peer_not_allowed" || r.message.contains("cluster cluster3")),
            "{:?}",
            v.status.refused
        );
        assert!(
            v.status.served.iter().all(|s| s.cluster == "cluster2"),
            "{:?}",
            v.status.served
        );
        pose.shutdown().await;
        mesh.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn p6_an_intermediate_without_cluster_binding_cannot_peer_in_a_shared_trust_domain() {
        let (mesh, _backend) = mesh().await;
        let unbound = mesh
            .root
            .issue_trust_domain_intermediate(
                "cluster2",
                TD,
                Duration::from_secs(86_400),
                SystemTime::now(),
            )
            .unwrap();
        let rogue = rogue(&mesh, "cluster2", unbound).await;
        let message = refused_by_cluster1(&mesh, &rogue, "no_cluster_binding").await;
        assert!(message.contains("cannot say which cluster"), "{message}");
        rogue.shutdown().await;
        mesh.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn p6_a_proxy_refuses_another_clusters_gateway_answering_for_the_linked_one() {
        let (mesh, _backend) = mesh().await;
        // cluster1's proxy, as ProxyRole builds it: the gateway must be
        // bound to the cluster the link names.
        let ca = intermediate(&mesh, "cluster1");
        let id = SpiffeId::new(TD, "istio-system", "meshpeer-proxy").unwrap();
        let identity =
            Arc::new(Identity::new(ca, id, Duration::from_secs(3600), SystemTime::now()).unwrap());
        let root = mesh.root.trust_root().clone();
        let (i, r) = (identity.clone(), root.clone());
        let tls: ClientTls = Arc::new(move |td: &str| {
            client_config(i.clone(), &r, td, &[meshpeer_identity::ALPN_H2])
                .map_err(|e| e.to_string())
        });
        let cluster_tls: ClusterTls = Arc::new(move |td: &str, cluster: &str| {
            client_config_for_cluster(
                identity.clone(),
                &root,
                td,
                cluster,
                true,
                &[meshpeer_identity::ALPN_H2],
            )
            .map_err(|e| e.to_string())
        });
        let proxy = HboneClient::with_cluster_tls(
            tls,
            cluster_tls,
            PoolConfig::default(),
            Arc::new(HboneMetrics::default()),
        );
        let meta = TunnelMeta {
            payload: Some(PAYLOAD_TCP.into()),
            ..TunnelMeta::default()
        };
        let authority = format!("{HOST}:8000");
        // cluster3's gateway answers where cluster2's is expected.
        let impostor = mesh.cluster("cluster3").gateway().addr;
        let refused = tokio::time::timeout(
            WITHIN,
            proxy.connect_to_cluster(impostor, TD, "cluster2", &authority, &meta),
        )
        .await
        .unwrap();
        match refused {
            Err(HboneError::Tls { refusal, .. }) => {
                assert_eq!(refusal.reason(), "wrong_cluster", "{refusal}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("cluster3's gateway was taken for cluster2's"),
        }
        // cluster2's own gateway is taken.
        let real = mesh.cluster("cluster2").gateway().addr;
        let tunnel = tokio::time::timeout(
            WITHIN,
            proxy.connect_to_cluster(real, TD, "cluster2", &authority, &meta),
        )
        .await
        .unwrap();
        assert!(tunnel.is_ok(), "{:?}", tunnel.err());
        mesh.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn d3_the_gateway_admits_a_linked_clusters_caller_and_refuses_another_with_the_same_id() {
        let (mesh, _backend) = mesh().await;
        let gateway: SocketAddr = mesh.cluster("cluster2").gateway().addr;
        let meta = TunnelMeta {
            payload: Some(PAYLOAD_TCP.into()),
            ..TunnelMeta::default()
        };
        let authority = format!("{HOST}:8000");
        // cluster1's proxy identity: admitted.
        let tunnel = tokio::time::timeout(
            WITHIN,
            proxy_of(&mesh, "cluster1").connect(gateway, TD, &authority, &meta),
        )
        .await
        .unwrap();
        assert!(tunnel.is_ok(), "cluster1 refused: {:?}", tunnel.err());
        // cluster3's, the same SPIFFE ID: 403.
        let refused = tokio::time::timeout(
            WITHIN,
            proxy_of(&mesh, "cluster3").connect(gateway, TD, &authority, &meta),
        )
        .await
        .unwrap();
        match refused {
            Err(HboneError::Refused { status, message }) => {
                assert_eq!(status, 403, "{message}");
                assert!(
                    message.contains("cluster cluster3 (trust domain cluster.local) does not link to cluster cluster2"),
                    "{message}"
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("cluster3's caller was let through"),
        }
        mesh.shutdown().await;
    }
}
