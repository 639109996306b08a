//! L7 routing on a captured address (SPEC section 11): a connection to a
//! frontend that has a route table is served as HTTP/1.1 or HTTP/2 (prior
//! knowledge), each request matched against the table's rules (L3), its
//! filters applied (L4), sent to a backend picked by weight and, for a
//! global hostname, to an endpoint picked by the T-rules with failover
//! (L2), under the rule's timeouts and retries (L5); one access-log line
//! and metrics per request (L8). Connections to backends are pooled per
//! backend name.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HOST, HeaderName, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshpeer_model::routes::{
    BackendTarget, HeaderEdit, PathEdit, PathMatch, Redirect, RouteBackend, RouteFilter, RouteRule,
    RouteTable,
};
use prometheus_client::metrics::counter::Counter;

pub(super) use meshpeer_model::routes::CompiledTable as Compiled;
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::dial::{DialError, connect_dest};
use super::{Ctx, Stream, connect_global};
use crate::hbone::TunnelMeta;
use crate::pick::Dest;
use crate::state::DataplaneState;

type ProxyBody = BoxBody<Bytes, BoxError>;
type Backends = Client<Connector, ProxyBody>;

/// A request as the route table matches it.
struct Matched<'a, B>(&'a Request<B>);

impl<B> meshpeer_model::routes::Request for Matched<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }

    fn path(&self) -> &str {
        self.0.uri().path()
    }

    fn query(&self) -> &str {
        self.0.uri().query().unwrap_or_default()
    }

    fn any_header(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(pred)
    }
}

/// The path after a `ReplacePrefixMatch` of `prefix` by `with`.
fn replace_prefix(prefix: &str, with: &str, path: &str) -> String {
    let rest = if prefix == "/" {
        path
    } else {
        path.strip_prefix(prefix).unwrap_or(path)
    };
    let with = with.trim_end_matches('/');
    let joined = match (with.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_owned(),
        (true, false) => rest.to_owned(),
        (false, _) => format!("{with}{rest}"),
    };
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

fn edited_path(edit: &PathEdit, rule: &RouteRule, path: &str) -> String {
    match edit {
        PathEdit::ReplaceFullPath(p) => p.clone(),
        PathEdit::ReplacePrefixMatch(with) => match &rule.matches.path {
            PathMatch::PathPrefix(prefix) => replace_prefix(prefix, with, path),
            _ => path.to_owned(),
        },
    }
}

fn apply_headers(edit: &HeaderEdit, headers: &mut http::HeaderMap) {
    for (name, value) in &edit.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &edit.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    for name in &edit.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
}

/// Connection-level headers, never forwarded (RFC 9110 7.6.1; HTTP/2
/// refuses them).
pub(super) const HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::TE,
    http::header::TRAILER,
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Headers the Connection header names are connection-level too.
    if headers.contains_key(http::header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// What the access log and the metrics say of the upstream connection a
/// response came over (set by the connector, read from the response).
#[derive(Clone, Debug)]
pub(super) struct Upstream {
    pub(super) cluster: String,
    pub(super) dest: String,
}

/// Clients to backends, one per protocol, pooling per backend name.
pub(super) struct Clients {
    h1: Backends,
    h2: Backends,
    /// Idle HTTP/1.1 connections of the proxy's own exchange (`h1`).
    pub(super) h1_direct: Arc<super::h1::Pool>,
    /// The catalog as the requests of this loop see it ([`Clients::state`]).
    view: Mutex<Option<View>>,
}

/// A loop's own handle on the latest catalog: its receiver, and the
/// current state in an `Arc` of the loop's. A request takes a reference to
/// it, so requests on different loops write to no common reference count
/// or lock (each such write moves a cache line between cores: 15-115 ns on
/// the machines measured, BENCHMARKS.md).
struct View {
    rx: tokio::sync::watch::Receiver<Arc<DataplaneState>>,
    current: Arc<LoopState>,
}

/// The catalog, in an `Arc` of one loop's ([`View`]).
pub(super) struct LoopState(Arc<DataplaneState>);

impl std::ops::Deref for LoopState {
    type Target = DataplaneState;

    fn deref(&self) -> &DataplaneState {
        &self.0
    }
}

impl Clients {
    pub(super) fn new(ctx: Weak<Ctx>) -> Clients {
        let connector = Connector { ctx };
        let build = |h2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(64)
                .http2_only(h2)
                .build(connector.clone())
        };
        Clients {
            h1: build(false),
            h2: build(true),
            h1_direct: super::h1::Pool::new(),
            view: Mutex::new(None),
        }
    }

    /// The latest catalog, for one request (one view for the whole of it).
    pub(super) fn state(&self, ctx: &Ctx) -> Arc<LoopState> {
        let mut view = self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let view = view.get_or_insert_with(|| {
            let mut rx = ctx.state.clone();
            let current = Arc::new(LoopState(rx.borrow_and_update().clone()));
            View { rx, current }
        });
        // Reading the channel's version writes nothing shared.
        if view.rx.has_changed().unwrap_or(false) {
            view.current = Arc::new(LoopState(view.rx.borrow_and_update().clone()));
        }
        view.current.clone()
    }
}

/// Opens a connection to a backend named by a request's URI: a global
/// hostname (T-rules, failover, HBONE across networks) or an address.
#[derive(Clone)]
struct Connector {
    ctx: Weak<Ctx>,
}

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body its client stopped sending (B5).
#[derive(Debug)]
pub(super) struct BodyTimeout(pub(super) Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client sent no byte of the request body for {:?}",
            self.0
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// `e` and the errors under it, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |s| s.source())
}

/// The [`BodyTimeout`] that is `e` or lies under it.
fn body_timed_out<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
    causes(e).find_map(|s| s.downcast_ref::<BodyTimeout>())
}

