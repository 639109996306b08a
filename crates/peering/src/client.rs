//! The linking side: one task per remote-peer Gateway that connects to the
//! peer, receives its export and reports what happens as [`PeerEvent`]s.
//!
//! The task is a loop over connection attempts:
//!
//! ```text
//!   connect --ok--> session (deltas, ACK/NACK, heartbeats) --ends--> back off --> connect
//!      \--fails----------------------------------------------------> back off --/
//! ```
//!
//! Delays come from [`Backoff`] (reset once a stream delivers the full state).
//! When a stream ends, the last export the peer sent is kept, marked stale,
//! for the grace period; a reconnect that syncs replaces it with exactly the
//! peer's current state; if the grace period ends first, it is dropped
//! ([`PeerEvent::Expired`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use meshpeer_model::{Export, PeerLink};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::PROTOCOL_VERSION;
use crate::backoff::Backoff;
use crate::limits::{Limits, RefuseReason};
use crate::machine::{Decision, Input, LinkMachine, Phase};
use crate::metrics::Metrics;
use crate::metrics::{PeerLabels, RejectLabels};
use crate::proto::{self, PeerRequest, PeerResponse, peer_request, peer_response};
use crate::wire::{Applied, CLUSTER_RESOURCE, PeerState, Pending, Refusals, WireError};

/// What this cluster tells its peers about itself (the Hello).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInfo {
    pub cluster: String,
    /// This cluster's segment; `None` is the default segment.
    pub segment: Option<String>,
    pub trust_domain: String,
}

impl LocalInfo {
    /// The Hello of a client that decodes messages up to `max_message_bytes`.
    pub(crate) fn hello(&self, max_message_bytes: usize) -> proto::Hello {
        proto::Hello {
            cluster: self.cluster.clone(),
            segment: self.segment.clone().unwrap_or_default(),
            trust_domain: self.trust_domain.clone(),
            protocol: PROTOCOL_VERSION,
            max_message_bytes: u64::try_from(max_message_bytes).unwrap_or(u64::MAX),
        }
    }
}

/// An open peering stream.
pub struct Connection {
    /// Where we are connected to (for status).
    pub remote: String,
    pub inbound: Pin<Box<dyn Stream<Item = Result<PeerResponse, Status>> + Send>>,
    /// Requests to the peer; the Hello was already sent.
    pub outbound: mpsc::Sender<PeerRequest>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .finish()
    }
}

/// A connection attempt that failed, with why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// Metric label: `unreachable`, `unknown_root`, `expired`,
    /// `wrong_trust_domain`, `no_spiffe_id`, `tls`, `refused` (by the peer,
    /// after the handshake), `protocol`.
    pub reason: &'static str,
    pub message: String,
}

/// Opens peering streams (mutual TLS in production, in-memory in tests).
pub trait Connector: Send + Sync + 'static {
    /// Connects to the peer of `link`, sends `hello` and opens the stream,
    /// decoding messages up to `hello.max_message_bytes` (B3).
    fn connect(
        &self,
        link: &PeerLink,
        hello: proto::Hello,
    ) -> Pin<Box<dyn Future<Output = Result<Connection, ConnectError>> + Send + 'static>>;
}

/// Settings of one link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub link: PeerLink,
    pub local: watch::Receiver<LocalInfo>,
    /// Heartbeat interval; a stream silent for three is dropped.
    pub heartbeat: Duration,
    /// How long a disconnected peer's last export is kept (marked stale).
    pub grace: Duration,
    pub backoff: Backoff,
    /// What this cluster takes from the peer (B1, B2); also sets the
    /// largest message the link decodes (B3).
    pub limits: Arc<Limits>,
    /// An export of this peer is already held (kept across an edit of the
    /// link that keeps the peer): it is stale until then, unless a stream
    /// syncs first, and dropped ([`PeerEvent::Expired`]) after.
    pub held_until: Option<Instant>,
}

impl LinkConfig {
    /// A link with the defaults: 10 s heartbeats, 2 min grace, the default
    /// back-off and limits, nothing held.
    pub fn new(link: PeerLink, local: watch::Receiver<LocalInfo>) -> Self {
        LinkConfig {
            link,
            local,
            heartbeat: Duration::from_secs(10),
            grace: Duration::from_secs(120),
            backoff: Backoff::default(),
            limits: Arc::new(Limits::default()),
            held_until: None,
        }
    }
}

