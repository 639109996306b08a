//! Running a scenario: per cluster a controller (file mode, watching its
//! folder; its cluster listener on the east-west Gateway's address, port
//! 15013), an east-west gateway (at the address its east-west Gateway
//! declares), a proxy (DNS and VIPs) and the sample backends, all in this
//! process, on loopback. Only the controller loads its cluster's CA; the
//! gateway and the proxy get their certificates from its signing endpoint
//! with tokens the demo makes (SPEC P7).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use meshpeer_dataplane::endpoint_policy::EndpointPolicy;
use meshpeer_dataplane::gateway::GatewayConfig;
use meshpeer_dataplane::report::{ReportConfig, ReportTarget};
use meshpeer_identity::{ClusterCa, Identity, SpiffeId};
use meshpeer_model::{ClusterSnapshot, exports, labels};
use meshpeer_store::file_sink::FileSink;
use meshpeer_store::file_source::{DEFAULT_DEBOUNCE, FileSource};
use meshpeer_store::load_cluster_dir;
use prometheus_client::registry::Registry;

use super::app::Backends;
use super::scenario::{ClusterRuntime, Layout, Runtime, pod_ranges};
use crate::cluster_api::{CLUSTER_PORT, ClusterListener};
use crate::controller::{Controller, ControllerConfig, LinkState};
use crate::dataplane::{GatewayRole, ProxyRole, ProxyRoleConfig};

/// One running cluster.
pub struct DemoCluster {
    pub name: String,
    /// The in-process proxy and gateway, listed in the controller's status.
    listed: tokio::task::JoinHandle<()>,
    /// Certificate renewal of the controller, gateway and proxy.
    rotations: Vec<tokio::task::JoinHandle<()>>,
    pub controller: Controller,
    pub gateway: GatewayRole,
    pub proxy: ProxyRole,
    pub backends: Backends,
    pub registry: Registry,
    pub runtime: ClusterRuntime,
}

/// A running scenario (or one cluster of it).
pub struct Demo {
    pub layout: Layout,
    pub clusters: Vec<DemoCluster>,
    /// Running only this cluster (one process per cluster, e.g. one per
    /// network namespace).
    pub only: Option<String>,
}

/// The address and ports of a cluster's own east-west Gateway.
fn eastwest(snap: &ClusterSnapshot) -> Option<(IpAddr, u16, u16)> {
    let g = snap
        .gateways
        .values()
        .find(|g| g.spec.gateway_class_name == labels::EASTWEST_CLASS)?;
    let ip: IpAddr = g
        .status
        .as_ref()
        .and_then(|s| s.addresses.first())
        .or(g.spec.addresses.first())?
        .value
        .parse()
        .ok()?;
    let port = |name: &str, default: u16| {
        g.spec
            .listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| u16::try_from(l.port).ok())
            .unwrap_or(default)
    };
    Some((
        ip,
        port("xds-tls", labels::XDS_PORT),
        port("cross-network", labels::HBONE_PORT),
    ))
}

/// The first `nameserver` of /etc/resolv.conf: where the demo's DNS sends
/// names that are not the mesh's.
fn system_resolvers() -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string("/etc/resolv.conf") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        // As the C library: the first three.
        .take(3)
        .collect()
}

