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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use meshpeer_identity::{SpiffeId, peer_identity, refusal_reason_io};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
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

/// Bounds of the listener (SPEC B5).
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Connections in their TLS handshake at once; more wait unaccepted.
    pub max_handshakes: usize,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Connections served at once (after the handshake).
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// Serves `service` on `listener` over TLS (`tls`: e.g. meshpeer-identity's
/// `server_config_optional_client` with ALPN h2 and http/1.1) until
/// `shutdown` completes; then every connection is closed. Handshake
/// failures are logged with the reason and counted in
/// `metrics.tls_refusals`.
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
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let accept = async {
        loop {
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                return;
            };
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let service = service.clone();
            let metrics = Arc::clone(&metrics);
            let connections = Arc::clone(&connections);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let Some((tls, info)) =
                    handshake(acceptor, tcp, remote, limits.handshake_timeout, &metrics).await
                else {
                    return;
                };
                drop(permit);
                let Ok(_serving) = connections.try_acquire_owned() else {
                    warn!(%remote, "cluster listener: too many connections; closing this one");
                    return;
                };
                let svc = tower::service_fn(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    service.clone().oneshot(req)
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(tls),
                    TowerToHyperService::new(svc),
                );
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(%remote, error = %e, "cluster listener: connection ended with an error");
                    },
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
    metrics: &CaMetrics,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    let _ = tcp.set_nodelay(true);
    let refused = |reason: &str, text: String| {
        metrics
            .tls_refusals
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        warn!(%remote, reason, "cluster listener refused a connection: {text}");
    };
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
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
        Ok(Err(e)) => {
            let refusal = refusal_reason_io(&e);
            refused(refusal.reason(), refusal.to_string());
            None
        }
        Err(_) => {
            refused(
                "handshake_timeout",
                format!("TLS handshake took longer than {timeout:?}"),
            );
            None
        }
    }
}