/// A client's request body that fails with [`BodyTimeout`] when no frame
/// comes for `limit` (B5): a client that begins a body and stops holds a
/// request, and a backend connection, no longer than that.
struct Paced {
    inner: Incoming,
    limit: Duration,
    /// Armed while the body waits for its client.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl Paced {
    fn new(inner: Incoming, limit: Duration) -> Paced {
        Paced {
            inner,
            limit,
            timer: None,
            waiting: false,
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                // A new wait starts the clock again.
                if !this.waiting {
                    this.waiting = true;
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(this.limit).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let ctx = ctx.upgrade().ok_or("the proxy stopped")?;
            let host = uri.host().ok_or("no backend in the URI")?;
            let port = uri.port_u16().ok_or("no backend port in the URI")?;
            let (io, upstream) = dial(&ctx, host, port).await?;
            Ok(Io {
                io: TokioIo::new(io),
                upstream,
            })
        })
    }
}

/// Opens a connection to a backend: a global hostname (T-rules, failover,
/// HBONE across networks) or an address (a ClusterIP).
pub(super) async fn dial(
    ctx: &Arc<Ctx>,
    host: &str,
    port: u16,
) -> Result<(Box<dyn Stream>, Upstream), BoxError> {
    let state = ctx.state.borrow().clone();
    if let Ok(ip) = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        // A ClusterIP: dialled as any direct endpoint is, under the
        // endpoint policy (P5) and the connect timeout.
        let dest = Dest::Direct {
            addr: SocketAddr::new(ip, port),
            cluster: state.feed.catalog.cluster.name.clone(),
            name: String::new(),
        };
        return match connect_dest(ctx, &state, &dest, &TunnelMeta::default()).await {
            Ok(s) => Ok((
                s,
                Upstream {
                    cluster: dest.cluster().to_owned(),
                    dest: SocketAddr::new(ip, port).to_string(),
                },
            )),
            Err(DialError::Refused(e) | DialError::Failed(e)) => Err(e.into()),
        };
    }
    match connect_global(ctx, &state, host, port, None).await {
        Ok((s, chosen)) => Ok((
            s,
            Upstream {
                cluster: chosen.cluster,
                dest: chosen.dest,
            },
        )),
        Err(e) => Err(e.why.into()),
    }
}

/// An upstream connection.
struct Io {
    io: TokioIo<Box<dyn Stream>>,
    upstream: Upstream,
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.upstream.clone())
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Compiled tables, kept while the catalog holds the same table.
#[derive(Default)]
pub(super) struct TableCache(Mutex<std::collections::HashMap<(String, u16), Arc<Compiled>>>);

impl TableCache {
    pub(super) fn get(&self, table: &Arc<RouteTable>) -> Arc<Compiled> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (table.host.clone(), table.port);
        if let Some(c) = map.get(&key)
            && Arc::ptr_eq(c.table(), table)
        {
            return Arc::clone(c);
        }
        // Forget tables of frontends that have gone, now and then.
        if map.len() > 1024 {
            map.clear();
        }
        let c = Arc::new(Compiled::new(Arc::clone(table)));
        map.insert(key, Arc::clone(&c));
        c
    }
}

