//! DNS over TCP behind a gate (SPEC B5): at most `max_tcp_connections`
//! open (a new one sheds the oldest, so idle or slow clients cannot keep a
//! resolver out), each closed after `idle` without a query. hickory's
//! framing reads each message (bounded by its 16-bit length) and writes
//! the answers; queries go to the same [`Handler`] as UDP's.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::tcp::TcpStream as DnsTcpStream;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{ResponseHandle, TimeoutStream};
use meshpeer_listener::{Gate, Slot};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, debug_span, warn};

use super::handler::Handler;

/// Responses queued per TCP connection before the connection pushes back.
const RESPONSE_BUFFER: usize = 64;

/// Accepts DNS over TCP on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, handler: Handler, gate: Gate, idle: Duration) {
    loop {
        let (tcp, src) = match listener.accept().await {
            Ok(x) => x,
            Err(error) => {
                warn!(%error, "dns: tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = gate.admit();
        let handler = handler.clone();
        let span = debug_span!("dns_tcp", %src);
        tokio::spawn(connection(tcp, src, handler, slot, idle).instrument(span));
    }
}

async fn connection(tcp: TcpStream, src: SocketAddr, handler: Handler, slot: Slot, idle: Duration) {
    let _ = tcp.set_nodelay(true);
    let (stream, responses) =
        DnsTcpStream::from_stream_with_buffer_size(AsyncIoTokioAsStd(tcp), src, RESPONSE_BUFFER);
    let mut stream = TimeoutStream::new(stream, idle);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            cut = slot.cut() => {
                debug!(reason = cut.reason(), "dns tcp connection closed: {cut}");
                return;
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                debug!(%error, "dns tcp connection ended");
                return;
            }
            None => return,
        };
        let (bytes, from) = message.into_parts();
        let handle = ResponseHandle::new(from, responses.clone(), Protocol::Tcp);
        handler
            .handle_bytes(bytes, from, Protocol::Tcp, handle)
            .await;
    }
}
