//! The east-west gateway's decisions (D3) through `TunnelHandler::open`:
//! who may open a tunnel to what, with which status when not, and which
//! local endpoint an allowed tunnel reaches (real sockets on loopback).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use meshpeer_dataplane::endpoint_policy::EndpointPolicy;
use meshpeer_dataplane::feed::{Caller, CatalogFeed};
use meshpeer_dataplane::gateway::{GatewayConfig, GatewayHandler};
use meshpeer_dataplane::hbone::{
    PAYLOAD_TCP, Refuse, TunnelHandler, TunnelMeta, TunnelRequest, Upstream,
};
use meshpeer_dataplane::metrics::{DataplaneMetrics, KindLabels, ReasonLabels};
use meshpeer_dataplane::state::{DataplaneState, StateOptions};
use meshpeer_identity::SpiffeId;
use meshpeer_model::testing::{ClusterBuilder, pod, svc};
use meshpeer_model::{CatalogConfig, ClusterSnapshot, GlobalCatalog, Object, catalog, exports};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Bounds every wait: a hang fails instead of blocking.
const DEADLINE: Duration = Duration::from_secs(10);

/// A pod of `shop/<app>` at `ip`.
fn app_pod(app: &str, name: &str, ip: &str, ready: bool) -> Object {
    Object::Pod(pod("shop", name, &[("app", app)], ip, ready, None))
}

fn caller(cluster: &str, segment: Option<&str>) -> Caller {
    Caller {
        cluster: cluster.into(),
        trust_domain: format!("{cluster}.td"),
        segment: segment.map(str::to_owned),
        connected: true,
    }
}

/// The headers of meshpeer's proxy: the bytes are the application's.
fn tcp() -> TunnelMeta {
    TunnelMeta {
        payload: Some(PAYLOAD_TCP.into()),
        ..TunnelMeta::default()
    }
}

/// The gateway of cluster1's view `catalog`, with `callers` linked here.
struct Gw {
    handler: GatewayHandler,
    metrics: Arc<DataplaneMetrics>,
}

impl Gw {
    /// Endpoints on loopback are this test's backends: allowed, as an
    /// operator would with `--allow-endpoints 127.0.0.0/8`.
    fn new(catalog: GlobalCatalog, callers: Vec<Caller>) -> Self {
        let policy = EndpointPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], Vec::new());
        Gw::with_policy(catalog, callers, policy, 3)
    }

    fn with_policy(
        catalog: GlobalCatalog,
        callers: Vec<Caller>,
        endpoints: EndpointPolicy,
        max_attempts: usize,
    ) -> Self {
        let feed = Arc::new(CatalogFeed {
            version: 1,
            catalog: Arc::new(catalog),
            callers,
            callers_pending: false,
        });
        let state = Arc::new(DataplaneState::build(feed, &StateOptions::default()));
        // The handler reads the state at each open; the sender may go.
        let (_tx, rx) = watch::channel(state);
        let metrics = Arc::new(DataplaneMetrics::default());
        let config = GatewayConfig {
            connect_timeout: Duration::from_secs(2),
            max_attempts,
            endpoints: Arc::new(endpoints),
            ..GatewayConfig::default()
        };
        Gw {
            handler: GatewayHandler::new(rx, config, Arc::clone(&metrics)),
            metrics,
        }
    }

    /// A tunnel of meshpeer's proxy (`x-meshpeer-payload: tcp`).
    async fn open(&self, from: &str, authority: &str) -> Result<Box<dyn Upstream>, Refuse> {
        self.open_with(from, authority, tcp()).await
    }

    /// A tunnel from trust domain `from` whose chain is bound to `cluster`.
    async fn open_as(
        &self,
        from: &str,
        cluster: Option<&str>,
        authority: &str,
    ) -> Result<Box<dyn Upstream>, Refuse> {
        self.open_full(from, cluster, authority, tcp()).await
    }

    async fn open_with(
        &self,
        from: &str,
        authority: &str,
        meta: TunnelMeta,
    ) -> Result<Box<dyn Upstream>, Refuse> {
        // Chains made before cluster bindings: the trust domain decides.
        self.open_full(from, None, authority, meta).await
    }

    async fn open_full(
        &self,
        from: &str,
        cluster: Option<&str>,
        authority: &str,
        meta: TunnelMeta,
    ) -> Result<Box<dyn Upstream>, Refuse> {
        let req = TunnelRequest {
            peer: SpiffeId::new(from, "sleep", "sleep").unwrap(),
            peer_cluster: cluster.map(str::to_owned),
            remote: "198.51.100.7:40000".parse().unwrap(),
            authority: authority.into(),
            meta,
        };
        tokio::time::timeout(DEADLINE, self.handler.open(req))
            .await
            .expect("open did not finish")
    }

    async fn refused(&self, from: &str, authority: &str) -> Refuse {
        match self.open(from, authority).await {
            Ok(_) => panic!("a tunnel from {from} to {authority} was opened"),
            Err(r) => r,
        }
    }

    fn refusals(&self, kind: &str) -> u64 {
        self.metrics
            .refusals
            .get_or_create(&KindLabels { kind: kind.into() })
            .get()
    }

    fn endpoint_refusals(&self, reason: &str) -> u64 {
        self.metrics
            .endpoint_refusals
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    fn ejections(&self) -> u64 {
        self.metrics
            .ejections
            .get_or_create(&KindLabels {
                kind: "endpoint".into(),
            })
            .get()
    }
}

