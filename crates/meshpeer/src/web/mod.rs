//! The "Global services" page (SPEC O6), and the JSON API behind it.
//!
//! Served by `meshpeer controller --web-listen ADDR` (its own cluster) and by
//! `meshpeer demo` (every cluster of the scenario, on one page). The page is
//! plain HTML, CSS and JavaScript compiled into the binary ([`assets`]); it
//! loads nothing from another origin.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /assets/{file}` | `app.js`, `style.css`, `API.md` (this API), `index.html` |
//! | `GET /api/v1/clusters` | [`ClusterList`]: the clusters served, with their view version, network, segment and counts (global services, peers, problems: diagnostics that are errors or warnings) |
//! | `GET /api/v1/services?cluster=NAME` | [`ServiceList`]: one row per global service the cluster sees: hostname, scope, segment, VIP, ports, traffic distribution, takeover, contributing clusters, and per cluster its endpoints (name, address, ready, locality) |
//! | `GET /api/v1/peers?cluster=NAME` | [`PeerList`]: the peers the cluster links to: state, addresses, connected since, last sync, and the SPEC C5 conditions the controller writes on the remote-peer Gateway |
//! | `GET /api/v1/diagnostics?cluster=NAME` | [`DiagnosticList`]: why the cluster's input is or is not exported and imported: one row per diagnostic, errors first: SPEC rule, severity, object (`service httpbin/in-ambient`, and its kind, namespace, name), field, message, cluster |
//! | `GET /api/v1/traffic?cluster=NAME` | [`TrafficDoc`]: the flows the cluster's proxies and gateways reported to its controller (as its `GET /v1/traffic`): per reporter, source cluster, destination cluster and global service, connections, failures, bytes, rates, error rate; no flow when the page has no access to them |
//! | `GET /api/v1/events` | Server-Sent Events: `data: {"cluster":"NAME","version":N}`, first one per cluster (its current version), then one whenever a cluster's view changes (bursts coalesce: versions may be skipped, the last is always sent) |
//!
//! `cluster` may be left out: the first cluster served is used. A cluster
//! not served here is `404` with `{"error": "..."}` naming the ones that are.
//! Versions start at 1; a cluster still at 0 has not read its source yet.
//! Times are RFC 3339 in UTC. The same text, with examples, is
//! `crates/meshpeer/assets/API.md` (served at `/assets/API.md`).

pub mod assets;
pub mod rows;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream, StreamExt};
use meshpeer_listener::{Gate, Limits};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;
use tracing::info;

pub use self::rows::{ClusterList, DiagnosticList, PeerList, ServiceList};
use crate::controller::View;
use crate::controller::traffic::{TrafficBook, TrafficDoc};

/// Where `meshpeer demo` serves the page.
pub const DEMO_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15_000);

/// One cluster a page shows.
#[derive(Clone)]
pub struct PageCluster {
    pub name: String,
    /// [`crate::controller::Controller::view`].
    pub view: watch::Receiver<Arc<View>>,
    /// [`crate::controller::Controller::traffic`]; `None`: no Traffic
    /// view (the API answers no flow).
    pub traffic: Option<Arc<TrafficBook>>,
}

impl PageCluster {
    /// The cluster of a running controller, its traffic included.
    pub fn of(name: &str, controller: &crate::controller::Controller) -> Self {
        PageCluster {
            name: name.to_owned(),
            view: controller.view(),
            traffic: Some(controller.traffic()),
        }
    }
}

/// The clusters a page shows.
type Views = Arc<Vec<PageCluster>>;

/// The page and its API for `views` (name, [`crate::controller::Controller::view`]),
/// shown in the order given, without traffic.
pub fn router(views: Vec<(String, watch::Receiver<Arc<View>>)>) -> Router {
    router_for(
        views
            .into_iter()
            .map(|(name, view)| PageCluster {
                name,
                view,
                traffic: None,
            })
            .collect(),
    )
}

/// The page and its API for `clusters`, shown in the order given.
pub fn router_for(shown: Vec<PageCluster>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/services", get(services))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/diagnostics", get(diagnostics))
        .route("/api/v1/traffic", get(traffic))
        .route("/api/v1/events", get(events))
        .fallback(not_found)
        .with_state(Arc::new(shown))
}

/// The page for every cluster of a running demo.
pub fn demo_router(demo: &crate::demo::run::Demo) -> Router {
    router_for(
        demo.clusters
            .iter()
            .map(|c| PageCluster::of(&c.name, &c.controller))
            .collect(),
    )
}

