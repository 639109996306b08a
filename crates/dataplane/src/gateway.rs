//! The east-west gateway's decisions (D3): which tunnels a verified caller
//! may open, and to which local endpoint.
//!
//! A caller is known by its certificate's trust domain. It may reach this
//! cluster only if it links here (it opened a peering stream to this
//! cluster, now or within the grace period: C4). It may reach a service only
//! if this cluster exports it (a local contribution), and a `segment`-scoped
//! one only from the same segment (S7). Otherwise the tunnel is refused with
//! an HTTP status and a message that says why; the refusal is logged and
//! counted. An endpoint the endpoint policy refuses (P5) is never dialled;
//! the caller is told how many were refused, not their addresses.
//!
//! Two kinds of tunnel arrive. meshpeer's proxy marks its own
//! (`x-meshpeer-payload: tcp`): the bytes are the application's and go to
//! the endpoint's target port. Any other is taken as Istio's double HBONE
//! (ztunnel, `src/proxy/outbound.rs` `build_request_through_gateway`): the
//! outer CONNECT names `<service hostname>:<service port>` and carries an
//! inner TLS connection and CONNECT for the destination's ztunnel; the
//! gateway forwards those bytes as they are, never terminated, to port
//! 15008 of an ambient endpoint (a Pod istio-cni marks
//! `ambient.istio.io/redirection: enabled`). The authorisation is the same
//! for both.
//!
//! Endpoints are ranked as the caller's proxy ranked clusters (T3, T4):
//! by the service's traffic distribution from the caller's locality
//! (`x-meshpeer-locality`), healthy ones first; without the header, in
//! one tier.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use meshpeer_identity::VerifiedPeer;
use meshpeer_listener::Limits;
use meshpeer_model::rank::{ClientLocation, rank};
use meshpeer_model::{GlobalService, Locality, Reach, Scope};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::endpoint_policy::{EndpointPolicy, LogLimit};
use crate::feed::Caller;
use crate::flows::{Counted, Flows};
use crate::hbone::{Refuse, TunnelHandler, TunnelRequest, Upstream};
use crate::metrics::DataplaneMetrics;
use crate::pick::{Dest, Health};
use crate::state::DataplaneState;

/// Settings of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub connect_timeout: Duration,
    /// Local endpoints tried per tunnel.
    pub max_attempts: usize,
    /// Which endpoint addresses may be dialled (P5).
    pub endpoints: Arc<EndpointPolicy>,
    /// The HBONE listener's bounds (B5; [`crate::hbone::default_limits`]).
    pub listener: Limits,
    /// Where an ambient endpoint's ztunnel takes HBONE (Istio: 15008); the
    /// inner stream of a double HBONE tunnel goes there.
    pub ambient_inbound_port: u16,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            connect_timeout: Duration::from_secs(2),
            max_attempts: 3,
            endpoints: Arc::default(),
            listener: crate::hbone::default_limits(),
            ambient_inbound_port: crate::hbone::HBONE_PORT,
        }
    }
}

/// Decides and connects the tunnels of the east-west gateway.
pub struct GatewayHandler {
    state: watch::Receiver<Arc<DataplaneState>>,
    health: Arc<Health>,
    metrics: Arc<DataplaneMetrics>,
    config: GatewayConfig,
    refusal_log: Arc<LogLimit>,
}

impl GatewayHandler {
    pub fn new(
        state: watch::Receiver<Arc<DataplaneState>>,
        config: GatewayConfig,
        metrics: Arc<DataplaneMetrics>,
    ) -> Self {
        GatewayHandler {
            state,
            health: Arc::new(Health::default()),
            metrics,
            config,
            refusal_log: Arc::new(LogLimit::default()),
        }
    }
}

/// A refused tunnel, with its metric label.
struct Decline {
    kind: &'static str,
    status: StatusCode,
    message: String,
}

