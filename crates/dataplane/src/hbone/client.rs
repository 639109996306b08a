//! The proxy's side: opening tunnels through east-west gateways.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream};
use http::{Method, Request};
use tracing::{Instrument, Span, debug, debug_span};

use super::metrics::{HboneMetrics, OUTBOUND};
use super::pool::{Key, NotReady, Pool, Slot};
use super::tunnel::Tunnel;
use super::{HboneError, PoolConfig, TunnelMeta, wire};

/// Builds the TLS client config for a gateway, given the trust domain its
/// certificate must carry (e.g. from meshpeer-identity's `client_config`
/// with ALPN h2). Called once per dial.
pub type ClientTls = Arc<dyn Fn(&str) -> Result<Arc<rustls::ClientConfig>, String> + Send + Sync>;

/// Builds the TLS client config for a gateway that must also speak for a
/// cluster, given its trust domain and the cluster (e.g. from
/// meshpeer-identity's `client_config_for_cluster`): where clusters share a
/// trust domain, the gateway's chain must be bound to the cluster linked
/// (SPEC P6). Called once per dial.
pub type ClusterTls =
    Arc<dyn Fn(&str, &str) -> Result<Arc<rustls::ClientConfig>, String> + Send + Sync>;

/// Most of a refusal's body that we keep.
const MAX_REFUSAL_MESSAGE: usize = 4096;

/// Opens HBONE tunnels over pooled HTTP/2 connections. Cheap to clone;
/// clones share the pool.
#[derive(Clone)]
pub struct HboneClient {
    pool: Arc<Pool>,
}

impl HboneClient {
    /// A client with an empty pool.
    pub fn new(tls: ClientTls, config: PoolConfig, metrics: Arc<HboneMetrics>) -> Self {
        HboneClient {
            pool: Arc::new(Pool::new(tls, None, config, metrics)),
        }
    }

    /// [`HboneClient::new`], with `cluster_tls` for tunnels that name the
    /// cluster their gateway must speak for
    /// ([`HboneClient::connect_to_cluster`]).
    pub fn with_cluster_tls(
        tls: ClientTls,
        cluster_tls: ClusterTls,
        config: PoolConfig,
        metrics: Arc<HboneMetrics>,
    ) -> Self {
        HboneClient {
            pool: Arc::new(Pool::new(tls, Some(cluster_tls), config, metrics)),
        }
    }

    /// A tunnel to `authority` through the gateway at `gateway`, whose
    /// certificate must carry `trust_domain`.
    ///
    /// Reuses a pooled HTTP/2 connection to (gateway, trust_domain) with a
    /// free stream slot, else dials a new one (callers arriving meanwhile
    /// share that dial). A request that fails on a pooled connection that
    /// went stale is retried once on a new connection. Reaching the gateway
    /// is bounded by `connect_timeout`, its answer by `answer_timeout`.
    pub async fn connect(
        &self,
        gateway: SocketAddr,
        trust_domain: &str,
        authority: &str,
        meta: &TunnelMeta,
    ) -> Result<Tunnel, HboneError> {
        self.connect_as(gateway, trust_domain, None, authority, meta)
            .await
    }

    /// [`HboneClient::connect`] to the gateway of `cluster`: with a
    /// [`ClusterTls`] ([`HboneClient::with_cluster_tls`]), its chain must
    /// also be bound to that cluster; connections are pooled per cluster.
    pub async fn connect_to_cluster(
        &self,
        gateway: SocketAddr,
        trust_domain: &str,
        cluster: &str,
        authority: &str,
        meta: &TunnelMeta,
    ) -> Result<Tunnel, HboneError> {
        self.connect_as(gateway, trust_domain, Some(cluster), authority, meta)
            .await
    }

    async fn connect_as(
        &self,
        gateway: SocketAddr,
        trust_domain: &str,
        cluster: Option<&str>,
        authority: &str,
        meta: &TunnelMeta,
    ) -> Result<Tunnel, HboneError> {
        let span = debug_span!(
            "hbone_tunnel",
            direction = OUTBOUND,
            %gateway,
            authority,
            conn = tracing::field::Empty,
        );
        let key = Key {
            gateway,
            trust_domain: trust_domain.to_owned(),
            cluster: cluster
                .filter(|_| self.pool.cluster_tls.is_some())
                .map(str::to_owned),
        };
        let result = self
            .open(&key, authority, meta, &span)
            .instrument(span.clone())
            .await;
        let metrics = &self.pool.metrics;
        match &result {
            Ok(_) => metrics.opened(OUTBOUND, "ok"),
            Err(err @ (HboneError::Refused { .. } | HboneError::Tls { .. })) => {
                debug!(parent: &span, error = %err, "tunnel refused");
                metrics.opened(OUTBOUND, "refused");
            }
            Err(err) => {
                debug!(parent: &span, error = %err, "tunnel failed");
                metrics.opened(OUTBOUND, "error");
            }
        }
        result
    }

    /// HTTP/2 connections in the pool (dialing or ready), over all gateways.
    pub fn pooled_connections(&self) -> usize {
        self.pool.len()
    }