/// cluster1 (trust domain cluster1.td) exports `shop/web` (port 8000 ->
/// `port`, pods at `ips`), `shop/idle` (no ready pod), and sees `shop/cart`
/// that only cluster2 exports. It links to cluster2; cluster2 and cluster3
/// link to it (they are its callers).
fn mesh(port: u16, ips: &[&str]) -> GlobalCatalog {
    let mut c1 = ClusterBuilder::new("cluster1")
        .trust_domain("cluster1.td")
        .link_with("cluster2", "cluster2", "cluster2.td")
        .service(
            svc("shop", "web")
                .global()
                .port("http", 8000, i32::from(port)),
        )
        .service(svc("shop", "idle").global().not_ready(1))
        .service(svc("shop", "private").port("http", 8000, i32::from(port)));
    for (i, ip) in ips.iter().enumerate() {
        c1 = c1.object(app_pod("web", &format!("web-{i}"), ip, true));
    }
    c1 = c1.object(app_pod("private", "private-0", ips[0], true));
    let c2: ClusterSnapshot = ClusterBuilder::new("cluster2")
        .trust_domain("cluster2.td")
        .service(svc("shop", "cart").global().ready(1))
        .build();
    let v = catalog(&c1.build(), &[exports(&c2)], &CatalogConfig::default());
    assert!(v.service("web.shop.mesh.internal").is_some(), "{v:?}");
    assert!(v.service("idle.shop.mesh.internal").is_some(), "{v:?}");
    assert!(v.service("cart.shop.mesh.internal").is_some(), "{v:?}");
    v
}

fn callers() -> Vec<Caller> {
    vec![caller("cluster2", None), caller("cluster3", None)]
}