/// What happened on a link.
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// A connection attempt starts.
    Connecting { attempt: u32 },
    /// The attempt failed; the next one is in `retry_in`.
    ConnectFailed {
        reason: &'static str,
        message: String,
        retry_in: Duration,
    },
    /// The stream is open (transport up, Hello accepted).
    Connected { remote: String },
    /// The peer's export after a delta was applied; `full_state` on the
    /// first of a stream. `refusals`: the peer's resources this cluster
    /// does not hold (B1, B2), as of this delta.
    Synced {
        export: Arc<Export>,
        version: u64,
        full_state: bool,
        refusals: Refusals,
    },
    /// A delta was rejected whole (NACKed: no usable cluster resource, a
    /// peer claiming another name, broken chunks); the last good export
    /// stays.
    Rejected { version: u64, error: String },
    /// The stream ended. `stale`: an export is kept until the grace period
    /// ends or a reconnect syncs.
    Disconnected {
        reason: String,
        retry_in: Duration,
        stale: bool,
    },
    /// The grace period ended without a reconnect: the export is dropped.
    Expired,
}

/// An event about one peer.
#[derive(Clone, Debug)]
pub struct PeerUpdate {
    pub peer: String,
    pub at: SystemTime,
    pub event: PeerEvent,
}

struct Link {
    cfg: LinkConfig,
    connector: Arc<dyn Connector>,
    events: mpsc::Sender<PeerUpdate>,
    metrics: Arc<Metrics>,
    machine: LinkMachine,
}

enum SessionEnd {
    /// Reconnect after a back-off.
    Retry(String),
    /// The peer refused us (PermissionDenied: our identity or claims no
    /// longer pass its admission, P1/P3): drop what it sent, then retry
    /// after a back-off.
    Refused(String),
    /// Reconnect at once (our own Hello changed).
    Now(String),
}

/// Runs one link until the event receiver is dropped.
pub async fn run_link(
    cfg: LinkConfig,
    connector: Arc<dyn Connector>,
    events: mpsc::Sender<PeerUpdate>,
    metrics: Arc<Metrics>,
) {
    let mut machine = LinkMachine::new(cfg.backoff.clone(), cfg.grace);
    if let Some(until) = cfg.held_until {
        machine.hold_until(until);
    }
    let mut link = Link {
        cfg,
        connector,
        events,
        metrics,
        machine,
    };
    link.run().await;
}