/// The frontend a connection arrived at.
pub(super) struct Frontend {
    pub(super) host: String,
    pub(super) port: u16,
    /// The global service, for metrics (manual entries: `None`).
    pub(super) service: Option<String>,
    pub(super) table: Arc<Compiled>,
}

/// One client connection at L7.
pub(super) struct Conn {
    pub(super) frontend: Frontend,
    peer: SocketAddr,
    /// The address the client connected to.
    local: SocketAddr,
    /// A request has come (its head was read).
    pub(super) served: AtomicBool,
    /// For the access log's JSON lines: the client's address, and the
    /// connection's span, written once.
    logged: std::sync::OnceLock<(String, String)>,
    /// The counters its last request counted into: a connection's requests
    /// mostly count into the same ones, found again without building their
    /// labels.
    counters: Mutex<Option<Counted>>,
}

/// What [`Conn::counters`] holds: the counters of one kind of answer, for
/// one catalog version (a newer version may prune their series).
struct Counted {
    version: u64,
    service: Option<String>,
    cluster: String,
    status_class: u16,
    requests: Counter,
    flow: Option<Counter>,
}

/// Serves one client connection at L7 until it closes: with the proxy's
/// own HTTP/1.1 exchange (`h1`) as long as its requests take it, then with
/// hyper.
pub(super) async fn serve(
    mut inbound: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<Ctx>,
    frontend: Frontend,
) {
    let conn = Arc::new(Conn {
        frontend,
        peer,
        local,
        counters: Mutex::new(None),
        served: AtomicBool::new(false),
        logged: std::sync::OnceLock::new(),
    });
    let first = if ctx.config.l7_direct_http1 {
        let mut buf = BytesMut::with_capacity(4096);
        match super::h1::serve(&mut inbound, &conn, &ctx, &mut buf).await {
            super::h1::Next::Done => return,
            super::h1::Next::Hyper(why) => {
                debug!(reason = why, "connection handed to hyper");
                ctx.metrics.http1_handoff(why);
                buf.freeze()
            }
        }
    } else {
        Bytes::new()
    };
    let inbound = crate::rewind::Rewind::new(first, inbound);
    let limit = ctx.config.header_timeout;
    let service = {
        let conn = Arc::clone(&conn);
        let ctx = Arc::clone(&ctx);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (ctx, conn) = (Arc::clone(&ctx), Arc::clone(&conn));
            async move { Ok::<_, Infallible>(request(req, &conn, &ctx).await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limit);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limit)
        .keep_alive_timeout(limit);
    let serving = builder.serve_connection(TokioIo::new(inbound), service);
    tokio::pin!(serving);
    // hyper times out heads once it knows the protocol; before that (the
    // bytes that tell HTTP/2's preface from HTTP/1.1) a client that sends
    // nothing, or a few bytes, is closed here.
    let result = match tokio::time::timeout(limit, serving.as_mut()).await {
        Ok(r) => r,
        Err(_) if !conn.served.load(Ordering::Relaxed) => {
            debug!(timeout = ?limit, "no request from the client in time");
            ctx.metrics.connection("inbound", "header_timeout");
            return;
        }
        Err(_) => serving.await,
    };
    if let Err(e) = result {
        debug!(error = %e, "client connection ended");
    }
}

fn local(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut res = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The largest request body read whole so that it can be sent again
/// (retries, L5) or copied (mirrors, L4); a longer one is streamed once.
pub(super) const MAX_REPLAYED_BODY: u64 = 64 * 1024;

/// What one request did, for the access log and metrics.
pub(super) struct Outcome {
    pub(super) status: StatusCode,
    /// The global service of a `Hostname` backend.
    pub(super) service: Option<String>,
    pub(super) backend: String,
    pub(super) cluster: String,
    pub(super) endpoint: String,
    pub(super) route: String,
    pub(super) attempts: u32,
    pub(super) why: Option<String>,
}

impl Outcome {
    /// A request no rule has matched yet.
    pub(super) fn unmatched() -> Outcome {
        Outcome {
            status: StatusCode::NOT_FOUND,
            service: None,
            backend: String::new(),
            cluster: String::new(),
            endpoint: String::new(),
            route: String::new(),
            attempts: 0,
            why: None,
        }
    }
}

/// Whether a header name is one that some servers read as
/// `Content-Length` or `Transfer-Encoding` (an underscore for a hyphen)
/// without being it. A backend that did would frame the request otherwise
/// than the proxy does, and take what follows it for its body (request
/// smuggling), so such a request is refused.
pub(super) fn ambiguous_framing(name: &[u8]) -> bool {
    [&b"content-length"[..], b"transfer-encoding"]
        .iter()
        .any(|f| {
            name.len() == f.len()
                && name.contains(&b'_')
                && name
                    .iter()
                    .zip(f.iter())
                    .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
        })
}

/// The text of the 400 that answers a request with such a header.
pub(super) fn ambiguous_text(name: &str) -> String {
    format!(
        "header {name} is refused: some servers read it as {}, and would frame the request otherwise",
        if name.len() == "content-length".len() {
            "Content-Length"
        } else {
            "Transfer-Encoding"
        }
    )
}

/// The text of the 404 that answers a request no rule of `frontend`
/// matches.
pub(super) fn unmatched_text(frontend: &Frontend) -> String {
    format!(
        "no route of {}:{} matches this request",
        frontend.host, frontend.port
    )
}

async fn request(req: Request<Incoming>, conn: &Conn, ctx: &Arc<Ctx>) -> Response<ProxyBody> {
    let started = Instant::now();
    conn.served.store(true, Ordering::Relaxed);
    let frontend = &conn.frontend;
    // For the access log: shared with the request, not copied.
    let method = req.method().clone();
    let host = req.headers().get(HOST).cloned();
    let uri = req.uri().clone();
    // One view of the catalog for the whole request.
    let state = ctx.l7_clients().state(ctx);
    let (res, outcome) = route(req, &uri, ctx, &state, frontend).await;
    let host = host.as_ref().and_then(|h| h.to_str().ok());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    record(
        conn,
        ctx,
        &state,
        started.elapsed(),
        method.as_str(),
        &Authority(host, uri.authority().map(|a| a.as_str()), frontend),
        path,
        &outcome,
    );
    res
}

/// Counts a request and writes its access-log line (L8).
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    conn: &Conn,
    ctx: &Ctx,
    state: &DataplaneState,
    elapsed: Duration,
    method: &str,
    authority: &Authority<'_>,
    path: &str,
    outcome: &Outcome,
) {
    let me = &state.feed.catalog.cluster.name;
    count(conn, ctx, state, outcome);
    ctx.metrics
        .http_request_seconds
        .observe(elapsed.as_secs_f64());
    if tracing::enabled!(tracing::Level::INFO) {
        let duration_ms = elapsed.as_millis() as u64;
        match crate::access_log::json_sink() {
            Some(sink) => {
                let (src, span) = conn.logged.get_or_init(|| {
                    (
                        conn.peer.to_string(),
                        crate::access_log::conn_span(conn.peer, conn.local),
                    )
                });
                let mut line = crate::access_log::JsonLine::info("request");
                line.str("src", src)
                    .str("src_cluster", me)
                    .str("method", method)
                    .display("authority", authority)
                    .str("path", path)
                    .u64("status", u64::from(outcome.status.as_u16()))
                    .str("route", &outcome.route)
                    .str("backend", &outcome.backend)
                    .str("endpoint", &outcome.endpoint)
                    .str("cluster", &outcome.cluster)
                    .u64("attempts", u64::from(outcome.attempts))
                    .u64("duration_ms", duration_ms);
                if let Some(why) = &outcome.why {
                    line.str("why", why);
                }
                line.finish_in(module_path!(), span, sink);
            }
            None => info!(
                src = %conn.peer,
                src_cluster = %me,
                method,
                authority = %authority,
                path,
                status = outcome.status.as_u16(),
                route = %outcome.route,
                backend = %outcome.backend,
                endpoint = %outcome.endpoint,
                cluster = %outcome.cluster,
                attempts = outcome.attempts,
                duration_ms,
                why = outcome.why.as_deref(),
                "request"
            ),
        }
    }
}

/// The authority a request named: its Host header, else its URI's, else
/// the frontend's.
pub(super) struct Authority<'a>(
    pub(super) Option<&'a str>,
    pub(super) Option<&'a str>,
    pub(super) &'a Frontend,
);