/// Proves `up` is a live connection accepted by `listener`: bytes go both ways.
async fn relays(mut up: Box<dyn Upstream>, listener: &TcpListener) -> SocketAddr {
    let (mut conn, _) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("the endpoint saw no connection")
        .unwrap();
    up.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    conn.write_all(b"pong").await.unwrap();
    tokio::time::timeout(DEADLINE, up.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");
    conn.local_addr().unwrap()
}

async fn endpoint() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[tokio::test]
async fn d3_an_allowed_caller_is_connected_to_a_ready_local_endpoint() {
    let (listener, port) = endpoint().await;
    let gw = Gw::new(mesh(port, &["127.0.0.1"]), callers());
    let up = gw
        .open("cluster2.td", "web.shop.mesh.internal:8000")
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
    let reached = relays(up, &listener).await;
    assert_eq!(reached, SocketAddr::from(([127, 0, 0, 1], port)));
    // The host name is matched without regard to case.
    let up = gw
        .open("cluster3.td", "WEB.shop.Mesh.Internal:8000")
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
    relays(up, &listener).await;
    for kind in [
        "not_linked",
        "bad_request",
        "not_exported",
        "segment",
        "no_endpoint",
    ] {
        assert_eq!(gw.refusals(kind), 0, "{kind}");
    }
}

#[tokio::test]
async fn d3_a_caller_that_does_not_link_here_is_refused_with_403() {
    let (listener, port) = endpoint().await;
    let gw = Gw::new(mesh(port, &["127.0.0.1"]), callers());
    // cluster1 links to cluster4's trust domain? No: nobody presenting
    // cluster4.td links to cluster1, and cluster1's own link to cluster2
    // does not make cluster1.td a caller either.
    for td in ["cluster4.td", "cluster1.td"] {
        let r = gw.refused(td, "web.shop.mesh.internal:8000").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{td}: {}", r.message);
        assert!(r.message.contains(td), "{}", r.message);
        assert!(r.message.contains("link direction"), "{}", r.message);
    }
    assert_eq!(gw.refusals("not_linked"), 2);
    // Nothing reached the endpoint.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), listener.accept())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn d3_an_authority_that_is_not_host_and_port_gets_400() {
    let gw = Gw::new(mesh(9, &["127.0.0.1"]), callers());
    for authority in [
        "web.shop.mesh.internal",
        "web.shop.mesh.internal:http",
        "web.shop.mesh.internal:70000",
    ] {
        let r = gw.refused("cluster2.td", authority).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{authority}");
        assert!(r.message.contains(authority), "{}", r.message);
    }
    assert_eq!(gw.refusals("bad_request"), 3);
    assert_eq!(gw.refusals("not_linked"), 0);
}

#[tokio::test]
async fn d3_a_host_this_cluster_does_not_export_gets_404() {
    let gw = Gw::new(mesh(9, &["127.0.0.1"]), callers());
    // Unknown anywhere; cluster-local only (not global); exported only by
    // cluster2 (visible here, but the gateway relays only to its own).
    for host in [
        "nope.shop.mesh.internal",
        "private.shop.mesh.internal",
        "cart.shop.mesh.internal",
        "nope.shop.global",
    ] {
        let r = gw.refused("cluster2.td", &format!("{host}:8000")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{host}: {}", r.message);
        assert!(r.message.contains(host), "{}", r.message);
        assert!(r.message.contains("cluster1"), "{}", r.message);
    }
    assert_eq!(gw.refusals("not_exported"), 4);
}

#[tokio::test]
async fn d3_a_service_without_ready_endpoints_gets_503() {
    let gw = Gw::new(mesh(9, &["127.0.0.1"]), callers());
    let r = gw
        .refused("cluster2.td", "idle.shop.mesh.internal:8000")
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.message);
    assert!(r.message.contains("no ready endpoint"), "{}", r.message);
    // A port no endpoint serves is the same.
    let r = gw
        .refused("cluster2.td", "web.shop.mesh.internal:8001")
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.message);
    assert_eq!(gw.refusals("no_endpoint"), 2);
}

#[tokio::test]
async fn d3_when_an_endpoint_refuses_connections_the_next_one_is_used() {
    // web-0 at 127.0.0.1 answers; web-1 at 127.0.0.2 on the same port does
    // not (the listener holds 127.0.0.1 only). The gateway tries endpoints
    // in random order: repeat with fresh gateways until the closed one was
    // tried first (ejected once), each tunnel still reaching the open one.
    let (listener, port) = endpoint().await;
    let cat = mesh(port, &["127.0.0.1", "127.0.0.2"]);
    let mut fell_over = false;
    for _ in 0..64 {
        let gw = Gw::new(cat.clone(), callers());
        let up = gw
            .open("cluster2.td", "web.shop.mesh.internal:8000")
            .await
            .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
        assert_eq!(
            relays(up, &listener).await,
            SocketAddr::from(([127, 0, 0, 1], port))
        );
        assert_eq!(gw.refusals("no_endpoint"), 0);
        if gw.ejections() == 1 {
            fell_over = true;
            // The failed endpoint is ejected: the next tunnels go straight
            // to the one that answers (it is tried last, and never needed).
            for _ in 0..16 {
                let up = gw
                    .open("cluster2.td", "web.shop.mesh.internal:8000")
                    .await
                    .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
                relays(up, &listener).await;
            }
            assert_eq!(gw.ejections(), 1, "an ejected endpoint was tried again");
            break;
        }
        assert_eq!(gw.ejections(), 0);
    }
    assert!(fell_over, "the closed endpoint was never tried first");
}

