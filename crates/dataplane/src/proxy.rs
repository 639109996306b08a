//! The per-cluster proxy: one listener per (VIP, port) of every visible
//! global service (and manual entry, and taken-over ClusterIP when asked),
//! added and removed as the catalog changes; each connection goes to a
//! destination picked at connect time (section 4), directly or through a
//! peer's east-west gateway over HBONE (D2). No endpoint is dialled that
//! the endpoint policy refuses (P5).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use self::dial::{DialError, connect_dest};
use self::manual::connect_manual;
use crate::endpoint_policy::{EndpointPolicy, LogLimit};
use crate::flows::Flows;
use crate::hbone::{HboneClient, TunnelMeta};
use crate::metrics::DataplaneMetrics;
use crate::pick::{Dest, Health, plan};
use crate::state::{DataplaneState, Target};
use meshpeer_model::Locality;

mod copy;
mod dial;
mod h1;
mod l7;
mod manual;
mod shards;

/// Settings of a proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Time allowed for one direct connection attempt. Through a gateway,
    /// the HBONE pool's bounds apply: its connect timeout to reach the
    /// gateway (the proxy role sets it to this), its answer timeout for
    /// the gateway to reach an endpoint and answer.
    pub connect_timeout: Duration,
    /// At most this many destinations are tried for one connection.
    pub max_attempts: usize,
    /// Passive health: first ejection, and the cap it doubles up to.
    pub ejection_base: Duration,
    pub ejection_cap: Duration,
    /// Which endpoint addresses may be dialled (P5).
    pub endpoints: Arc<EndpointPolicy>,
    /// Bound on resolving a host name (a peer's gateway given as a name, a
    /// manual entry's endpoint): then the attempt fails.
    pub resolve_timeout: Duration,
    /// Host-name lookups in flight at most (each holds a blocking thread
    /// until the system resolver returns, even after the timeout); beyond,
    /// the attempt fails at once.
    pub max_lookups: usize,
    /// Time a client of an L7 port (section 11) has to send a whole request
    /// head: its first on a new connection, and each next one on a kept-alive
    /// HTTP/1.1 connection (which this also bounds when idle); then the
    /// connection is closed (B5). HTTP/2 connections are pinged at this
    /// interval once a request has come, and closed when a ping goes
    /// unanswered as long.
    pub header_timeout: Duration,
    /// Time a client of an L7 port may go without sending a byte of a
    /// request body it has begun; then the request is answered 408 and the
    /// connection closed (B5).
    pub body_timeout: Duration,
    /// Event loops (threads) serving the connections of routed (L7)
    /// ports, each with its own pools of backend connections; 0 serves
    /// them on the shared runtime.
    pub l7_workers: usize,
    /// Serves HTTP/1.1 requests without a body, or with one of a declared
    /// length up to 64 KiB, on routed ports with the proxy's own exchange
    /// (`h1`), handing a connection to hyper at the first request it does
    /// not take; false: hyper serves every connection.
    pub l7_direct_http1: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            max_attempts: 5,
            ejection_base: Duration::from_secs(1),
            ejection_cap: Duration::from_secs(30),
            endpoints: Arc::default(),
            resolve_timeout: Duration::from_secs(2),
            max_lookups: 64,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            l7_workers: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            l7_direct_http1: true,
        }
    }
}

pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Ctx {
    state: watch::Receiver<Arc<DataplaneState>>,
    hbone: HboneClient,
    health: Arc<Health>,
    config: ProxyConfig,
    metrics: Arc<DataplaneMetrics>,
    refusal_log: LogLimit,
    /// Permits for host-name lookups in flight.
    lookups: Arc<tokio::sync::Semaphore>,
    /// L7 (section 11): the event loops serving routed ports, clients to
    /// backends made on first use (one per loop, and one for the shared
    /// runtime), and the route tables with their patterns compiled.
    loops: Option<shards::Shards>,
    l7: Vec<std::sync::OnceLock<l7::Clients>>,
    tables: l7::TableCache,
    this: std::sync::Weak<Ctx>,
}

impl Ctx {
    /// The clients of the loop the caller runs on (so that a backend
    /// connection is driven where its requests come from), else those of
    /// the shared runtime.
    fn l7_clients(&self) -> &l7::Clients {
        let i = self
            .loops
            .as_ref()
            .and_then(shards::Shards::current)
            .map_or(0, |i| i + 1);
        self.l7[i].get_or_init(|| l7::Clients::new(self.this.clone()))
    }

