//! Issue 17, point 2: ztunnel's double HBONE through meshpeer's east-west
//! gateway, over real sockets and real mutual TLS.
//!
//! The client behaves as ztunnel does when the destination is on another
//! network (`src/proxy/outbound.rs`, `proxy_to_double_hbone`): an outer
//! mTLS connection to the gateway with the source workload's certificate
//! and `CONNECT <service hostname>:<service port>` without meshpeer's
//! payload header; inside that tunnel, a TLS handshake with the same
//! workload certificate, verified against the service's SAN (the
//! destination workload's identity), then an inner HTTP/2 `CONNECT` to the
//! same authority carrying `x-forwarded-network`. A test server stands for
//! the destination's ztunnel on its HBONE inbound port: it sees the inner
//! handshake as the source sent it (the source's identity, which only the
//! source can prove: the gateway did not terminate it) and answers the
//! inner CONNECT.
//!
//! The gateway's rules (D3, S7, P5) are the same as for meshpeer's own
//! single HBONE, which keeps going to the endpoint's target port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use meshpeer_dataplane::endpoint_policy::EndpointPolicy;
use meshpeer_dataplane::feed::{Caller, CatalogFeed};
use meshpeer_dataplane::gateway::{GatewayConfig, GatewayHandler};
use meshpeer_dataplane::hbone::{
    ClientTls, HboneClient, HboneError, HboneMetrics, PAYLOAD_TCP, PoolConfig, Tunnel, TunnelMeta,
    default_limits, serve,
};
use meshpeer_dataplane::metrics::DataplaneMetrics;
use meshpeer_dataplane::state::{DataplaneState, StateOptions};
use meshpeer_identity::{
    ALPN_H2, Identity, PeerPolicy, RootCa, SpiffeId, TrustRoot, client_config, client_config_for,
    peer_identity, server_config,
};
use meshpeer_model::endpoints::AMBIENT_REDIRECTION;
use meshpeer_model::testing::{ClusterBuilder, pod, svc};
use meshpeer_model::{CatalogConfig, GlobalCatalog, Object, catalog};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Bounds every wait: a hang fails instead of blocking.
const DEADLINE: Duration = Duration::from_secs(10);
const HOST: &str = "web.shop.mesh.internal";

fn root() -> RootCa {
    RootCa::generate("root", 365 * DAY, SystemTime::now()).unwrap()
}

/// A certificate of `spiffe://<td>/ns/<ns>/sa/<sa>` under an intermediate
/// of `cluster`, bound to it when `bound` (else to the trust domain only,
/// as before cluster bindings).
fn identity_of(
    root: &RootCa,
    cluster: &str,
    td: &str,
    ns: &str,
    sa: &str,
    bound: bool,
) -> Arc<Identity> {
    let now = SystemTime::now();
    let ca = if bound {
        root.issue_intermediate(cluster, td, 30 * DAY, now)
    } else {
        root.issue_trust_domain_intermediate(cluster, td, 30 * DAY, now)
    }
    .unwrap();
    let id = SpiffeId::new(td, ns, sa).unwrap();
    Arc::new(Identity::new(ca, id, DAY, now).unwrap())
}

/// cluster2's view: it exports `shop/web` (ambient Pods) and `shop/plain`
/// (Pods not captured by ambient), both on port 8000 -> `app_port`, and
/// keeps `shop/private` (not global) to itself.
fn cluster2(app_port: u16, td: &str) -> GlobalCatalog {
    let ambient = |name: &str, app: &str| {
        let mut p = pod("shop", name, &[("app", app)], "127.0.0.1", true, None);
        p.metadata.annotations =
            Some([(AMBIENT_REDIRECTION.to_owned(), "enabled".to_owned())].into());
        Object::Pod(p)
    };
    let c2 = ClusterBuilder::new("cluster2")
        .trust_domain(td)
        .service(
            svc("shop", "web")
                .global()
                .port("http", 8000, i32::from(app_port)),
        )
        .service(
            svc("shop", "plain")
                .global()
                .port("http", 8000, i32::from(app_port)),
        )
        .service(svc("shop", "private").port("http", 8000, i32::from(app_port)))
        .object(ambient("web-0", "web"))
        .object(ambient("private-0", "private"))
        .object(Object::Pod(pod(
            "shop",
            "plain-0",
            &[("app", "plain")],
            "127.0.0.1",
            true,
            None,
        )))
        .build();
    catalog(&c2, &[], &CatalogConfig::default())
}

/// What the destination's ztunnel saw of one inner tunnel.
#[derive(Debug)]
struct Seen {
    /// The source's identity, from the inner TLS handshake.
    source: SpiffeId,
    authority: String,
    forwarded_network: Option<String>,
}

