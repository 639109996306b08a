//! The controller's cluster listener: what in-cluster clients (proxies,
//! gateways, ztunnels) reach over TLS with the controller's identity
//! (`spiffe://<td>/ns/istio-system/sa/meshpeer`):
//!
//! - Istio's CA API, `istio.v1.auth.IstioCertificateService/CreateCertificate`
//!   (gRPC; SPEC P7): leaves for callers authenticated by token or by a
//!   client certificate of this trust domain;
//! - the catalog feed, `GET /v1/catalog` and `/v1/catalog/watch` (SPEC P8),
//!   to clients whose certificate is an allowed identity of this cluster.
//!
//! Client certificates are optional at the TLS layer (a proxy asks for its
//! first certificate with a token); each route decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use meshpeer_ca::{CaMetrics, CaService, CaSettings, ListenerLimits};
use meshpeer_identity::{ALPN_H2, Identity, server_config_optional_client};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::api::{ApiState, Followers, cluster_feed_router};

/// The controller's identity, `(namespace, service account)`:
/// `spiffe://<td>/ns/istio-system/sa/meshpeer`, what proxies and gateways
/// expect of the cluster listener.
pub const CONTROLLER_IDENTITY: (&str, &str) = ("istio-system", "meshpeer");

/// The default port of the cluster listener (next to istiod's 15012 and
/// the API's 15014).
pub const CLUSTER_PORT: u16 = 15013;

/// ALPN offered: gRPC (HTTP/2) for the CA, HTTP/1.1 for the feed.
const ALPN: [&[u8]; 2] = [ALPN_H2, b"http/1.1"];

/// The cluster listener's settings.
#[derive(Clone, Debug)]
pub struct ClusterListener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// How the signing endpoint decides (authenticators, lifetime cap).
    pub ca: CaSettings,
    /// Bounds on connections (SPEC B5).
    pub limits: ListenerLimits,
    /// DNS names and IP addresses its certificate carries besides the
    /// controller's SPIFFE ID (Istio's CA clients check the host they
    /// dial against them).
    pub names: Vec<String>,
}

impl ClusterListener {
    /// `listen`, with the CA's defaults for `trust_domain` (no token
    /// authenticator: add one).
    pub fn new(listen: SocketAddr, trust_domain: &str) -> Self {
        ClusterListener {
            listen,
            ca: CaSettings::new(trust_domain),
            limits: ListenerLimits::default(),
            names: Vec::new(),
        }
    }
}

/// Binds and serves the cluster listener until `shutdown` turns true.
pub(crate) async fn start(
    cfg: ClusterListener,
    identity: &Arc<Identity>,
    state: ApiState,
    followers: Followers,
    metrics: Arc<CaMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let ca = identity.local_ca().context(
        "the cluster listener signs certificates, so the controller's identity must come from the cluster CA it holds",
    )?;
    let authenticators: Vec<&str> = cfg.ca.authenticators.iter().map(|a| a.name()).collect();
    let service = CaService::new(Arc::clone(&ca), cfg.ca.clone(), Arc::clone(&metrics));
    let router = service
        .routes()
        .into_axum_router()
        .merge(cluster_feed_router(state, followers));
    // With names: a leaf of its own, same identity, renewed alongside.
    let (serving, rotation) = if cfg.names.is_empty() {
        (Arc::clone(identity), None)
    } else {
        let leaf = identity.current();
        let lifetime = leaf
            .not_after
            .duration_since(leaf.not_before)
            .unwrap_or(Duration::from_secs(86_400));
        let serving = Arc::new(
            Identity::serving(
                Arc::clone(&ca),
                identity.spiffe_id().clone(),
                cfg.names.clone(),
                lifetime,
                SystemTime::now(),
            )
            .context("cannot issue the cluster listener's certificate for its names")?,
        );
        let rotation = tokio::spawn(Arc::clone(&serving).run_rotation());
        (serving, Some(rotation))
    };
    let tls = server_config_optional_client(Arc::clone(&serving), identity.trust_root(), &ALPN)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen for the cluster listener on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    info!(
        address = %addr,
        id = %identity.spiffe_id(),
        authenticators = %authenticators.join(","),
        max_cert_lifetime_s = cfg.ca.max_validity.as_secs(),
        "cluster listener (certificates, catalog over mutual TLS) on {addr}"
    );
    let serve = meshpeer_ca::serve(listener, tls, router, cfg.limits, metrics, async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    let task = tokio::spawn(async move {
        serve.await;
        if let Some(rotation) = rotation {
            rotation.abort();
        }
    });
    Ok((addr, task))
}