#[tokio::test]
async fn d3_when_no_endpoint_answers_the_tunnel_gets_503_without_their_addresses() {
    let (listener, port) = endpoint().await;
    let gw = Gw::new(mesh(port, &["127.0.0.2", "127.0.0.3"]), callers());
    let r = gw
        .refused("cluster2.td", "web.shop.mesh.internal:8000")
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.message);
    // Why, in words and counts; pod addresses and socket errors stay in
    // the gateway's log.
    assert!(r.message.contains("2 tried"), "{}", r.message);
    for ep in ["127.0.0.2", "127.0.0.3"] {
        assert!(!r.message.contains(ep), "{}", r.message);
    }
    assert!(!r.message.contains("refused"), "{}", r.message);
    assert_eq!(gw.ejections(), 2);
    assert_eq!(gw.refusals("no_endpoint"), 1);
    drop(listener);
}

/// cluster1 is in segment dev and exports `shop/web` with scope `segment`
/// and `shop/api` with scope `global`, both at `127.0.0.1:<port>`.
fn segmented(port: u16) -> GlobalCatalog {
    let c1 = ClusterBuilder::new("cluster1")
        .segment("dev", "cluster.dev")
        .segment("prod", "cluster.prod")
        .join("dev")
        .service(
            svc("shop", "web")
                .scope("segment")
                .port("http", 8000, i32::from(port)),
        )
        .service(
            svc("shop", "api")
                .global()
                .port("http", 8000, i32::from(port)),
        )
        .object(app_pod("web", "web-0", "127.0.0.1", true))
        .object(app_pod("api", "api-0", "127.0.0.1", true))
        .build();
    catalog(&c1, &[], &CatalogConfig::default())
}

#[tokio::test]
async fn s7_a_segment_scoped_service_refuses_callers_from_another_segment() {
    let (listener, port) = endpoint().await;
    let gw = Gw::new(
        segmented(port),
        vec![
            caller("cluster2", Some("prod")),
            caller("cluster3", Some("dev")),
            caller("cluster4", None),
        ],
    );
    for (td, theirs) in [("cluster2.td", "prod"), ("cluster4.td", "(default)")] {
        let r = gw.refused(td, "web.shop.cluster.dev:8000").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.message);
        assert!(
            r.message.contains("only in segment dev"),
            "names the service's segment: {}",
            r.message
        );
        assert!(
            r.message.contains(&format!("is in segment {theirs}")),
            "names the caller's segment: {}",
            r.message
        );
    }
    assert_eq!(gw.refusals("segment"), 2);
    // Same segment: allowed.
    let up = gw
        .open("cluster3.td", "web.shop.cluster.dev:8000")
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
    relays(up, &listener).await;
    // S6: a global service is reachable from any segment.
    let up = gw
        .open("cluster2.td", "api.shop.cluster.dev:8000")
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
    relays(up, &listener).await;
    assert_eq!(gw.refusals("segment"), 2);
    // Another segment's name for the same service is not an alias of it.
    let r = gw
        .refused("cluster3.td", "web.shop.cluster.prod:8000")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.message);
}