/// Listens on `listen` and serves `router` until the returned task is
/// aborted (or the process ends); returns the address bound (for port 0).
pub async fn serve(
    listen: SocketAddr,
    router: Router,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for the web page on {listen}"))?;
    let addr = listener.local_addr()?;
    info!(address = %addr, "global services page at http://{addr}/");
    let gate = Gate::new("web", WEB_LIMITS, Arc::default());
    let task = tokio::spawn(async move {
        meshpeer_listener::http::serve(
            listener,
            gate,
            move |remote| crate::api::with_remote(router.clone(), remote),
            std::future::pending(),
        )
        .await;
    });
    Ok((addr, task))
}

/// The page's bounds (SPEC B5): browsers keep a few connections each; the
/// event stream (SSE) is a response in flight, never idle.
const WEB_LIMITS: Limits = Limits {
    max_pending: 512,
    handshake_timeout: Some(Duration::from_secs(10)),
    max_connections: 2048,
    idle_timeout: Duration::from_secs(120),
};

/// Why a request names nothing this page serves.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("no cluster {name:?} on this page (clusters: {known})")]
    UnknownCluster { name: String, known: String },
    #[error("this page serves no cluster")]
    NoCluster,
    #[error("nothing at {0} (see /assets/API.md)")]
    NotFound(String),
}

/// The body of an error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDoc {
    pub error: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let mut r = json(&ErrorDoc {
            error: self.to_string(),
        });
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}

#[derive(Debug, Default, Deserialize)]
struct ClusterQuery {
    cluster: Option<String>,
}

/// The named cluster (the first cluster when none is named).
fn cluster_of<'a>(views: &'a Views, q: &ClusterQuery) -> Result<&'a PageCluster, WebError> {
    match q.cluster.as_deref().filter(|c| !c.is_empty()) {
        None => views.first().ok_or(WebError::NoCluster),
        Some(name) => {
            views
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| WebError::UnknownCluster {
                    name: name.to_owned(),
                    known: views
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        }
    }
}

/// The named cluster's latest view (the first cluster when none is named).
fn view_of(views: &Views, q: &ClusterQuery) -> Result<(String, Arc<View>), WebError> {
    let found = cluster_of(views, q)?;
    Ok((found.name.clone(), found.view.borrow().clone()))
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn file(a: &assets::Asset) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        a.body,
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(assets::CONTENT_SECURITY_POLICY),
    );
    r
}

async fn index() -> Response {
    file(&assets::INDEX)
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::asset(&name) {
        Some(a) => file(a),
        None => WebError::NotFound(format!("/assets/{name}")).into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    WebError::NotFound(uri.path().to_owned()).into_response()
}

async fn clusters(State(views): State<Views>) -> Response {
    json(&ClusterList {
        clusters: views
            .iter()
            .map(|c| rows::cluster_row(&c.name, &c.view.borrow()))
            .collect(),
    })
}

/// `rows(name, view)` of the cluster the query names, as JSON.
fn of_cluster<T: Serialize>(
    views: &Views,
    q: &ClusterQuery,
    rows: impl FnOnce(&str, &View) -> T,
) -> Response {
    match view_of(views, q) {
        Ok((name, v)) => json(&rows(&name, &v)),
        Err(e) => e.into_response(),
    }
}

async fn services(State(views): State<Views>, Query(q): Query<ClusterQuery>) -> Response {
    of_cluster(&views, &q, rows::services)
}

async fn peers(State(views): State<Views>, Query(q): Query<ClusterQuery>) -> Response {
    of_cluster(&views, &q, rows::peers)
}

async fn diagnostics(State(views): State<Views>, Query(q): Query<ClusterQuery>) -> Response {
    of_cluster(&views, &q, rows::diagnostics)
}

async fn traffic(State(views): State<Views>, Query(q): Query<ClusterQuery>) -> Response {
    match cluster_of(&views, &q) {
        Ok(c) => json(&match &c.traffic {
            Some(book) => book.doc(),
            None => TrafficDoc {
                cluster: c.name.clone(),
                ..TrafficDoc::default()
            },
        }),
        Err(e) => e.into_response(),
    }
}

/// The data of an event of `/api/v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionEvent {
    pub cluster: String,
    pub version: u64,
}

/// One event per view change of every cluster, the current versions first.
fn version_events(views: &Views) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
    let per_cluster = views.iter().map(|c| {
        let name = c.name.clone();
        WatchStream::new(c.view.clone()).filter_map(move |v| {
            let event = (v.version > 0)
                .then(|| {
                    serde_json::to_string(&VersionEvent {
                        cluster: name.clone(),
                        version: v.version,
                    })
                    .ok()
                })
                .flatten()
                .map(|data| Ok(Event::default().data(data)));
            std::future::ready(event)
        })
    });
    // Tell the browser to come back soon when the connection drops.
    let retry = Event::default().retry(Duration::from_secs(2));
    stream::once(std::future::ready(Ok(retry))).chain(stream::select_all(per_cluster))
}

async fn events(State(views): State<Views>) -> Response {
    let mut r = Sse::new(version_events(&views))
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
