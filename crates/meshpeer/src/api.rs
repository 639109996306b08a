//! The controller's local HTTP API.
//!
//! | path | what |
//! |---|---|
//! | `GET /healthz` | `ok` once the controller runs |
//! | `GET /v1/status` | [`Status`] as JSON: peers, served peers, counts, diagnostics; plus `dataPlane`: the processes following the catalog ([`StatusDoc`]) |
//! | `GET /v1/catalog` | `{"version": N, "catalog": GlobalCatalog, "callers": [...]}` (the data plane's feed) |
//! | `GET /v1/catalog/watch` | the same, one JSON document per line (NDJSON), first the current one, then one per change; for the data plane, which says who it is in the query (`?role=proxy&name=...&health=ADDR`, see [`meshpeer_dataplane::feed::Follower`]) |
//! | `GET /v1/traffic` | [`TrafficDoc`]: the flows this cluster's proxies and gateways reported (issue 16): per reporter role, source cluster, destination cluster and global service, connections, failures, bytes both ways, their rates and the error rate |
//! | `POST /v1/traffic` | a [`meshpeer_dataplane::report::TrafficReport`] from a proxy or gateway on loopback (the cluster listener takes them over mutual TLS from this cluster's proxy and gateway identities only; others get `403`) |
//! | `GET /metrics` | Prometheus text format |
//!
//! The catalog feed carries endpoints and the gateway's list of authorised
//! callers, so it is served (SPEC P8) on this plain API only to callers on
//! loopback, and otherwise over mutual TLS on the controller's cluster
//! listener ([`cluster_feed_router`]) to the identities [`FeedAccess`]
//! allows; others get `403` with the reason, logged and counted
//! (`meshpeer_feed_refusals_total`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, FromRef, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshpeer_ca::ConnInfo;
use meshpeer_listener::{Gate, Limits};
use meshpeer_peering::PeeringService;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::controller::traffic::{TrafficBook, TrafficDoc};
use crate::controller::view::{RefusedView, ServedView, Status, View};
pub use crate::feed_access::{
    DEFAULT_FEED_IDENTITIES, FeedAccess, FeedCaller, FeedGuard, FeedRefusal,
};
use meshpeer_dataplane::feed::{CatalogFeed, with_causes};
use meshpeer_dataplane::report::{MAX_REPORT_BYTES, TrafficReport};

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) view: watch::Receiver<Arc<View>>,
    pub(crate) feed: watch::Receiver<Arc<CatalogFeed>>,
    pub(crate) service: PeeringService,
    pub(crate) registry: Arc<Registry>,
    /// Who may follow the catalog, and the refusals counted.
    pub(crate) feed_guard: Arc<FeedGuard>,
    /// What the data plane reports (issue 16).
    pub(crate) traffic: Arc<TrafficBook>,
}

/// `GET /v1/status` as served: the controller's [`Status`] and the data
/// plane following its catalog.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDoc {
    #[serde(flatten)]
    pub status: Status,
    /// Processes following `/v1/catalog/watch` now, in the order they came.
    #[serde(default)]
    pub data_plane: Vec<FollowerView>,
}

/// A process following the catalog stream (a proxy or a gateway).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowerView {
    /// `proxy`, `gateway`, or empty when the follower did not say.
    pub role: String,
    /// Who it says it is (empty when it did not say).
    pub name: String,
    /// Its address as seen from the controller.
    pub remote: String,
    pub since: Option<SystemTime>,
    /// The catalog version last sent to it.
    pub version: u64,
    /// Where it answers `GET /healthz`, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// The followers of the catalog stream, by connection (and the data plane
/// running in the controller's own process, registered by
/// [`crate::controller::Controller::register_follower`]).
#[derive(Clone, Default)]
pub struct Followers {
    next: Arc<AtomicU64>,
    by_id: Arc<Mutex<BTreeMap<u64, FollowerView>>>,
}

impl Followers {
    /// Lists `view` until the returned guard is dropped.
    pub fn add(&self, view: FollowerView) -> FollowerGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.by_id.lock() {
            m.insert(id, view);
        }
        FollowerGuard {
            followers: self.clone(),
            id,
        }
    }

    fn list(&self) -> Vec<FollowerView> {
        self.by_id
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// One follower's entry, removed when its stream ends (the response body is
/// dropped).
pub struct FollowerGuard {
    followers: Followers,
    id: u64,
}

impl FollowerGuard {
    /// Records the catalog version it has now.
    pub fn sent(&self, version: u64) {
        if let Ok(mut m) = self.followers.by_id.lock()
            && let Some(f) = m.get_mut(&self.id)
        {
            f.version = version;
        }
    }
}

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.followers.by_id.lock() {
            m.remove(&self.id);
        }
    }
}

