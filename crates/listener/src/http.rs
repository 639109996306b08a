//! HTTP/1.1 and HTTP/2 on a gated connection: header reads bounded,
//! idle connections closed, the gate's cut honoured.
//!
//! A plain listener ([`serve`]) counts a connection as authenticated once
//! its first request arrives: until then it is pending at the gate (shed
//! when it is the oldest, closed after the handshake timeout). A TLS
//! listener authenticates in its handshake and then calls
//! [`serve_connection`] with the connection's slot.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::{Activity, Busy, Gate, Slot};

/// How long headers of a request may take, at most (the gate's handshake
/// timeout when shorter).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent requests of one HTTP/2 connection.
const MAX_STREAMS: u32 = 100;
/// HTTP/2 keepalive: a peer that does not answer a PING is gone.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// A response body that keeps its connection busy (not idle) until it is
/// sent or dropped: a long stream (SSE, the catalog watch) is not idle.
pub struct TrackedBody<B> {
    inner: Inner<B>,
    _busy: Busy,
}

enum Inner<B> {
    Body(Pin<Box<B>>),
    /// The gate's refusal, as text.
    Refusal(Option<Bytes>),
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Body(body) => body.as_mut().poll_frame(cx),
            Inner::Refusal(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Body(body) => body.is_end_stream(),
            Inner::Refusal(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Body(body) => body.size_hint(),
            Inner::Refusal(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

/// Serves `service` on one connection until it ends, `stop` turns true
/// (the connection is dropped), the gate cuts it (`slot`; a plain
/// connection is authenticated by its first request, and refused with 503
/// when the gate has no room), or nothing was in flight for `idle` (closed
/// gracefully, counted `idle`).
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    slot: Arc<Slot>,
    gate: &Gate,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Activity::new();
    let limits = *gate.limits();
    let svc = {
        let activity = activity.clone();
        let slot = Arc::clone(&slot);
        tower::service_fn(move |req: Request<Incoming>| {
            let busy = activity.enter();
            let admitted = slot.authenticate();
            let service = service.clone();
            async move {
                if let Err(cut) = admitted {
                    let mut refused = Response::new(TrackedBody {
                        inner: Inner::Refusal(Some(Bytes::from(cut.to_string()))),
                        _busy: busy,
                    });
                    *refused.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok::<_, Infallible>(refused);
                }
                let response = service.oneshot(req).await?;
                Ok(response.map(|body| TrackedBody {
                    inner: Inner::Body(Box::pin(body)),
                    _busy: busy,
                }))
            }
        })
    };
    let header_timeout = limits
        .handshake_timeout
        .map_or(HEADER_READ_TIMEOUT, |t| t.min(HEADER_READ_TIMEOUT));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s) => return,
            cut = slot.cut() => {
                debug!(reason = cut.reason(), "HTTP connection closed by its gate: {cut}");
                return;
            }
            () = activity.idle_for(limits.idle_timeout), if !closing => {
                gate.metrics().closed("idle");
                debug!(idle = ?limits.idle_timeout, "closing an idle HTTP connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Serves plain HTTP on `listener` until `shutdown` completes; then every
/// connection is dropped. `make(remote)` gives the service of a
/// connection. Each connection goes through `gate`.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    gate: Gate,
    make: F,
    shutdown: impl Future<Output = ()> + Send,
) where
    F: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let accept = async {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let slot = Arc::new(gate.admit());
            let service = make(remote);
            let gate = gate.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                serve_connection(tcp, service, slot, &gate, stop).await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
}