impl std::fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0, self.1) {
            (Some(h), _) | (None, Some(h)) => f.write_str(h),
            (None, None) => write!(f, "{}:{}", self.2.host, self.2.port),
        }
    }
}

/// Counts a request (L8), and for the Traffic view (issue 16) as one
/// exchange from this cluster to the cluster that answered, under the
/// global service it went to (a Hostname backend's, else the frontend's).
fn count(conn: &Conn, ctx: &Ctx, state: &DataplaneState, outcome: &Outcome) {
    let frontend = &conn.frontend;
    let service = outcome.service.as_deref().or(frontend.service.as_deref());
    let status_class = outcome.status.as_u16() / 100;
    let version = state.feed.version;
    let mut cached = conn.counters.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cached.as_ref()
        && c.version == version
        && c.status_class == status_class
        && c.cluster == outcome.cluster
        && c.service.as_deref() == service
    {
        c.requests.inc();
        if let Some(flow) = &c.flow {
            flow.inc();
        }
        return;
    }
    let me = &state.feed.catalog.cluster.name;
    let flow = service.map(|service| {
        let flow = crate::flows::Flows::labels(state, "proxy", me, &outcome.cluster, service);
        let result = if outcome.status.is_server_error() || outcome.cluster.is_empty() {
            "failed"
        } else {
            "ok"
        };
        ctx.metrics.flows.connection_counter(state, &flow, result)
    });
    let requests = ctx.metrics.http_requests(
        frontend.service.as_deref().unwrap_or(&frontend.host),
        &outcome.cluster,
        outcome.status,
    );
    requests.inc();
    if let Some(flow) = &flow {
        flow.inc();
    }
    *cached = Some(Counted {
        version,
        service: service.map(str::to_owned),
        cluster: outcome.cluster.clone(),
        status_class,
        requests,
        flow,
    });
}

