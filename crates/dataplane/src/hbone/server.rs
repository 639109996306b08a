//! The east-west gateway's side: accepting tunnels from verified callers.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use meshpeer_identity::{SpiffeId, TrustRoot, VerifiedPeer, refusal_reason_io, verified_client};
use meshpeer_listener::{Activity, Gate, LazyBufReader, Limits, Slot};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::metrics::{HboneMetrics, INBOUND};
use super::splice::{Splice, SpliceError};
use super::{TunnelMeta, wire};

/// Bound on a caller's HTTP/2 handshake, once TLS is done.
const HTTP2_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A verified caller's tunnel request, for [`TunnelHandler::open`].
#[derive(Clone, Debug)]
pub struct TunnelRequest {
    /// The caller's SPIFFE ID, from its verified certificate.
    pub peer: SpiffeId,
    /// The cluster the caller's chain speaks for: the cluster binding of
    /// its intermediate, verified to the shared root (SPEC P6), never read
    /// from its leaf; `None` when the intermediate has none.
    pub peer_cluster: Option<String>,
    /// The caller's socket address.
    pub remote: SocketAddr,
    /// The `:authority` asked for, `host:port` (checked).
    pub authority: String,
    /// The tunnel's headers.
    pub meta: TunnelMeta,
}

/// A handler's refusal: answered with `status` and `message` as a text body.
/// A status below 400 is answered as 500.
#[derive(Clone, Debug)]
pub struct Refuse {
    /// The HTTP status, e.g. 403 (not exported to the caller) or 503 (no
    /// ready endpoint).
    pub status: StatusCode,
    /// Why, in words for the caller's logs.
    pub message: String,
}

/// What a handler connects a tunnel to: any byte stream.
pub trait Upstream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Upstream for T {}

/// What [`TunnelHandler::open`] returns (spelled out, the same type).
pub type OpenUpstream = Pin<Box<dyn Future<Output = Result<Box<dyn Upstream>, Refuse>> + Send>>;

/// Decides where a tunnel goes.
pub trait TunnelHandler: Send + Sync + 'static {
    /// Connects the upstream for a verified caller; the 200 is sent only
    /// after this succeeds. Dropped unfinished if the caller gives up.
    fn open(&self, req: TunnelRequest) -> OpenUpstream;
}

/// The gateway's listener bounds by default (SPEC B5): 1,024 connections
/// before authentication (the oldest shed), TLS within 10 s, 16,384
/// authenticated connections (proxies of linked clusters: one pooled
/// connection or a few per node), closed after 5 min without a tunnel
/// (the client pool closes its own after 1 min).
pub fn default_limits() -> Limits {
    Limits {
        max_connections: 16_384,
        ..Limits::default()
    }
}