/// D3, P6: clusters sharing a trust domain are told apart by their chains'
/// cluster bindings: each caller is held to its own segment, and a chain
/// without a binding, which cannot say which cluster it is, is refused.
#[tokio::test]
async fn d3_a_shared_trust_domain_is_told_apart_by_cluster_binding() {
    let (listener, port) = endpoint().await;
    let mut prod = caller("cluster2", Some("prod"));
    let mut dev = caller("cluster3", Some("dev"));
    prod.trust_domain = "shared.td".into();
    dev.trust_domain = "shared.td".into();
    let gw = Gw::new(segmented(port), vec![prod, dev]);
    let up = gw
        .open_as("shared.td", Some("cluster3"), "web.shop.cluster.dev:8000")
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
    relays(up, &listener).await;
    // cluster2 (segment prod) presents the same SPIFFE ID: its own segment
    // decides, not cluster3's.
    let r = gw
        .open_as("shared.td", Some("cluster2"), "web.shop.cluster.dev:8000")
        .await
        .err()
        .expect("cluster2 is not in segment dev");
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.message);
    assert!(
        r.message.contains("cluster cluster2 is in segment prod"),
        "{}",
        r.message
    );
    // Without a cluster binding, neither.
    let r = gw.refused("shared.td", "web.shop.cluster.dev:8000").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.message);
    assert!(
        r.message.contains("cannot say which cluster"),
        "{}",
        r.message
    );
    assert_eq!(gw.refusals("no_cluster_binding"), 1);
    // A cluster of it that does not link here, and a trust domain nobody
    // links with, are refused.
    let r = gw
        .open_as("shared.td", Some("cluster4"), "web.shop.cluster.dev:8000")
        .await
        .err()
        .expect("cluster4 does not link here");
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.message);
    let r = gw.refused("other.td", "web.shop.cluster.dev:8000").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.message);
    assert_eq!(gw.refusals("not_linked"), 2);
}

#[tokio::test]
async fn d4_the_global_alias_reaches_the_exported_service() {
    let (listener, port) = endpoint().await;
    let gw = Gw::new(mesh(port, &["127.0.0.1"]), callers());
    // `<name>.<namespace>.global`, as manual entries (seed 003) name it.
    let up = gw
        .open("cluster2.td", "web.shop.global:8000")
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
    assert_eq!(
        relays(up, &listener).await,
        SocketAddr::from(([127, 0, 0, 1], port))
    );
    // Not for a service this cluster does not export, nor for a bare name.
    for authority in ["cart.shop.global:8000", "web.shop:8000"] {
        let r = gw.refused("cluster2.td", authority).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{authority}: {}",
            r.message
        );
    }
    assert_eq!(gw.refusals("not_exported"), 2);
}

/// Fails if a connection to `listener` was made: a dial completes its
/// handshake in the kernel's backlog before the dialler goes on, so an
/// empty backlog now means no dial happened.
fn assert_accepted_nothing(listener: TcpListener) {
    let l = listener.into_std().unwrap();
    l.set_nonblocking(true).unwrap();
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("{} was dialled: {other:?}", l.local_addr().unwrap()),
    }
}

