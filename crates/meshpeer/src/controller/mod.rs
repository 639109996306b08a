//! The controller role: reads one cluster (a [`ClusterSource`]), peers with
//! the clusters its remote-peer Gateways name, keeps the global catalog, and
//! publishes it: to peers (its export), to the output ([`Sink`]: generated
//! ServiceEntries and peer status), and to local readers (the API: status,
//! catalog, a catalog stream for the data plane, metrics).

mod core;
mod hold;
mod metrics;
mod peers;
mod sink_task;
pub mod traffic;
pub mod view;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshpeer_identity::{
    ALPN_H2, Identity, PeerPolicy, TrustRoot, client_config_for_cluster, server_config,
};
use meshpeer_model::engine::{CatalogEngine, ExportEngine, OwnChanges};
use meshpeer_model::{Cidr, ClusterConfig, ClusterSnapshot, GlobalCatalog, PeerLink};
use meshpeer_peering::{
    Connector, ExportPublisher, Limits, LocalInfo, Metrics as PeeringMetrics, PeeringService,
    ServerSettings, TlsConnector,
};
use meshpeer_store::{ClusterSource, Sink};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use self::core::{Core, CoreSettings};
use self::metrics::ControllerMetrics;
pub use self::view::{LinkState, PeerView, Status, View};

/// Everything a controller needs.
pub struct ControllerConfig {
    pub source: Box<dyn ClusterSource>,
    pub sink: Box<dyn Sink>,
    /// This controller's identity (`spiffe://<td>/ns/istio-system/sa/meshpeer`).
    pub identity: Arc<Identity>,
    /// The shared root all peers chain to.
    pub trust_root: TrustRoot,
    /// Where the peering server listens (the east-west gateway's `xds-tls`).
    pub peering_listen: SocketAddr,
    /// Where the local API listens (status, catalog, metrics); `None`: off.
    pub api_listen: Option<SocketAddr>,
    pub vip_range: Cidr,
    /// Heartbeat interval of peering streams.
    pub heartbeat: Duration,
    /// How long a lost peer's export is kept (stale).
    pub grace: Duration,
    /// How peers are dialled; `None`: mutual TLS with `identity`.
    pub connector: Option<Arc<dyn Connector>>,
    /// When set, only controllers of these trust domains may peer with this
    /// cluster (P1, `--allowed-peers`); else any other trust domain's.
    pub allowed_peers: Option<BTreeSet<String>>,
    /// The cluster listener (certificate signing and the catalog over
    /// mutual TLS, SPEC P7/P8); `None`: off.
    pub cluster: Option<crate::cluster_api::ClusterListener>,
    /// `(namespace, service account)` that may follow the catalog over
    /// mutual TLS (SPEC P8); default: the proxy's and the gateway's.
    pub feed_identities: std::collections::BTreeSet<(String, String)>,
    /// What one peer may make this cluster hold (SPEC B1, B2): caps, and
    /// where its endpoints may be despite P5.
    pub limits: Limits,
    /// Bounds of the peering listener (SPEC B5): connections before their
    /// handshake, handshake and idle timeouts, connections served.
    pub peering_listener: meshpeer_listener::Limits,
    /// The Istio the output is shaped for (`--istio-flavor`; default
    /// upstream).
    pub istio_flavor: meshpeer_model::render::IstioFlavor,
}

impl ControllerConfig {
    /// Defaults: API off, default VIP range, 10 s heartbeats, 2 min grace.
    pub fn new(
        source: Box<dyn ClusterSource>,
        sink: Box<dyn Sink>,
        identity: Arc<Identity>,
        trust_root: TrustRoot,
        peering_listen: SocketAddr,
    ) -> Self {
        ControllerConfig {
            source,
            sink,
            identity,
            trust_root,
            peering_listen,
            api_listen: None,
            vip_range: Cidr::default_vip_range(),
            heartbeat: Duration::from_secs(10),
            grace: Duration::from_secs(120),
            connector: None,
            allowed_peers: None,
            cluster: None,
            feed_identities: crate::api::FeedAccess::new("").identities,
            limits: Limits::default(),
            peering_listener: meshpeer_peering::default_listener_limits(),
            istio_flavor: Default::default(),
        }
    }
}