    async fn open(
        &self,
        key: &Key,
        authority: &str,
        meta: &TunnelMeta,
        span: &Span,
    ) -> Result<Tunnel, HboneError> {
        let mut new_conn = false;
        loop {
            let request = request(authority, meta)?;
            let slot = self.pool.checkout(key, new_conn);
            span.record("conn", slot.conn.id);
            match self.attempt(slot, request, span).await {
                Ok(tunnel) => return Ok(tunnel),
                Err(Failure::Final(err)) => return Err(err),
                Err(Failure::Stale { slot, error }) => {
                    // The connection ended before our request got through;
                    // nothing reached the target, so one retry is safe.
                    self.pool.remove(key, &slot.conn);
                    if new_conn {
                        return Err(error);
                    }
                    debug!(error = %error, "pooled connection went stale; dialing a new one");
                    new_conn = true;
                }
            }
        }
    }

    async fn attempt(
        &self,
        slot: Slot,
        request: Request<()>,
        span: &Span,
    ) -> Result<Tunnel, Failure> {
        let stale = |slot: Slot, error| {
            if slot.reused {
                Failure::Stale { slot, error }
            } else {
                Failure::Final(error)
            }
        };
        let send_request: SendRequest<Bytes> = match slot.ready().await {
            Ok(send_request) => send_request,
            Err(NotReady::Dial(err)) => return Err(Failure::Final(err)),
            Err(NotReady::Closed) => {
                let err = HboneError::Protocol("the pooled connection closed".to_owned());
                return Err(stale(slot, err));
            }
        };
        let mut send_request = match send_request.ready().await {
            Ok(send_request) => send_request,
            Err(err) => return Err(stale(slot, protocol("the pooled connection failed", err))),
        };
        let (response, send) = match send_request.send_request(request, false) {
            Ok(pair) => pair,
            Err(err) => return Err(stale(slot, protocol("cannot send the CONNECT", err))),
        };
        let timeout = self.pool.config.answer_timeout;
        let response = match tokio::time::timeout(timeout, response).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) if connection_level(&err) => {
                return Err(stale(
                    slot,
                    protocol("the gateway dropped the CONNECT", err),
                ));
            }
            Ok(Err(err)) => {
                return Err(Failure::Final(protocol(
                    "the gateway reset the CONNECT",
                    err,
                )));
            }
            Err(_) => {
                return Err(Failure::Final(HboneError::Protocol(format!(
                    "the gateway did not answer the CONNECT within {timeout:?}"
                ))));
            }
        };
        let status = response.status();
        if !status.is_success() {
            let message = tokio::time::timeout(timeout, read_message(response.into_body()))
                .await
                .unwrap_or_default();
            return Err(Failure::Final(HboneError::Refused {
                status: status.as_u16(),
                message,
            }));
        }
        debug!(stream = ?send.stream_id(), "tunnel opened");
        let counters = self.pool.metrics.tunnel(OUTBOUND);
        Ok(Tunnel::new(
            send,
            response.into_body(),
            slot,
            counters,
            span.clone(),
        ))
    }
}

enum Failure {
    Final(HboneError),
    /// Failed on a connection that was pooled before we came: it may have
    /// gone stale (GOAWAY, dead socket).
    Stale {
        slot: Slot,
        error: HboneError,
    },
}

/// `CONNECT <authority>` with the tunnel headers.
fn request(authority: &str, meta: &TunnelMeta) -> Result<Request<()>, HboneError> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(())
        .map_err(|err| {
            HboneError::Protocol(format!(
                "tunnel target {authority:?} is not host:port: {err}"
            ))
        })?;
    if request.uri().authority().is_none() || request.uri().path_and_query().is_some() {
        return Err(HboneError::Protocol(format!(
            "tunnel target {authority:?} is not host:port"
        )));
    }
    wire::put_meta(meta, request.headers_mut())?;
    Ok(request)
}

/// Errors that say the connection, not this stream, failed.
fn connection_level(err: &h2::Error) -> bool {
    err.is_go_away() || err.is_io() || err.reason() == Some(Reason::REFUSED_STREAM)
}

fn protocol(what: &str, err: h2::Error) -> HboneError {
    HboneError::Protocol(format!("{what}: {err}"))
}

/// The refusal's text body, bounded; whatever arrived if the stream ends badly.
async fn read_message(mut body: RecvStream) -> String {
    let mut message = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        let room = MAX_REFUSAL_MESSAGE.saturating_sub(message.len());
        message.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if message.len() >= MAX_REFUSAL_MESSAGE {
            break;
        }
    }
    String::from_utf8_lossy(&message).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_requests_carry_the_target_and_headers() {
        let meta = TunnelMeta {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..TunnelMeta::default()
        };
        let req = request("reviews.bookinfo.mesh.internal:9080", &meta).unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(
            req.uri().authority().map(|a| a.as_str()),
            Some("reviews.bookinfo.mesh.internal:9080")
        );
        assert!(req.headers().contains_key("traceparent"));
        assert!(request("http://x/y", &meta).is_err());
        assert!(request("bad host:80", &meta).is_err());
    }
}
