//! Clusters in file mode with real controllers, in one test process: folders
//! in a temp dir, certificates under one root, peering over mutual TLS on
//! 127.0.0.1, links through relays that tests can cut.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshpeer::controller::{Controller, ControllerConfig, View};
use meshpeer::dataplane::{GatewayRole, ProxyRole, ProxyRoleConfig};
use meshpeer_dataplane::endpoint_policy::EndpointPolicy;
use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_dataplane::gateway::GatewayConfig;
use meshpeer_dataplane::proxy::ProxyConfig;
use meshpeer_dataplane::report::{ReportConfig, ReportTarget};
use meshpeer_dataplane::state::DataplaneState;
use meshpeer_identity::{Identity, RootCa, SpiffeId};
use meshpeer_store::file_sink::FileSink;
use meshpeer_store::file_source::FileSource;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub(crate) const WITHIN: Duration = Duration::from_secs(30);

/// A TCP relay in front of a peer's peering port; `cut` drops every open
/// connection (a network failure between two clusters).
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub(crate) async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, u) = (conns.clone(), up.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // down: refuse by closing at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Relay {
            addr,
            conns,
            accept,
            up,
        }
    }

    /// Drops every open connection.
    pub(crate) fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Down: cut, and close new connections at once. Up: relay again.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            self.cut();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

pub(crate) struct Cluster {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) controller: Option<Controller>,
    /// 127.<block>.0.0/16 is this cluster's: VIPs in 127.<block>.0.0/17,
    /// pod addresses in 127.<block>.200.0/24 (see [`AddressBlock`]).
    pub(crate) block: AddressBlock,
    pub(crate) proxy: Option<ProxyRole>,
    pub(crate) gateway: Option<GatewayRole>,
    pub(crate) registry: Registry,
    /// Where the controller writes; `None`: files under `out`.
    pub(crate) sink: Option<Box<dyn meshpeer_store::Sink>>,
    /// What its proxy and gateway may dial: its pods' range
    /// (`--allow-endpoints 127.<block>.200.0/24`), no node address unless
    /// a test sets some.
    pub(crate) endpoints: Arc<EndpointPolicy>,
    /// Its proxy and gateway follow the controller's catalog over its API
    /// (NDJSON over HTTP, as across processes) instead of in process; the
    /// controller must have an API address.
    pub(crate) follow_api: bool,
    /// The catalog as its proxy and gateway have it, when following the API.
    pub(crate) followed: Option<tokio::sync::watch::Receiver<Arc<CatalogFeed>>>,
    feed_task: Option<JoinHandle<()>>,
}

impl Cluster {
    pub(crate) fn controller(&self) -> &Controller {
        self.controller.as_ref().expect("controller running")
    }

    pub(crate) fn proxy(&self) -> &ProxyRole {
        self.proxy.as_ref().expect("data plane running")
    }

    pub(crate) fn gateway(&self) -> &GatewayRole {
        self.gateway.as_ref().expect("data plane running")
    }

    /// Where this cluster's VIPs come from.
    pub(crate) fn vip_range(&self) -> meshpeer_model::Cidr {
        format!("127.{}.0.0/17", self.block.octet).parse().unwrap()
    }

    /// Where this cluster's pods are: what its proxy and gateway may dial.
    pub(crate) fn pod_range(&self) -> meshpeer_model::Cidr {
        format!("127.{}.200.0/24", self.block.octet)
            .parse()
            .unwrap()
    }

    /// The address of pod number `n` of this cluster.
    pub(crate) fn pod_ip(&self, n: u8) -> String {
        format!("127.{}.200.{n}", self.block.octet)
    }