fn decline(kind: &'static str, status: StatusCode, message: String) -> Decline {
    Decline {
        kind,
        status,
        message,
    }
}

/// What a tunnel asks for, besides its target.
struct Ask<'a> {
    /// The caller's verified identity and cluster binding.
    peer: &'a VerifiedPeer,
    authority: &'a str,
    /// Istio's double HBONE: only ambient endpoints, at their inbound port.
    double_hbone: Option<u16>,
    /// The caller's locality, to rank the endpoints by.
    locality: Option<Locality>,
}

/// The callers a verified peer may be (D3): the feed's callers of its trust
/// domain and, when its chain is bound to a cluster, of that cluster. Where
/// the trust domain is shared (by two callers, or by a caller and this
/// cluster), a chain without a cluster binding cannot say which cluster it
/// speaks for and is refused.
fn callers_of<'a>(
    state: &'a DataplaneState,
    peer: &VerifiedPeer,
) -> Result<Vec<&'a Caller>, Decline> {
    let td = peer.id.trust_domain();
    let ours = usize::from(td == state.feed.catalog.cluster.trust_domain);
    let shared = ours
        + state
            .feed
            .callers
            .iter()
            .filter(|c| c.trust_domain == td)
            .count()
        > 1;
    if peer.cluster.is_none() && shared {
        return Err(decline(
            "no_cluster_binding",
            StatusCode::FORBIDDEN,
            format!(
                "{} is of trust domain {td}, which several clusters share, but its intermediate carries no cluster binding (spiffe://{td}/meshpeer/cluster/<name>), so it cannot say which cluster it speaks for; re-issue that cluster's intermediate with meshpeer certs cluster",
                peer.id
            ),
        ));
    }
    Ok(state
        .feed
        .callers
        .iter()
        .filter(|c| peer.is(&c.trust_domain, &c.cluster))
        .collect())
}

/// The local endpoints a caller may reach for `authority`, tier by tier
/// (nearest to the caller first), with the caller's cluster; or why not.
fn authorize(
    state: &DataplaneState,
    ask: &Ask<'_>,
) -> Result<(Vec<Vec<SocketAddr>>, String), Decline> {
    let authority = ask.authority;
    let trust_domain = ask.peer.id.trust_domain();
    let me = &state.feed.catalog.cluster;
    // Clusters are told apart by trust domain and, where they share one,
    // by their chains' cluster bindings (D3, P6). Chains made before
    // cluster bindings match on the trust domain alone.
    let callers = callers_of(state, ask.peer)?;
    let Some(caller) = callers.first().copied() else {
        let who = match &ask.peer.cluster {
            Some(c) => format!("cluster {c} (trust domain {trust_domain})"),
            None => format!("the cluster with trust domain {trust_domain}"),
        };
        return Err(decline(
            "not_linked",
            StatusCode::FORBIDDEN,
            format!(
                "{who} does not link to cluster {} (it holds no Gateway istio-remote-peer-{}, or its peering has been down longer than the grace period); link direction forbids this tunnel",
                me.name, me.name
            ),
        ));
    };
    let (host, port) = split_authority(authority).ok_or_else(|| {
        decline(
            "bad_request",
            StatusCode::BAD_REQUEST,
            format!("authority {authority:?} is not <hostname>:<port>"),
        )
    })?;
    let svc = find_local(state, &host).ok_or_else(|| {
        decline(
            "not_exported",
            StatusCode::NOT_FOUND,
            format!(
                "cluster {} exports no service {host} (it is not global here, or its endpoints are in other clusters)",
                me.name
            ),
        )
    })?;
    let local = svc
        .contributions
        .iter()
        .find(|c| c.reach == Reach::Local)
        .ok_or_else(|| {
            decline(
                "not_exported",
                StatusCode::NOT_FOUND,
                format!("cluster {} does not export {host}", me.name),
            )
        })?;
    if local.service.scope == Scope::Segment
        && !callers
            .iter()
            .any(|c| c.segment.as_deref() == me.segment_name())
    {
        return Err(decline(
            "segment",
            StatusCode::FORBIDDEN,
            format!(
                "{host} is visible only in segment {} (solo.io/service-scope=segment); cluster {} is in segment {}",
                me.segment_name().unwrap_or("(default)"),
                caller.cluster,
                caller.segment.as_deref().unwrap_or("(default)")
            ),
        ));
    }
    let unknown = Locality::default();
    let client = ClientLocation {
        network: &local.network,
        locality: ask.locality.as_ref().unwrap_or(&unknown),
    };
    let mut serving = 0usize;
    let mut tiers: Vec<Vec<SocketAddr>> = Vec::new();
    for tier in rank(svc, &client) {
        let mut addrs = Vec::new();
        for g in tier.iter().filter(|g| g.reach == Reach::Local) {
            for e in g.endpoints {
                let Some(target) = e.target(port) else {
                    continue;
                };
                serving += 1;
                match ask.double_hbone {
                    None => addrs.push(SocketAddr::new(e.address, target)),
                    Some(inbound) if e.ambient => addrs.push(SocketAddr::new(e.address, inbound)),
                    Some(_) => {}
                }
            }
        }
        if !addrs.is_empty() {
            tiers.push(addrs);
        }
    }
    if tiers.is_empty() {
        if serving > 0 {
            return Err(decline(
                "not_ambient",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the tunnel carries Istio's double HBONE (no x-meshpeer-payload: tcp), which only a ztunnel can end, and none of the {serving} ready endpoints of {host} for port {port} in cluster {} is captured by Istio ambient (Pod annotation ambient.istio.io/redirection: enabled)",
                    me.name
                ),
            ));
        }
        return Err(decline(
            "no_endpoint",
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{host} has no ready endpoint for port {port} in cluster {}",
                me.name
            ),
        ));
    }
    Ok((tiers, caller.cluster.clone()))
}