    /// The route table of a frontend, when its port is routed at L7 (L6).
    fn route_table(
        &self,
        state: &DataplaneState,
        host: &str,
        port: u16,
    ) -> Option<Arc<l7::Compiled>> {
        let routes = &state.feed.catalog.routes;
        let i = routes
            .binary_search_by(|t| (t.host.as_str(), t.port).cmp(&(host, port)))
            .ok()?;
        Some(self.tables.get(&routes[i]))
    }
}

/// A running proxy.
pub struct Proxy {
    bound: watch::Receiver<imbl::OrdSet<SocketAddr>>,
    manager: JoinHandle<()>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listening", &self.bound.borrow().len())
            .finish()
    }
}

impl Proxy {
    /// Starts listening for the state's captured addresses, following it.
    pub fn start(
        state: watch::Receiver<Arc<DataplaneState>>,
        hbone: HboneClient,
        config: ProxyConfig,
        metrics: Arc<DataplaneMetrics>,
    ) -> Proxy {
        let health = Arc::new(Health::new(config.ejection_base, config.ejection_cap));
        let loops = match config.l7_workers {
            0 => None,
            n => match shards::Shards::start(n) {
                Ok(loops) => Some(loops),
                Err(e) => {
                    warn!(error = %e, workers = n, "cannot start the L7 event loops; routed ports are served on the shared runtime");
                    None
                }
            },
        };
        let clients = 1 + loops.as_ref().map_or(0, shards::Shards::len);
        let ctx = Arc::new_cyclic(|this| Ctx {
            state: state.clone(),
            hbone,
            health: Arc::clone(&health),
            lookups: Arc::new(tokio::sync::Semaphore::new(config.max_lookups.max(1))),
            config,
            metrics,
            refusal_log: LogLimit::default(),
            loops,
            l7: (0..clients).map(|_| std::sync::OnceLock::new()).collect(),
            tables: l7::TableCache::default(),
            this: this.clone(),
        });
        let (bound_tx, bound) = watch::channel(imbl::OrdSet::new());
        let manager = tokio::spawn(manage_listeners(state, ctx, bound_tx));
        Proxy {
            bound,
            manager,
            health,
        }
    }

    /// Passive health: the destinations ejected now (T6), for `explain`.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Addresses listened on now; `changed()` waits for the next change.
    pub fn listening(&self) -> watch::Receiver<imbl::OrdSet<SocketAddr>> {
        self.bound.clone()
    }

    pub fn shutdown(self) {
        self.manager.abort();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.manager.abort();
    }
}

/// Keeps one accept loop per captured address.
async fn manage_listeners(
    mut state: watch::Receiver<Arc<DataplaneState>>,
    ctx: Arc<Ctx>,
    bound: watch::Sender<imbl::OrdSet<SocketAddr>>,
) {
    struct Loops(BTreeMap<SocketAddr, JoinHandle<()>>);
    impl Drop for Loops {
        fn drop(&mut self) {
            for t in self.0.values() {
                t.abort();
            }
        }
    }
    let mut loops = Loops(BTreeMap::new());
    let mut listening: imbl::OrdSet<SocketAddr> = imbl::OrdSet::new();
    let mut failed: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    let mut reported_version = 0;
    // The listeners of the last state handled: a new state is applied by
    // what differs (SPEC I1), not by walking every listener.
    let mut handled: imbl::OrdMap<SocketAddr, Target> = imbl::OrdMap::new();
    loop {
        let current = state.borrow_and_update().clone();
        if current.feed.version != reported_version {
            reported_version = current.feed.version;
            report_outside_zones(&current, &ctx.metrics);
        }
        let mut to_bind: Vec<SocketAddr> = Vec::new();
        for item in handled.diff(&current.listeners) {
            match item {
                imbl::ordmap::DiffItem::Add(addr, _) => to_bind.push(*addr),
                imbl::ordmap::DiffItem::Remove(addr, _) => {
                    failed.remove(addr);
                    if let Some(task) = loops.0.remove(addr) {
                        task.abort();
                        listening.remove(addr);
                        debug!(%addr, "stopped listening");
                    }
                }
                // Same address, another target: connections read the
                // target when they arrive.
                imbl::ordmap::DiffItem::Update { .. } => {}
            }
        }
        handled = current.listeners.clone();
        to_bind.extend(failed.iter().copied());
        for addr in to_bind {
            if loops.0.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    failed.remove(&addr);
                    debug!(%addr, "listening");
                    loops.0.insert(
                        addr,
                        tokio::spawn(accept_loop(listener, addr, Arc::clone(&ctx))),
                    );
                    listening.insert(addr);
                }
                Err(e) => {
                    if failed.insert(addr) {
                        warn!(%addr, error = %e, "cannot listen on a VIP; connections to it will fail (is the VIP range bindable here? the demo uses 127.255.0.0/16)");
                        ctx.metrics.listen_errors.inc();
                    }
                }
            }
        }
        bound.send_if_modified(|b| {
            let changed = !b.ptr_eq(&listening);
            if changed {
                *b = listening.clone();
            }
            changed
        });
        tokio::select! {
            r = state.changed() => if r.is_err() { return },
            _ = retry.tick(), if !failed.is_empty() => {}
        }
    }
}

