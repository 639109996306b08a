//! HBONE tunnels: HTTP/2 `CONNECT` over mutual TLS 1.3 (ALPN `h2`), port
//! 15008 (SPEC D2, D3, C6).
//!
//! A proxy opens a tunnel with [`HboneClient::connect`] to a peer cluster's
//! east-west gateway, `:authority` naming the target (`<global
//! hostname>:<port>`); the gateway ([`serve`]) verifies the caller, asks a
//! [`TunnelHandler`] for an upstream, answers `200` and splices bytes both
//! ways. Half-close travels as `END_STREAM`, errors as `RST_STREAM`.
//!
//! Inside: `client` (connect, retry once on a stale connection), `pool`
//! (connections per gateway and trust domain, shared dials, keepalive,
//! idle expiry), `dial` (TCP, TLS, HTTP/2 handshake), `tunnel` (the
//! caller's byte stream), `server` (TLS accept, request checks, the
//! handler), `splice` (the gateway's copy loop), `wire` (settings, headers,
//! flow-controlled sends, error mapping), `metrics`.
//!
//! Flow control on both sides: 4 MiB stream windows, 16 MiB connection
//! windows, 1 MiB frames, as ztunnel. Every received chunk's capacity is
//! released; every send reserves capacity first, so h2 never buffers more
//! than the peer's window. A stream whose reader stops holds up to its
//! window of the connection's window: four stalled tunnels can stall the
//! others on the same connection (as in ztunnel, which uses the same sizes).

mod client;
mod dial;
mod metrics;
mod pool;
mod server;
mod splice;
mod tunnel;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use meshpeer_identity::Refusal;

pub use client::{ClientTls, ClusterTls, HboneClient};
pub use metrics::{DirectionLabels, HboneMetrics, RefusalLabels, TrafficLabels, TunnelLabels};
pub use server::{
    OpenUpstream, Refuse, TunnelHandler, TunnelRequest, Upstream, connect_target, default_limits,
    serve, tunnel_meta,
};
pub use tunnel::Tunnel;

/// The port east-west gateways serve HBONE on.
pub const HBONE_PORT: u16 = 15008;

/// Headers a tunnel carries (sent by the client, given to the server's handler).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelMeta {
    /// `forwarded` (RFC 7239), e.g. `for="10.0.0.7"`.
    pub forwarded: Option<String>,
    /// W3C `baggage`, e.g. the source cluster and namespace.
    pub baggage: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// `x-meshpeer-payload`: what the tunnel carries. meshpeer's proxy sends
    /// [`PAYLOAD_TCP`]: the application's bytes, which the gateway hands
    /// to the endpoint's target port. Without it the tunnel is taken as
    /// Istio's double HBONE (ztunnel, `src/proxy/outbound.rs`): an inner
    /// TLS connection and CONNECT meant for the destination's ztunnel,
    /// which the gateway forwards as they are to an ambient endpoint's
    /// port 15008.
    pub payload: Option<String>,
    /// `x-meshpeer-locality`: the caller's locality,
    /// `region/zone/subzone` as Istio writes it, so that the gateway ranks
    /// its endpoints as the caller's proxy ranked clusters (T3, T4).
    pub locality: Option<String>,
}

/// The `x-meshpeer-payload` value of meshpeer's own tunnels.
pub const PAYLOAD_TCP: &str = "tcp";

impl TunnelMeta {
    /// Whether the tunnel carries ztunnel's inner HBONE rather than the
    /// application's bytes.
    pub fn double_hbone(&self) -> bool {
        self.payload.as_deref() != Some(PAYLOAD_TCP)
    }
}

