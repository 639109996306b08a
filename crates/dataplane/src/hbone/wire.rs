//! What both sides share: HTTP/2 settings, tunnel headers, sending under
//! flow control, error mapping and keepalive.

use std::io;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::{Ping, PingPong, Reason, SendStream};
use http::HeaderMap;
use http::header::{FORWARDED, HeaderName, HeaderValue};
use http::uri::Authority;

use super::{HboneError, PoolConfig, TunnelMeta};

const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const PAYLOAD: HeaderName = HeaderName::from_static("x-meshpeer-payload");
const LOCALITY: HeaderName = HeaderName::from_static("x-meshpeer-locality");

/// Read buffer under TLS: rustls reads at most 4 KiB per call, so without
/// it every TLS record costs several `recv` calls.
pub(crate) const SOCKET_READ_BUFFER: usize = 64 * 1024;

/// Largest header list we accept; tunnel requests carry a few short headers.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Streams a gateway serves per connection. Clients limit themselves
/// (100 by default); this only bounds a misbehaving one.
const SERVER_MAX_CONCURRENT_STREAMS: u32 = 1000;
/// h2's bounds (RFC 9113 §6.5.2); out-of-range values would make h2 panic.
const MIN_FRAME_SIZE: u32 = 16 * 1024;
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
const MAX_WINDOW: u32 = (1 << 31) - 1;

struct Flow {
    stream_window: u32,
    conn_window: u32,
    max_frame_size: u32,
}

fn flow(config: &PoolConfig) -> Flow {
    Flow {
        stream_window: config.stream_window.min(MAX_WINDOW),
        conn_window: config.conn_window.min(MAX_WINDOW),
        max_frame_size: config.max_frame_size.clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE),
    }
}

/// The client's HTTP/2 settings.
pub(crate) fn client_builder(config: &PoolConfig) -> h2::client::Builder {
    let flow = flow(config);
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(flow.stream_window)
        .initial_connection_window_size(flow.conn_window)
        .max_frame_size(flow.max_frame_size)
        .initial_max_send_streams(config.max_streams_per_conn as usize)
        // As ztunnel: a stream may buffer a whole window, so one write can
        // fill the peer's window and go out in one flush.
        .max_send_buffer_size(flow.stream_window as usize)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_push(false);
    builder
}

/// The gateway's HTTP/2 settings: the default pool's flow control.
pub(crate) fn server_builder() -> h2::server::Builder {
    let config = PoolConfig::default();
    let flow = flow(&config);
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(flow.stream_window)
        .initial_connection_window_size(flow.conn_window)
        .max_frame_size(flow.max_frame_size)
        .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
        .max_send_buffer_size(flow.stream_window as usize)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    builder
}

/// Adds the tunnel's headers to a request.
pub(crate) fn put_meta(meta: &TunnelMeta, headers: &mut HeaderMap) -> Result<(), HboneError> {
    let fields = [
        (FORWARDED, &meta.forwarded),
        (BAGGAGE, &meta.baggage),
        (TRACEPARENT, &meta.traceparent),
        (PAYLOAD, &meta.payload),
        (LOCALITY, &meta.locality),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            let value = HeaderValue::from_str(value).map_err(|_| {
                HboneError::Protocol(format!(
                    "tunnel header {name} has a character not allowed in HTTP headers: {value:?}"
                ))
            })?;
            headers.insert(name, value);
        }
    }
    Ok(())
}