/// Serves HBONE on `listener` until `shutdown` resolves.
///
/// Each connection's TLS handshake runs in its own task; `tls` (from
/// meshpeer-identity's `server_config`, ALPN h2) decides who may call. A
/// refused handshake is logged with the caller's address and reason and
/// counted, and never reaches `handler`. Requests other than `CONNECT` get
/// 405, a `CONNECT` whose `:authority` is not `host:port` gets 400.
///
/// `limits` bound what is held (SPEC B5): connections not yet through TLS
/// are capped (the oldest shed) and timed out, authenticated ones capped
/// and closed (GOAWAY) when no tunnel ran for the idle timeout; counted in
/// `metrics.listener`. A connection's read buffer is allocated only once
/// it sends something.
///
/// On shutdown, stops accepting and sends GOAWAY on every connection; open
/// tunnels run to their end. Accept errors are logged, not returned.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    root: TrustRoot,
    handler: Arc<dyn TunnelHandler>,
    metrics: Arc<HboneMetrics>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let gate = Gate::new("hbone", limits, Arc::clone(&metrics.listener));
    let (stop_tx, stop_rx) = watch::channel(false);
    let local = listener.local_addr()?;
    info!(%local, %limits, "serving HBONE");
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let span = debug_span!("hbone_conn", direction = INBOUND, %remote);
                    let slot = gate.admit();
                    let conn = serve_conn(
                        CallerTls {
                            acceptor: acceptor.clone(),
                            root: root.clone(),
                        },
                        tcp,
                        Accepted { remote, slot },
                        handler.clone(),
                        metrics.clone(),
                        gate.clone(),
                        stop_rx.clone(),
                    );
                    tokio::spawn(conn.instrument(span));
                }
                Err(err) => {
                    warn!(%local, error = %err, "cannot accept HBONE connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    let _ = stop_tx.send(true);
    info!(%local, "HBONE server stopped accepting; open tunnels run to their end");
    Ok(())
}

/// How callers are verified: the TLS acceptor, and the shared root their
/// chains are verified to again to read their cluster binding (SPEC P6).
struct CallerTls {
    acceptor: TlsAcceptor,
    root: TrustRoot,
}

/// A connection just accepted, and its place at the gate.
struct Accepted {
    remote: SocketAddr,
    slot: Slot,
}

/// What every stream of one connection shares.
struct Caller {
    peer: SpiffeId,
    /// Its chain's cluster binding (SPEC P6).
    cluster: Option<String>,
    remote: SocketAddr,
    handler: Arc<dyn TunnelHandler>,
    metrics: Arc<HboneMetrics>,
}

/// The caller's TLS stream and verified identity, or `None` (logged, and
/// counted if TLS refused it or the gate cut it).
async fn accept_caller(
    callers: &CallerTls,
    accepted: &Accepted,
    tcp: TcpStream,
    metrics: &HboneMetrics,
) -> Option<(TlsStream<LazyBufReader<TcpStream>>, VerifiedPeer)> {
    let remote = accepted.remote;
    let _ = tcp.set_nodelay(true);
    let tcp = LazyBufReader::new(wire::SOCKET_READ_BUFFER, tcp);
    let tls = tokio::select! {
        handshake = callers.acceptor.accept(tcp) => match handshake {
            Ok(tls) => tls,
            Err(err) if wire::is_tls_error(&err) => {
                let refusal = refusal_reason_io(&err);
                warn!(%remote, reason = refusal.reason(), %refusal, "refused HBONE caller");
                metrics.tls_refused(INBOUND, refusal.reason());
                return None;
            }
            Err(err) => {
                accepted.slot.handshake_failed();
                debug!(error = %err, "connection ended during the TLS handshake");
                return None;
            }
        },
        cut = accepted.slot.cut() => {
            debug!(reason = cut.reason(), "closed during the TLS handshake: {cut}");
            return None;
        }
    };
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    // Verified again to the root, so that the cluster is read from the
    // path that leads there (SPEC P6).
    let peer = match verified_client(&callers.root, certs) {
        Ok(peer) => peer,
        Err(refusal) => {
            // The verifier already checked this; only a broken config gets here.
            warn!(%remote, reason = refusal.reason(), %refusal, "refused HBONE caller");
            metrics.tls_refused(INBOUND, refusal.reason());
            return None;
        }
    };
    if let Err(cut) = accepted.slot.authenticate() {
        debug!(peer = %peer.id, reason = cut.reason(), "caller not served: {cut}");
        return None;
    }
    Some((tls, peer))
}

async fn serve_conn(
    callers: CallerTls,
    tcp: TcpStream,
    accepted: Accepted,
    handler: Arc<dyn TunnelHandler>,
    metrics: Arc<HboneMetrics>,
    gate: Gate,
    mut stop: watch::Receiver<bool>,
) {
    let remote = accepted.remote;
    let Some((tls, VerifiedPeer { id: peer, cluster })) =
        accept_caller(&callers, &accepted, tcp, &metrics).await
    else {
        return;
    };
    let handshake = wire::server_builder().handshake::<_, Bytes>(tls);
    let mut conn = match tokio::time::timeout(HTTP2_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            debug!(%peer, error = %err, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "HTTP/2 handshake timed out");
            return;
        }
    };
    debug!(%peer, "caller connected");
    metrics.inbound_connections.inc();
    let caller = Arc::new(Caller {
        peer,
        cluster,
        remote,
        handler,
        metrics: metrics.clone(),
    });
    let defaults = super::PoolConfig::default();
    let ping_pong = conn.ping_pong();
    let mut keepalive = std::pin::pin!(async move {
        match ping_pong {
            Some(ping_pong) => {
                let (interval, timeout) = (defaults.keepalive_interval, defaults.keepalive_timeout);
                wire::keepalive(ping_pong, interval, timeout).await
            }
            None => std::future::pending().await,
        }
    });
    let mut draining = false;
    // Tunnels in flight: a connection without any for the idle timeout is
    // closed (GOAWAY; the caller's pool dials again when it needs to).
    let activity = Activity::new();
    let idle_timeout = gate.limits().idle_timeout;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    let busy = activity.enter();
                    let stream = handle_stream(caller.clone(), request, respond);
                    tokio::spawn(async move {
                        stream.await;
                        drop(busy);
                    }.in_current_span());
                }
                Some(Err(err)) => {
                    debug!(error = %err, "connection ended with an error");
                    break;
                }
                None => break,
            },
            _ = stop.wait_for(|stop| *stop), if !draining => {
                conn.graceful_shutdown();
                draining = true;
            }
            () = activity.idle_for(idle_timeout), if !draining => {
                debug!(peer = %caller.peer, idle = ?idle_timeout, "closing an idle caller connection");
                gate.metrics().closed("idle");
                conn.graceful_shutdown();
                draining = true;
            }
            () = &mut keepalive => {
                info!(peer = %caller.peer, "caller did not answer a keepalive ping; closing");
                break;
            }
        }
    }
    metrics.inbound_connections.dec();
    debug!("caller disconnected");
}

