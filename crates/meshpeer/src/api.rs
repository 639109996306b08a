//! The controller's local HTTP API.
//!
//! | path | what |
//! |---|---|
//! | `GET /healthz` | `ok` once the controller runs |
//! | `GET /v1/status` | [`Status`] as JSON: peers, served peers, counts, diagnostics |
//! | `GET /v1/catalog` | `{"version": N, "catalog": GlobalCatalog, "callers": [...]}` (the data plane's feed) |
//! | `GET /v1/catalog/watch` | the same, one JSON document per line (NDJSON), first the current one, then one per change; for the data plane |
//! | `GET /metrics` | Prometheus text format |

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use meshpeer_peering::PeeringService;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::controller::view::{RefusedView, ServedView, View};
use meshpeer_dataplane::feed::CatalogFeed;

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) view: watch::Receiver<Arc<View>>,
    pub(crate) feed: watch::Receiver<Arc<CatalogFeed>>,
    pub(crate) service: PeeringService,
    pub(crate) registry: Arc<Registry>,
}

/// Serves the API until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/v1/catalog", get(catalog))
        .route("/v1/catalog/watch", get(watch_catalog))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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

async fn status(State(s): State<ApiState>) -> Response {
    let v = s.view.borrow().clone();
    json(&with_live_status(&v, &s.service).status)
}

async fn catalog(State(s): State<ApiState>) -> Response {
    let f = s.feed.borrow().clone();
    json(&*f)
}

async fn watch_catalog(State(s): State<ApiState>) -> Response {
    let stream = WatchStream::new(s.feed.clone())
        .filter(|f| std::future::ready(f.version > 0))
        .map(|f| {
            let mut line = serde_json::to_vec(&*f).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(line)
        });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
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

/// How long ago `t` was, as kubectl prints ages (`16s`, `5m12s`).
pub fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    meshpeer_model::render::human_age(secs)
}