/// A stand-in for the destination ztunnel's HBONE inbound: mTLS with the
/// destination workload's certificate, HTTP/2, `CONNECT` answered 200 and
/// its bytes echoed.
async fn destination_ztunnel(
    id: Arc<Identity>,
    trust: TrustRoot,
) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = server_config(id, &trust, PeerPolicy::AnyTrustDomain, &[ALPN_H2]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let source = peer_identity(tls.get_ref().1.peer_certificates().unwrap()).unwrap();
                let mut conn = h2::server::handshake(tls).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let seen = Seen {
                        source: source.clone(),
                        authority: req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        forwarded_network: req
                            .headers()
                            .get("x-forwarded-network")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    };
                    let _ = tx.send(seen);
                    let mut body = req.into_body();
                    let mut send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    tokio::spawn(async move {
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            if send.send_data(chunk, false).is_err() {
                                return;
                            }
                        }
                        let _ = send.send_data(Bytes::new(), true);
                    });
                }
            });
        }
    });
    (port, rx)
}

/// The application's own port, where meshpeer's single HBONE goes.
async fn app() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

struct Mesh {
    root: RootCa,
    gateway: SocketAddr,
    inbound: mpsc::UnboundedReceiver<Seen>,
    app: TcpListener,
    dest: SpiffeId,
    metrics: Arc<DataplaneMetrics>,
    /// The trust domain every cluster shares, if they do.
    shared: Option<&'static str>,
}

impl Mesh {
    /// cluster2's gateway (identity `istio-eastwest`), linked from cluster1
    /// (trust domain `cluster1`) only, dialling endpoints under `policy`.
    async fn start(policy: Option<EndpointPolicy>) -> Mesh {
        Mesh::start_in(policy, None).await
    }