/// The head check of a tunnel request: `CONNECT` only (else 405), with
/// an `:authority` that is `host:port`, a non-empty host, a non-zero port
/// and no userinfo (else 400, quoting at most 256 bytes of what came).
/// Returns the authority to hand to the [`TunnelHandler`].
pub fn connect_target(method: &Method, uri: &http::Uri) -> Result<String, Refuse> {
    if method != Method::CONNECT {
        return Err(Refuse {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "HBONE accepts only CONNECT".to_owned(),
        });
    }
    match uri.authority() {
        Some(authority) if wire::valid_target(authority) => Ok(authority.to_string()),
        other => {
            let got = other.map_or("nothing", |a| a.as_str());
            let mut end = got.len().min(256);
            while !got.is_char_boundary(end) {
                end -= 1;
            }
            Err(Refuse {
                status: StatusCode::BAD_REQUEST,
                message: format!("CONNECT needs :authority host:port, got {}", &got[..end]),
            })
        }
    }
}

/// The tunnel headers a request carries (repeated ones joined, values
/// that are not visible ASCII ignored), as the gateway hands them on.
pub fn tunnel_meta(headers: &http::HeaderMap) -> TunnelMeta {
    wire::take_meta(headers)
}

async fn handle_stream(
    caller: Arc<Caller>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let metrics = &caller.metrics;
    let authority = match connect_target(request.method(), request.uri()) {
        Ok(authority) => authority,
        Err(refuse) => {
            debug!(method = %request.method(), status = refuse.status.as_u16(), "refusing a request: {}", refuse.message);
            reply(&mut respond, refuse.status, &refuse.message);
            metrics.opened(INBOUND, "refused");
            return;
        }
    };
    let span = debug_span!(
        "hbone_tunnel",
        direction = INBOUND,
        peer = %caller.peer,
        remote = %caller.remote,
        %authority,
    );
    tunnel(&caller, request, respond, authority)
        .instrument(span)
        .await;
}

async fn tunnel(
    caller: &Caller,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    authority: String,
) {
    let started = std::time::Instant::now();
    let metrics = &caller.metrics;
    let meta = wire::take_meta(request.headers());
    let recv = request.into_body();
    let open = caller.handler.open(TunnelRequest {
        peer: caller.peer.clone(),
        peer_cluster: caller.cluster.clone(),
        remote: caller.remote,
        authority: authority.clone(),
        meta,
    });
    let opened = tokio::select! {
        opened = open => opened,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => {
            debug!("caller gave up before the upstream connected");
            metrics.opened(INBOUND, "error");
            return;
        }
    };
    let upstream = match opened {
        Ok(upstream) => upstream,
        Err(refuse) => {
            // The handler logs why (the gateway's access log of refusals).
            debug!(
                peer = %caller.peer,
                %authority,
                status = refuse.status.as_u16(),
                message = %refuse.message,
                "refused tunnel"
            );
            let status = if refuse.status.as_u16() < 400 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                refuse.status
            };
            reply(&mut respond, status, &refuse.message);
            metrics.opened(INBOUND, "refused");
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(err) => {
            debug!(error = %err, "caller went away before the 200");
            metrics.opened(INBOUND, "error");
            return;
        }
    };
    metrics.opened(INBOUND, "ok");
    debug!("tunnel opened");
    let counters = metrics.tunnel(INBOUND);
    let mut splice = Splice::new(upstream, send, recv, &counters);
    let result = (&mut splice).await;
    let (from_caller, to_caller) = splice.totals();
    counters.closed(match &result {
        Ok(()) => "ok",
        Err(SpliceError::Cancelled(_)) => "cancelled",
        Err(_) => "error",
    });
    // The gateway's access log: one line per tunnel.
    let (outcome, error) = match &result {
        Ok(()) => ("ok", String::new()),
        Err(SpliceError::Cancelled(err)) => ("caller_cancelled", err.to_string()),
        Err(SpliceError::Caller(err)) => ("caller_reset", err.to_string()),
        Err(SpliceError::Upstream(err)) => ("upstream_reset", err.to_string()),
    };
    if matches!(result, Err(SpliceError::Upstream(_))) {
        splice.reset_caller();
    }
    info!(
        src = %caller.peer,
        remote = %caller.remote,
        dst = %authority,
        bytes_from_caller = from_caller,
        bytes_to_caller = to_caller,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
        error = %error,
        "tunnel"
    );
}

/// Answers `status` with `message` as a text body.
fn reply(respond: &mut SendResponse<Bytes>, status: StatusCode, message: &str) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match respond.send_response(response, message.is_empty()) {
        Ok(mut body) if !message.is_empty() => {
            let _ = body.send_data(Bytes::copy_from_slice(message.as_bytes()), true);
        }
        Ok(_) => {}
        Err(err) => debug!(error = %err, "caller went away before the answer"),
    }
}
