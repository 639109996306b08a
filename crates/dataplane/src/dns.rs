//! The DNS server of a cluster's proxy (SPEC D1).
//!
//! Answers A/AAAA queries for the global hostnames visible to this cluster (and the
//! `*.svc.cluster.local` names of taken-over services) from a [`DnsTable`] with the
//! cluster's VIPs, answers NXDOMAIN for invisible names under a global domain, and
//! forwards everything else to the upstream resolver.
//!
//! - `table`: the table and how a name is classified (pure).
//! - `handler`: the request handler: local answers, negative answers, relaying.
//! - `fast`: plain UDP queries for our names answered from the datagram.
//! - `forward`: the exchange with the upstream over UDP/TCP, bounded in number.
//! - `udp`, `tcp`: the listeners (UDP on a thread of its own; TCP with
//!   hickory's framing; our loops, bounded: SPEC B5).
//! - `metrics`: `dns_queries_total{result}`, `dns_tcp_listener_...`.

mod fast;
mod forward;
mod handler;
mod metrics;
mod table;
mod tcp;
mod udp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshpeer_listener::{Gate, Limits};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tracing::info;

pub use self::metrics::DnsMetrics;
pub use self::table::{DnsTable, Names};

use self::forward::Upstreams;
use self::handler::Handler;

/// A TCP client that sends nothing for this long is disconnected (at least the
/// upstream timeout plus a margin, so a pending forward is never cut off).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer asked for the UDP socket (the kernel caps it at
/// `net.core.rmem_max`): at the default (208 KiB) a burst of a few hundred
/// queries overflows it and the kernel drops them (`UdpRcvbufErrors`;
/// dnsperf with 200 queries outstanding lost 7 per run, with 1,000 about
/// 800), while NSD, which asks for a large buffer, lost none.
const UDP_RECV_BUFFER: usize = 4 << 20;
/// How many ports to try when port 0 was asked and the UDP port is taken for TCP.
const BIND_ATTEMPTS: usize = 16;

/// Configuration of the DNS server.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP on the same address; port 0 picks one free port for both.
    pub listen: SocketAddr,
    /// Where other names are forwarded, in order of preference (the next one
    /// when one does not answer; the last to answer is asked first); empty:
    /// answer REFUSED for them.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of our answers, seconds (default 5).
    pub ttl: u32,
    /// How long to wait for each upstream (default 2 s): then the next one,
    /// or SERVFAIL after the last.
    pub upstream_timeout: Duration,
    /// Forwards in flight at most (each a task and a socket); beyond, a
    /// query to forward is answered SERVFAIL at once and counted
    /// (`dns_queries_total{result="overloaded"}`). Default 1,024.
    pub max_forwards: usize,
    /// DNS-over-TCP connections open at most; one more closes the oldest
    /// (`dns_tcp_listener_connections_closed_total{reason="shed"}`).
    /// Default 512.
    pub max_tcp_connections: usize,
}

impl DnsConfig {
    /// Listens on `listen`, no upstream, TTL 5 s, upstream timeout 2 s.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            upstreams: Vec::new(),
            ttl: 5,
            upstream_timeout: Duration::from_secs(2),
            max_forwards: 1024,
            max_tcp_connections: 512,
        }
    }
}

/// A running DNS server (UDP and TCP). Dropping it stops it too, without waiting.
pub struct DnsServer {
    /// The UDP listener's thread and the TCP listener's task; both stop on
    /// drop.
    udp: udp::UdpServer,
    tcp: AbortOnDrop,
    local_addr: SocketAddr,
    /// Dropped on shutdown: forwards still waiting for the upstream stop.
    _stop: watch::Sender<()>,
}