    /// [`Mesh::start`] where every cluster has trust domain `shared`, if
    /// given, each its intermediate bound to it.
    async fn start_in(policy: Option<EndpointPolicy>, shared: Option<&'static str>) -> Mesh {
        let td = |cluster: &str| shared.unwrap_or(cluster).to_owned();
        let root = root();
        let trust = root.trust_root().clone();
        let dest_id = identity_of(&root, "cluster2", &td("cluster2"), "shop", "web", true);
        let dest = dest_id.spiffe_id().clone();
        let (inbound_port, inbound) = destination_ztunnel(dest_id, trust.clone()).await;
        let (app, app_port) = app().await;
        let feed = Arc::new(CatalogFeed {
            version: 1,
            catalog: Arc::new(cluster2(app_port, &td("cluster2"))),
            callers: vec![Caller {
                cluster: "cluster1".into(),
                trust_domain: td("cluster1"),
                segment: None,
                connected: true,
            }],
            ..CatalogFeed::default()
        });
        let state = Arc::new(DataplaneState::build(feed, &StateOptions::default()));
        let (tx, rx) = watch::channel(state);
        std::mem::forget(tx);
        let metrics = Arc::new(DataplaneMetrics::default());
        let policy = policy.unwrap_or_else(|| {
            // Loopback endpoints are this test's: allowed, as an operator
            // would with --allow-endpoints 127.0.0.0/8.
            EndpointPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], Vec::new())
        });
        let config = GatewayConfig {
            endpoints: Arc::new(policy),
            ambient_inbound_port: inbound_port,
            ..GatewayConfig::default()
        };
        let handler = Arc::new(GatewayHandler::new(rx, config, Arc::clone(&metrics)));
        let gw_id = identity_of(
            &root,
            "cluster2",
            &td("cluster2"),
            "istio-eastwest",
            "istio-eastwest",
            true,
        );
        let tls = server_config(gw_id, &trust, PeerPolicy::AnyTrustDomain, &[ALPN_H2]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            tls,
            trust.clone(),
            handler,
            Arc::new(HboneMetrics::default()),
            default_limits(),
            std::future::pending(),
        ));
        Mesh {
            root,
            gateway,
            inbound,
            app,
            dest,
            metrics,
            shared,
        }
    }

    fn td(&self, cluster: &str) -> String {
        self.shared.unwrap_or(cluster).to_owned()
    }

    /// The outer HBONE client of a workload of `cluster`: its
    /// certificate, the gateway's trust domain checked.
    fn outer(&self, cluster: &str) -> HboneClient {
        self.outer_as(cluster, true)
    }

    /// [`Mesh::outer`] with its intermediate bound to its cluster or not.
    fn outer_as(&self, cluster: &str, bound: bool) -> HboneClient {
        let id = identity_of(
            &self.root,
            cluster,
            &self.td(cluster),
            "sleep",
            "sleep",
            bound,
        );
        let trust = self.root.trust_root().clone();
        let tls: ClientTls = Arc::new(move |gateway_td: &str| {
            client_config(id.clone(), &trust, gateway_td, &[ALPN_H2]).map_err(|e| e.to_string())
        });
        HboneClient::new(
            tls,
            PoolConfig::default(),
            Arc::new(HboneMetrics::default()),
        )
    }

    /// ztunnel's outer CONNECT: its headers, no meshpeer payload header.
    async fn outer_connect(&self, cluster: &str, authority: &str) -> Result<Tunnel, HboneError> {
        self.outer_connect_as(cluster, true, authority).await
    }

    async fn outer_connect_as(
        &self,
        cluster: &str,
        bound: bool,
        authority: &str,
    ) -> Result<Tunnel, HboneError> {
        let meta = TunnelMeta {
            forwarded: Some("for=\"10.1.0.7\"".into()),
            baggage: Some("k8s.cluster.name=cluster1,k8s.namespace.name=sleep".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..TunnelMeta::default()
        };
        tokio::time::timeout(
            DEADLINE,
            self.outer_as(cluster, bound).connect(
                self.gateway,
                &self.td("cluster2"),
                authority,
                &meta,
            ),
        )
        .await
        .expect("the outer CONNECT did not finish")
    }

    /// The whole double HBONE: outer tunnel, inner mTLS with the source's
    /// certificate checked against `dest` (the service's SAN), inner
    /// CONNECT; then `payload` through it, returning what comes back.
    async fn double_hbone(&self, authority: &str, payload: &[u8]) -> Vec<u8> {
        let outer = self.outer_connect("cluster1", authority).await.unwrap();
        let source = identity_of(
            &self.root,
            "cluster1",
            &self.td("cluster1"),
            "sleep",
            "sleep",
            true,
        );
        let inner_tls =
            client_config_for(Some(source), self.root.trust_root(), &self.dest, &[ALPN_H2])
                .unwrap();
        let tls = tokio::time::timeout(
            DEADLINE,
            tokio_rustls::TlsConnector::from(inner_tls)
                .connect(ServerName::try_from(HOST.to_owned()).unwrap(), outer),
        )
        .await
        .expect("the inner handshake did not finish")
        .expect("the inner handshake failed");
        let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .header("x-forwarded-network", "network1")
            .body(())
            .unwrap();
        let (response, mut stream) = send.send_request(req, false).unwrap();
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        stream
            .send_data(Bytes::copy_from_slice(payload), true)
            .unwrap();
        let mut body = response.into_body();
        let mut back = Vec::new();
        while back.len() < payload.len() {
            let chunk = tokio::time::timeout(DEADLINE, body.data())
                .await
                .expect("no echo")
                .expect("the inner stream ended early")
                .unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            back.extend_from_slice(&chunk);
        }
        back
    }

    async fn refused(&self, cluster: &str, authority: &str) -> (StatusCode, String) {
        self.refused_as(cluster, true, authority).await
    }

    async fn refused_as(
        &self,
        cluster: &str,
        bound: bool,
        authority: &str,
    ) -> (StatusCode, String) {
        match self.outer_connect_as(cluster, bound, authority).await {
            Ok(_) => panic!("a tunnel from {cluster} to {authority} was opened"),
            Err(HboneError::Refused { status, message }) => {
                (StatusCode::from_u16(status).unwrap(), message)
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn refusals(&self, kind: &str) -> u64 {
        self.metrics
            .refusals
            .get_or_create(&meshpeer_dataplane::metrics::KindLabels { kind: kind.into() })
            .get()
    }
}

#[tokio::test]
async fn d3_ztunnel_double_hbone_reaches_the_destination_ztunnel_untouched() {
    let mut mesh = Mesh::start(None).await;
    let authority = format!("{HOST}:8000");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let back = mesh.double_hbone(&authority, &payload).await;
    assert_eq!(back, payload, "the bytes came back changed");

    // The destination's ztunnel saw the source's own handshake and the
    // inner CONNECT as the source wrote it: the gateway forwarded, it did
    // not terminate (it holds no certificate of cluster1).
    let seen = tokio::time::timeout(DEADLINE, mesh.inbound.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.source.to_string(),
        "spiffe://cluster1/ns/sleep/sa/sleep"
    );
    assert_eq!(seen.authority, authority);
    assert_eq!(seen.forwarded_network.as_deref(), Some("network1"));
}

#[tokio::test]
async fn d3_meshpeer_single_hbone_to_an_ambient_endpoint_still_goes_to_its_target_port() {
    let mut mesh = Mesh::start(None).await;
    let meta = TunnelMeta {
        payload: Some(PAYLOAD_TCP.into()),
        ..TunnelMeta::default()
    };
    let mut tunnel = mesh
        .outer("cluster1")
        .connect(
            mesh.gateway,
            &mesh.td("cluster2"),
            &format!("{HOST}:8000"),
            &meta,
        )
        .await
        .unwrap();
    let (mut conn, _) = tokio::time::timeout(DEADLINE, mesh.app.accept())
        .await
        .expect("the application port saw no connection")
        .unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // Nothing reached the ztunnel inbound.
    assert!(mesh.inbound.try_recv().is_err());
}

#[tokio::test]
async fn d3_double_hbone_is_refused_as_single_hbone_is() {
    let mesh = Mesh::start(None).await;

    // D3: a cluster that does not link here.
    let (status, message) = mesh.refused("cluster3", &format!("{HOST}:8000")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(
        message.contains("does not link to cluster cluster2"),
        "{message}"
    );

    // D3: a host this cluster does not export.
    let (status, message) = mesh
        .refused("cluster1", "private.shop.mesh.internal:8000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
    assert!(
        message.contains("exports no service private.shop.mesh.internal"),
        "{message}"
    );

    // Istio's inner HBONE needs a ztunnel at the other end: a service
    // whose endpoints are not ambient is refused, not sent TLS on its
    // application port.
    let (status, message) = mesh
        .refused("cluster1", "plain.shop.mesh.internal:8000")
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{message}");
    assert!(
        message.contains("ambient.istio.io/redirection"),
        "{message}"
    );
    assert!(
        !message.contains("127.0.0."),
        "an address leaked: {message}"
    );
    assert_eq!(mesh.refusals("not_linked"), 1);
    assert_eq!(mesh.refusals("not_exported"), 1);
    assert_eq!(mesh.refusals("not_ambient"), 1);
}

#[tokio::test]
async fn p5_double_hbone_never_reaches_refused_endpoints_and_names_none() {
    // The default policy: loopback endpoints are refused (P5).
    let mesh = Mesh::start(Some(EndpointPolicy::default())).await;
    let (status, message) = mesh.refused("cluster1", &format!("{HOST}:8000")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{message}");
    assert!(message.contains("endpoint policy (P5)"), "{message}");
    assert!(
        !message.contains("127.0.0."),
        "an address leaked: {message}"
    );
}

// Every cluster in one trust domain, cluster.local (Istio's multi-network
// model): a caller is told apart by its chain's cluster binding, set by the
// root on its cluster's intermediate (D3, P6).

const SHARED: &str = "cluster.local";

#[tokio::test]
async fn d3_shared_trust_domain_double_hbone_from_a_linked_cluster_reaches_the_destination() {
    let mut mesh = Mesh::start_in(None, Some(SHARED)).await;
    let authority = format!("{HOST}:8000");
    let back = mesh
        .double_hbone(&authority, b"hello across clusters")
        .await;
    assert_eq!(back, b"hello across clusters");
    let seen = tokio::time::timeout(DEADLINE, mesh.inbound.recv())
        .await
        .unwrap()
        .unwrap();
    // The destination sees the source workload's own identity, of the
    // shared trust domain (what a real ztunnel's inbound requires).
    assert_eq!(
        seen.source.to_string(),
        "spiffe://cluster.local/ns/sleep/sa/sleep"
    );
}

#[tokio::test]
async fn d3_shared_trust_domain_an_unlinked_cluster_with_the_same_spiffe_id_is_refused() {
    let mesh = Mesh::start_in(None, Some(SHARED)).await;
    let authority = format!("{HOST}:8000");
    // cluster3's workload presents spiffe://cluster.local/ns/sleep/sa/sleep,
    // exactly what cluster1's does; its intermediate is cluster3's.
    let (status, message) = mesh.refused("cluster3", &authority).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(
        message.contains(
            "cluster cluster3 (trust domain cluster.local) does not link to cluster cluster2"
        ),
        "{message}"
    );
    // cluster2's own workloads are no caller of its gateway either.
    let (status, message) = mesh.refused("cluster2", &authority).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert_eq!(mesh.refusals("not_linked"), 2);
    // Nothing reached the destination.
    let mut mesh = mesh;
    assert!(mesh.inbound.try_recv().is_err());
}

#[tokio::test]
async fn d3_shared_trust_domain_a_chain_without_cluster_binding_is_refused() {
    let mesh = Mesh::start_in(None, Some(SHARED)).await;
    // A cluster1 workload whose intermediate was made before cluster
    // bindings: it cannot say it is cluster1.
    let (status, message) = mesh
        .refused_as("cluster1", false, &format!("{HOST}:8000"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(message.contains("cannot say which cluster"), "{message}");
    assert_eq!(mesh.refusals("no_cluster_binding"), 1);
}
