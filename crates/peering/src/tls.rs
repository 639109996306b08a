//! Peering over mutual TLS: the accept loop that hands verified connections
//! to the gRPC server, and the connector that dials a peer's gateway.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use meshpeer_identity::{
    ALPN_H2, Refusal, VerifiedPeer, peer_identity, refusal_reason, refusal_reason_io,
    verified_client,
};
use meshpeer_listener::{Gate, LazyBufReader, Limits, ListenerMetrics, Slot};
use meshpeer_model::PeerLink;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Server};
use tracing::{debug, info, warn};

use crate::admission::{CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT};
use crate::client::{ConnectError, Connection, Connector};
use crate::proto::{self, PeerRequest, peer_request};
use crate::server::{ConnInfo, PeeringService};

/// A verified peering connection, and its place at the listener's gate
/// (given back when the connection is dropped).
struct PeerConn {
    io: TlsStream<LazyBufReader<TcpStream>>,
    info: ConnInfo,
    _slot: Slot,
}

impl Connected for PeerConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long a TLS handshake may take (the client side; the server's is in
/// its [`Limits`]).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The peering listener's bounds by default (SPEC B5): 1,024 connections
/// before authentication (the oldest shed when more arrive), TLS within
/// 10 s, 256 authenticated connections (controllers of linked clusters:
/// one each). Authenticated connections are not closed for idleness: a
/// peering stream is long-lived, heartbeats keep it busy, and HTTP/2
/// keepalive ends a connection whose peer is gone.
pub fn default_limits() -> Limits {
    Limits {
        max_connections: 256,
        ..Limits::default()
    }
}

/// Serves the peering service on `listener` over mutual TLS (`tls` must
/// require client certificates: meshpeer-identity's `server_config`) until
/// `shutdown` completes, with [`default_limits`] and metrics of its own
/// (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: PeeringService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(
        listener,
        tls,
        service,
        default_limits(),
        Arc::default(),
        shutdown,
    )
    .await
}

/// Serves the peering service on `listener` over mutual TLS until
/// `shutdown` completes. Handshakes run concurrently; a refused peer is
/// logged with the reason and counted, and never reaches the service.
///
/// `limits` bound what the listener holds before a peer is authenticated
/// (SPEC B5): at most `max_pending` connections in their handshake (a new
/// one sheds the oldest), each for at most `handshake_timeout`; at most
/// `max_connections` authenticated. A connection's read buffer is
/// allocated once it sends something. Counted in `metrics`
/// (register it under `peering`: `peering_listener_...`).
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: PeeringService,
    limits: Limits,
    metrics: Arc<ListenerMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (tx, rx) = mpsc::channel::<Result<PeerConn, io::Error>>(32);
    let svc = service.clone();
    let gate = Gate::new("peering", limits, metrics);
    info!(%limits, "peering listener bounds");
    let max_streams = service.max_streams_per_connection();
    // The accept loop runs in this future, not in a task of its own: when
    // the server ends, or this future is dropped (a task aborting the
    // server), the listener is closed before that returns, so a server
    // started again on the same port can bind it at once.
    let accept = accept_loop(listener, acceptor, gate, tx, svc);
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(max_streams))
        .add_service(service.grpc())
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown);
    tokio::select! {
        result = server => result,
        never = accept => match never {},
    }
}

/// Accepts peering connections for ever, each handshaken in a task of its
/// own under the gate's bounds and handed to the server through `tx`.
async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gate: Gate,
    tx: mpsc::Sender<Result<PeerConn, io::Error>>,
    svc: PeeringService,
) -> std::convert::Infallible {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "peering accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = gate.admit();
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let svc = svc.clone();
        tokio::spawn(async move {
            if let Some(conn) = handshake(acceptor, tcp, remote, slot, &svc).await
                && tx.send(Ok(conn)).await.is_err()
            {
                debug!("peering server stopped; dropping connection");
            }
        });
    }
}