/// Settings of the client pool; the server applies the same flow-control
/// settings (from [`PoolConfig::default`]).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Concurrent tunnels per pooled HTTP/2 connection; a new connection is
    /// dialed when all are full.
    pub max_streams_per_conn: u32,
    /// A connection without tunnels for this long is closed and removed.
    pub idle_timeout: Duration,
    /// Time between HTTP/2 PINGs on a pooled connection.
    pub keepalive_interval: Duration,
    /// A PING not answered within this time marks the connection dead.
    pub keepalive_timeout: Duration,
    /// HTTP/2 stream receive window (clamped to 2^31-1).
    pub stream_window: u32,
    /// HTTP/2 connection receive window (clamped to 2^31-1).
    pub conn_window: u32,
    /// Largest HTTP/2 frame we accept (clamped to 16 KiB..16 MiB-1).
    pub max_frame_size: u32,
    /// Bound on reaching the gateway: TCP connect, TLS handshake and the
    /// gateway's first bytes.
    pub connect_timeout: Duration,
    /// Bound on the wait for the `CONNECT` response: the gateway answers
    /// once it has reached an endpoint (trying the next when one fails), so
    /// this is longer than reaching the gateway, and kept apart from it so
    /// that a slow answer is not taken for an unreachable gateway.
    pub answer_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_streams_per_conn: 100,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            stream_window: 4 << 20,
            conn_window: 16 << 20,
            max_frame_size: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// TCP failed or timed out (or the TLS handshake did not finish in time).
    #[error(
        "cannot reach east-west gateway {gateway}: {source} \
         (check the gateway address and that port {HBONE_PORT} is reachable)"
    )]
    Connect {
        /// The gateway dialed.
        gateway: SocketAddr,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake was refused, by us (the gateway's certificate) or
    /// by the gateway (ours).
    #[error("mutual TLS with east-west gateway {gateway} failed: {refusal}")]
    Tls {
        /// The gateway dialed.
        gateway: SocketAddr,
        /// Why.
        refusal: Refusal,
    },
    /// The gateway answered the `CONNECT` with a non-2xx status.
    #[error("the east-west gateway refused the tunnel with HTTP {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The gateway's explanation (its response body).
        message: String,
    },
    /// HTTP/2 errors, bad headers, unexpected closes.
    #[error("HBONE protocol error: {0}")]
    Protocol(String),
}

impl HboneError {
    /// A stable short label for metrics: `unreachable`, `refused`,
    /// `protocol`, or for TLS the refusal's label (`unknown_root`,
    /// `expired`, `wrong_trust_domain`, `no_spiffe_id`, `refused_by_peer`,
    /// `other`).
    pub fn reason(&self) -> &'static str {
        match self {
            HboneError::Connect { .. } => "unreachable",
            HboneError::Tls { refusal, .. } => refusal.reason(),
            HboneError::Refused { .. } => "refused",
            HboneError::Protocol(_) => "protocol",
        }
    }

    /// A copy for every caller that waited on one shared dial
    /// (`io::Error` is not `Clone`; kind and text are kept).
    pub(crate) fn replicate(&self) -> HboneError {
        match self {
            HboneError::Connect { gateway, source } => HboneError::Connect {
                gateway: *gateway,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            HboneError::Tls { gateway, refusal } => HboneError::Tls {
                gateway: *gateway,
                refusal: refusal.clone(),
            },
            HboneError::Refused { status, message } => HboneError::Refused {
                status: *status,
                message: message.clone(),
            },
            HboneError::Protocol(text) => HboneError::Protocol(text.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reasons_are_stable_labels() {
        let gateway: SocketAddr = ([127, 0, 0, 1], HBONE_PORT).into();
        let cases = [
            (
                HboneError::Connect {
                    gateway,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                },
                "unreachable",
            ),
            (
                HboneError::Tls {
                    gateway,
                    refusal: Refusal::UnknownRoot {
                        our_root_sha256: None,
                    },
                },
                "unknown_root",
            ),
            (
                HboneError::Refused {
                    status: 403,
                    message: "no".into(),
                },
                "refused",
            ),
            (HboneError::Protocol("x".into()), "protocol"),
        ];
        for (err, label) in cases {
            assert_eq!(err.reason(), label);
            assert_eq!(err.replicate().to_string(), err.to_string());
        }
    }
}
