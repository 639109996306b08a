//! The exporting side: sends this cluster's export to every peer that asks,
//! as what that peer may see (S7), full state first and then deltas, one
//! delta in flight per peer (the next one waits for the ACK, so bursts of
//! changes coalesce).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use meshpeer_identity::{SpiffeId, VerifiedPeer};
use meshpeer_model::Export;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::PROTOCOL_VERSION;
use crate::admission::{Admission, Denial};
use crate::limits::CHUNK_BYTES;
use crate::metrics::{Metrics, PeerLabels, UNKNOWN_PEER};
use crate::proto::{self, PeerRequest, PeerResponse, peer_request, peer_response};
use crate::wire::{Diff, ResourceSet};

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
    /// The cluster its chain is bound to (its intermediate's cluster
    /// binding, verified to the root, SPEC P6); `None`: none.
    pub cluster: Option<String>,
}

impl ConnInfo {
    /// Who this is, for one live stream per peer (B4): its SPIFFE ID and,
    /// where clusters share a trust domain and so the ID, its cluster.
    fn key(&self) -> String {
        match &self.cluster {
            Some(c) => format!("{} cluster={c}", self.spiffe_id),
            None => self.spiffe_id.clone(),
        }
    }
}

/// A peer currently served, for status (O5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedPeer {
    pub cluster: String,
    pub segment: Option<String>,
    pub spiffe_id: String,
    /// Trust domain of its certificate.
    pub trust_domain: String,
    /// The cluster its chain is bound to (SPEC P6), if any.
    pub cluster_binding: Option<String>,
    pub remote: String,
    pub connected_since: SystemTime,
    /// Export version the peer last ACKed.
    pub acked_version: Option<u64>,
    pub last_ack: Option<SystemTime>,
    /// Resources the peer holds (as of the last ACK).
    pub resources: usize,
    /// The last NACK's error, if the peer rejected something.
    pub last_error: Option<String>,
    /// Resources the peer refused in the last delta it ACKed (B1, B2), and
    /// the first few of them (`<resource>: <reason>`).
    pub refused: usize,
    pub refused_resources: Vec<String>,
}

/// How many of a peer's refusals are kept for status.
const REFUSALS_SHOWN: usize = 10;

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
    /// Concurrent streams one connection may open (B4); beyond, HTTP/2
    /// refuses them. A peer needs one.
    pub max_streams_per_connection: u32,
    /// The shared root, to read a client's cluster binding from the path
    /// its chain verified along (SPEC P6). Without it, clients speak for no
    /// cluster, which is enough only where every cluster has a trust
    /// domain of its own.
    pub trust_root: Option<meshpeer_identity::TrustRoot>,
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
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
            trust_root: None,
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

/// Default of [`ServerSettings::max_streams_per_connection`]: a peer needs
/// one; a few more let a reconnecting client overlap its old stream.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4;

