//! The data-plane roles, wired: a proxy (DNS, VIP listeners, HBONE client)
//! and an east-west gateway (HBONE server), both following a catalog feed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshpeer_dataplane::dns::{DnsConfig, DnsMetrics, DnsServer};
use meshpeer_dataplane::endpoint_policy::{EndpointPolicy, host_cidr, node};
use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_dataplane::gateway::{GatewayConfig, GatewayHandler};
use meshpeer_dataplane::hbone::{self, HboneClient, HboneMetrics, PoolConfig};
use meshpeer_dataplane::metrics::DataplaneMetrics;
use meshpeer_dataplane::proxy::{Proxy, ProxyConfig};
use meshpeer_dataplane::report::{ReportConfig, Reporter};
use meshpeer_dataplane::state::{self, DataplaneState, StateOptions};
use meshpeer_identity::{
    ALPN_H2, Identity, PeerPolicy, TrustRoot, client_config, client_config_for_cluster,
    server_config,
};
use meshpeer_model::Cidr;
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
        let proxy = ProxyConfig::default();
        ProxyRoleConfig {
            dns: DnsConfig::new(dns_listen),
            // Reaching a peer's gateway is bounded as a direct connection
            // is; its answer by the pool's answer timeout.
            pool: PoolConfig {
                connect_timeout: proxy.connect_timeout,
                ..PoolConfig::default()
            },
            proxy,
            state: StateOptions::default(),
        }
    }
}

/// A running proxy: DNS and VIP listeners.
pub struct ProxyRole {
    pub proxy: Proxy,
    pub dns: DnsServer,
    pub state: watch::Receiver<Arc<DataplaneState>>,
    /// Its counters, flows included.
    pub metrics: Arc<DataplaneMetrics>,
    follow: JoinHandle<()>,
    reporter: Option<Reporter>,
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
        let (id, trust) = (Arc::clone(&identity), root.clone());
        let tls: hbone::ClientTls = Arc::new(move |td: &str| {
            client_config(Arc::clone(&id), &trust, td, &[ALPN_H2]).map_err(|e| e.to_string())
        });
        // A peer's gateway must speak for the cluster linked (SPEC P6); in
        // our own trust domain (shared by the mesh) its chain must say so.
        let own_td = identity.spiffe_id().trust_domain().to_owned();
        let cluster_tls: hbone::ClusterTls = Arc::new(move |td: &str, cluster: &str| {
            client_config_for_cluster(
                Arc::clone(&identity),
                &root,
                td,
                cluster,
                td == own_td,
                &[ALPN_H2],
            )
            .map_err(|e| e.to_string())
        });
        let hbone = HboneClient::with_cluster_tls(
            tls,
            cluster_tls,
            cfg.pool.clone(),
            HboneMetrics::register(registry),
        );
        let metrics = DataplaneMetrics::register(registry);
        let proxy = Proxy::start(
            state.clone(),
            hbone,
            cfg.proxy.clone(),
            Arc::clone(&metrics),
        );
        Ok(ProxyRole {
            proxy,
            dns,
            state,
            metrics,
            follow,
            reporter: None,
        })
    }

    /// Reports its flow counts to the controller every `cfg.interval`,
    /// and once more at [`ProxyRole::shutdown`] (issue 16).
    pub fn report_to(&mut self, cfg: ReportConfig) {
        self.reporter = Some(Reporter::start(Arc::clone(&self.metrics), cfg));
    }

    /// Stops listening, then sends the last report.
    pub async fn shutdown(self) {
        self.follow.abort();
        self.proxy.shutdown();
        self.dns.shutdown().await;
        if let Some(r) = self.reporter {
            r.stop().await;
        }
    }
}

/// A running east-west gateway.
pub struct GatewayRole {
    pub addr: SocketAddr,
    /// Its counters, flows included.
    pub metrics: Arc<DataplaneMetrics>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    reporter: Option<Reporter>,
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
        let trust_root = root.clone();
        let limits = config.listener;
        let dataplane_metrics = DataplaneMetrics::register(registry);
        let handler = Arc::new(GatewayHandler::new(
            state,
            config,
            Arc::clone(&dataplane_metrics),
        ));
        let metrics = HboneMetrics::register(registry);
        let (stop, mut stop_rx) = watch::channel(false);
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) =
                hbone::serve(listener, tls, trust_root, handler, metrics, limits, signal).await
            {
                tracing::error!(error = %e, "gateway stopped");
            }
        });
        Ok(GatewayRole {
            addr,
            metrics: dataplane_metrics,
            stop,
            tasks: vec![follow, server],
            reporter: None,
        })
    }

    /// Reports its flow counts to the controller every `cfg.interval`,
    /// and once more at [`GatewayRole::shutdown`] (issue 16).
    pub fn report_to(&mut self, cfg: ReportConfig) {
        self.reporter = Some(Reporter::start(Arc::clone(&self.metrics), cfg));
    }

    /// Stops listening, then sends the last report.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        if let Some(r) = self.reporter {
            r.stop().await;
        }
    }
}

/// How often the node's addresses are read again: an interface that comes
/// up later (a CNI bridge created with the first Pod) is refused from then on.
const NODE_REFRESH: Duration = Duration::from_secs(30);

/// The node's addresses: this network namespace's interfaces and local
/// ranges (from /proc/net), and `node_ips` (`--node-ip`).
pub fn node_addresses(node_ips: &[IpAddr]) -> std::io::Result<Vec<Cidr>> {
    let mut out = node::local_addresses()?;
    out.extend(node_ips.iter().filter_map(|ip| host_cidr(*ip)));
    Ok(out)
}

/// The endpoint policy of a proxy or gateway (P5): `allow` opened, the
/// node's addresses refused. When /proc/net cannot be read, only
/// `node_ips` are known (logged).
pub fn endpoint_policy(allow: Vec<Cidr>, node_ips: &[IpAddr]) -> Arc<EndpointPolicy> {
    let node = node_addresses(node_ips).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list this node's addresses; only --node-ip ones are refused as endpoints");
        node_ips.iter().filter_map(|ip| host_cidr(*ip)).collect()
    });
    let policy = Arc::new(EndpointPolicy::new(allow, node));
    tracing::info!(
        allowed = %list(policy.allowed()),
        node_addresses = %list(&policy.node_addresses()),
        "endpoint policy: loopback, link-local, multicast, unspecified, broadcast, the VIP range and this node's addresses are never dialled, except in the allowed CIDRs (the VIP range always)"
    );
    policy
}

/// Reads the node's addresses again every 30 s; stops when aborted.
pub fn refresh_node_addresses(
    policy: Arc<EndpointPolicy>,
    node_ips: Vec<IpAddr>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NODE_REFRESH);
        tick.tick().await;
        loop {
            tick.tick().await;
            match node_addresses(&node_ips) {
                Ok(node) => {
                    if policy.set_node_addresses(node) {
                        tracing::info!(node_addresses = %list(&policy.node_addresses()), "this node's addresses changed");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list this node's addresses; the last ones are kept")
                }
            }
        }
    })
}

fn list(cidrs: &[Cidr]) -> String {
    if cidrs.is_empty() {
        return "none".to_owned();
    }
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