/// What the handlers share: the controller's state and the followers.
#[derive(Clone)]
struct Served {
    api: ApiState,
    followers: Followers,
}

impl FromRef<Served> for ApiState {
    fn from_ref(s: &Served) -> ApiState {
        s.api.clone()
    }
}

/// Serves the API until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    state: ApiState,
    followers: Followers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", routing::get(|| async { "ok\n" }))
        .route("/v1/status", routing::get(status))
        .route("/v1/catalog", routing::get(catalog))
        .route("/v1/catalog/watch", routing::get(watch_catalog))
        .route(
            "/v1/traffic",
            routing::get(traffic)
                .post(report_traffic)
                .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route("/metrics", routing::get(metrics))
        .with_state(Served {
            api: state.clone(),
            followers,
        });
    let gate = Gate::new(
        "api",
        API_LIMITS,
        Arc::clone(&state.feed_guard.api_listener),
    );
    meshpeer_listener::http::serve(
        listener,
        gate,
        move |remote| with_remote(app.clone(), remote),
        shutdown,
    )
    .await;
    Ok(())
}

/// The plain API's bounds (SPEC B5): it listens on loopback for local
/// tools (status, check, the feed for tools on this machine).
const API_LIMITS: Limits = Limits {
    max_pending: 256,
    handshake_timeout: Some(Duration::from_secs(10)),
    max_connections: 1024,
    idle_timeout: Duration::from_secs(120),
};

/// `router` for a connection from `remote` (its requests carry
/// [`ConnectInfo`], as `into_make_service_with_connect_info` would give).
pub(crate) fn with_remote(
    router: Router,
    remote: SocketAddr,
) -> impl tower::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        tower::ServiceExt::oneshot(router.clone(), req)
    })
}

