//! The exporting side: sends this cluster's export to every peer that asks,
//! as what that peer may see (S7), full state first and then deltas, one
//! delta in flight per peer (the next one waits for the ACK, so bursts of
//! changes coalesce).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use meshpeer_identity::SpiffeId;
use meshpeer_model::Export;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::PROTOCOL_VERSION;
use crate::admission::{Admission, Denial};
use crate::metrics::Metrics;
use crate::proto::{self, PeerRequest, PeerResponse, peer_request, peer_response};
use crate::wire::ResourceSet;

pub use crate::tls::{ClientTls, TlsConnector, serve};

/// One published version of this cluster's export.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub version: u64,
    /// The exporting cluster's segment, for visibility filtering.
    pub segment: Option<String>,
    /// Every resource: what peers of the same segment see.
    pub resources: ResourceSet,
    /// Without `segment`-scoped services: what other segments see (S7).
    pub global: ResourceSet,
}

impl Published {
    /// What a peer in `peer_segment` may see.
    pub fn visible_to(&self, peer_segment: Option<&str>) -> &ResourceSet {
        if self.segment.as_deref() == peer_segment {
            &self.resources
        } else {
            &self.global
        }
    }
}

/// Publishes this cluster's export to every peer stream. Resources are
/// encoded once per changed service and shared by all streams and versions.
#[derive(Debug)]
pub struct ExportPublisher {
    tx: watch::Sender<Published>,
    /// The export last published (its services shared with the caller's).
    last: std::sync::Mutex<Export>,
}

impl Default for ExportPublisher {
    fn default() -> Self {
        ExportPublisher::new()
    }
}

impl ExportPublisher {
    pub fn new() -> Self {
        ExportPublisher {
            tx: watch::channel(Published::default()).0,
            last: std::sync::Mutex::new(Export::default()),
        }
    }

    /// Publishes an export; returns its version. Only the services that
    /// differ from the last export are encoded. An export whose resources
    /// did not change keeps the current version and wakes no stream.
    pub fn publish(&self, export: &Export) -> u64 {
        let Ok(mut last) = self.last.lock() else {
            return self.tx.borrow().version;
        };
        let segment = export.cluster.segment_name().map(str::to_owned);
        let mut version = 0;
        self.tx.send_if_modified(|p| {
            let mut resources = p.resources.clone();
            let mut global = p.global.clone();
            let changed = resources.update(&mut global, &last, export);
            if !changed && p.segment == segment && p.version > 0 {
                version = p.version;
                return false;
            }
            p.version += 1;
            p.segment = segment;
            p.resources = resources;
            p.global = global;
            version = p.version;
            true
        });
        *last = export.clone();
        version
    }

    pub fn current(&self) -> Published {
        self.tx.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Published> {
        self.tx.subscribe()
    }
}

/// Who is on the other end of a peering connection, from its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub remote: String,
    /// SPIFFE id of the peer's certificate.
    pub spiffe_id: String,
    pub trust_domain: String,
}

/// A peer currently served, for status (O5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedPeer {
    pub cluster: String,
    pub segment: Option<String>,
    pub spiffe_id: String,
    /// Trust domain of its certificate.
    pub trust_domain: String,
    pub remote: String,
    pub connected_since: SystemTime,
    /// Export version the peer last ACKed.
    pub acked_version: Option<u64>,
    pub last_ack: Option<SystemTime>,
    /// Resources the peer holds (as of the last ACK).
    pub resources: usize,
    /// The last NACK's error, if the peer rejected something.
    pub last_error: Option<String>,
}

/// Settings of the server side.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// This cluster's name (for logs and errors).
    pub cluster: String,
    /// Idle streams get a heartbeat this often; a stream silent for three
    /// intervals is dropped.
    pub heartbeat: Duration,
    /// How long a new stream may take to say Hello.
    pub hello_timeout: Duration,
    /// Who may peer (P1, P3); replaced later with
    /// [`PeeringService::set_admission`] as links change.
    pub admission: Admission,
}

impl ServerSettings {
    /// Settings of cluster `cluster`, whose trust domain is taken to be its
    /// name until [`PeeringService::set_admission`] says otherwise.
    pub fn new(cluster: &str) -> Self {
        ServerSettings {
            cluster: cluster.to_owned(),
            heartbeat: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            admission: Admission::new(cluster),
        }
    }
}

/// A connection refused before it reached the service (bad certificate ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub at: SystemTime,
    pub remote: String,
    /// Metric label of the reason (`unknown_root`, `expired`, ...).
    pub reason: &'static str,
    pub message: String,
}

const MAX_REFUSALS: usize = 32;

