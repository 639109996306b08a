//! Dialing a gateway: TCP, mutual TLS 1.3, the gateway's first bytes, the
//! HTTP/2 handshake.

use std::io;

use bytes::{Bytes, BytesMut};
use h2::client::{Connection, SendRequest};
use meshpeer_identity::{ALPN_H2, Refusal, refusal_reason_io};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::client::{ClientTls, ClusterTls};
use super::pool::Key;
use super::{HboneError, PoolConfig, wire};
use crate::rewind::Rewind;

/// The transport of a pooled connection.
pub(crate) type ClientIo = Rewind<TlsStream<BufReader<TcpStream>>>;

/// A dialed connection: the handle that opens streams and the connection
/// future that must be polled for anything to move.
pub(crate) type Dialed = (SendRequest<Bytes>, Connection<ClientIo, Bytes>);

/// Dials `key.gateway`, expecting a certificate in `key.trust_domain`.
/// Unbounded in time: the pool applies `connect_timeout`.
pub(crate) async fn dial(
    config: &PoolConfig,
    tls: &ClientTls,
    cluster_tls: Option<&ClusterTls>,
    key: &Key,
) -> Result<Dialed, HboneError> {
    let gateway = key.gateway;
    let built = match (cluster_tls, &key.cluster) {
        (Some(make), Some(cluster)) => make(&key.trust_domain, cluster),
        _ => tls(&key.trust_domain),
    };
    let tls_config = built.map_err(|msg| HboneError::Tls {
        gateway,
        refusal: Refusal::Other(format!(
            "no TLS client config for trust domain {}: {msg}",
            key.trust_domain
        )),
    })?;
    let tcp = TcpStream::connect(gateway)
        .await
        .map_err(|source| HboneError::Connect { gateway, source })?;
    // Small frames (headers, window updates, pings) must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    // Our certificates carry no DNS names; the verifier ignores this name.
    let name = ServerName::IpAddress(gateway.ip().into());
    let mut stream = TlsConnector::from(tls_config)
        .connect(
            name,
            BufReader::with_capacity(wire::SOCKET_READ_BUFFER, tcp),
        )
        .await
        .map_err(|err| handshake_failure(key, err))?;
    if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(HboneError::Protocol(format!(
            "gateway {gateway} did not negotiate ALPN h2 (is port {} an HBONE port?)",
            super::HBONE_PORT
        )));
    }
    // With TLS 1.3 our handshake ends before the gateway has checked our
    // certificate; a refusal arrives as an alert on the first read. An h2
    // server speaks first (its SETTINGS), so wait for that first read here
    // and put the bytes back in front of the stream for h2.
    let mut first = BytesMut::with_capacity(16 * 1024);
    match stream.read_buf(&mut first).await {
        Ok(0) => {
            return Err(HboneError::Protocol(format!(
                "gateway {gateway} closed the connection right after the TLS handshake"
            )));
        }
        Ok(_) => {}
        Err(err) => return Err(handshake_failure(key, err)),
    }
    let io = Rewind::new(first.freeze(), stream);
    wire::client_builder(config)
        .handshake(io)
        .await
        .map_err(|err| {
            HboneError::Protocol(format!(
                "HTTP/2 handshake with gateway {gateway} failed: {err}"
            ))
        })
}

/// A TLS refusal if the error came from TLS, else a connect failure.
fn handshake_failure(key: &Key, err: io::Error) -> HboneError {
    if wire::is_tls_error(&err) {
        HboneError::Tls {
            gateway: key.gateway,
            refusal: refusal_reason_io(&err),
        }
    } else {
        HboneError::Connect {
            gateway: key.gateway,
            source: err,
        }
    }
}