/// P2: catalog names outside this cluster's zones are not served; said
/// once per catalog version.
fn report_outside_zones(state: &DataplaneState, metrics: &DataplaneMetrics) {
    let names = &state.outside_zones;
    metrics
        .names_outside_zones
        .set(i64::try_from(names.len()).unwrap_or(i64::MAX));
    if names.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let mut list = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    warn!(
        version = state.feed.version,
        count = names.len(),
        zones = %state.dns.authoritative.join(", "),
        "catalog names outside the zones this cluster answers for are not served (no DNS answer, no VIP listener): {list}"
    );
}

async fn accept_loop(listener: TcpListener, local: SocketAddr, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                let span = info_span!("conn", %peer, dst = %local);
                let state = ctx.state.borrow().clone();
                match l7_frontend(&ctx, &state, local) {
                    Some(frontend) => serve_l7(conn, peer, local, &ctx, frontend, span),
                    None => {
                        let ctx = Arc::clone(&ctx);
                        tokio::spawn(handle(conn, peer, local, ctx, state).instrument(span));
                    }
                }
            }
            Err(e) => {
                warn!(%local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a connection was sent to, for the access log.
struct Chosen {
    dest: String,
    cluster: String,
    attempts: usize,
    /// Destinations the endpoint policy refused on the way (P5).
    refused: Vec<String>,
}

/// Why a connection found no destination, for the access log.
struct NoDest {
    why: String,
    /// Destinations the endpoint policy refused (P5).
    refused: Vec<String>,
}

impl From<String> for NoDest {
    fn from(why: String) -> Self {
        NoDest {
            why,
            refused: Vec::new(),
        }
    }
}

impl From<&str> for NoDest {
    fn from(why: &str) -> Self {
        NoDest::from(why.to_owned())
    }
}
/// Serves a connection to a routed port (L6) on the next event loop, or
/// on the shared runtime when there are none.
fn serve_l7(
    conn: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &Arc<Ctx>,
    frontend: l7::Frontend,
    span: tracing::Span,
) {
    let _ = conn.set_nodelay(true);
    let Some(loops) = &ctx.loops else {
        let ctx = Arc::clone(ctx);
        tokio::spawn(l7::serve(conn, peer, local, ctx, frontend).instrument(span));
        return;
    };
    // The socket is registered again with the loop's own reactor.
    let conn = match conn.into_std() {
        Ok(conn) => conn,
        Err(e) => {
            warn!(%peer, %local, error = %e, "cannot hand the connection to an L7 loop");
            return;
        }
    };
    let task = {
        let ctx = Arc::clone(ctx);
        async move {
            match TcpStream::from_std(conn) {
                Ok(conn) => l7::serve(conn, peer, local, ctx, frontend).await,
                Err(e) => warn!(error = %e, "an L7 loop cannot take the connection"),
            }
        }
    };
    loops.spawn(task.instrument(span));
}

/// Serves a connection to a port without routes: to a destination picked
/// now, its bytes copied both ways (L4).
async fn handle(
    mut inbound: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<Ctx>,
    state: Arc<DataplaneState>,
) {
    let started = StdInstant::now();
    let _ = inbound.set_nodelay(true);
    // The global service, for the flow counters (manual entries are not
    // cross-cluster flows).
    let mut global: Option<String> = None;
    let (hostname, result) = match state.listeners.get(&local).cloned() {
        Some(Target::Global { host, port }) => match state.service(&host) {
            Some(svc) => {
                global = Some(svc.hostname.clone());
                (
                    format!("{}:{port}", svc.hostname),
                    connect_global(&ctx, &state, &host, port, Some(peer)).await,
                )
            }
            None => (local.to_string(), Err("the service is gone".into())),
        },
        Some(Target::Manual { entry, port }) => match state.manual(entry) {
            Some(m) => (
                format!("{}:{port}", m.hosts.first().cloned().unwrap_or_default()),
                connect_manual(&ctx, &state, m, port, peer).await,
            ),
            None => (local.to_string(), Err("the entry is gone".into())),
        },
        None => (
            local.to_string(),
            Err("nothing is served here any more".into()),
        ),
    };
    let (mut upstream, chosen) = match result {
        Ok(x) => x,
        Err(NoDest { why, refused }) => {
            ctx.metrics.connection("outbound", "no_endpoint");
            let me = &state.feed.catalog.cluster.name;
            if let Some(service) = &global {
                let flow = Flows::labels(&state, "proxy", me, "", service);
                ctx.metrics.flows.connection(&state, &flow, "failed");
            }
            info!(
                src = %peer,
                src_cluster = %me,
                dst = %hostname,
                outcome = "failed",
                refused = refused_field(&refused),
                duration_ms = started.elapsed().as_millis() as u64,
                "connection refused: {why}"
            );
            return;
        }
    };
    ctx.metrics
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    let copied = copy::copy_both(&mut inbound, &mut *upstream, 256 * 1024).await;
    let (sent, received, outcome) = match copied {
        Ok((a, b)) => (a, b, "ok"),
        Err(_) => (0, 0, "reset"),
    };
    ctx.metrics.bytes("outbound", sent, received);
    ctx.metrics.connection("outbound", outcome);
    let me = &state.feed.catalog.cluster.name;
    if let Some(service) = &global {
        let flow = Flows::labels(&state, "proxy", me, &chosen.cluster, service);
        let (s, r) = ctx.metrics.flows.byte_counters(&flow);
        s.inc_by(sent);
        r.inc_by(received);
        ctx.metrics.flows.connection(&state, &flow, outcome);
    }
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    // The access log's line, written by hand when the process logs JSON
    // (`access_log`), else through tracing.
    let Some(sink) = crate::access_log::json_sink() else {
        info!(
            src = %peer,
            src_cluster = %me,
            dst = %hostname,
            endpoint = %chosen.dest,
            cluster = %chosen.cluster,
            attempts = chosen.attempts,
            refused = refused_field(&chosen.refused),
            bytes_sent = sent,
            bytes_received = received,
            duration_ms,
            outcome,
            "connection"
        );
        return;
    };
    let mut line = crate::access_log::JsonLine::info("connection");
    line.display("src", peer)
        .str("src_cluster", me)
        .str("dst", &hostname)
        .str("endpoint", &chosen.dest)
        .str("cluster", &chosen.cluster)
        .u64("attempts", chosen.attempts as u64);
    if !chosen.refused.is_empty() {
        line.str("refused", &chosen.refused.join(", "));
    }
    line.u64("bytes_sent", sent)
        .u64("bytes_received", received)
        .u64("duration_ms", duration_ms)
        .str("outcome", outcome);
    line.finish(module_path!(), peer, local, sink);
}

/// The L7 frontend a captured address leads to: a frontend with a route
/// table on an HTTP port (L6). Anything else stays an L4 hop.
fn l7_frontend(ctx: &Ctx, state: &DataplaneState, local: SocketAddr) -> Option<l7::Frontend> {
    if state.feed.catalog.routes.is_empty() {
        return None;
    }
    match state.listeners.get(&local)? {
        Target::Global { host, port } => {
            let svc = state.service(host)?;
            let p = svc.ports.iter().find(|p| p.number == *port)?;
            if !meshpeer_model::routes::is_l7(&p.protocol) {
                return None;
            }
            Some(l7::Frontend {
                host: svc.hostname.clone(),
                port: *port,
                service: Some(svc.hostname.clone()),
                table: ctx.route_table(state, &svc.hostname, *port)?,
            })
        }
        Target::Manual { entry, port } => {
            let m = state.manual(*entry)?;
            let p = m.ports.iter().find(|p| p.number == *port)?;
            if !meshpeer_model::routes::is_l7(&p.protocol) {
                return None;
            }
            m.hosts.iter().find_map(|h| {
                Some(l7::Frontend {
                    host: h.clone(),
                    port: *port,
                    service: None,
                    table: ctx.route_table(state, h, *port)?,
                })
            })
        }
    }
}

/// The access log's `refused` field: the endpoints the policy refused on
/// the way (P5), absent when none was.
fn refused_field(refused: &[String]) -> Option<tracing::field::DisplayValue<String>> {
    (!refused.is_empty()).then(|| tracing::field::display(refused.join(", ")))
}

/// The headers of the proxy's tunnels: the caller (`forwarded`), its
/// cluster (`baggage`), a trace id, that the bytes are the application's
/// (`x-meshpeer-payload: tcp`) and the proxy's locality, by which the
/// gateway ranks its endpoints (T3, T4 at the remote end).
fn meta(ctx_cluster: &str, locality: &Locality, peer: Option<SocketAddr>) -> TunnelMeta {
    let locality = locality.to_istio();
    TunnelMeta {
        payload: Some(crate::hbone::PAYLOAD_TCP.to_owned()),
        locality: (!locality.is_empty()).then_some(locality),
        // A pooled L7 connection serves many clients: none is named.
        forwarded: peer.map(|peer| format!("for=\"{peer}\"")),
        baggage: Some(format!("k8s.cluster.name={ctx_cluster}")),
        traceparent: Some(format!(
            "00-{:032x}-{:016x}-01",
            fastrand::u128(..),
            fastrand::u64(1..)
        )),
    }
}
/// Tries the planned destinations: the next of the same tier after a
/// failure, then the next tier, at most `max_attempts` in all (T6).
async fn connect_global(
    ctx: &Ctx,
    state: &DataplaneState,
    host: &str,
    port: u16,
    peer: Option<SocketAddr>,
) -> Result<(Box<dyn Stream>, Chosen), NoDest> {
    let svc = state.service(host).ok_or("the service is gone")?;
    ctx.health.sync(state);
    let tiers = {
        let mut rng = fastrand::Rng::new();
        plan(svc, port, state, &ctx.health, Instant::now(), &mut rng)
    };
    if tiers.is_empty() {
        return Err(format!("{} has no ready endpoint for port {port}", svc.hostname).into());
    }
    let meta = meta(&state.feed.catalog.cluster.name, &state.locality, peer);
    let mut attempts = 0;
    let mut errors = Vec::new();
    let mut refused = Vec::new();
    for dest in tiers.iter().flatten() {
        if attempts == ctx.config.max_attempts {
            break;
        }
        attempts += 1;
        match connect_dest(ctx, state, dest, &meta).await {
            Ok(s) => {
                ctx.health.succeeded(dest);
                if attempts > 1 {
                    ctx.metrics.retries.inc_by(attempts as u64 - 1);
                }
                let where_ = match dest {
                    Dest::Direct { addr, name, .. } if !name.is_empty() => {
                        format!("{addr} ({name})")
                    }
                    Dest::Direct { addr, .. } => addr.to_string(),
                    Dest::Gateway { authority, .. } => format!("{authority} via gateway"),
                };
                return Ok((
                    s,
                    Chosen {
                        dest: where_,
                        cluster: dest.cluster().to_owned(),
                        attempts,
                        refused,
                    },
                ));
            }
            // Not dialled: a failed attempt, but not the endpoint's health.
            Err(DialError::Refused(e)) => {
                errors.push(e.clone());
                refused.push(e);
            }
            Err(DialError::Failed(e)) => {
                let ejected = ctx.health.failed(dest, Instant::now());
                ctx.metrics.ejection(match dest {
                    Dest::Direct { .. } => "endpoint",
                    Dest::Gateway { .. } => "gateway",
                });
                debug!(error = %e, ejected_for = ?ejected, "destination failed; trying the next");
                errors.push(e);
            }
        }
    }
    Err(NoDest {
        why: format!(
            "no destination of {} answered after {attempts} attempts: {}",
            svc.hostname,
            errors.join("; ")
        ),
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t3_the_proxys_tunnels_carry_its_locality_and_say_their_bytes_are_tcp() {
        let peer: SocketAddr = "10.1.0.7:41000".parse().unwrap_or_else(|e| panic!("{e}"));
        let m = meta("cluster1", &Locality::new("eu", "eu-b"), Some(peer));
        assert_eq!(m.payload.as_deref(), Some(crate::hbone::PAYLOAD_TCP));
        assert!(!m.double_hbone());
        assert_eq!(m.locality.as_deref(), Some("eu/eu-b"));
        assert_eq!(
            Locality::from_istio(m.locality.as_deref().unwrap_or_default()),
            Some(Locality::new("eu", "eu-b"))
        );
        assert_eq!(m.baggage.as_deref(), Some("k8s.cluster.name=cluster1"));
        // An unknown locality is not sent.
        assert_eq!(
            meta("cluster1", &Locality::default(), Some(peer)).locality,
            None
        );
    }
}