struct Shared {
    /// Bumped whenever a peer starts or stops being served.
    served_changed: watch::Sender<u64>,
    refused: Mutex<std::collections::VecDeque<Refused>>,
    settings: ServerSettings,
    exports: watch::Receiver<Published>,
    metrics: Arc<Metrics>,
    served: Mutex<BTreeMap<u64, ServedPeer>>,
    next_id: Mutex<u64>,
    admission: watch::Sender<Admission>,
}

/// The peering gRPC service.
#[derive(Clone)]
pub struct PeeringService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PeeringService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeeringService")
            .field("cluster", &self.shared.settings.cluster)
            .finish()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PeerResponse, Status>> + Send>>;

impl PeeringService {
    pub fn new(
        settings: ServerSettings,
        publisher: &ExportPublisher,
        metrics: Arc<Metrics>,
    ) -> Self {
        PeeringService {
            shared: Arc::new(Shared {
                admission: watch::channel(settings.admission.clone()).0,
                served_changed: watch::channel(0).0,
                refused: Mutex::new(std::collections::VecDeque::new()),
                settings,
                exports: publisher.subscribe(),
                metrics,
                served: Mutex::new(BTreeMap::new()),
                next_id: Mutex::new(0),
            }),
        }
    }

    /// Peers served right now.
    pub fn served(&self) -> Vec<ServedPeer> {
        self.shared
            .served
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Changes whenever a peer starts or stops being served.
    pub fn served_changes(&self) -> watch::Receiver<u64> {
        self.shared.served_changed.subscribe()
    }

    /// Recent refused connection attempts (newest last), for status.
    pub fn refusals(&self) -> Vec<Refused> {
        self.shared
            .refused
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records a connection refused during the TLS handshake.
    pub(crate) fn refused(&self, remote: &str, refusal: &meshpeer_identity::Refusal) {
        self.shared
            .record_refusal(remote, refusal.reason(), refusal.to_string());
    }

    /// Replaces who may peer (P1, P3). Streams already served that the new
    /// rules refuse are ended, with the reason.
    pub fn set_admission(&self, admission: Admission) {
        self.shared.admission.send_if_modified(|a| {
            let changed = *a != admission;
            *a = admission;
            changed
        });
    }

    /// Who may peer, as last set.
    pub fn admission(&self) -> Admission {
        self.shared.admission.borrow().clone()
    }

    /// Accepts one stream from a verified peer: reads its Hello, checks it,
    /// and starts sending. Used by the gRPC handler and by in-memory tests.
    pub async fn open<S>(&self, conn: ConnInfo, mut inbound: S) -> Result<ResponseStream, Status>
    where
        S: Stream<Item = Result<PeerRequest, Status>> + Unpin + Send + 'static,
    {
        let s = &self.shared;
        // P1: only controller identities of other (allowed) trust domains.
        let id: SpiffeId = conn.spiffe_id.parse().map_err(|e| {
            s.deny(
                &conn,
                &Denial {
                    reason: "no_spiffe_id",
                    message: format!("{e}"),
                },
            )
        })?;
        s.admission
            .borrow()
            .admit_identity(&id)
            .map_err(|d| s.deny(&conn, &d))?;
        let hello = match tokio::time::timeout(s.settings.hello_timeout, inbound.next()).await {
            Ok(Some(Ok(PeerRequest {
                kind: Some(peer_request::Kind::Hello(h)),
            }))) => h,
            Ok(Some(Err(status))) => return Err(status),
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a peering stream must be Hello",
                ));
            }
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {:?}",
                    s.settings.hello_timeout
                )));
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            s.metrics.reject(&hello.cluster, "protocol");
            return Err(Status::failed_precondition(format!(
                "peering protocol {} is not supported; cluster {} speaks {PROTOCOL_VERSION}",
                hello.protocol, s.settings.cluster
            )));
        }
        if hello.trust_domain != conn.trust_domain {
            s.metrics.reject(&hello.cluster, "wrong_trust_domain");
            warn!(
                peer = %hello.cluster,
                claimed = %hello.trust_domain,
                certificate = %conn.spiffe_id,
                "refused peer: trust domain in Hello does not match its certificate"
            );
            return Err(Status::permission_denied(format!(
                "cluster {} says trust domain {} but its certificate is {}; refused by cluster {}",
                hello.cluster, hello.trust_domain, conn.spiffe_id, s.settings.cluster
            )));
        }
        if hello.cluster.is_empty() {
            return Err(Status::invalid_argument("Hello.cluster is empty"));
        }
        let claims = Claims {
            trust_domain: conn.trust_domain.clone(),
            cluster: hello.cluster.clone(),
            segment: (!hello.segment.is_empty()).then(|| hello.segment.clone()),
        };
        claims
            .admit(&s.admission.borrow())
            .map_err(|d| s.deny(&conn, &d))?;
        let id = {
            let mut n = s
                .next_id
                .lock()
                .map_err(|_| Status::internal("lock poisoned"))?;
            *n += 1;
            *n
        };
        let segment = (!hello.segment.is_empty()).then(|| hello.segment.clone());
        if let Ok(mut served) = s.served.lock() {
            served.insert(
                id,
                ServedPeer {
                    cluster: hello.cluster.clone(),
                    segment: segment.clone(),
                    spiffe_id: conn.spiffe_id.clone(),
                    trust_domain: conn.trust_domain.clone(),
                    remote: conn.remote.clone(),
                    connected_since: SystemTime::now(),
                    acked_version: None,
                    last_ack: None,
                    resources: 0,
                    last_error: None,
                },
            );
        }
        s.metrics.served_peers.inc();
        s.served_changed.send_modify(|n| *n += 1);
        info!(peer = %hello.cluster, remote = %conn.remote, id = %conn.spiffe_id, "serving peer");
        let (tx, rx) = mpsc::channel(8);
        let shared = Arc::clone(&self.shared);
        let session = Session {
            shared: Arc::clone(&shared),
            id,
            peer: hello.cluster.clone(),
            segment,
            out: tx,
            conn,
            claims,
        };
        tokio::spawn(async move {
            let end = session.run(inbound).await;
            debug!(peer = %hello.cluster, reason = %end, "peer stream ended");
            if let Ok(mut served) = shared.served.lock() {
                served.remove(&id);
            }
            shared.metrics.served_peers.dec();
            shared.served_changed.send_modify(|n| *n += 1);
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl proto::peering_server::Peering for PeeringService {
    type ExchangeStream = ResponseStream;

    async fn exchange(
        &self,
        request: Request<Streaming<PeerRequest>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        let Some(conn) = request.extensions().get::<ConnInfo>().cloned() else {
            return Err(Status::unauthenticated(
                "peering requires mutual TLS with a certificate under the shared root",
            ));
        };
        let stream = self.open(conn, request.into_inner()).await?;
        Ok(Response::new(stream))
    }
}

struct Inflight {
    nonce: String,
    version: u64,
    state: ResourceSet,
    sent_at: Instant,
}

struct Session {
    shared: Arc<Shared>,
    id: u64,
    peer: String,
    segment: Option<String>,
    out: mpsc::Sender<Result<PeerResponse, Status>>,
    conn: ConnInfo,
    claims: Claims,
}

/// What a served client claimed in its Hello, re-checked when the
/// admission rules change.
struct Claims {
    trust_domain: String,
    cluster: String,
    segment: Option<String>,
}

impl Claims {
    fn admit(&self, admission: &Admission) -> Result<(), Denial> {
        admission.admit_claims(&self.trust_domain, &self.cluster, self.segment.as_deref())
    }
}

impl Shared {
    /// Counts and remembers a refused client, for metrics and status. The
    /// metric's peer label stays `unknown`: refused clients do not get to
    /// name label sets.
    fn record_refusal(&self, remote: &str, reason: &'static str, message: String) {
        self.metrics.reject("unknown", reason);
        if let Ok(mut r) = self.refused.lock() {
            if r.len() == MAX_REFUSALS {
                r.pop_front();
            }
            r.push_back(Refused {
                at: SystemTime::now(),
                remote: remote.to_owned(),
                reason,
                message,
            });
        }
    }

    /// Refuses a client: logged, counted, remembered; the status carries the
    /// reason to the client.
    fn deny(&self, conn: &ConnInfo, denial: &Denial) -> Status {
        warn!(
            remote = %conn.remote,
            id = %conn.spiffe_id,
            reason = denial.reason,
            "refused peer: {denial}"
        );
        self.record_refusal(
            &conn.remote,
            denial.reason,
            format!("{}: {denial}", conn.spiffe_id),
        );
        Status::permission_denied(format!(
            "cluster {} refuses peering: {denial}",
            self.settings.cluster
        ))
    }
}

impl Session {
    fn update(&self, f: impl FnOnce(&mut ServedPeer)) {
        if let Ok(mut served) = self.shared.served.lock()
            && let Some(p) = served.get_mut(&self.id)
        {
            f(p);
        }
    }

    async fn send(&self, kind: peer_response::Kind) -> bool {
        self.out
            .send(Ok(PeerResponse { kind: Some(kind) }))
            .await
            .is_ok()
    }

    async fn run<S>(self, mut inbound: S) -> String
    where
        S: Stream<Item = Result<PeerRequest, Status>> + Unpin + Send + 'static,
    {
        let heartbeat = self.shared.settings.heartbeat;
        let mut exports = self.shared.exports.clone();
        let mut admission = self.shared.admission.subscribe();
        let labels = Metrics::peer(&self.peer);
        let mut acked: Option<ResourceSet> = None;
        let mut inflight: Option<Inflight> = None;
        let mut nacked_version: Option<u64> = None;
        let mut nonce = 0u64;
        let mut last_heard = Instant::now();
        let mut last_sent = Instant::now();
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if inflight.is_none() {
                let current = exports.borrow_and_update().clone();
                // Version 0: nothing published yet; the first export comes
                // as a change (a peer must never see an empty state as ours).
                if current.version > 0 && nacked_version != Some(current.version) {
                    let visible = current.visible_to(self.segment.as_deref()).clone();
                    let full = acked.is_none();
                    let diff = acked
                        .as_ref()
                        .unwrap_or(&ResourceSet::default())
                        .diff(&visible);
                    if full || !diff.is_empty() {
                        nonce += 1;
                        let n = nonce.to_string();
                        self.shared
                            .metrics
                            .resources_sent
                            .get_or_create(&labels)
                            .inc_by(diff.changed.len() as u64);
                        let delta = proto::Delta {
                            nonce: n.clone(),
                            version: current.version,
                            full_state: full,
                            resources: diff.changed.iter().map(|r| (**r).clone()).collect(),
                            removed: diff.removed,
                        };
                        debug!(peer = %self.peer, version = current.version, full, resources = delta.resources.len(), removed = delta.removed.len(), "sending delta");
                        if !self.send(peer_response::Kind::Delta(delta)).await {
                            return "peer stream closed".into();
                        }
                        last_sent = Instant::now();
                        inflight = Some(Inflight {
                            nonce: n,
                            version: current.version,
                            state: visible,
                            sent_at: Instant::now(),
                        });
                    }
                }
            }
            tokio::select! {
                changed = admission.changed() => {
                    if changed.is_ok() {
                        let verdict = self.claims.admit(&admission.borrow_and_update());
                        if let Err(denial) = verdict {
                            let status = self.shared.deny(&self.conn, &denial);
                            let _ = self.out.send(Err(status)).await;
                            return format!("refused: {denial}");
                        }
                    }
                }
                changed = exports.changed() => {
                    if changed.is_err() {
                        let _ = self.out.send(Err(Status::unavailable(format!(
                            "cluster {} is shutting down", self.shared.settings.cluster
                        )))).await;
                        return "shutting down".into();
                    }
                }
                msg = inbound.next() => {
                    last_heard = Instant::now();
                    match msg {
                        Some(Ok(PeerRequest { kind: Some(peer_request::Kind::Ack(a)) })) => {
                            if let Some(f) = inflight.take_if(|f| f.nonce == a.nonce) {
                                let elapsed = f.sent_at.elapsed();
                                self.shared.metrics.delta_ack_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
                                let resources = f.state.len();
                                let version = f.version;
                                acked = Some(f.state);
                                nacked_version = None;
                                self.update(|p| {
                                    p.acked_version = Some(version);
                                    p.last_ack = Some(SystemTime::now());
                                    p.resources = resources;
                                    p.last_error = None;
                                });
                            }
                        }
                        Some(Ok(PeerRequest { kind: Some(peer_request::Kind::Nack(n)) })) => {
                            if let Some(f) = inflight.take_if(|f| f.nonce == n.nonce) {
                                warn!(peer = %self.peer, version = f.version, error = %n.error, "peer rejected a delta; it keeps its last good state");
                                self.shared.metrics.reject(&self.peer, "nack_received");
                                nacked_version = Some(f.version);
                                self.update(|p| p.last_error = Some(n.error.clone()));
                            }
                        }
                        Some(Ok(PeerRequest { kind: Some(peer_request::Kind::Hello(_)) })) => {
                            let _ = self.out.send(Err(Status::invalid_argument("Hello may only be the first message"))).await;
                            return "protocol error: second Hello".into();
                        }
                        Some(Ok(_)) => {}
                        Some(Err(status)) => return format!("peer stream error: {status}"),
                        None => return "peer closed the stream".into(),
                    }
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > heartbeat * 3 {
                        let _ = self.out.send(Err(Status::deadline_exceeded(format!(
                            "no message from cluster {} for {:?}", self.peer, last_heard.elapsed()
                        )))).await;
                        return "peer silent for three heartbeats".into();
                    }
                    if last_sent.elapsed() >= heartbeat {
                        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                        if !self.send(peer_response::Kind::Heartbeat(proto::Heartbeat { sent_unix_ms: now_ms })).await {
                            return "peer stream closed".into();
                        }
                        last_sent = Instant::now();
                    }
                }
            }
        }
    }
}