/// A backend of `rule` picked by weight (L2); none when the weights sum
/// to 0.
pub(super) fn pick(rule: &RouteRule) -> Option<&RouteBackend> {
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut pick = fastrand::u64(0..total);
    rule.backends.iter().find(|b| {
        let hit = pick < u64::from(b.weight);
        pick = pick.saturating_sub(u64::from(b.weight));
        hit
    })
}

fn no_backend(mut outcome: Outcome) -> (Response<ProxyBody>, Outcome) {
    outcome.status = StatusCode::INTERNAL_SERVER_ERROR;
    outcome.why = Some(NO_BACKEND.into());
    (
        local(StatusCode::INTERNAL_SERVER_ERROR, NO_BACKEND_TEXT),
        outcome,
    )
}

pub(super) const NO_BACKEND: &str = "the rule has no backend";
pub(super) const NO_BACKEND_TEXT: &str = "the route's rule has no backend";

/// Where `backend` is reached: its authority (`host:port`) and whether it
/// speaks HTTP/2; or, for a backend that does not resolve, the text of
/// the 500 that answers (`outcome` says why).
pub(super) fn target(
    state: &DataplaneState,
    backend: &RouteBackend,
    outcome: &mut Outcome,
) -> Result<(String, bool), String> {
    outcome.backend = backend.target.name();
    match &backend.target {
        BackendTarget::Unresolved { reason, .. } => {
            outcome.status = StatusCode::INTERNAL_SERVER_ERROR;
            outcome.why = Some(reason.clone());
            Err(format!(
                "backend {} does not resolve: {reason}",
                backend.target.name()
            ))
        }
        BackendTarget::Global { hostname, port } => {
            outcome.service = Some(hostname.clone());
            let h2 = state
                .service(hostname)
                .and_then(|s| s.ports.iter().find(|p| p.number == *port))
                .is_some_and(|p| p.protocol != "HTTP");
            Ok((format!("{hostname}:{port}"), h2))
        }
        BackendTarget::ClusterIp { ip, port, .. } => {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            Ok((SocketAddr::new(ip, *port).to_string(), false))
        }
    }
}

/// A request's timeouts under its rule (L5): each attempt's
/// (`backendRequest`) and the whole's (`request`, retries included).
pub(super) struct Deadlines {
    per_try: Option<Duration>,
    overall: Option<tokio::time::Instant>,
}

impl Deadlines {
    /// The deadlines of a request starting now.
    pub(super) fn new(rule: &RouteRule) -> Deadlines {
        let overall = rule.timeouts.request_ms.map(Duration::from_millis);
        Deadlines {
            per_try: rule.timeouts.backend_request_ms.map(Duration::from_millis),
            overall: overall.map(|d| tokio::time::Instant::now() + d),
        }
    }

    /// When an attempt starting now must have its answer, if ever.
    pub(super) fn attempt(&self) -> Option<tokio::time::Instant> {
        let per_try = self.per_try.map(|p| tokio::time::Instant::now() + p);
        match (per_try, self.overall) {
            (Some(p), Some(d)) => Some(p.min(d)),
            (p, d) => p.or(d),
        }
    }