/// The tunnel's headers from a request; repeated fields are joined with
/// ", " (HTTP list syntax), values that are not visible ASCII are ignored.
pub(crate) fn take_meta(headers: &HeaderMap) -> TunnelMeta {
    let get = |name: &HeaderName| {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    TunnelMeta {
        forwarded: get(&FORWARDED),
        baggage: get(&BAGGAGE),
        traceparent: get(&TRACEPARENT),
        payload: get(&PAYLOAD),
        locality: get(&LOCALITY),
    }
}

/// Whether a `CONNECT` target is `host:port` with a non-empty host, a
/// non-zero port and no userinfo.
pub(crate) fn valid_target(authority: &Authority) -> bool {
    !authority.as_str().contains('@')
        && !authority.host().is_empty()
        && authority.port_u16().is_some_and(|port| port != 0)
}

/// Hands `chunk` to h2 as flow control allows: reserves capacity, waits for
/// it, sends what was granted; `Ready(Ok)` once all of it is queued. h2
/// then never holds more than the peer's window for this stream.
pub(crate) fn poll_send(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    chunk: &mut Bytes,
) -> Poll<io::Result<()>> {
    while !chunk.is_empty() {
        send.reserve_capacity(chunk.len());
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(granted)) => {
                let part = chunk.split_to(granted.min(chunk.len()));
                if let Err(err) = send.send_data(part, false) {
                    return Poll::Ready(Err(send_failure(send, cx, Some(err))));
                }
            }
            Some(Err(err)) => return Poll::Ready(Err(send_failure(send, cx, Some(err)))),
            None => return Poll::Ready(Err(send_failure(send, cx, None))),
        }
    }
    Poll::Ready(Ok(()))
}

/// Why sending failed: the peer's reset if there was one, else `err`.
pub(crate) fn send_failure(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    err: Option<h2::Error>,
) -> io::Error {
    match send.poll_reset(cx) {
        Poll::Ready(Ok(reason)) => reset_error(reason),
        Poll::Ready(Err(err)) => h2_to_io(err),
        Poll::Pending => match err {
            Some(err) => h2_to_io(err),
            None => io::Error::new(io::ErrorKind::BrokenPipe, "tunnel is closed for writing"),
        },
    }
}

/// A stream reset as the I/O error a socket would give.
pub(crate) fn reset_error(reason: Reason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("tunnel reset by peer ({reason:?}: {reason})"),
    )
}

/// h2's errors as I/O errors: resets are `ConnectionReset`, a GOAWAY is
/// `ConnectionAborted`, socket errors stay themselves.
pub(crate) fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 connection I/O error"));
    }
    match err.reason() {
        Some(reason) if err.is_go_away() => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("HTTP/2 connection closed by GOAWAY ({reason:?}: {reason})"),
        ),
        Some(reason) if err.is_remote() => reset_error(reason),
        Some(reason) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("tunnel reset ({reason:?}: {reason})"),
        ),
        None => io::Error::other(err),
    }
}

/// Whether a handshake's I/O error came from TLS (a rustls error, or an
/// alert passed on as text) rather than from the socket.
pub(crate) fn is_tls_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
        || err.to_string().starts_with("received fatal alert: ")
}

/// Pings every `interval`; returns when a ping was not answered within
/// `timeout` (the peer is gone). Must be polled alongside the connection,
/// which carries the frames.
pub(crate) async fn keepalive(mut ping_pong: PingPong, interval: Duration, timeout: Duration) {
    let interval = interval.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection is closing; its own future says why.
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_elapsed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets_need_host_and_port() {
        let cases = [
            ("reviews.bookinfo.mesh.internal:9080", true),
            ("10.0.0.7:80", true),
            ("[fd00::7]:443", true),
            ("reviews.bookinfo.mesh.internal", false),
            (":80", false),
            ("host:0", false),
            ("user@host:80", false),
        ];
        for (text, ok) in cases {
            let authority: Authority = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(valid_target(&authority), ok, "{text}");
        }
    }

    #[test]
    fn tunnel_headers_round_trip() {
        let meta = TunnelMeta {
            forwarded: Some("for=\"10.0.0.7\"".into()),
            baggage: Some("k8s.cluster.name=cluster1,k8s.namespace.name=bookinfo".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            payload: Some(crate::hbone::PAYLOAD_TCP.into()),
            locality: Some("eu-west1/eu-west1-b/rack7".into()),
        };
        let mut headers = HeaderMap::new();
        put_meta(&meta, &mut headers).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(take_meta(&headers), meta);
        assert_eq!(take_meta(&HeaderMap::new()), TunnelMeta::default());

        let bad = TunnelMeta {
            baggage: Some("a\nb".into()),
            ..TunnelMeta::default()
        };
        assert!(matches!(
            put_meta(&bad, &mut HeaderMap::new()),
            Err(HboneError::Protocol(_))
        ));
    }

    #[test]
    fn resets_read_as_connection_reset() {
        let err = reset_error(Reason::CONNECT_ERROR);
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(err.to_string().contains("CONNECT_ERROR"), "{err}");
    }
}