/// Read buffer of a peering connection (rustls reads 4 KiB at a time).
const READ_BUFFER: usize = 16 * 1024;

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    svc: &PeeringService,
) -> Option<PeerConn> {
    let _ = tcp.set_nodelay(true);
    let tcp = LazyBufReader::new(READ_BUFFER, tcp);
    let accepted = tokio::select! {
        accepted = acceptor.accept(tcp) => accepted,
        cut = slot.cut() => {
            debug!(%remote, reason = cut.reason(), "peer connection closed before authentication: {cut}");
            return None;
        }
    };
    match accepted {
        Ok(io) => {
            let certs = io.get_ref().1.peer_certificates().unwrap_or_default();
            // The cluster a chain speaks for is read from the path that
            // leads to the root (SPEC P6), so the chain is verified again.
            let verified = match svc.trust_root() {
                Some(root) => verified_client(root, certs),
                None => peer_identity(certs).map(|id| VerifiedPeer { id, cluster: None }),
            };
            match verified {
                Ok(VerifiedPeer { id, cluster }) => {
                    if let Err(cut) = slot.authenticate() {
                        warn!(%remote, peer = %id, reason = cut.reason(), "peer connection not served: {cut}");
                        return None;
                    }
                    Some(PeerConn {
                        info: ConnInfo {
                            remote: remote.to_string(),
                            spiffe_id: id.to_string(),
                            trust_domain: id.trust_domain().to_owned(),
                            cluster,
                        },
                        io,
                        _slot: slot,
                    })
                }
                Err(refusal) => {
                    warn!(%remote, reason = refusal.reason(), "refused peer connection: {refusal}");
                    svc.refused(&remote.to_string(), &refusal);
                    None
                }
            }
        }
        Err(e) => {
            let refusal = refusal_reason_io(&e);
            // A socket that closed or sent garbage is not a peer's refusal
            // worth keeping for status (a flood would push real ones out).
            if is_tls_refusal(&e) {
                warn!(%remote, reason = refusal.reason(), "refused peer connection: {refusal}");
                svc.refused(&remote.to_string(), &refusal);
            } else {
                slot.handshake_failed();
                debug!(%remote, error = %e, "peer connection ended during the TLS handshake");
            }
            None
        }
    }
}

/// Whether a handshake failed on a certificate (rustls' verdict, or the
/// peer's alert) rather than on the socket or garbage bytes.
fn is_tls_refusal(err: &io::Error) -> bool {
    let certificate = |e: &rustls::Error| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(_)
        )
    };
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(certificate)
        || err.to_string().starts_with("received fatal alert: ")
}

/// Builds the client TLS config for a peer, given this cluster's link to it
/// (its trust domain, and its cluster name, which a chain bound to a
/// cluster must carry: meshpeer-identity's `client_config_for_cluster`).
pub type ClientTls =
    Arc<dyn Fn(&PeerLink) -> Result<Arc<rustls::ClientConfig>, String> + Send + Sync + 'static>;

/// Dials a peer's control plane (its east-west gateway's addresses, port
/// `xds-tls`) over mutual TLS and opens the peering stream.
#[derive(Clone)]
pub struct TlsConnector {
    tls: ClientTls,
    connect_timeout: Duration,
    /// Namespace and service account the peer's controller must present (P1).
    controller: (String, String),
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    pub fn new(tls: ClientTls) -> Self {
        TlsConnector {
            tls,
            connect_timeout: Duration::from_secs(5),
            controller: (
                CONTROLLER_NAMESPACE.to_owned(),
                CONTROLLER_SERVICE_ACCOUNT.to_owned(),
            ),
        }
    }

    /// The namespace and service account a peer's controller presents
    /// (default `istio-system`/`meshpeer`, P1).
    pub fn with_controller_identity(mut self, namespace: &str, service_account: &str) -> Self {
        self.controller = (namespace.to_owned(), service_account.to_owned());
        self
    }

    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
}

fn unreachable(message: String) -> ConnectError {
    ConnectError {
        reason: "unreachable",
        message,
    }
}

async fn dial(
    link: &PeerLink,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr, ServerName<'static>), ConnectError> {
    let mut last = format!(
        "peer {} has no address (spec.addresses of its Gateway {})",
        link.cluster, link.gateway
    );
    for a in &link.addresses {
        let candidates: Vec<SocketAddr> = match a.value.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, link.xds_port)],
            Err(_) => match tokio::net::lookup_host((a.value.as_str(), link.xds_port)).await {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    last = format!("cannot resolve {}: {e}", a.value);
                    continue;
                }
            },
        };
        let name = match a.value.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => match ServerName::try_from(a.value.clone()) {
                Ok(n) => n,
                Err(e) => {
                    last = format!("{} is not a host name: {e}", a.value);
                    continue;
                }
            },
        };
        for addr in candidates {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok((tcp, addr, name));
                }
                Ok(Err(e)) => last = format!("cannot connect to {addr}: {e}"),
                Err(_) => last = format!("cannot connect to {addr}: timed out after {timeout:?}"),
            }
        }
    }
    Err(unreachable(format!(
        "peer {} unreachable: {last}",
        link.cluster
    )))
}

