//! DNS over UDP: a plain query for one of our names is answered at once,
//! from its datagram ([`super::fast`]); any other gets a task, at most
//! `MAX_IN_FLIGHT` at once (beyond, a datagram is dropped and counted: the
//! client asks again), and goes to the same [`Handler`] as TCP's. hickory's stream does the
//! socket work: one datagram read at a time into a fixed buffer, answers
//! sent before more is read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hickory_proto::op::SerialMessage;
use hickory_server::net::DnsStreamHandle;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpStream;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::ResponseHandle;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::fast::{self, Fast};
use super::handler::Handler;

/// Datagrams being answered at once (each a small task; forwards are
/// bounded on their own).
const MAX_IN_FLIGHT: usize = 4096;

/// Answers DNS over UDP on `socket` until the task is aborted.
pub(crate) async fn serve(socket: UdpSocket, handler: Handler) {
    let (mut stream, responses) =
        UdpStream::<TokioRuntimeProvider>::with_bound(socket, ([127, 255, 255, 254], 0).into());
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(received) = stream.next().await {
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                // ICMP errors of earlier answers and the like: go on.
                debug!(%error, "dns: udp receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let (bytes, src) = message.into_parts();
        if !answerable(src) {
            warn!(%src, "dns: a datagram from an address that cannot be answered; dropped");
            continue;
        }
        let answered = {
            let table = handler.table.borrow();
            fast::answer(&bytes, &table, handler.ttl, handler.upstream.is_some())
        };
        if let Fast::Answer(answer, result) = answered {
            handler.metrics.count(result);
            if let Err(error) = responses
                .with_remote_addr(src)
                .send(SerialMessage::new(answer, src))
            {
                debug!(%error, "dns: udp answer not sent");
            }
            continue;
        }
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            handler.dropped(Protocol::Udp);
            continue;
        };
        let handle = ResponseHandle::new(src, responses.with_remote_addr(src), Protocol::Udp);
        let handler = handler.clone();
        tokio::spawn(async move {
            handler
                .handle_bytes(bytes, src, Protocol::Udp, handle)
                .await;
            drop(permit);
        });
    }
    warn!("dns: the udp socket closed");
}

/// Whether an answer can be sent to `src` (not port 0, not an unspecified
/// or broadcast address): a spoofed source must not make us send there.
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_broadcast(),
            IpAddr::V6(ip) => !ip.is_unspecified(),
        }
}