/// A running controller.
pub struct Controller {
    /// The address the peering server listens on.
    pub peering_addr: SocketAddr,
    /// The address of the local API, when enabled.
    pub api_addr: Option<SocketAddr>,
    /// The address of the cluster listener, when enabled.
    pub cluster_addr: Option<SocketAddr>,
    view: watch::Receiver<Arc<View>>,
    feed: watch::Receiver<Arc<meshpeer_dataplane::feed::CatalogFeed>>,
    applied: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    service: PeeringService,
    followers: crate::api::Followers,
    traffic: Arc<traffic::TrafficBook>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("peering_addr", &self.peering_addr)
            .field("api_addr", &self.api_addr)
            .field("cluster_addr", &self.cluster_addr)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Starts every task of a controller.
    pub async fn start(cfg: ControllerConfig) -> anyhow::Result<Controller> {
        let mut registry = Registry::with_prefix("meshpeer");
        let peering_metrics = PeeringMetrics::register(&mut registry);
        let metrics = ControllerMetrics::register(&mut registry);
        let ControllerConfig {
            source,
            mut sink,
            identity,
            trust_root,
            peering_listen,
            api_listen,
            vip_range,
            heartbeat,
            grace,
            connector,
            allowed_peers,
            cluster,
            feed_identities,
            limits,
            peering_listener,
            istio_flavor,
        } = cfg;
        info!(
            max_peer_services = limits.max_services,
            max_endpoints_per_service = limits.max_endpoints_per_service,
            max_ports_per_service = limits.max_ports_per_service,
            max_peer_endpoints = limits.max_endpoints,
            max_message_bytes = limits.max_message_bytes(),
            allow_endpoints = ?limits.allow_endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "limits on what a peer may send"
        );
        info!(istio_flavor = %istio_flavor, "output shaped for this Istio");
        let feed_guard = crate::api::FeedGuard::new(
            crate::api::FeedAccess {
                trust_domain: identity.spiffe_id().trust_domain().to_owned(),
                identities: feed_identities,
            },
            &mut registry,
        );
        let ca_metrics = meshpeer_ca::CaMetrics::register(&mut registry);

        // VIPs handed out before a restart (G11).
        let existing = sink
            .existing()
            .await
            .with_context(|| format!("cannot read the existing output ({})", sink.describe()))?;
        // Sync gating: what the output holds for services peers contribute
        // to stays as it is until they sync again (or the grace is over).
        let hold = hold::Hold::new(&existing, std::time::SystemTime::now() + grace);
        let vips = existing
            .entries
            .iter()
            .filter_map(|se| {
                let host = se.spec.hosts.first()?;
                let ip = se.spec.addresses.first()?.parse().ok()?;
                Some((host.clone(), ip))
            })
            .collect();

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        // Peering server.
        let publisher = ExportPublisher::new();
        // The cluster's name in the server's messages: its intermediate's
        // cluster binding when it has one (where clusters share a trust
        // domain, the trust domain names none of them), else the trust
        // domain, which is the cluster's name by default.
        let cluster_name = identity
            .cluster_ca()
            .and_then(|ca| ca.cluster_binding())
            .unwrap_or(identity.spiffe_id().trust_domain())
            .to_owned();
        let mut settings = ServerSettings::new(&cluster_name);
        settings.admission.own_trust_domain = identity.spiffe_id().trust_domain().to_owned();
        settings.heartbeat = heartbeat;
        // P1: controllers of other (allowed) trust domains only; the links'
        // pins (P3) are added once the cluster's objects are read.
        settings.admission.allowed_trust_domains = allowed_peers;
        // Where clusters share a trust domain, our own intermediate's
        // cluster binding names the chains that are ours (own_cluster).
        if let Some(own) = identity.cluster_ca().and_then(|ca| ca.cluster_binding()) {
            settings.admission.own_cluster = own.to_owned();
            settings.admission.own_cluster_bound = true;
        }
        settings.trust_root = Some(trust_root.clone());
        // Peers' controllers present the identity this one does (one
        // convention per mesh; default istio-system/meshpeer).
        let own_id = identity.spiffe_id();
        settings.admission.controller_namespace = own_id.namespace().to_owned();
        settings.admission.controller_service_account = own_id.service_account().to_owned();
        let admission = settings.admission.clone();
        let service = PeeringService::new(settings, &publisher, Arc::clone(&peering_metrics));
        let tls = server_config(
            Arc::clone(&identity),
            &trust_root,
            PeerPolicy::AnyTrustDomain,
            &[ALPN_H2],
        )?;
        let listener = TcpListener::bind(peering_listen)
            .await
            .with_context(|| format!("cannot listen for peers on {peering_listen}"))?;
        let peering_addr = listener.local_addr()?;
        info!(address = %peering_addr, id = %identity.spiffe_id(), "peering server listening");
        let mut stop = shutdown_rx.clone();
        let server_service = service.clone();
        let peering_limits = peering_listener;
        let peering_listener_metrics = meshpeer_listener::ListenerMetrics::register(
            registry.sub_registry_with_prefix("peering"),
        );
        tasks.push(tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = meshpeer_peering::serve_with(
                listener,
                tls,
                server_service,
                peering_limits,
                peering_listener_metrics,
                signal,
            )
            .await
            {
                error!(error = %e, "peering server failed");
            }
        }));
        tasks.push(tokio::spawn(Arc::clone(&identity).run_rotation()));

        let connector: Arc<dyn Connector> = match connector {
            Some(c) => c,
            None => {
                let id = Arc::clone(&identity);
                let root = trust_root.clone();
                let own_td = identity.spiffe_id().trust_domain().to_owned();
                let (ns, sa) = (
                    identity.spiffe_id().namespace().to_owned(),
                    identity.spiffe_id().service_account().to_owned(),
                );
                Arc::new(
                    TlsConnector::new(Arc::new(move |link: &PeerLink| {
                        // The peer's chain must speak for the linked
                        // cluster; in our own (shared) trust domain it must
                        // say so (P1, P6).
                        client_config_for_cluster(
                            Arc::clone(&id),
                            &root,
                            &link.trust_domain,
                            &link.cluster,
                            link.trust_domain == own_td,
                            &[ALPN_H2],
                        )
                        .map_err(|e| e.to_string())
                    }))
                    .with_controller_identity(&ns, &sa),
                )
            }
        };

        // Source.
        let (update_tx, mut updates) = mpsc::channel(64);
        let what = source.describe();
        tasks.push(tokio::spawn(async move {
            match source.run(update_tx).await {
                Ok(()) => info!(source = %what, "source stopped"),
                Err(e) => {
                    error!(source = %what, error = %e, "source failed; the last state read is kept")
                }
            }
        }));

        // Output.
        let (sink_tx, sink_rx) = watch::channel(Arc::new(sink_task::SinkJob::default()));
        let (error_tx, error_rx) = watch::channel(None);
        let (applied_tx, applied) = watch::channel(0);
        tasks.push(tokio::spawn(sink_task::run(
            sink,
            istio_flavor,
            sink_rx,
            error_tx,
            applied_tx,
            Arc::clone(&metrics),
        )));

        // The core.
        let (view_tx, view) = watch::channel(Arc::new(View::default()));
        let (feed_tx, feed) =
            watch::channel(Arc::new(meshpeer_dataplane::feed::CatalogFeed::default()));
        let (peer_tx, mut peer_rx) = mpsc::channel(256);
        let (local_info, _) = watch::channel(LocalInfo {
            cluster: String::new(),
            segment: None,
            trust_domain: String::new(),
        });
        let mut core = Core {
            settings: CoreSettings {
                heartbeat,
                grace,
                peering_address: peering_addr.to_string(),
                admission,
                limits: Arc::new(limits),
            },
            exporter: ExportEngine::new(ClusterSnapshot::new(ClusterConfig::default())),
            cataloguer: CatalogEngine::new(vip_range, vips).park_restart_vips(),
            hold,
            own_changes: OwnChanges::ALL,
            ready: false,
            catalog: Arc::new(GlobalCatalog::default()),
            pending_exported: 0,
            last_step: Default::default(),
            contributed: Default::default(),
            imported: 0,
            peers: Default::default(),
            link_tasks: Default::default(),
            publisher,
            service: service.clone(),
            local_info,
            connector,
            peer_events: peer_tx,
            peering_metrics,
            metrics,
            view_tx,
            feed_tx,
            callers: Default::default(),
            started: std::time::SystemTime::now(),
            callers_settled: false,
            deferred_diagnostics: Vec::new(),
            identity_gaps: (istio_flavor == meshpeer_model::render::IstioFlavor::Upstream)
                .then(self::core::IdentityGaps::default),
            sink_tx,
            output_error: error_rx,
            snapshot_dirty: false,
            catalog_dirty: false,
            version: 0,
        };
        let mut stop = shutdown_rx.clone();
        let mut served_changes = service.served_changes();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tasks.push(tokio::spawn(async move {
            let mut source_open = true;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    // Who links here changed, or a caller's grace may be over:
                    // republish without recomputing the catalog.
                    r = served_changes.changed() => {
                        if r.is_ok() && core.ready {
                            core.publish();
                        }
                        continue;
                    }
                    _ = tick.tick() => {
                        // publish() also releases held output entries
                        // and settles the callers once the grace period
                        // since the start is over.
                        let now = std::time::SystemTime::now();
                        core.log_deferred_diagnostics(now);
                        if core.ready
                            && (core.refresh_callers(now)
                                || core.holding()
                                || core.settle_callers(now))
                        {
                            core.publish();
                        }
                        continue;
                    }
                    u = updates.recv(), if source_open => match u {
                        Some(u) => {
                            core.on_update(u);
                            while let Ok(u) = updates.try_recv() {
                                core.on_update(u);
                            }
                        }
                        None => {
                            source_open = false;
                            warn!("the source is gone; serving its last state");
                            continue;
                        }
                    },
                    Some(ev) = peer_rx.recv() => {
                        core.on_peer(ev);
                        while let Ok(ev) = peer_rx.try_recv() {
                            core.on_peer(ev);
                        }
                    }
                }
                core.publish_export();
                // Let the peering streams send the new export first.
                tokio::task::yield_now().await;
                // The catalog before, shared, not its findings copied.
                let before = Arc::clone(&core.catalog);
                core.recompute();
                core.log_new_diagnostics(&before.diagnostics);
            }
            core.stop_links();
        }));

        // Local API.
        let followers = crate::api::Followers::default();
        let traffic = traffic::TrafficBook::new(feed.clone(), &mut registry);
        let state = crate::api::ApiState {
            view: view.clone(),
            feed: feed.clone(),
            service: service.clone(),
            registry: Arc::new(registry),
            feed_guard,
            traffic: Arc::clone(&traffic),
        };
        let api_addr = match api_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for the API on {addr}"))?;
                let addr = listener.local_addr()?;
                info!(address = %addr, "API listening (status, catalog, metrics)");
                let state = state.clone();
                let mut stop = shutdown_rx.clone();
                let listed = followers.clone();
                tasks.push(tokio::spawn(async move {
                    let signal = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    if let Err(e) = crate::api::serve(listener, state, listed, signal).await {
                        error!(error = %e, "API server failed");
                    }
                }));
                Some(addr)
            }
            None => None,
        };

        // Cluster listener: certificates and the catalog over mutual TLS.
        let cluster_addr = match cluster {
            Some(c) => {
                let (addr, task) = crate::cluster_api::start(
                    c,
                    &identity,
                    state,
                    followers.clone(),
                    ca_metrics,
                    shutdown_rx.clone(),
                )
                .await?;
                tasks.push(task);
                Some(addr)
            }
            None => None,
        };

        Ok(Controller {
            peering_addr,
            api_addr,
            cluster_addr,
            view,
            feed,
            applied,
            shutdown,
            tasks,
            service,
            followers,
            traffic,
        })
    }

    /// The flows this cluster's proxies and gateways reported (issue 16):
    /// `GET /v1/traffic`; a data plane in this process reports here.
    pub fn traffic(&self) -> Arc<traffic::TrafficBook> {
        Arc::clone(&self.traffic)
    }

    /// Lists a data-plane role running in this process (the demo's) among
    /// the catalog's followers in `/v1/status`, as the ones that follow over
    /// HTTP are, until the guard is dropped.
    pub fn register_follower(&self, view: crate::api::FollowerView) -> crate::api::FollowerGuard {
        self.followers.add(view)
    }

    /// The latest view; `changed()` on the receiver waits for the next.
    pub fn view(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// The catalog feed for this cluster's data plane.
    pub fn feed(&self) -> watch::Receiver<Arc<meshpeer_dataplane::feed::CatalogFeed>> {
        self.feed.clone()
    }

    /// The latest view, with live server-side status.
    pub fn current(&self) -> Arc<View> {
        let v = self.view.borrow().clone();
        Arc::new(crate::api::with_live_status(&v, &self.service))
    }

    /// Waits until the view satisfies `pred` and its output is written.
    pub async fn wait_for(
        &self,
        within: Duration,
        mut pred: impl FnMut(&View) -> bool,
    ) -> anyhow::Result<Arc<View>> {
        let mut view = self.view.clone();
        let mut applied = self.applied.clone();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = view.borrow_and_update().clone();
            if v.version > 0 && pred(&v) && *applied.borrow_and_update() >= v.version {
                return Ok(v);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    anyhow::bail!("condition not met within {within:?}; last view version {}", v.version)
                }
                r = view.changed() => r.context("controller stopped")?,
                r = applied.changed() => r.context("controller stopped")?,
            }
        }
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}