impl Connector for TlsConnector {
    fn connect(
        &self,
        link: &PeerLink,
        hello: proto::Hello,
    ) -> Pin<Box<dyn Future<Output = Result<Connection, ConnectError>> + Send + 'static>> {
        let link = link.clone();
        let this = self.clone();
        Box::pin(async move {
            let config = (this.tls)(&link).map_err(|e| ConnectError {
                reason: "tls",
                message: format!("cannot build the TLS config for peer {}: {e}", link.cluster),
            })?;
            let (tcp, addr, name) = dial(&link, this.connect_timeout).await?;
            let tls = tokio_rustls::TlsConnector::from(config);
            let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(name, tcp)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    let refusal = refusal_reason_io(&e);
                    return Err(ConnectError {
                        reason: refusal.reason(),
                        message: format!("peer {} at {addr} refused: {refusal}", link.cluster),
                    });
                }
                Err(_) => {
                    return Err(unreachable(format!(
                        "peer {} at {addr}: TLS handshake timed out",
                        link.cluster
                    )));
                }
            };
            // P1 both ways: the peering port must be answered by the peer's
            // controller, not by any workload of its trust domain.
            let server_id = peer_identity(io.get_ref().1.peer_certificates().unwrap_or_default())
                .map_err(|refusal| ConnectError {
                reason: refusal.reason(),
                message: format!("peer {} at {addr} refused: {refusal}", link.cluster),
            })?;
            let (ns, sa) = &this.controller;
            if server_id.namespace() != ns || server_id.service_account() != sa {
                return Err(ConnectError {
                    reason: "not_a_controller",
                    message: format!(
                        "peer {} at {addr} presents {server_id}, which is not a controller identity (spiffe://{}/ns/{ns}/sa/{sa}); refused",
                        link.cluster, link.trust_domain
                    ),
                });
            }
            if io.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                return Err(ConnectError {
                    reason: "protocol",
                    message: format!(
                        "peer {} at {addr} did not agree to HTTP/2 (ALPN h2)",
                        link.cluster
                    ),
                });
            }
            // Hand the established connection to tonic; it gets exactly this one.
            let slot = Arc::new(Mutex::new(Some(TokioIo::new(io))));
            let connector = tower::service_fn(move |_uri| {
                let io = slot.lock().ok().and_then(|mut s| s.take());
                async move {
                    io.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotConnected, "peer connection closed")
                    })
                }
            });
            let channel = Endpoint::from_static("http://meshpeer-peer.invalid")
                .connect_with_connector(connector)
                .await
                .map_err(|e| unreachable(format!("peer {} at {addr}: {e}", link.cluster)))?;
            // B3: decode what the Hello says this client takes.
            let max_message = match hello.max_message_bytes {
                0 => 4 << 20,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            };
            let (tx, rx) = mpsc::channel::<PeerRequest>(16);
            let _ = tx
                .send(PeerRequest {
                    kind: Some(peer_request::Kind::Hello(hello)),
                })
                .await;
            let mut client = proto::peering_client::PeeringClient::new(channel)
                .max_decoding_message_size(max_message);
            let response = client
                .exchange(ReceiverStream::new(rx))
                .await
                .map_err(|status| match tls_refusal(&status) {
                    // TLS 1.3: the server checks our certificate after our
                    // side of the handshake is done; its alert arrives here.
                    Some(refusal) => ConnectError {
                        reason: refusal.reason(),
                        message: format!("peer {} at {addr} refused: {refusal}", link.cluster),
                    },
                    None => ConnectError {
                        reason: "refused",
                        message: format!(
                            "peer {} at {addr} refused the stream: {}",
                            link.cluster,
                            status.message()
                        ),
                    },
                })?;
            let inbound = response.into_inner().boxed();
            Ok(Connection {
                remote: addr.to_string(),
                inbound,
                outbound: tx,
            })
        })
    }
}

/// The TLS refusal behind a failed call, if its cause is one.
fn tls_refusal(status: &tonic::Status) -> Option<Refusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(refusal_reason(tls));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                return Some(refusal_reason_io(io));
            }
            // rustls reports an alert that arrives after the handshake as
            // text: "received fatal alert: CertificateUnknown".
            if let Some(alert) = io.to_string().strip_prefix("received fatal alert: ") {
                return Some(Refusal::RefusedByPeer {
                    alert: alert.to_owned(),
                });
            }
        }
        cause = e.source();
    }
    None
}