/// Lifetime of the demo's leaf certificates (renewed at two thirds, as the
/// CLI roles' default).
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The controller's identity, from the cluster's CA (which only it holds),
/// kept renewed by a task pushed onto `rotations`.
fn controller_identity(
    layout: &Layout,
    cluster: &str,
    td: &str,
    rotations: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Arc<Identity>> {
    let dir = layout.cacerts(cluster);
    let now = SystemTime::now();
    let ca = ClusterCa::load(&dir, now)
        .with_context(|| format!("cannot load cluster {cluster}'s CA from {}", dir.display()))?;
    let id = SpiffeId::new(td, "istio-system", "meshpeer")?;
    let identity = Arc::new(Identity::new(ca, id, LEAF_LIFETIME, now)?);
    rotations.push(tokio::spawn(Arc::clone(&identity).run_rotation()));
    Ok(identity)
}

/// The tokens the demo makes for its in-process gateway and proxy, one per
/// identity, as `meshpeer certs token` would for separate processes.
struct DemoTokens {
    gateway: String,
    proxy: String,
}

impl DemoTokens {
    fn new() -> anyhow::Result<Self> {
        Ok(DemoTokens {
            gateway: meshpeer_ca::new_token()?,
            proxy: meshpeer_ca::new_token()?,
        })
    }

    fn authenticator(&self) -> anyhow::Result<meshpeer_ca::StaticTokens> {
        Ok(meshpeer_ca::StaticTokens::from_entries([
            (self.gateway.as_str(), GATEWAY_ID.0, GATEWAY_ID.1),
            (self.proxy.as_str(), PROXY_ID.0, PROXY_ID.1),
        ])?)
    }
}

const GATEWAY_ID: (&str, &str) = crate::dataplane::GATEWAY_IDENTITY;

/// How often the demo's proxies and gateways report their flow counts
/// (the page's Traffic view follows within a second or two).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
const PROXY_ID: (&str, &str) = crate::dataplane::PROXY_IDENTITY;

/// A gateway's or proxy's identity, obtained from the controller's signing
/// endpoint at `cluster_addr` with `token` (SPEC P7: the CA key stays with
/// the controller, even in one process), kept renewed by a task pushed onto
/// `rotations`.
async fn remote_identity(
    controller: &Arc<Identity>,
    cluster_addr: SocketAddr,
    token: &str,
    (ns, sa): (&str, &str),
    rotations: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Arc<Identity>> {
    let td = controller.spiffe_id().trust_domain();
    let client = meshpeer_ca::CaClient::new(meshpeer_ca::CaClientConfig {
        address: cluster_addr.to_string(),
        root: controller.trust_root().clone(),
        server: controller.spiffe_id().clone(),
        token: meshpeer_ca::TokenSource::Value(token.to_owned()),
        timeout: Duration::from_secs(10),
    });
    let identity = Arc::new(
        Identity::from_issuer(
            Arc::new(client.clone()),
            controller.trust_root().clone(),
            SpiffeId::new(td, ns, sa)?,
            LEAF_LIFETIME,
        )
        .await
        .with_context(|| format!("cannot get {ns}/{sa}'s certificate from the controller"))?,
    );
    client.renew_with(&identity);
    rotations.push(tokio::spawn(Arc::clone(&identity).run_rotation()));
    Ok(identity)
}

fn proxy_id_name(td: &str) -> String {
    format!("spiffe://{td}/ns/istio-system/sa/meshpeer-proxy (in the demo process)")
}

fn gateway_id_name(td: &str) -> String {
    format!("spiffe://{td}/ns/istio-eastwest/sa/istio-eastwest (in the demo process)")
}

/// Lists the in-process proxy and gateway as followers of the controller's
/// catalog, kept at its current version, until the task is aborted.
fn list_in_process(
    controller: &Controller,
    proxy: &str,
    gateway: &str,
) -> tokio::task::JoinHandle<()> {
    let view = |role: &str, name: &str| crate::api::FollowerView {
        role: role.to_owned(),
        name: name.to_owned(),
        remote: "in process".to_owned(),
        since: Some(SystemTime::now()),
        version: 0,
        health: None,
    };
    let guards = [
        controller.register_follower(view("proxy", proxy)),
        controller.register_follower(view("gateway", gateway)),
    ];
    let mut feed = controller.feed();
    tokio::spawn(async move {
        loop {
            let v = feed.borrow_and_update().version;
            for g in &guards {
                g.sent(v);
            }
            if feed.changed().await.is_err() {
                return;
            }
        }
    })
}

impl Demo {
    /// Starts every cluster of `layout`; `step` is told what is starting.
    /// Starts every cluster of `layout`, or only the one named; `step` is
    /// told what is starting. A cluster keeps the addresses of its place in
    /// the scenario either way.
    pub async fn start(
        layout: Layout,
        only: Option<&str>,
        step: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Demo> {
        if let Some(o) = only
            && !layout.clusters.iter().any(|c| c == o)
        {
            anyhow::bail!(
                "no cluster {o:?} in scenario {} (there are: {})",
                layout.scenario,
                layout.clusters.join(", ")
            );
        }
        let mut clusters = Vec::new();
        for (i, name) in layout.clusters.iter().enumerate() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let n = u16::try_from(i + 1).unwrap_or(u16::MAX);
            let dir = layout.cluster_dir(name);
            step(&format!("{name}: reading {}", dir.display()));
            let snap = load_cluster_dir(&dir)
                .with_context(|| format!("cannot load cluster folder {}", dir.display()))?;
            let export = exports(&snap);
            let td = export.cluster.trust_domain.clone();
            let (gw_ip, xds, hbone) = eastwest(&snap).with_context(|| {
                format!(
                    "{}: no east-west Gateway with an address (make one: meshpeer expose {} --address 127.0.{n}.1 --write)",
                    dir.display(),
                    dir.display()
                )
            })?;

            step(&format!("{name}: controller (peering on {gw_ip}:{xds})"));
            let mut rotations = Vec::new();
            let ctl_id = controller_identity(&layout, name, &td, &mut rotations)?;
            let trust_root = ctl_id.trust_root().clone();
            let tokens = DemoTokens::new()?;
            let mut cfg = ControllerConfig::new(
                Box::new(FileSource::new(dir.clone(), DEFAULT_DEBOUNCE)),
                Box::new(FileSink::new(dir.join(".meshpeer").join("out"))),
                Arc::clone(&ctl_id),
                trust_root.clone(),
                SocketAddr::new(gw_ip, xds),
            );
            let mut cluster = ClusterListener::new(SocketAddr::new(gw_ip, CLUSTER_PORT), &td);
            cluster.names = vec![gw_ip.to_string()];
            cluster.ca.authenticators = vec![Arc::new(tokens.authenticator()?)];
            cfg.cluster = Some(cluster);
            let api: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 15_014 + 100 * n));
            cfg.api_listen = Some(api);
            let vip_range = format!("127.{}.0.0/16", 256 - u32::from(n).min(100));
            cfg.vip_range = vip_range.parse()?;
            // The pods are on loopback: peers' endpoints there are taken
            // (SPEC B1, P5), exactly the demo's pod ranges.
            cfg.limits.allow_endpoints = pod_ranges();
            let controller = Controller::start(cfg)
                .await
                .with_context(|| format!("cannot start cluster {name}'s controller"))?;
            if let Some(api) = controller.api_addr {
                // Where `meshpeer check --cluster <folder>` finds it.
                let _ = crate::check::write_runtime_file(
                    &dir,
                    api,
                    controller.peering_addr,
                    controller.cluster_addr,
                );
            }
            let cluster_addr = controller
                .cluster_addr
                .context("the controller's cluster listener is not running")?;
            let mut registry = Registry::default();

            // The pods are on loopback, which proxies and gateways do not
            // dial unless allowed (P5): the demo allows exactly their ranges.
            let node = crate::dataplane::node_addresses(&[]).unwrap_or_default();
            let endpoints = Arc::new(EndpointPolicy::new(pod_ranges(), node));
            step(&format!(
                "{name}: east-west gateway (HBONE on {gw_ip}:{hbone})"
            ));
            let gateway_id = remote_identity(
                &ctl_id,
                cluster_addr,
                &tokens.gateway,
                GATEWAY_ID,
                &mut rotations,
            )
            .await?;
            let mut gateway = GatewayRole::start(
                controller.feed(),
                Arc::clone(&gateway_id),
                trust_root.clone(),
                SocketAddr::new(gw_ip, hbone),
                GatewayConfig {
                    endpoints: Arc::clone(&endpoints),
                    ..GatewayConfig::default()
                },
                &mut registry,
            )
            .await?;

            let dns: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 15_053 + 100 * n));
            step(&format!(
                "{name}: proxy (DNS on {dns}, VIPs in {vip_range})"
            ));
            let mut pcfg = ProxyRoleConfig::new(dns);
            pcfg.proxy.endpoints = Arc::clone(&endpoints);
            pcfg.dns.upstreams = system_resolvers();
            pcfg.state.capture_cluster_ips = true;
            let proxy_id = remote_identity(
                &ctl_id,
                cluster_addr,
                &tokens.proxy,
                PROXY_ID,
                &mut rotations,
            )
            .await?;
            let mut proxy = ProxyRole::start(
                controller.feed(),
                Arc::clone(&proxy_id),
                trust_root.clone(),
                pcfg,
                &mut registry,
            )
            .await?;
            // Flow counts go to the controller as they would across
            // processes: over mutual TLS to its cluster listener (issue 16).
            for (role, id) in [("proxy", &proxy_id), ("gateway", &gateway_id)] {
                let resolver: Arc<dyn rustls::client::ResolvesClientCert> =
                    Arc::clone(id) as Arc<dyn rustls::client::ResolvesClientCert>;
                let report = ReportConfig {
                    target: ReportTarget::Tls {
                        address: cluster_addr.to_string(),
                        tls: meshpeer_identity::client_config_for(
                            Some(resolver),
                            &trust_root,
                            ctl_id.spiffe_id(),
                            &[b"http/1.1"],
                        )?,
                    },
                    role: role.to_owned(),
                    instance: format!("{role} of {name} in the demo process"),
                    interval: REPORT_INTERVAL,
                };
                if role == "proxy" {
                    proxy.report_to(report);
                } else {
                    gateway.report_to(report);
                }
            }

            let listed = list_in_process(&controller, &proxy_id_name(&td), &gateway_id_name(&td));
            step(&format!("{name}: sample backends"));
            let backends = Backends::start(dir.clone());
            let runtime = ClusterRuntime {
                folder: dir,
                dns: proxy.dns.local_addr(),
                api: controller.api_addr.unwrap_or(api),
                gateway: gateway.addr,
                vip_range,
            };
            clusters.push(DemoCluster {
                name: name.clone(),
                listed,
                rotations,
                controller,
                gateway,
                proxy,
                backends,
                registry,
                runtime,
            });
        }
        let demo = Demo {
            layout,
            clusters,
            only: only.map(str::to_owned),
        };
        let text = serde_json::to_string_pretty(&demo.runtime())?;
        let path = demo.layout.runtime_file(demo.only.as_deref());
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(demo)
    }

    pub fn runtime(&self) -> Runtime {
        Runtime {
            scenario: self.layout.scenario.clone(),
            clusters: self
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.runtime.clone()))
                .collect(),
        }
    }

    /// Waits (up to `within`) until every cluster's peers are synced, its
    /// proxy listens on every VIP of its catalog and its sample apps run.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        for c in &self.clusters {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            c.controller
                .wait_for(left, |v| {
                    !v.status.peers.is_empty()
                        && v.status.peers.iter().all(|p| p.state == LinkState::Synced)
                })
                .await
                .map_err(|e| anyhow::anyhow!("{}: peers not synced: {e}", c.name))?;
            let mut state = c.proxy.state.clone();
            let mut listening = c.proxy.proxy.listening();
            let ready = async {
                loop {
                    let want = state.borrow_and_update().listeners.len();
                    if want > 0 && listening.borrow_and_update().len() >= want {
                        return;
                    }
                    tokio::select! {
                        r = state.changed() => if r.is_err() { return },
                        r = listening.changed() => if r.is_err() { return },
                    }
                }
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::timeout(left, ready).await.map_err(|_| {
                anyhow::anyhow!("{}: the proxy does not listen on every VIP", c.name)
            })?;
            // The sample apps answer too (they follow the folder on their own).
            let mut settled = c.backends.settled();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::timeout(left, settled.wait_for(|s| *s))
                .await
                .map_err(|_| anyhow::anyhow!("{}: the sample apps did not start", c.name))?
                .map_err(|_| anyhow::anyhow!("{}: the sample apps stopped", c.name))?;
        }
        Ok(())
    }

    /// One line per cluster: peers, services, listeners, backends.
    pub fn status_lines(&self) -> Vec<String> {
        self.clusters
            .iter()
            .map(|c| {
                let v = c.controller.current();
                let peers: Vec<String> = v
                    .status
                    .peers
                    .iter()
                    .map(|p| format!("{} {}", p.cluster, p.state.as_str()))
                    .collect();
                format!(
                    "{}: peers [{}], {} global services ({} exported), {} VIP listeners, {} backends",
                    c.name,
                    peers.join(", "),
                    v.status.global_services,
                    v.status.exported_services,
                    c.proxy.proxy.listening().borrow().len(),
                    *c.backends.running().borrow(),
                )
            })
            .collect()
    }

    pub async fn shutdown(self) {
        let _ = std::fs::remove_file(self.layout.runtime_file(self.only.as_deref()));
        for c in self.clusters {
            c.listed.abort();
            for r in &c.rotations {
                r.abort();
            }
            let _ = crate::check::remove_runtime_file(&c.runtime.folder);
            drop(c.backends);
            c.proxy.shutdown().await;
            c.gateway.shutdown().await;
            c.controller.shutdown().await;
        }
    }
}