fn wait_of(d: Decision) -> Duration {
    match d {
        Decision::Wait { delay, .. } => delay,
        _ => Duration::ZERO,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Link {
    fn peer(&self) -> &str {
        &self.cfg.link.cluster
    }

    /// Counts what a delta refused and sets what is refused now, by reason
    /// (the peer is linked: B6).
    fn count_refusals(&self, labels: &PeerLabels, applied: &Applied, now: &Refusals) {
        if applied.refused_total > 0 {
            let first = applied
                .refused
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            warn!(peer = %self.peer(), refused = applied.refused_total, "refused resources of the peer (the rest applies): {first}");
        }
        for reason in RefuseReason::ALL {
            let n = applied.count(reason);
            if n > 0 {
                self.metrics
                    .resources_refused
                    .get_or_create(&RejectLabels {
                        peer: labels.peer.clone(),
                        reason: reason.as_str().to_owned(),
                    })
                    .inc_by(n as u64);
            }
        }
        for reason in RefuseReason::ALL {
            self.metrics
                .refused_now
                .get_or_create(&RejectLabels {
                    peer: labels.peer.clone(),
                    reason: reason.as_str().to_owned(),
                })
                .set(now.count(reason) as i64);
        }
    }

    /// Sends an event; false when nobody listens any more.
    async fn emit(&self, event: PeerEvent) -> bool {
        self.events
            .send(PeerUpdate {
                peer: self.peer().to_owned(),
                at: SystemTime::now(),
                event,
            })
            .await
            .is_ok()
    }

    /// Drops the stale export if the grace period is over; false when
    /// nobody listens any more.
    async fn expire(&mut self) -> bool {
        if self.machine.expire(Instant::now()) {
            info!(peer = %self.peer(), "grace period over: the peer's export is dropped");
            self.metrics
                .peer_stale
                .get_or_create(&Metrics::peer(self.peer()))
                .set(0);
            return self.emit(PeerEvent::Expired).await;
        }
        true
    }

    async fn run(&mut self) {
        let labels = Metrics::peer(self.peer());
        loop {
            let attempt = match self.machine.phase() {
                Phase::Connecting { attempt } => attempt,
                _ => 1,
            };
            let hello = self
                .cfg
                .local
                .borrow_and_update()
                .hello(self.cfg.limits.max_message_bytes());
            if !self.emit(PeerEvent::Connecting { attempt }).await {
                return;
            }
            let connect = self.connector.connect(&self.cfg.link, hello);
            let result = tokio::select! {
                r = connect => Some(r),
                _ = sleep_until_opt(self.machine.expires_at()) => None,
            };
            let decision = match result {
                None => {
                    if !self.expire().await {
                        return;
                    }
                    continue;
                }
                Some(Err(e)) => {
                    let d = self.machine.step(Input::ConnectFailed, Instant::now());
                    let retry_in = wait_of(d);
                    warn!(peer = %self.peer(), reason = e.reason, retry_in = ?retry_in, "cannot connect to peer: {}", e.message);
                    self.metrics.reject(self.peer(), e.reason);
                    if !self
                        .emit(PeerEvent::ConnectFailed {
                            reason: e.reason,
                            message: e.message,
                            retry_in,
                        })
                        .await
                    {
                        return;
                    }
                    d
                }
                Some(Ok(conn)) => {
                    info!(peer = %self.peer(), remote = %conn.remote, "connected to peer");
                    self.machine.step(Input::ConnectOk, Instant::now());
                    self.metrics.peer_connected.get_or_create(&labels).set(1);
                    if !self
                        .emit(PeerEvent::Connected {
                            remote: conn.remote.clone(),
                        })
                        .await
                    {
                        return;
                    }
                    let end = self.session(conn).await;
                    self.metrics.peer_connected.get_or_create(&labels).set(0);
                    self.metrics.peer_synced.get_or_create(&labels).set(0);
                    let (reason, at_once, refused) = match end {
                        None => return,
                        Some(SessionEnd::Retry(r)) => (r, false, false),
                        Some(SessionEnd::Refused(r)) => (r, false, true),
                        Some(SessionEnd::Now(r)) => (r, true, false),
                    };
                    let d = self
                        .machine
                        .step(Input::StreamEnded { now: at_once }, Instant::now());
                    let retry_in = wait_of(d);
                    let dropped = refused && self.machine.drop_held();
                    let stale = self.machine.stale();
                    self.metrics
                        .peer_stale
                        .get_or_create(&labels)
                        .set(i64::from(stale));
                    warn!(peer = %self.peer(), reason = %reason, retry_in = ?retry_in, stale, "peer stream ended");
                    if !self
                        .emit(PeerEvent::Disconnected {
                            reason,
                            retry_in,
                            stale,
                        })
                        .await
                    {
                        return;
                    }
                    if dropped && !self.emit(PeerEvent::Expired).await {
                        return;
                    }
                    d
                }
            };
            // Wait before the next attempt; the grace period may end meanwhile,
            // and a change of our own Hello (segment) retries at once.
            let until = Instant::now() + wait_of(decision);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = sleep_until_opt(self.machine.expires_at()) => {
                        if !self.expire().await {
                            return;
                        }
                    }
                    changed = self.cfg.local.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = self.events.closed() => return,
                }
            }
            self.machine.step(Input::WaitOver, Instant::now());
        }
    }

    /// One stream. `None` when nobody listens to events any more.
    async fn session(&mut self, mut conn: Connection) -> Option<SessionEnd> {
        let labels = Metrics::peer(self.peer());
        let heartbeat = self.cfg.heartbeat;
        let mut state = PeerState::default();
        // A delta whose chunks are still arriving (B3).
        let mut pending: Option<Pending> = None;
        let mut synced = false;
        let mut last_heard = Instant::now();
        let mut last_sent = Instant::now();
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = conn.inbound.next() => {
                    last_heard = Instant::now();
                    match msg {
                        Some(Ok(PeerResponse { kind: Some(peer_response::Kind::Delta(d)) })) => {
                            self.metrics.resources_received.get_or_create(&labels).inc_by(d.resources.len() as u64);
                            let mut delta = match pending.take() {
                                Some(p) if p.nonce() == d.nonce => p,
                                Some(p) => {
                                    return Some(SessionEnd::Retry(format!(
                                        "protocol error: the peer started delta {} before the last chunk of delta {}",
                                        d.nonce, p.nonce()
                                    )));
                                }
                                None => state.begin(&d),
                            };
                            delta.add(&d, &self.cfg.limits);
                            if d.more {
                                pending = Some(delta);
                                continue;
                            }
                            let (nonce, version, full_state) =
                                (delta.nonce().to_owned(), delta.version(), delta.full_state());
                            let applied = delta.finish().and_then(|(next, applied)| {
                                let name = &next.export().cluster.name;
                                if *name == self.cfg.link.cluster {
                                    Ok((next, applied))
                                } else {
                                    Err(WireError {
                                        resource: CLUSTER_RESOURCE.into(),
                                        message: format!(
                                            "the peer says it is cluster {name}, but this link is to cluster {}",
                                            self.cfg.link.cluster
                                        ),
                                    })
                                }
                            });
                            match applied {
                                Ok((next, applied)) => {
                                    state = next;
                                    let ack = applied.ack(&nonce);
                                    if conn.outbound.send(PeerRequest { kind: Some(peer_request::Kind::Ack(ack)) }).await.is_err() {
                                        return Some(SessionEnd::Retry("peer stream closed".into()));
                                    }
                                    last_sent = Instant::now();
                                    self.count_refusals(&labels, &applied, state.refusals());
                                    if !synced {
                                        synced = true;
                                        self.metrics.peer_synced.get_or_create(&labels).set(1);
                                    }
                                    if self.machine.stale() {
                                        self.metrics.peer_stale.get_or_create(&labels).set(0);
                                    }
                                    self.machine.step(Input::Applied, Instant::now());
                                    let export = Arc::new(state.export().clone());
                                    debug!(peer = %self.peer(), version, full = full_state, services = export.services.len(), refused = state.refusals().len(), "applied peer delta");
                                    let event = PeerEvent::Synced {
                                        export,
                                        version,
                                        full_state,
                                        refusals: state.refusals().clone(),
                                    };
                                    if !self.emit(event).await {
                                        return None;
                                    }
                                }
                                Err(e) => {
                                    warn!(peer = %self.peer(), version, error = %e, "rejecting peer delta; keeping the last good state");
                                    self.metrics.reject(self.peer(), "nack_sent");
                                    let nack = proto::Nack { nonce, error: e.to_string() };
                                    if conn.outbound.send(PeerRequest { kind: Some(peer_request::Kind::Nack(nack)) }).await.is_err() {
                                        return Some(SessionEnd::Retry("peer stream closed".into()));
                                    }
                                    last_sent = Instant::now();
                                    if !self.emit(PeerEvent::Rejected { version, error: e.to_string() }).await {
                                        return None;
                                    }
                                }
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                            return Some(SessionEnd::Refused(format!("peer refused the stream: {}", status.message())));
                        }
                        Some(Err(status)) => {
                            return Some(SessionEnd::Retry(format!("peer ended the stream: {}", status.message())));
                        }
                        None => return Some(SessionEnd::Retry("peer closed the stream".into())),
                    }
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > heartbeat * 3 {
                        return Some(SessionEnd::Retry(format!("no message from the peer for {:?}", last_heard.elapsed())));
                    }
                    if last_sent.elapsed() >= heartbeat {
                        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                        let hb = proto::Heartbeat { sent_unix_ms: now_ms };
                        if conn.outbound.send(PeerRequest { kind: Some(peer_request::Kind::Heartbeat(hb)) }).await.is_err() {
                            return Some(SessionEnd::Retry("peer stream closed".into()));
                        }
                        last_sent = Instant::now();
                    }
                }
                changed = self.cfg.local.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    return Some(SessionEnd::Now("this cluster's segment or identity changed; reconnecting with a new Hello".into()));
                }
                _ = self.events.closed() => return None,
                // A stream that has not delivered yet does not stop the
                // grace period of the previous one.
                _ = sleep_until_opt(self.machine.expires_at()) => {
                    if !self.expire().await {
                        return None;
                    }
                }
            }
        }
    }
}