    /// Waits until this cluster's proxy routes `host` with contributions
    /// from exactly `clusters` (each with a ready endpoint) and listens on
    /// its VIP; returns VIP:port.
    pub(crate) async fn wait_route(&self, host: &str, port: u16, clusters: &[&str]) -> SocketAddr {
        let mut want: Vec<String> = clusters.iter().map(|c| (*c).to_owned()).collect();
        want.sort();
        let mut state = self.proxy().state.clone();
        let routed = |s: &DataplaneState| -> Option<SocketAddr> {
            let svc = s.service_by_host(host)?;
            let mut have: Vec<String> = svc
                .contributions
                .iter()
                .filter(|c| c.service.endpoints().next().is_some())
                .map(|c| c.cluster.clone())
                .collect();
            have.sort();
            (have == want).then(|| SocketAddr::new(svc.vip, port))
        };
        let vip = tokio::time::timeout(WITHIN, async {
            loop {
                if let Some(v) = routed(&state.borrow_and_update()) {
                    return v;
                }
                state.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| {
            let s = self.proxy().state.borrow().clone();
            panic!(
                "{}: {host} never routed to {want:?}; services: {:#?}",
                self.name,
                s.feed
                    .catalog
                    .services
                    .values()
                    .map(|s| (&s.hostname, s.clusters().collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
            )
        });
        let mut listening = self.proxy().proxy.listening();
        tokio::time::timeout(WITHIN, listening.wait_for(|l| l.contains(&vip)))
            .await
            .unwrap_or_else(|_| panic!("{}: the proxy never listened on {vip}", self.name))
            .unwrap();
        vip
    }

    /// Waits until this cluster's gateway accepts tunnels from `caller`.
    pub(crate) async fn wait_caller(&self, caller: &str) {
        let mut feed = self.controller().feed();
        tokio::time::timeout(
            WITHIN,
            feed.wait_for(|f| f.callers.iter().any(|c| c.cluster == caller && c.connected)),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: {caller} never became a caller", self.name))
        .unwrap();
    }

    pub(crate) fn write(&self, file: &str, text: &str) {
        let path = self.dir.join(file);
        let tmp = self.dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &path).unwrap();
    }

    pub(crate) fn remove(&self, file: &str) {
        let _ = fs::remove_file(self.dir.join(file));
    }

    /// Waits until this cluster's view satisfies `pred` (and its output is written).
    pub(crate) async fn wait(&self, what: &str, pred: impl FnMut(&View) -> bool) -> Arc<View> {
        match self.controller().wait_for(WITHIN, pred).await {
            Ok(v) => v,
            Err(e) => {
                let v = self.controller().current();
                panic!(
                    "{}: {what}: {e}\nhosts: {:?}\npeers: {:#?}",
                    self.name,
                    hosts(&v),
                    v.status.peers
                );
            }
        }
    }

    /// Global hostname -> contributing clusters, in this cluster's output folder.
    pub(crate) fn output(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Ok(entries) = fs::read_dir(&self.out) else {
            return out;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let parsed =
                    meshpeer_model::parse_documents("out", &fs::read_to_string(&p).unwrap());
                for o in parsed.objects {
                    let j = o.to_json();
                    out.insert(
                        j["spec"]["hosts"][0].as_str().unwrap().to_owned(),
                        j["metadata"]["annotations"]["meshpeer.io/clusters"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
            }
        }
        out
    }
}

/// Hostnames of a view.
pub(crate) fn hosts(v: &View) -> Vec<String> {
    v.catalog
        .services
        .values()
        .map(|s| s.hostname.clone())
        .collect()
}

/// Contributing clusters of a hostname in a view.
pub(crate) fn contributors(v: &View, host: &str) -> Option<Vec<String>> {
    v.catalog
        .service(host)
        .map(|s| s.clusters().map(str::to_owned).collect())
}

pub(crate) struct Mesh {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) root: RootCa,
    pub(crate) clusters: Vec<Cluster>,
    /// (from, to) -> relay in front of `to`'s peering port.
    pub(crate) relays: BTreeMap<(String, String), Relay>,
    /// Destinations a proxy tries per connection.
    pub(crate) max_attempts: usize,
    /// The proxies' L7 header timeout (B5); the default when `None`.
    pub(crate) header_timeout: Option<Duration>,
    pub(crate) body_timeout: Option<Duration>,
    /// The proxies' L7 event loops; the default (one per core) when `None`.
    pub(crate) l7_workers: Option<usize>,
    /// The proxies serve HTTP/1.1 with hyper alone (`--l7-http1 hyper`).
    pub(crate) l7_hyper_only: bool,
    /// The controllers' `--grace` (5 s unless a test sets it).
    pub(crate) grace: Duration,
    /// When set, proxies and gateways report their flow counts this often
    /// to their controller (over its plain API when following it there,
    /// else in process).
    pub(crate) report_interval: Option<Duration>,
    /// The trust domain every cluster shares (`trustDomain` in each
    /// cluster.yaml), each cluster's intermediate bound to its cluster;
    /// `None`: each cluster's trust domain is its name.
    pub(crate) shared_td: Option<String>,
}

pub(crate) fn namespace(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    if !labels.is_empty() {
        s.push_str("  labels:\n");
        for (k, v) in labels {
            s.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    s
}

/// A Service with one ready Pod, optionally labelled with a scope.
pub(crate) fn service(ns: &str, name: &str, scope: Option<&str>, ip: &str) -> String {
    let labels = scope
        .map(|s| format!("  labels:\n    solo.io/service-scope: {s}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n{labels}spec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: 8000, targetPort: 8080}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-0\n  namespace: {ns}\n  labels: {{app: {name}}}\nspec:\n  containers: [{{name: app, image: x}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

pub(crate) fn segments(join: Option<&str>) -> String {
    let mut labels = vec![];
    if let Some(s) = join {
        labels.push(("admin.solo.io/segment", s));
    }
    format!(
        "{}---\napiVersion: admin.solo.io/v1alpha1\nkind: Segment\nmetadata: {{name: dev, namespace: istio-system}}\nspec: {{domain: cluster.dev}}\n---\n\
         apiVersion: admin.solo.io/v1alpha1\nkind: Segment\nmetadata: {{name: prod, namespace: istio-system}}\nspec: {{domain: cluster.prod}}\n",
        namespace("istio-system", &labels)
    )
}

pub(crate) fn peer_gateway(peer: &str, hbone: u16, port: u16, pin: Option<&str>) -> String {
    peer_gateway_td(peer, peer, hbone, port, pin)
}

/// [`peer_gateway`] for a peer of trust domain `td`.
pub(crate) fn peer_gateway_td(
    peer: &str,
    td: &str,
    hbone: u16,
    port: u16,
    pin: Option<&str>,
) -> String {
    let pin = pin
        .map(|s| format!(", admin.solo.io/segment: \"{s}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: istio-remote-peer-{peer}\n  namespace: istio-eastwest\n\
         \x20 labels: {{topology.istio.io/network: {peer}{pin}}}\n  annotations: {{gateway.istio.io/trust-domain: {td}}}\n\
         spec:\n  gatewayClassName: istio-remote\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n\
         \x20 - {{name: cross-network, port: {hbone}, protocol: HBONE, tls: {{mode: Passthrough}}}}\n\
         \x20 - {{name: xds-tls, port: {port}, protocol: TLS, tls: {{mode: Passthrough}}}}\n"
    )
}

impl Mesh {
    /// Clusters that all have trust domain `td` (Istio's multi-network
    /// model), each with its own intermediate bound to it by the root.
    pub(crate) fn shared(names: &[&str], td: &str) -> Mesh {
        let mut mesh = Mesh::new(names);
        for n in names {
            fs::write(
                mesh.cluster(n).dir.join("cluster.yaml"),
                format!("name: {n}\nregion: r1\nzone: z1\ntrustDomain: {td}\n"),
            )
            .unwrap();
        }
        mesh.shared_td = Some(td.to_owned());
        mesh
    }

    /// `name`'s trust domain.
    pub(crate) fn td(&self, name: &str) -> String {
        self.shared_td.clone().unwrap_or_else(|| name.to_owned())
    }

    /// Clusters with their own regions and zones: `(name, region, zone)`.
    pub(crate) fn with_localities(clusters: &[(&str, &str, &str)]) -> Mesh {
        let names: Vec<&str> = clusters.iter().map(|c| c.0).collect();
        let mesh = Mesh::new(&names);
        for (name, region, zone) in clusters {
            fs::write(
                mesh.cluster(name).dir.join("cluster.yaml"),
                format!("name: {name}\nregion: {region}\nzone: {zone}\n"),
            )
            .unwrap();
        }
        mesh
    }

    /// Cluster folders (cluster.yaml + istio-system with the dev/prod Segments).
    pub(crate) fn new(names: &[&str]) -> Mesh {
        let tmp = tempfile::tempdir().unwrap();
        let root = RootCa::generate(
            "test root",
            Duration::from_secs(86_400 * 30),
            SystemTime::now(),
        )
        .unwrap();
        let clusters = names
            .iter()
            .map(|n| {
                let dir = tmp.path().join(n);
                fs::create_dir_all(&dir).unwrap();
                fs::write(
                    dir.join("cluster.yaml"),
                    format!("name: {n}\nregion: r1\nzone: z1\n"),
                )
                .unwrap();
                fs::write(dir.join("istio-system.yaml"), segments(None)).unwrap();
                let block = AddressBlock::lease();
                let pods = format!("127.{}.200.0/24", block.octet).parse().unwrap();
                Cluster {
                    name: (*n).to_owned(),
                    out: dir.join(".meshpeer").join("out"),
                    dir,
                    controller: None,
                    block,
                    proxy: None,
                    gateway: None,
                    registry: Registry::default(),
                    sink: None,
                    endpoints: Arc::new(EndpointPolicy::new(vec![pods], Vec::new())),
                    follow_api: false,
                    followed: None,
                    feed_task: None,
                }
            })
            .collect();
        Mesh {
            tmp,
            root,
            clusters,
            relays: BTreeMap::new(),
            max_attempts: ProxyConfig::default().max_attempts,
            header_timeout: None,
            body_timeout: None,
            l7_workers: None,
            l7_hyper_only: false,
            grace: Duration::from_secs(5),
            report_interval: None,
            shared_td: None,
        }
    }

    /// `name`'s controller will write to `sink` instead of files.
    pub(crate) fn with_sink(&mut self, name: &str, sink: Box<dyn meshpeer_store::Sink>) {
        let c = self.clusters.iter_mut().find(|c| c.name == name).unwrap();
        c.sink = Some(sink);
    }

    pub(crate) fn cluster(&self, name: &str) -> &Cluster {
        self.clusters.iter().find(|c| c.name == name).unwrap()
    }

    /// Starts every cluster's controller (peering on 127.0.0.1:0).
    pub(crate) async fn start(&mut self) {
        let names: Vec<String> = self.clusters.iter().map(|c| c.name.clone()).collect();
        for name in names {
            self.start_controller(&name, "127.0.0.1:0".parse().unwrap(), None)
                .await;
        }
    }

    /// Starts `name`'s controller: peering on `peering`, its local API
    /// (status, catalog, the feed over plain HTTP) on `api` when given.
    pub(crate) async fn start_controller(
        &mut self,
        name: &str,
        peering: SocketAddr,
        api: Option<SocketAddr>,
    ) {
        let cfg = self.controller_config(name, peering, api);
        self.start_with(name, cfg).await;
    }

    /// Starts `name`'s controller with `cfg` (from
    /// [`Mesh::controller_config`], perhaps changed).
    pub(crate) async fn start_with(&mut self, name: &str, mut cfg: ControllerConfig) {
        let c = self.clusters.iter_mut().find(|c| c.name == name).unwrap();
        // A sink given by `with_sink` replaces the output folder (once).
        if let Some(sink) = c.sink.take() {
            cfg.sink = sink;
        }
        c.controller = Some(Controller::start(cfg).await.unwrap());
    }

    /// What [`Mesh::start_controller`] starts `name`'s controller with:
    /// its folder, its output folder, 2 s heartbeats, the mesh's grace.
    pub(crate) fn controller_config(
        &self,
        name: &str,
        peering: SocketAddr,
        api: Option<SocketAddr>,
    ) -> ControllerConfig {
        let grace = self.grace;
        let root = &self.root;
        let c = self.cluster(name);
        let now = SystemTime::now();
        let td = self.td(name);
        let ca = root
            .issue_intermediate(&c.name, &td, Duration::from_secs(86_400), now)
            .unwrap();
        let trust_root = ca.trust_root().clone();
        let id = SpiffeId::new(td.as_str(), "istio-system", "meshpeer").unwrap();
        let identity = Arc::new(Identity::new(ca, id, Duration::from_secs(3600), now).unwrap());
        let mut cfg = ControllerConfig::new(
            Box::new(FileSource::new(c.dir.clone(), Duration::from_millis(20))),
            Box::new(FileSink::new(c.out.clone())),
            identity,
            trust_root,
            peering,
        );
        cfg.heartbeat = Duration::from_secs(2);
        cfg.grace = grace;
        cfg.vip_range = c.vip_range();
        cfg.api_listen = api;
        // Every cluster's pods are on loopback (127.<block>.200.0/24):
        // peers' endpoints there are taken (SPEC B1, P5).
        cfg.limits.allow_endpoints = vec!["127.0.0.0/8".parse().unwrap()];
        cfg
    }

    /// Stops `name`'s controller and starts it again on the same peering
    /// and API addresses, from its folder and output alone (a restart).
    pub(crate) async fn restart_controller(&mut self, name: &str) {
        let c = self.clusters.iter_mut().find(|c| c.name == name).unwrap();
        let old = c.controller.take().expect("controller running");
        let (peering, api) = (old.peering_addr, old.api_addr);
        old.shutdown().await;
        self.start_controller(name, peering, api).await;
    }

    /// Starts every cluster's east-west gateway (HBONE on 127.0.0.1:0) and
    /// proxy (DNS on 127.0.0.1:0), following their controllers. Fast
    /// ejection so that tests see recovery within a second.
    pub(crate) async fn start_dataplane(&mut self) {
        let names: Vec<String> = self.clusters.iter().map(|c| c.name.clone()).collect();
        self.start_dataplane_of(&names).await;
    }

    /// [`Mesh::start_dataplane`] for the named clusters only.
    pub(crate) async fn start_dataplane_of(&mut self, names: &[String]) {
        let shared_td = self.shared_td.clone();
        for c in self.clusters.iter_mut().filter(|c| names.contains(&c.name)) {
            let td = shared_td.clone().unwrap_or_else(|| c.name.clone());
            let feed = if c.follow_api {
                let api = c.controller().api_addr.expect("the controller's API is on");
                let (tx, rx) = tokio::sync::watch::channel(Arc::new(CatalogFeed::default()));
                c.feed_task = Some(tokio::spawn(meshpeer_dataplane::feed::follow(
                    api.to_string(),
                    tx,
                )));
                c.followed = Some(rx.clone());
                rx
            } else {
                c.controller().feed()
            };
            let now = SystemTime::now();
            let identity = |ns: &str, sa: &str| {
                let ca = self
                    .root
                    .issue_intermediate(&c.name, &td, Duration::from_secs(86_400), now)
                    .unwrap();
                let id = SpiffeId::new(td.as_str(), ns, sa).unwrap();
                Arc::new(Identity::new(ca, id, Duration::from_secs(3600), now).unwrap())
            };
            let gw_id = identity("istio-eastwest", "istio-eastwest");
            let proxy_id = identity("istio-system", "meshpeer-proxy");
            let root = gw_id.trust_root().clone();
            c.gateway = Some(
                GatewayRole::start(
                    feed.clone(),
                    gw_id,
                    root.clone(),
                    "127.0.0.1:0".parse().unwrap(),
                    GatewayConfig {
                        endpoints: Arc::clone(&c.endpoints),
                        ..GatewayConfig::default()
                    },
                    &mut c.registry,
                )
                .await
                .unwrap(),
            );
            let mut cfg = ProxyRoleConfig::new("127.0.0.1:0".parse().unwrap());
            cfg.state.capture_cluster_ips = true;
            cfg.proxy = ProxyConfig {
                ejection_base: Duration::from_millis(200),
                ejection_cap: Duration::from_secs(1),
                max_attempts: self.max_attempts,
                endpoints: Arc::clone(&c.endpoints),
                header_timeout: self
                    .header_timeout
                    .unwrap_or(ProxyConfig::default().header_timeout),
                body_timeout: self
                    .body_timeout
                    .unwrap_or(ProxyConfig::default().body_timeout),
                l7_workers: self.l7_workers.unwrap_or(ProxyConfig::default().l7_workers),
                l7_direct_http1: !self.l7_hyper_only,
                ..ProxyConfig::default()
            };
            c.proxy = Some(
                ProxyRole::start(feed, proxy_id, root, cfg, &mut c.registry)
                    .await
                    .unwrap(),
            );
            if let Some(interval) = self.report_interval {
                for role in ["proxy", "gateway"] {
                    let target = if c.follow_api {
                        let api = c.controller().api_addr.expect("the controller's API is on");
                        ReportTarget::Plain(api.to_string())
                    } else {
                        let book = c.controller().traffic();
                        let who = format!("{role} of {} in the test process", c.name);
                        ReportTarget::InProcess(Arc::new(move |r| {
                            book.ingest(&who, r).map_err(|e| e.to_string())
                        }))
                    };
                    let cfg = ReportConfig {
                        target,
                        role: role.to_owned(),
                        instance: format!("{role} of {}", c.name),
                        interval,
                    };
                    if role == "proxy" {
                        c.proxy.as_mut().unwrap().report_to(cfg);
                    } else {
                        c.gateway.as_mut().unwrap().report_to(cfg);
                    }
                }
            }
        }
    }

    /// `from` links to `to` (a remote-peer Gateway in `from`, through a relay).
    pub(crate) async fn link(&mut self, from: &str, to: &str) {
        self.link_pinned(from, to, None).await;
    }

    /// Like [`Mesh::link`], the Gateway pinning `to`'s segment (P3; `""`:
    /// the default segment).
    pub(crate) async fn link_pinned(&mut self, from: &str, to: &str, pin: Option<&str>) {
        let target = self.cluster(to).controller().peering_addr;
        let hbone = self
            .cluster(to)
            .gateway
            .as_ref()
            .map_or(15008, |g| g.addr.port());
        let relay = Relay::start(target).await;
        let port = relay.addr.port();
        self.cluster(from).write(
            &format!("peer-{to}.yaml"),
            &peer_gateway_td(to, &self.td(to), hbone, port, pin),
        );
        self.relays.insert((from.to_owned(), to.to_owned()), relay);
    }

    pub(crate) fn unlink(&mut self, from: &str, to: &str) {
        self.cluster(from).remove(&format!("peer-{to}.yaml"));
        self.relays.remove(&(from.to_owned(), to.to_owned()));
    }

    pub(crate) async fn link_all(&mut self) {
        let names: Vec<String> = self.clusters.iter().map(|c| c.name.clone()).collect();
        for a in &names {
            for b in &names {
                if a != b {
                    self.link(a, b).await;
                }
            }
        }
    }

    pub(crate) async fn shutdown(mut self) {
        for c in &mut self.clusters {
            if let Some(p) = c.proxy.take() {
                p.shutdown().await;
            }
            if let Some(g) = c.gateway.take() {
                g.shutdown().await;
            }
            if let Some(ctl) = c.controller.take() {
                ctl.shutdown().await;
            }
            if let Some(t) = c.feed_task.take() {
                t.abort();
            }
        }
    }
}

pub(crate) fn path_of(p: &Path) -> String {
    p.display().to_string()
}

/// A /16 of loopback (127.<octet>.0.0/16) this test process holds alone:
/// concurrent test processes bind the same VIPs and pod addresses
/// otherwise. Held by a listener on 127.<octet>.255.254:39999.
pub(crate) struct AddressBlock {
    pub(crate) octet: u8,
    _lease: std::net::TcpListener,
}

impl AddressBlock {
    pub(crate) fn lease() -> AddressBlock {
        let start = fastrand::u8(100..250);
        for i in 0..150u16 {
            let octet = 100 + ((u16::from(start) - 100 + i) % 150) as u8;
            if let Ok(l) = std::net::TcpListener::bind((format!("127.{octet}.255.254"), 39_999)) {
                return AddressBlock { octet, _lease: l };
            }
        }
        panic!("no free 127.x.0.0/16 block for the test");
    }
}

/// A backend pod: answers each connection with its name and a newline,
/// then echoes what it reads. `stop` closes the port (connections refused).
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    pub(crate) name: String,
    accept: Option<JoinHandle<()>>,
}

impl Backend {
    pub(crate) async fn start(addr: SocketAddr, name: &str) -> Backend {
        let mut b = Backend {
            addr,
            name: name.to_owned(),
            accept: None,
        };
        b.resume().await;
        b
    }

    /// Listens again after `stop`.
    pub(crate) async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let name = self.name.clone();
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    if conn
                        .write_all(format!("{name}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        }));
    }

    /// Closes the port; returns once it is closed (connect is refused).
    pub(crate) async fn stop(&mut self) {
        if let Some(t) = self.accept.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.accept.take() {
            t.abort();
        }
    }
}

/// Connects to `addr` and returns the first line the other end sends
/// (a [`Backend`]'s name), or what went wrong.
pub(crate) async fn ask(addr: SocketAddr) -> Result<String, String> {
    let fut = async {
        let conn = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut line = String::new();
        BufReader::new(conn)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if line.is_empty() {
            return Err(format!("{addr} closed without answering"));
        }
        Ok(line.trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("{addr}: no answer within 10 s"))?
}

/// Asks `n` times; the answers counted by name.
pub(crate) async fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let who = ask(addr).await.unwrap_or_else(|e| panic!("{e}"));
        *out.entry(who).or_default() += 1;
    }
    out
}

/// Asks until the answer satisfies `pred` (a deadline of [`WITHIN`]);
/// every answer on the way must be a success.
pub(crate) async fn ask_until(addr: SocketAddr, what: &str, mut pred: impl FnMut(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        last = ask(addr).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        if pred(&last) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: still answered by {last} after {WITHIN:?}");
}

/// A pod of [`service_with`]: name, address, labels.
pub(crate) type Pod<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A Service (port 8000 -> 8080) with ready Pods `(name, ip, labels)`,
/// Service labels and annotations.
pub(crate) fn service_with(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    pods: &[Pod<'_>],
) -> String {
    let map = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{}}}\n  annotations: {{{}}}\n\
         spec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: 8000, targetPort: 8080}}\n",
        map(labels),
        map(annotations)
    );
    for (pod, ip, pod_labels) in pods {
        let mut l = vec![("app", name)];
        l.extend_from_slice(pod_labels);
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels: {{{}}}\n\
             spec:\n  containers: [{{name: app, image: x}}]\n\
             status:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
            map(&l)
        ));
    }
    s
}

/// A-record lookup of `name` at a proxy's DNS server: the addresses, or
/// the error (`NXDomain` in it when the name does not exist).
pub(crate) async fn resolve(dns: SocketAddr, name: &str) -> Result<Vec<std::net::IpAddr>, String> {
    use hickory_resolver::TokioResolver;
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut connection = ConnectionConfig::udp();
    connection.port = dns.port();
    let ns = NameServerConfig::new(dns.ip(), true, vec![connection]);
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    let options = builder.options_mut();
    options.attempts = 1;
    options.timeout = Duration::from_secs(5);
    options.use_hosts_file = ResolveHosts::Never;
    options.cache_size = 0;
    let resolver = builder.build().unwrap();
    match resolver.ipv4_lookup(name).await {
        Ok(l) => Ok(l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                _ => None,
            })
            .collect()),
        Err(e) => Err(format!("{e:?}")),
    }
}
