//! The data-plane roles, wired: a proxy (DNS, VIP listeners, HBONE client)
//! and an east-west gateway (HBONE server), both following a catalog feed.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use meshpeer_dataplane::dns::{DnsConfig, DnsMetrics, DnsServer};
use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_dataplane::gateway::{GatewayConfig, GatewayHandler};
use meshpeer_dataplane::hbone::{self, HboneClient, HboneMetrics, PoolConfig};
use meshpeer_dataplane::metrics::DataplaneMetrics;
use meshpeer_dataplane::proxy::{Proxy, ProxyConfig};
use meshpeer_dataplane::state::{self, DataplaneState, StateOptions};
use meshpeer_identity::{ALPN_H2, Identity, PeerPolicy, TrustRoot, client_config, server_config};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy's identity by default, `(namespace, service account)`:
/// `spiffe://<td>/ns/istio-system/sa/meshpeer-proxy`.
pub const PROXY_IDENTITY: (&str, &str) = ("istio-system", "meshpeer-proxy");

/// The east-west gateway's identity by default, as Istio's east-west
/// gateway has it: `spiffe://<td>/ns/istio-eastwest/sa/istio-eastwest`.
pub const GATEWAY_IDENTITY: (&str, &str) = ("istio-eastwest", "istio-eastwest");

/// Settings of a proxy role.
#[derive(Clone, Debug)]
pub struct ProxyRoleConfig {
    pub dns: DnsConfig,
    pub proxy: ProxyConfig,
    pub state: StateOptions,
    pub pool: PoolConfig,
}

impl ProxyRoleConfig {
    pub fn new(dns_listen: SocketAddr) -> Self {
        ProxyRoleConfig {
            dns: DnsConfig::new(dns_listen),
            proxy: ProxyConfig::default(),
            state: StateOptions::default(),
            pool: PoolConfig::default(),
        }
    }
}

/// A running proxy: DNS and VIP listeners.
pub struct ProxyRole {
    pub proxy: Proxy,
    pub dns: DnsServer,
    pub state: watch::Receiver<Arc<DataplaneState>>,
    follow: JoinHandle<()>,
}

impl ProxyRole {
    pub async fn start(
        feed: watch::Receiver<Arc<CatalogFeed>>,
        identity: Arc<Identity>,
        root: TrustRoot,
        cfg: ProxyRoleConfig,
        registry: &mut Registry,
    ) -> anyhow::Result<ProxyRole> {
        let (state, dns_table, follow) = state::follow(feed, cfg.state.clone());
        let dns = DnsServer::start(cfg.dns.clone(), dns_table, DnsMetrics::register(registry))
            .await
            .with_context(|| format!("cannot listen for DNS on {}", cfg.dns.listen))?;
        let tls: hbone::ClientTls = Arc::new(move |td: &str| {
            client_config(Arc::clone(&identity), &root, td, &[ALPN_H2]).map_err(|e| e.to_string())
        });
        let hbone = HboneClient::new(tls, cfg.pool.clone(), HboneMetrics::register(registry));
        let proxy = Proxy::start(
            state.clone(),
            hbone,
            cfg.proxy.clone(),
            DataplaneMetrics::register(registry),
        );
        Ok(ProxyRole {
            proxy,
            dns,
            state,
            follow,
        })
    }

    pub async fn shutdown(self) {
        self.follow.abort();
        self.proxy.shutdown();
        self.dns.shutdown().await;
    }
}

/// A running east-west gateway.
pub struct GatewayRole {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl GatewayRole {
    pub async fn start(
        feed: watch::Receiver<Arc<CatalogFeed>>,
        identity: Arc<Identity>,
        root: TrustRoot,
        listen: SocketAddr,
        config: GatewayConfig,
        registry: &mut Registry,
    ) -> anyhow::Result<GatewayRole> {
        let (state, _dns, follow) = state::follow(feed, StateOptions::default());
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for HBONE on {listen}"))?;
        let addr = listener.local_addr()?;
        let tls = server_config(identity, &root, PeerPolicy::AnyTrustDomain, &[ALPN_H2])?;
        let handler = Arc::new(GatewayHandler::new(
            state,
            config,
            DataplaneMetrics::register(registry),
        ));
        let metrics = HboneMetrics::register(registry);
        let (stop, mut stop_rx) = watch::channel(false);
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = hbone::serve(listener, tls, handler, metrics, signal).await {
                tracing::error!(error = %e, "gateway stopped");
            }
        });
        Ok(GatewayRole {
            addr,
            stop,
            tasks: vec![follow, server],
        })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}