/// The largest message a server decodes (Hello, ACKs with at most 100
/// refusals, heartbeats).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// tonic's default decode limit: what a client that does not say decodes.
const DEFAULT_CLIENT_MESSAGE_BYTES: usize = 4 << 20;

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
    /// The live stream of each client identity, and how to end it (B4).
    sessions: Mutex<BTreeMap<String, (u64, oneshot::Sender<()>)>>,
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
                sessions: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The gRPC service with its message limits set: requests (Hello,
    /// ACKs, heartbeats) up to [`MAX_REQUEST_BYTES`]; deltas are chunked
    /// under each client's own limit (B3).
    pub fn grpc(self) -> proto::peering_server::PeeringServer<Self> {
        proto::peering_server::PeeringServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    /// Concurrent streams one connection may open (B4).
    pub fn max_streams_per_connection(&self) -> u32 {
        self.shared.settings.max_streams_per_connection
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

    /// The shared root a client's chain is verified to again, to read its
    /// cluster binding (see [`ServerSettings::trust_root`]).
    pub(crate) fn trust_root(&self) -> Option<&meshpeer_identity::TrustRoot> {
        self.shared.settings.trust_root.as_ref()
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
        let peer = VerifiedPeer {
            id,
            cluster: conn.cluster.clone(),
        };
        s.admission
            .borrow()
            .admit_identity(&peer)
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
            s.metrics.reject(UNKNOWN_PEER, "protocol");
            return Err(Status::failed_precondition(format!(
                "peering protocol {} is not supported; cluster {} speaks {PROTOCOL_VERSION}",
                hello.protocol, s.settings.cluster
            )));
        }
        if hello.trust_domain != conn.trust_domain {
            s.metrics.reject(UNKNOWN_PEER, "wrong_trust_domain");
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
            peer,
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
                    cluster_binding: conn.cluster.clone(),
                    remote: conn.remote.clone(),
                    connected_since: SystemTime::now(),
                    acked_version: None,
                    last_ack: None,
                    resources: 0,
                    last_error: None,
                    refused: 0,
                    refused_resources: Vec::new(),
                },
            );
        }
        // B4: one live stream per identity; a newer one replaces the older
        // (a client that lost its connection without noticing reconnects
        // at once instead of waiting out three heartbeats).
        let (replaced_tx, replaced) = oneshot::channel();
        let older = s
            .sessions
            .lock()
            .ok()
            .and_then(|mut m| m.insert(conn.key(), (id, replaced_tx)));
        if let Some((_, end_older)) = older {
            s.metrics.sessions_replaced.inc();
            info!(peer = %hello.cluster, id = %conn.spiffe_id, "a newer stream from the same identity replaces the older one");
            let _ = end_older.send(());
        }
        s.metrics.served_peers.inc();
        s.served_changed.send_modify(|n| *n += 1);
        info!(peer = %hello.cluster, remote = %conn.remote, id = %conn.spiffe_id, "serving peer");
        let (tx, rx) = mpsc::channel(8);
        let shared = Arc::clone(&self.shared);
        let max_message = match usize::try_from(hello.max_message_bytes) {
            Ok(0) => DEFAULT_CLIENT_MESSAGE_BYTES,
            Ok(n) => n,
            Err(_) => usize::MAX,
        };
        let session_key = conn.key();
        let session = Session {
            shared: Arc::clone(&shared),
            id,
            peer: hello.cluster.clone(),
            segment,
            out: tx,
            conn,
            claims,
            max_message,
        };
        tokio::spawn(async move {
            let end = session.run(inbound, replaced).await;
            debug!(peer = %hello.cluster, reason = %end, "peer stream ended");
            if let Ok(mut served) = shared.served.lock() {
                served.remove(&id);
            }
            if let Ok(mut sessions) = shared.sessions.lock()
                && sessions
                    .get(&session_key)
                    .is_some_and(|(live, _)| *live == id)
            {
                sessions.remove(&session_key);
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
    /// The largest message the client decodes (its Hello says).
    max_message: usize,
}

/// What a served client claimed in its Hello, re-checked when the
/// admission rules change.
struct Claims {
    /// Its verified certificate (identity and cluster binding).
    peer: VerifiedPeer,
    cluster: String,
    segment: Option<String>,
}

impl Claims {
    fn admit(&self, admission: &Admission) -> Result<(), Denial> {
        admission.admit_identity(&self.peer)?;
        admission.admit_claims(&self.peer, &self.cluster, self.segment.as_deref())
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

    /// The label this client's metrics go under: its name when this
    /// cluster links to it, else `unknown` (B6: a client does not get to
    /// name label sets).
    fn labels(&self, admission: &Admission) -> PeerLabels {
        let linked = admission.links_to(&self.claims.peer, &self.peer);
        Metrics::peer(if linked { &self.peer } else { UNKNOWN_PEER })
    }

    /// Sends one delta, in chunks of about [`CHUNK_BYTES`] (B3), none over
    /// the client's limit: a resource that would not fit even alone is left
    /// out, logged and counted. Resources are copied into a chunk only when
    /// it is built, so a stream holds a few chunks, never a copy of the
    /// whole state. Err: the stream is gone, or the client stopped reading.
    async fn send_delta(
        &self,
        head: proto::Delta,
        diff: Diff,
        labels: &PeerLabels,
    ) -> Result<usize, String> {
        // Tag and length of one repeated element; the chunk's own fields.
        const FRAME: usize = 6;
        let header = head.encoded_len() + 2 * FRAME;
        let patience = self.shared.settings.heartbeat * 3;
        let mut chunk = head.clone();
        let mut size = header;
        let mut chunks = 0;
        let mut skipped = Vec::new();
        enum Item {
            Resource(Arc<proto::Resource>),
            Removed(String),
        }
        let items = diff
            .changed
            .into_iter()
            .map(Item::Resource)
            .chain(diff.removed.into_iter().map(Item::Removed));
        for item in items {
            let len = match &item {
                Item::Resource(r) => r.encoded_len() + FRAME,
                Item::Removed(n) => n.len() + FRAME,
            };
            if header + len > self.max_message {
                if let Item::Resource(r) = &item {
                    skipped.push(r.name.clone());
                }
                continue;
            }
            let filled = !chunk.resources.is_empty() || !chunk.removed.is_empty();
            if filled && (size + len > CHUNK_BYTES || size + len > self.max_message) {
                let next = proto::Delta {
                    full_state: false,
                    resources: Vec::new(),
                    removed: Vec::new(),
                    ..head.clone()
                };
                let mut full = std::mem::replace(&mut chunk, next);
                full.more = true;
                self.send_chunk(full, patience).await?;
                chunks += 1;
                size = header;
            }
            match item {
                Item::Resource(r) => chunk.resources.push((*r).clone()),
                Item::Removed(n) => chunk.removed.push(n),
            }
            size += len;
        }
        chunk.more = false;
        self.send_chunk(chunk, patience).await?;
        if !skipped.is_empty() {
            warn!(
                peer = %self.peer,
                max_message = self.max_message,
                resources = ?skipped,
                "resources larger than the peer accepts are not sent"
            );
            for _ in &skipped {
                self.shared
                    .metrics
                    .reject(&labels.peer, "too_large_for_peer");
            }
        }
        Ok(chunks + 1)
    }

    async fn send_chunk(&self, chunk: proto::Delta, patience: Duration) -> Result<(), String> {
        let msg = Ok(PeerResponse {
            kind: Some(peer_response::Kind::Delta(chunk)),
        });
        match tokio::time::timeout(patience, self.out.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("peer stream closed".into()),
            Err(_) => Err(format!("the peer read nothing for {patience:?}")),
        }
    }

    async fn run<S>(self, mut inbound: S, mut replaced: oneshot::Receiver<()>) -> String
    where
        S: Stream<Item = Result<PeerRequest, Status>> + Unpin + Send + 'static,
    {
        let heartbeat = self.shared.settings.heartbeat;
        let mut exports = self.shared.exports.clone();
        let mut admission = self.shared.admission.subscribe();
        let mut labels = self.labels(&admission.borrow_and_update());
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
                    // O(1): the sets are persistent maps, shared with the publisher.
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
                        let (resources, removed) = (diff.changed.len(), diff.removed.len());
                        let head = proto::Delta {
                            nonce: n.clone(),
                            version: current.version,
                            full_state: full,
                            ..Default::default()
                        };
                        let chunks = match self.send_delta(head, diff, &labels).await {
                            Ok(c) => c,
                            Err(why) => return why,
                        };
                        debug!(peer = %self.peer, version = current.version, full, resources, removed, chunks, "sent delta");
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
                _ = &mut replaced => {
                    let _ = self.out.send(Err(Status::aborted(format!(
                        "a newer peering stream from {} replaced this one", self.conn.spiffe_id
                    )))).await;
                    return "replaced by a newer stream from the same identity".into();
                }
                changed = admission.changed() => {
                    if changed.is_ok() {
                        let current = admission.borrow_and_update().clone();
                        if let Err(denial) = self.claims.admit(&current) {
                            let status = self.shared.deny(&self.conn, &denial);
                            let _ = self.out.send(Err(status)).await;
                            return format!("refused: {denial}");
                        }
                        labels = self.labels(&current);
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
                                let refused = usize::try_from(a.refused_total).unwrap_or(usize::MAX).max(a.refused.len());
                                if refused > 0 {
                                    info!(peer = %self.peer, version, refused, "the peer refused some of our resources (the rest applies)");
                                }
                                let shown: Vec<String> = a
                                    .refused
                                    .iter()
                                    .take(REFUSALS_SHOWN)
                                    .map(|r| {
                                        crate::limits::shown(
                                            &format!("{}: {}: {}", r.resource, r.reason, r.message),
                                            crate::limits::MAX_SHOWN,
                                        )
                                    })
                                    .collect();
                                self.update(|p| {
                                    p.acked_version = Some(version);
                                    p.last_ack = Some(SystemTime::now());
                                    p.resources = resources;
                                    p.last_error = None;
                                    p.refused = refused;
                                    p.refused_resources = shown;
                                });
                            }
                        }
                        Some(Ok(PeerRequest { kind: Some(peer_request::Kind::Nack(n)) })) => {
                            if let Some(f) = inflight.take_if(|f| f.nonce == n.nonce) {
                                let error = crate::limits::shown(&n.error, 4096);
                                warn!(peer = %self.peer, version = f.version, error = %error, "peer rejected a delta; it keeps its last good state");
                                self.shared.metrics.reject(&labels.peer, "nack_received");
                                nacked_version = Some(f.version);
                                self.update(|p| p.last_error = Some(error));
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