    /// Why an attempt that timed out failed, and whether the request is
    /// answered 504 now: its whole time is up, or it was the `last`
    /// attempt.
    pub(super) fn expired(&self, last: bool) -> (String, bool) {
        let overall = self
            .overall
            .is_some_and(|d| tokio::time::Instant::now() >= d);
        let which = if overall { "request" } else { "backendRequest" };
        (
            format!("no answer within the {which} timeout"),
            overall || last,
        )
    }
}

/// Routes `req`, whose URI as the client sent it is `uri` (kept while its
/// head is edited).
async fn route(
    mut req: Request<Incoming>,
    uri: &Uri,
    ctx: &Arc<Ctx>,
    state: &DataplaneState,
    frontend: &Frontend,
) -> (Response<ProxyBody>, Outcome) {
    let mut outcome = Outcome::unmatched();
    if let Some(name) = req
        .headers()
        .keys()
        .find(|n| ambiguous_framing(n.as_str().as_bytes()))
    {
        let text = ambiguous_text(name.as_str());
        outcome.status = StatusCode::BAD_REQUEST;
        outcome.why = Some(text.clone());
        return (local(StatusCode::BAD_REQUEST, &text), outcome);
    }
    let Some(rule) = frontend.table.find(&Matched(&req)) else {
        outcome.why = Some("no rule matches".into());
        return (
            local(StatusCode::NOT_FOUND, &unmatched_text(frontend)),
            outcome,
        );
    };
    outcome.route = format!("{}#{}", rule.route, rule.rule);
    let (path, query) = (uri.path(), uri.query());
    let mut response_edits: Vec<&HeaderEdit> = Vec::new();
    let mut mirrors = Vec::new();
    let mut new_path: Option<String> = None;
    let mut new_host: Option<String> = None;
    for f in &rule.filters {
        match f {
            RouteFilter::RequestRedirect(r) => {
                let res = redirect(r, rule, &req, frontend, path, query);
                outcome.status = res.status();
                return (res, outcome);
            }
            RouteFilter::RequestHeaderModifier(e) => apply_headers(e, req.headers_mut()),
            RouteFilter::ResponseHeaderModifier(e) => response_edits.push(e),
            RouteFilter::UrlRewrite(r) => {
                if let Some(p) = &r.path {
                    new_path = Some(edited_path(p, rule, path));
                }
                new_host.clone_from(&r.hostname);
            }
            RouteFilter::RequestMirror(m) => mirrors.push(m),
        }
    }
    // A backend by weight (L2).
    let Some(backend) = pick(rule) else {
        return no_backend(outcome);
    };
    let (authority, h2) = match target(state, backend, &mut outcome) {
        Ok(t) => t,
        Err(text) => return (local(outcome.status, &text), outcome),
    };
    for f in &backend.filters {
        match f {
            RouteFilter::RequestHeaderModifier(e) => apply_headers(e, req.headers_mut()),
            RouteFilter::ResponseHeaderModifier(e) => response_edits.push(e),
            _ => {}
        }
    }
    // The request as the backend gets it.
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let host_header = match new_host {
        Some(h) => HeaderValue::from_str(&h).ok(),
        None => parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
    };
    let path_and_query = match (&new_path, query) {
        (Some(p), Some(q)) => http::uri::PathAndQuery::try_from(format!("{p}?{q}")),
        (Some(p), None) => http::uri::PathAndQuery::try_from(p.as_str()),
        (None, _) => Ok(parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))),
    };
    let uri = path_and_query.map_err(http::Error::from).and_then(|pq| {
        Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority.as_str())
            .path_and_query(pq)
            .build()
    });
    let uri: Uri = match uri {
        Ok(u) => u,
        Err(e) => {
            outcome.status = StatusCode::BAD_REQUEST;
            outcome.why = Some(e.to_string());
            return (local(StatusCode::BAD_REQUEST, "bad request path"), outcome);
        }
    };
    parts.uri = uri;
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if let Some(h) = host_header {
        if h2 {
            // HTTP/2 names the authority in the URI; the Host the client
            // used goes along as x-forwarded-host.
            parts.headers.remove(HOST);
            parts.headers.insert("x-forwarded-host", h);
        } else {
            parts.headers.insert(HOST, h);
        }
    }
    let clients = ctx.l7_clients();
    let client = if h2 { &clients.h2 } else { &clients.h1 };
    // A body that can be sent again is retried and mirrored (L4, L5): none,
    // or one whose declared length is at most MAX_REPLAYED_BODY, read whole
    // first. A longer or unsized body is streamed once: one attempt, no
    // mirror.
    let (replay, mut streamed): (Option<Bytes>, Option<ProxyBody>) = if body.is_end_stream() {
        (Some(Bytes::new()), None)
    } else {
        let body = Paced::new(body, ctx.config.body_timeout);
        if body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_REPLAYED_BODY)
        {
            match Limited::new(body, MAX_REPLAYED_BODY as usize)
                .collect()
                .await
            {
                Ok(b) => (Some(b.to_bytes()), None),
                Err(e) => {
                    if let Some(t) = body_timed_out(&*e) {
                        return too_slow(t, outcome);
                    }
                    outcome.status = StatusCode::BAD_REQUEST;
                    outcome.why = Some(format!("the request body could not be read: {e}"));
                    return (
                        local(
                            StatusCode::BAD_REQUEST,
                            "the request body could not be read",
                        ),
                        outcome,
                    );
                }
            }
        } else {
            for m in &mirrors {
                debug!(mirror = %m.target.name(), "not mirrored: the request body is streamed");
            }
            mirrors.clear();
            (None, Some(body.boxed()))
        }
    };
    let attempts = if replay.is_some() {
        1 + rule.retries
    } else {
        1
    };
    for m in mirrors {
        if fastrand::u8(0..100) < m.percent
            && let Some(bytes) = &replay
        {
            mirror(client, &parts, &m.target, bytes.clone());
        }
    }
    let deadlines = Deadlines::new(rule);
    let mut last_error = String::new();
    let mut last_response = None;
    let idempotent = parts.method.is_idempotent();
    // The head is copied only for attempts that may follow.
    parts.extensions = http::Extensions::new();
    let mut parts = Some(parts);
    for attempt in 1..=attempts {
        outcome.attempts = attempt;
        let body = match &replay {
            Some(bytes) if bytes.is_empty() => empty(),
            Some(bytes) => full(bytes.clone()),
            None => streamed.take().unwrap_or_else(empty),
        };
        let head = if attempt < attempts {
            parts.clone()
        } else {
            parts.take()
        };
        let Some(head) = head else { break };
        let req = Request::from_parts(head, body);
        let call = client.request(req);
        let result = match deadlines.attempt() {
            Some(at) => match tokio::time::timeout_at(at, call).await {
                Ok(r) => r,
                Err(_) => {
                    let (why, give_up) = deadlines.expired(attempt == attempts);
                    last_error = why;
                    if give_up {
                        outcome.status = StatusCode::GATEWAY_TIMEOUT;
                        outcome.why = Some(last_error.clone());
                        return (local(StatusCode::GATEWAY_TIMEOUT, &last_error), outcome);
                    }
                    continue;
                }
            },
            None => call.await,
        };
        match result {
            Ok(res) => {
                if let Some(up) = res.extensions().get::<Upstream>() {
                    outcome.cluster.clone_from(&up.cluster);
                    outcome.endpoint.clone_from(&up.dest);
                }
                if res.status() == StatusCode::SERVICE_UNAVAILABLE && attempt < attempts {
                    last_response = Some(res);
                    continue;
                }
                return (respond(res, &response_edits, &mut outcome), outcome);
            }
            Err(e) => {
                if let Some(t) = body_timed_out(&e) {
                    return too_slow(t, outcome);
                }
                last_error = error_chain(&e);
                // Connect failures and refused streams never reached the
                // backend; an idempotent request (its body, if any, read
                // whole: only such requests have more attempts) whose connection
                // broke before an answer may be sent again (RFC 9110
                // 9.2.2): a pooled connection to a backend that went away.
                let retriable = e.is_connect() || refused_stream(&e) || idempotent;
                debug!(attempt, error = %last_error, "backend request failed");
                if !retriable || attempt == attempts {
                    break;
                }
            }
        }
    }
    if let Some(res) = last_response {
        return (respond(res, &response_edits, &mut outcome), outcome);
    }
    outcome.status = StatusCode::SERVICE_UNAVAILABLE;
    outcome.why = Some(last_error.clone());
    (
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            &unanswered_text(backend, &last_error),
        ),
        outcome,
    )
}