/// A listener on 127.0.0.1 and one on 127.0.0.2, on the same port (pods of
/// one Service share their target port).
async fn two_on_one_port() -> (TcpListener, TcpListener, u16) {
    for _ in 0..32 {
        let (first, port) = endpoint().await;
        if let Ok(second) = TcpListener::bind(("127.0.0.2", port)).await {
            return (first, second, port);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Endpoints the policy refuses: loopback (a listener that must see no
/// connection), link-local (cloud metadata), IPv6 loopback, an address in
/// the VIP range, the node's address.
const REFUSED: [(&str, &str); 5] = [
    ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link_local"),
    ("::1", "loopback"),
    ("240.241.0.5", "vip_range"),
    ("198.51.100.1", "node_address"),
];

fn node_policy(allow: &[&str]) -> EndpointPolicy {
    EndpointPolicy::new(
        allow.iter().map(|c| c.parse().unwrap()).collect(),
        vec!["198.51.100.1/32".parse().unwrap()],
    )
}

#[tokio::test]
async fn p5_the_gateway_never_dials_refused_endpoints_and_uses_the_next() {
    let (node_local, allowed, port) = two_on_one_port().await;
    let mut ips: Vec<&str> = REFUSED.iter().map(|(ip, _)| *ip).collect();
    ips.push("127.0.0.2");
    let cat = mesh(port, &ips);
    // Only 127.0.0.2 is allowed: exactly that CIDR, not the rest of loopback.
    let gw = Gw::with_policy(
        cat,
        callers(),
        node_policy(&["127.0.0.2/32", "240.241.0.0/16"]),
        ips.len(),
    );
    for _ in 0..16 {
        let up = gw
            .open("cluster2.td", "web.shop.mesh.internal:8000")
            .await
            .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.message));
        assert_eq!(
            relays(up, &allowed).await,
            SocketAddr::from(([127, 0, 0, 2], port))
        );
    }
    // Refusals are counted, never dialled, never ejected.
    let counted: u64 = ["loopback", "link_local", "vip_range", "node_address"]
        .iter()
        .map(|r| gw.endpoint_refusals(r))
        .sum();
    assert!(
        counted > 0,
        "16 tunnels and no refused endpoint tried first"
    );
    assert_eq!(gw.ejections(), 0);
    assert_eq!(gw.refusals("no_endpoint"), 0);
    assert_accepted_nothing(node_local);
}

#[tokio::test]
async fn p5_a_tunnel_to_refused_endpoints_only_gets_503_without_their_addresses() {
    let (node_local, port) = endpoint().await;
    let ips: Vec<&str> = REFUSED.iter().map(|(ip, _)| *ip).collect();
    let gw = Gw::with_policy(mesh(port, &ips), callers(), node_policy(&[]), ips.len());
    let r = gw
        .refused("cluster2.td", "web.shop.mesh.internal:8000")
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.message);
    assert!(r.message.contains("5 refused"), "{}", r.message);
    assert!(r.message.contains("endpoint policy"), "{}", r.message);
    for (ip, _) in REFUSED {
        assert!(!r.message.contains(ip), "{ip} leaked: {}", r.message);
    }
    assert_eq!(gw.endpoint_refusals("loopback"), 2);
    for reason in ["link_local", "vip_range", "node_address"] {
        assert_eq!(gw.endpoint_refusals(reason), 1, "{reason}");
    }
    assert_eq!(gw.refusals("endpoint_policy"), 1);
    assert_eq!(gw.ejections(), 0);
    assert_accepted_nothing(node_local);
}

/// cluster1 exports `shop/web` under `PreferClose` with one Pod in zone
/// `eu-a` (127.0.0.1) and one in zone `eu-b` (127.0.0.2), both on `port`.
fn zoned(port: u16) -> GlobalCatalog {
    let on = |name: &str, ip: &str, node: &str| {
        Object::Pod(pod("shop", name, &[("app", "web")], ip, true, Some(node)))
    };
    let c1 = ClusterBuilder::new("cluster1")
        .trust_domain("cluster1.td")
        .node("node-a", "eu", "eu-a")
        .node("node-b", "eu", "eu-b")
        .service(
            svc("shop", "web")
                .global()
                .annotation(meshpeer_model::labels::TRAFFIC_DISTRIBUTION, "PreferClose")
                .port("http", 8000, i32::from(port)),
        )
        .object(on("web-a", "127.0.0.1", "node-a"))
        .object(on("web-b", "127.0.0.2", "node-b"))
        .build();
    catalog(&c1, &[], &CatalogConfig::default())
}

/// The address of the endpoint a tunnel reached: whichever listener got it.
async fn reached(up: Box<dyn Upstream>, a: &TcpListener, b: &TcpListener) -> std::net::IpAddr {
    let (mut conn, local) = tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            r = a.accept() => (r.unwrap().0, a.local_addr().unwrap()),
            r = b.accept() => (r.unwrap().0, b.local_addr().unwrap()),
        }
    })
    .await
    .expect("no endpoint saw the tunnel");
    drop(up);
    let _ = conn.shutdown().await;
    local.ip()
}