impl fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` (the same port for both) and serves from
    /// the current value of `table` at every query.
    pub async fn start(
        config: DnsConfig,
        table: watch::Receiver<Arc<DnsTable>>,
        metrics: Arc<DnsMetrics>,
    ) -> io::Result<DnsServer> {
        let (udp, tcp) = bind(config.listen).await?;
        let local_addr = udp.local_addr()?;
        let (stop_tx, stop) = watch::channel(());
        let upstream = Upstreams::new(&config.upstreams, config.upstream_timeout).map(Arc::new);
        let worst = upstream.as_ref().map_or(Duration::ZERO, |u| u.worst_case());
        let gate = Gate::new(
            "dns_tcp",
            Limits {
                max_pending: config.max_tcp_connections.max(1),
                // A DNS connection never authenticates: it is bounded by the
                // cap (the oldest shed) and by its idle timeout.
                handshake_timeout: None,
                max_connections: 0,
                idle_timeout: TCP_IDLE_TIMEOUT,
            },
            Arc::clone(&metrics.tcp),
        );
        let handler = Handler {
            table,
            ttl: config.ttl,
            upstream,
            metrics,
            stop,
            forwards: Arc::new(Semaphore::new(config.max_forwards.max(1))),
        };
        let idle = TCP_IDLE_TIMEOUT.max(worst + Duration::from_secs(1));
        let udp = udp::UdpServer::start(udp, handler.clone())?;
        let tcp = AbortOnDrop(tokio::spawn(tcp::serve(tcp, handler, gate, idle)));
        info!(
            %local_addr,
            upstreams = ?config.upstreams,
            ttl = config.ttl,
            upstream_timeout = ?config.upstream_timeout,
            max_forwards = config.max_forwards,
            max_tcp_connections = config.max_tcp_connections,
            "dns server listening on udp and tcp"
        );
        Ok(DnsServer {
            udp,
            tcp,
            local_addr,
            _stop: stop_tx,
        })
    }

    /// The address served, the same port for UDP and TCP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting queries, drops in-flight forwards and waits for the sockets
    /// to be closed.
    pub async fn shutdown(self) {
        let DnsServer { udp, mut tcp, .. } = self;
        tcp.0.abort();
        udp.stop().await;
        let _ = (&mut tcp.0).await;
        info!(local_addr = %self.local_addr, "dns server stopped");
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers one query, given as its wire bytes, as the server does (the
/// UDP or TCP framing aside) from `table`, without an upstream: a name
/// that is not ours is answered REFUSED. `None` when nothing is answered
/// (fewer than the 12 bytes of a header). For tests and fuzzing (SPEC B7):
/// the same handler as the server's.
pub async fn answer(table: Arc<DnsTable>, ttl: u32, query: Vec<u8>, tcp: bool) -> Option<Vec<u8>> {
    use futures_util::{FutureExt, StreamExt};
    use hickory_server::net::BufDnsStreamHandle;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::server::ResponseHandle;

    let (_table_tx, table) = watch::channel(table);
    let (_stop_tx, stop) = watch::channel(());
    let handler = Handler {
        table,
        ttl,
        upstream: None,
        metrics: Arc::default(),
        stop,
        forwards: Arc::new(Semaphore::new(1)),
    };
    let client = SocketAddr::from(([127, 0, 0, 1], 5353));
    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
    let (responses, mut sent) = BufDnsStreamHandle::new(client);
    let handle = ResponseHandle::new(client, responses, protocol);
    handler.handle_bytes(query, client, protocol, handle).await;
    let message = sent.next().now_or_never().flatten()?;
    Some(message.into_parts().0)
}

/// A UDP socket and a TCP listener on the same address and port.
async fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if listen.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen).await.map_err(|error| {
            io::Error::new(error.kind(), format!("dns: binding udp {listen}: {error}"))
        })?;
        let addr = udp.local_addr()?;
        // Best effort: a smaller buffer still works, it only drops sooner.
        let sock = socket2::SockRef::from(&udp);
        if let Err(error) = sock.set_recv_buffer_size(UDP_RECV_BUFFER) {
            tracing::debug!(%error, "dns: cannot enlarge the udp receive buffer");
        }
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The kernel picked a UDP port whose TCP twin is busy: pick another.
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && attempt < attempts => {}
            Err(error) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!("dns: binding tcp {addr}: {error}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Issue 14: the UDP socket asks for a receive buffer large enough for
    /// bursts (dnsperf's lost queries were the kernel's receive-buffer
    /// drops); the kernel grants at least what `net.core.rmem_max` allows.
    #[tokio::test]
    async fn b5_the_udp_socket_asks_for_a_large_receive_buffer() {
        let (udp, _tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let got = socket2::SockRef::from(&udp).recv_buffer_size().unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            got >= UDP_RECV_BUFFER.min(rmem_max),
            "{got} < min({UDP_RECV_BUFFER}, {rmem_max})"
        );
    }
}