/// The view with the peering server's live view of who it serves.
pub(crate) fn with_live_status(view: &View, service: &PeeringService) -> View {
    let mut v = view.clone();
    v.status.served = ServedView::of(service);
    v.status.refused = RefusedView::of(service);
    v
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status(State(s): State<Served>) -> Response {
    let v = s.api.view.borrow().clone();
    json(&StatusDoc {
        status: with_live_status(&v, &s.api.service).status,
        data_plane: s.followers.list(),
    })
}

async fn catalog(
    State(s): State<ApiState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(refused) = s.feed_guard.refusal(&FeedCaller::Api(remote)) {
        return refused;
    }
    json(&*s.feed.borrow().clone())
}

/// What a follower says of itself (see [`meshpeer_dataplane::feed::Follower`]).
#[derive(Debug, Default, Deserialize)]
struct FollowQuery {
    #[serde(default)]
    role: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    health: Option<String>,
}

async fn watch_catalog(
    State(s): State<Served>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(who): Query<FollowQuery>,
) -> Response {
    if let Some(refused) = s.api.feed_guard.refusal(&FeedCaller::Api(remote)) {
        return refused;
    }
    stream_catalog(&s, remote.to_string(), who)
}

async fn cluster_catalog(
    State(s): State<ApiState>,
    Extension(conn): Extension<ConnInfo>,
) -> Response {
    if let Some(refused) = s.feed_guard.refusal(&FeedCaller::Cluster(conn)) {
        return refused;
    }
    json(&*s.feed.borrow().clone())
}

async fn cluster_watch_catalog(
    State(s): State<Served>,
    Extension(conn): Extension<ConnInfo>,
    Query(who): Query<FollowQuery>,
) -> Response {
    let remote = conn.remote;
    if let Some(refused) = s.api.feed_guard.refusal(&FeedCaller::Cluster(conn)) {
        return refused;
    }
    stream_catalog(&s, remote.to_string(), who)
}

/// The catalog stream, with the follower listed while it lasts.
fn stream_catalog(s: &Served, remote: String, who: FollowQuery) -> Response {
    let guard = s.followers.add(FollowerView {
        role: who.role,
        name: who.name,
        remote,
        since: Some(SystemTime::now()),
        version: 0,
        health: who.health.filter(|h| !h.is_empty()),
    });
    // The whole catalog first, then what changed since the line before
    // (meshpeer_dataplane::feed_line).
    let mut sent: Option<Arc<CatalogFeed>> = None;
    let stream = WatchStream::new(s.api.feed.clone())
        .filter(|f| std::future::ready(f.version > 0))
        .map(move |f| {
            guard.sent(f.version);
            let line = meshpeer_dataplane::feed_line::encode(sent.as_deref(), &f);
            sent = Some(f);
            Ok::<_, Infallible>(line)
        });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The catalog feed as the cluster listener serves it: the same documents
/// as the plain API's, to the identities [`FeedAccess`] allows.
pub(crate) fn cluster_feed_router(state: ApiState, followers: Followers) -> Router {
    Router::new()
        .route("/v1/catalog", routing::get(cluster_catalog))
        .route("/v1/catalog/watch", routing::get(cluster_watch_catalog))
        .route(
            "/v1/traffic",
            routing::post(cluster_report_traffic).layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .with_state(Served {
            api: state,
            followers,
        })
}

async fn traffic(State(s): State<ApiState>) -> Response {
    json::<TrafficDoc>(&s.traffic.doc())
}

async fn report_traffic(
    State(s): State<ApiState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    take_report(&s, &FeedCaller::Api(remote), "loopback", &body)
}

async fn cluster_report_traffic(
    State(s): State<ApiState>,
    Extension(conn): Extension<ConnInfo>,
    body: Bytes,
) -> Response {
    let identity = conn
        .client_id
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    take_report(&s, &FeedCaller::Cluster(conn), &identity, &body)
}

/// A traffic report from `caller`, who proved to be `identity`: only the
/// callers that may follow the catalog may report (SPEC P8: this
/// cluster's proxy and gateway identities, or loopback).
fn take_report(s: &ApiState, caller: &FeedCaller, identity: &str, body: &[u8]) -> Response {
    if let Err(refusal) = s.feed_guard.check(caller) {
        let why = match &refusal {
            FeedRefusal::NotLoopback { remote } => format!(
                "this API takes traffic reports from loopback callers only, and {remote} is not one; proxies and gateways report over mutual TLS on the controller's cluster listener"
            ),
            FeedRefusal::NoClientCertificate => "a traffic report needs a client certificate (the proxy's or the gateway's identity); none was presented".to_owned(),
            FeedRefusal::OtherTrustDomain { id, trust_domain } => format!(
                "the client certificate {id} is not of this cluster's trust domain {trust_domain}"
            ),
            FeedRefusal::NotAllowed { id, allowed } => {
                format!("{id} may not report traffic; allowed: {allowed}")
            }
        };
        s.traffic.count_result(refusal.reason());
        tracing::warn!(reason = refusal.reason(), "traffic report refused: {why}");
        return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    let report: TrafficReport = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            s.traffic.count_result("unreadable");
            return (
                StatusCode::BAD_REQUEST,
                format!("not a traffic report: {e}\n"),
            )
                .into_response();
        }
    };
    match s.traffic.ingest(identity, report) {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(identity, reason = e.reason(), "traffic report refused: {e}");
            let status = match e {
                crate::controller::traffic::ReportRefusal::TooManyReporters => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                _ => StatusCode::BAD_REQUEST,
            };
            (status, format!("{e}\n")).into_response()
        }
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Why [`get`] brought no body back.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("{addr:?} is not HOST:PORT")]
    BadAddress { addr: String },
    /// The connection or the exchange failed; the error and its causes.
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {}s", .0.as_secs_f32())]
    Timeout(Duration),
    #[error("answered {status}: {}", .body.trim())]
    Status { status: StatusCode, body: String },
}

/// GETs `http://<addr><path>` (a controller's API, a health endpoint): the
/// body of a 2xx answer. The whole exchange is bounded by `within`.
pub async fn get(addr: &str, path: &str, within: Duration) -> Result<Bytes, GetError> {
    let uri: axum::http::Uri =
        format!("http://{addr}{path}")
            .parse()
            .map_err(|_| GetError::BadAddress {
                addr: addr.to_owned(),
            })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let exchange = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|e| GetError::Unreachable(with_causes(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| GetError::Unreachable(with_causes(&e)))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(GetError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| GetError::Timeout(within))?
}

/// How long ago `t` was, as kubectl prints ages (`16s`, `5m12s`).
pub fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    meshpeer_model::render::human_age(secs)
}