#[tokio::test]
async fn t3_the_gateway_ranks_its_endpoints_from_the_callers_locality() {
    let (a, b, port) = two_on_one_port().await;
    let gw = Gw::new(zoned(port), callers());
    let from = |locality: Option<&str>| TunnelMeta {
        locality: locality.map(str::to_owned),
        ..tcp()
    };
    // A caller in zone eu-b is sent to the Pod in eu-b, every time.
    for _ in 0..20 {
        let up = gw
            .open_with(
                "cluster2.td",
                "web.shop.mesh.internal:8000",
                from(Some("eu/eu-b")),
            )
            .await
            .unwrap();
        assert_eq!(reached(up, &a, &b).await.to_string(), "127.0.0.2");
    }
    // One in eu-a to the Pod in eu-a.
    for _ in 0..20 {
        let up = gw
            .open_with(
                "cluster2.td",
                "web.shop.mesh.internal:8000",
                from(Some("eu/eu-a/rack1")),
            )
            .await
            .unwrap();
        assert_eq!(reached(up, &a, &b).await.to_string(), "127.0.0.1");
    }
    // Without a locality (or with one that does not parse), both zones
    // are one tier: both Pods are used.
    for locality in [None, Some("eu/eu-a/x/too-many"), Some("bad value!")] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let up = gw
                .open_with("cluster2.td", "web.shop.mesh.internal:8000", from(locality))
                .await
                .unwrap();
            seen.insert(reached(up, &a, &b).await.to_string());
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(seen.len(), 2, "{locality:?}: only {seen:?} was used");
    }
}

#[tokio::test]
async fn t6_when_the_callers_zone_has_no_live_endpoint_the_gateway_uses_the_next_tier() {
    // Only the eu-a Pod listens; the eu-b one refuses connections.
    let (a, port) = endpoint().await;
    let gw = Gw::new(zoned(port), callers());
    let meta = TunnelMeta {
        locality: Some("eu/eu-b".into()),
        ..tcp()
    };
    let up = gw
        .open_with("cluster2.td", "web.shop.mesh.internal:8000", meta)
        .await
        .unwrap();
    assert_eq!(relays(up, &a).await.ip().to_string(), "127.0.0.1");
}

/// The text exposition of the gateway's dataplane metrics.
fn exposition(metrics: &DataplaneMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    let r = registry.sub_registry_with_prefix("dataplane");
    r.register("flow_connections", "", metrics.flows.connections.clone());
    r.register("flow_bytes", "", metrics.flows.bytes.clone());
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

fn value(text: &str, prefix: &str, labels: &[&str]) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn flows_are_counted_by_source_cluster_destination_cluster_and_service() {
    let (listener, port) = endpoint().await;
    let gw = Gw::new(mesh(port, &["127.0.0.1"]), callers());
    let up = gw
        .open("cluster2.td", "web.shop.mesh.internal:8000")
        .await
        .unwrap();
    relays(up, &listener).await;
    // Refused: a cluster that does not link here (its name is not ours to
    // print: `unlinked`), and a name that is not in the catalog (`unknown`:
    // callers cannot make new series).
    gw.refused("cluster9.td", "web.shop.mesh.internal:8000")
        .await;
    gw.refused("cluster2.td", "x-1.shop.mesh.internal:8000")
        .await;
    gw.refused("cluster2.td", "x-2.shop.mesh.internal:8000")
        .await;
    let text = exposition(&gw.metrics);
    let flow = [
        "reporter=\"gateway\"",
        "source_cluster=\"cluster2\"",
        "destination_cluster=\"cluster1\"",
        "service=\"web.shop.mesh.internal\"",
    ];
    let with = |extra: &'static str| -> Vec<&'static str> {
        let mut l = flow.to_vec();
        l.push(extra);
        l
    };
    let conns = "dataplane_flow_connections_total{";
    let bytes = "dataplane_flow_bytes_total{";
    assert_eq!(
        value(&text, conns, &with("outcome=\"ok\"")),
        Some(1),
        "{text}"
    );
    // "ping" went to the endpoint, "pong" came back.
    assert_eq!(
        value(&text, bytes, &with("way=\"sent\"")),
        Some(4),
        "{text}"
    );
    assert_eq!(
        value(&text, bytes, &with("way=\"received\"")),
        Some(4),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            conns,
            &["source_cluster=\"unlinked\"", "outcome=\"not_linked\""]
        ),
        Some(1),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            conns,
            &["service=\"unknown\"", "outcome=\"not_exported\""]
        ),
        Some(2),
        "{text}"
    );
    assert!(!text.contains("x-1.shop"), "{text}");
}