/// `<host>:<port>` as the lower-cased host and the port.
fn split_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_ascii_lowercase(), port.parse().ok()?))
}

/// The global service a tunnel asks for: by global hostname, or by
/// `<name>.<namespace>.<any suffix>` for the names of manual entries
/// (D4, e.g. `httpbin.bar.global`) when this cluster exports exactly that
/// service.
fn find_local<'a>(state: &'a DataplaneState, host: &str) -> Option<&'a GlobalService> {
    if let Some(s) = state.service_by_host(host) {
        return Some(s);
    }
    // Names under a global domain are global hostnames: no alias for them
    // (a name of another segment must not reach this one's service).
    if state.dns.authoritative.iter().any(|d| {
        host.strip_suffix(d.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    }) {
        return None;
    }
    let mut labels = host.split('.');
    let (name, ns) = (labels.next()?, labels.next()?);
    labels.next()?;
    // An index lookup: a tunnel never walks the catalog.
    state.local_by_name(name, ns)
}

impl TunnelHandler for GatewayHandler {
    fn open(
        &self,
        req: TunnelRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Box<dyn Upstream>, Refuse>> + Send>> {
        let state = self.state.borrow().clone();
        let health = Arc::clone(&self.health);
        let metrics = Arc::clone(&self.metrics);
        let config = self.config.clone();
        let refusal_log = Arc::clone(&self.refusal_log);
        Box::pin(async move {
            let caller = req.peer.to_string();
            let double_hbone = req.meta.double_hbone();
            let peer = VerifiedPeer {
                id: req.peer.clone(),
                cluster: req.peer_cluster.clone(),
            };
            let ask = Ask {
                peer: &peer,
                authority: &req.authority,
                double_hbone: double_hbone.then_some(config.ambient_inbound_port),
                locality: req.meta.locality.as_deref().and_then(Locality::from_istio),
            };
            // The flow, from catalog names only (issue 16).
            let me = state.feed.catalog.cluster.name.clone();
            let source = callers_of(&state, &peer)
                .ok()
                .and_then(|c| c.first().copied())
                .map_or("unlinked", |c| c.cluster.as_str());
            let host = split_authority(&req.authority).map(|(h, _)| h);
            let flow = Flows::labels(
                &state,
                "gateway",
                source,
                &me,
                host.as_deref().unwrap_or(""),
            );
            let (tiers, cluster) = match authorize(&state, &ask) {
                Ok(x) => x,
                Err(d) => {
                    metrics.refusal(d.kind);
                    metrics.flows.connection(&state, &flow, d.kind);
                    info!(caller = %caller, src_cluster = %flow.source_cluster, dst_cluster = %me, authority = %req.authority, status = d.status.as_u16(), reason = d.kind, "tunnel refused: {}", d.message);
                    return Err(Refuse {
                        status: d.status,
                        message: d.message,
                    });
                }
            };
            // Nearest tier first, each in random order; then healthy
            // endpoints first, ejected ones only if nothing else is left.
            let mut endpoints = Vec::new();
            for mut tier in tiers {
                fastrand::shuffle(&mut tier);
                endpoints.extend(tier);
            }
            health.sync(&state);
            let now = Instant::now();
            endpoints
                .sort_by_key(|a| health.is_ejected(&crate::pick::HealthKey::Endpoint(*a), now));
            let mut errors = Vec::new();
            let mut refused = 0usize;
            let vip_range = state.feed.catalog.vip_range;
            for addr in endpoints.into_iter().take(config.max_attempts) {
                if let Err(why) = config.endpoints.check(addr.ip(), vip_range.as_ref()) {
                    // Not dialled, and a failed attempt; its address stays here.
                    refused += 1;
                    metrics.endpoint_refusal(why.as_str());
                    if refusal_log.allow(addr.ip(), std::time::Instant::now()) {
                        warn!(caller = %caller, authority = %req.authority, endpoint = %addr, reason = why.as_str(), "endpoint not dialled: {why}");
                    }
                    continue;
                }
                let dest = Dest::Direct {
                    addr,
                    cluster: cluster.clone(),
                    name: String::new(),
                };
                match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        health.succeeded(&dest);
                        let refused = (refused > 0).then_some(refused);
                        let kind = if double_hbone { "double_hbone" } else { "tcp" };
                        metrics.flows.connection(&state, &flow, "ok");
                        info!(caller = %caller, src_cluster = %flow.source_cluster, dst_cluster = %me, authority = %req.authority, endpoint = %addr, refused, kind, "tunnel open");
                        let counted = Counted::new(s, metrics.flows.byte_counters(&flow));
                        return Ok(Box::new(counted) as Box<dyn Upstream>);
                    }
                    Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                    Err(_) => errors.push(format!("{addr}: timed out")),
                }
                health.failed(&dest, Instant::now());
                metrics.ejection("endpoint");
            }
            let name = &state.feed.catalog.cluster.name;
            // The caller is told why in words and counts; the endpoints'
            // addresses and socket errors stay in this gateway's log.
            let message = if errors.is_empty() {
                metrics.refusal("endpoint_policy");
                metrics.flows.connection(&state, &flow, "endpoint_policy");
                format!(
                    "no endpoint of {} in cluster {name} may be dialled: {refused} refused by the gateway's endpoint policy (P5)",
                    req.authority
                )
            } else {
                metrics.refusal("no_endpoint");
                metrics.flows.connection(&state, &flow, "no_endpoint");
                let mut m = format!(
                    "no ready endpoint of {} in cluster {name} answered ({} tried)",
                    req.authority,
                    errors.len()
                );
                if refused > 0 {
                    m.push_str(&format!(
                        "; {refused} more refused by the gateway's endpoint policy (P5)"
                    ));
                }
                m
            };
            warn!(caller = %caller, authority = %req.authority, errors = %errors.join("; "), "tunnel failed: {message}");
            Err(Refuse {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
            })
        })
    }
}