/// The text of the 503 that answers a request no attempt got an answer
/// for.
pub(super) fn unanswered_text(backend: &RouteBackend, last_error: &str) -> String {
    format!(
        "backend {} did not answer: {last_error}",
        backend.target.name()
    )
}

/// The answer to a client that stopped sending its request body (B5):
/// 408, and the connection closes (the rest of the body is not awaited).
fn too_slow(t: &BodyTimeout, mut outcome: Outcome) -> (Response<ProxyBody>, Outcome) {
    let text = t.to_string();
    let mut res = local(StatusCode::REQUEST_TIMEOUT, &text);
    res.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    outcome.status = StatusCode::REQUEST_TIMEOUT;
    outcome.why = Some(text);
    (res, outcome)
}

fn respond(
    res: Response<Incoming>,
    edits: &[&HeaderEdit],
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    outcome.status = res.status();
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for e in edits {
        apply_headers(e, &mut parts.headers);
    }
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    causes(e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|s| {
        s.downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// Sends a copy of a request (its head, and its body read whole) to a
/// mirror; its answer is dropped.
fn mirror(client: &Backends, parts: &http::request::Parts, target: &BackendTarget, body: Bytes) {
    let authority = match target {
        BackendTarget::Global { hostname, port } => format!("{hostname}:{port}"),
        BackendTarget::ClusterIp { ip, port, .. } => match ip.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, *port).to_string(),
            Err(_) => return,
        },
        BackendTarget::Unresolved { .. } => return,
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let Ok(uri) = format!("http://{authority}{pq}").parse::<Uri>() else {
        return;
    };
    let body = if body.is_empty() { empty() } else { full(body) };
    let mut copy = Request::from_parts(parts.clone(), body);
    *copy.uri_mut() = uri;
    *copy.extensions_mut() = http::Extensions::new();
    let call = client.request(copy);
    tokio::spawn(async move {
        match call.await {
            Ok(res) => {
                let _ = res.into_body().collect().await;
            }
            Err(e) => debug!(error = %e, "mirror request failed"),
        }
    });
}

/// The redirect a `RequestRedirect` filter answers with (L4).
fn redirect<B>(
    r: &Redirect,
    rule: &RouteRule,
    req: &Request<B>,
    frontend: &Frontend,
    path: &str,
    query: Option<&str>,
) -> Response<ProxyBody> {
    let host_header = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| frontend.host.clone());
    let (req_host, req_port) = split_host_port(&host_header);
    let scheme = r.scheme.clone().unwrap_or_else(|| "http".into());
    let host = r.hostname.clone().unwrap_or(req_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        // A new scheme: its well-known port.
        (None, Some(s)) => {
            if s == "https" {
                443
            } else {
                80
            }
        }
        (None, None) => req_port.unwrap_or(frontend.port),
    };
    let default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
    let path = match &r.path {
        Some(edit) => edited_path(edit, rule, path),
        None => path.to_owned(),
    };
    let mut location = format!("{scheme}://{host}");
    if !default_port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    let mut res = Response::new(empty());
    *res.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

fn split_host_port(authority: &str) -> (String, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        if let Some((h, p)) = rest.split_once(']') {
            return (
                format!("[{h}]"),
                p.strip_prefix(':').and_then(|p| p.parse().ok()),
            );
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h.to_owned(), p.parse().ok()),
        _ => (authority.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l4_prefix_rewrites_replace_only_the_matched_part() {
        assert_eq!(replace_prefix("/foo", "/bar", "/foo/baz"), "/bar/baz");
        assert_eq!(replace_prefix("/foo", "/bar", "/foo"), "/bar");
        assert_eq!(replace_prefix("/foo", "/", "/foo/baz"), "/baz");
        assert_eq!(replace_prefix("/foo", "/", "/foo"), "/");
        assert_eq!(replace_prefix("/", "/v2", "/x"), "/v2/x");
        assert_eq!(replace_prefix("/foo", "/bar/", "/foo/baz"), "/bar/baz");
    }

    #[test]
    fn b7_names_read_as_framing_headers_elsewhere_are_ambiguous() {
        for name in ["content_length", "Transfer_Encoding", "TRANSFER_encoding"] {
            assert!(ambiguous_framing(name.as_bytes()), "{name}");
        }
        for name in [
            "content-length",
            "transfer-encoding",
            "x_content_len",
            "x-user_id",
        ] {
            assert!(!ambiguous_framing(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn l4_redirect_authorities_split_host_and_port() {
        assert_eq!(split_host_port("a.b:9080"), ("a.b".into(), Some(9080)));
        assert_eq!(split_host_port("a.b"), ("a.b".into(), None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]".into(), Some(80)));
    }

    #[test]
    fn l4_hop_by_hop_headers_and_those_connection_names_are_not_forwarded() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("x-private, keep-alive"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("end-user", HeaderValue::from_static("jason"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["end-user"], "jason");
    }
}
