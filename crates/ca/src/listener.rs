//! The controller's cluster listener: TLS 1.3 with the controller's
//! identity, client certificates optional at the TLS layer (the signing
//! endpoint authenticates by token; the catalog feed requires one), HTTP/1.1
//! and HTTP/2 on each connection. Every request carries the connection's
//! [`ConnInfo`] as an extension, so handlers know who is calling.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use meshpeer_identity::{SpiffeId, peer_identity, refusal_reason_io};
use meshpeer_listener::{Gate, LazyBufReader, Slot};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::metrics::CaMetrics;

/// Who is on the other end of a connection of the cluster listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Its address.
    pub remote: SocketAddr,
    /// The SPIFFE ID of its client certificate, verified in the handshake
    /// (chain to the shared root, SPEC P6 bindings), if it presented one.
    pub client_id: Option<SpiffeId>,
}

/// Bounds of the listener (SPEC B5): connections in their TLS handshake
/// (capped, the oldest shed, timed out), connections served, idle ones
/// closed. Default: 1,024 in their handshake, 10 s, 4,096 served, 5 min
/// idle (the catalog watch is a request in flight, never idle).
pub type ListenerLimits = meshpeer_listener::Limits;

/// Serves `service` on `listener` over TLS (`tls`: e.g. meshpeer-identity's
/// `server_config_optional_client` with ALPN h2 and http/1.1) until
/// `shutdown` completes; then every connection is closed. Handshake
/// failures are logged with the reason and counted in
/// `metrics.tls_refusals`; the listener's bounds in `metrics.listener`.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: S,
    limits: ListenerLimits,
    metrics: Arc<CaMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = hyper::body::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let gate = Gate::new("cluster", limits, Arc::clone(&metrics.listener));
    let (stop_tx, stop_rx) = watch::channel(false);
    let accept = async {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = Arc::new(gate.admit());
            let acceptor = acceptor.clone();
            let service = service.clone();
            let metrics = Arc::clone(&metrics);
            let gate = gate.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let Some((tls, info)) = handshake(acceptor, tcp, remote, &slot, &metrics).await
                else {
                    return;
                };
                if let Err(cut) = slot.authenticate() {
                    warn!(%remote, "cluster listener: {cut}");
                    return;
                }
                let svc = tower::service_fn(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    service.clone().oneshot(req)
                });
                meshpeer_listener::http::serve_connection(tls, svc, slot, &gate, stop).await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
}

/// Read buffer of a connection (rustls reads 4 KiB at a time).
const READ_BUFFER: usize = 16 * 1024;

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    slot: &Slot,
    metrics: &CaMetrics,
) -> Option<(
    tokio_rustls::server::TlsStream<LazyBufReader<TcpStream>>,
    ConnInfo,
)> {
    let _ = tcp.set_nodelay(true);
    let tcp = LazyBufReader::new(READ_BUFFER, tcp);
    let refused = |reason: &str, text: String| {
        metrics
            .tls_refusals
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        warn!(%remote, reason, "cluster listener refused a connection: {text}");
    };
    let accepted = tokio::select! {
        accepted = acceptor.accept(tcp) => accepted,
        cut = slot.cut() => {
            debug!(%remote, reason = cut.reason(), "cluster listener: {cut}");
            return None;
        }
    };
    match accepted {
        Ok(tls) => {
            let client_id = match tls.get_ref().1.peer_certificates() {
                None | Some([]) => None,
                Some(certs) => match peer_identity(certs) {
                    Ok(id) => Some(id),
                    Err(refusal) => {
                        refused(refusal.reason(), refusal.to_string());
                        return None;
                    }
                },
            };
            Some((tls, ConnInfo { remote, client_id }))
        }
        Err(e)
            if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
                || e.to_string().starts_with("received fatal alert: ") =>
        {
            let refusal = refusal_reason_io(&e);
            refused(refusal.reason(), refusal.to_string());
            None
        }
        Err(e) => {
            // The caller left or sent what is not TLS.
            slot.handshake_failed();
            debug!(%remote, error = %e, "cluster listener: connection ended during the TLS handshake");
            None
        }
    }
}
