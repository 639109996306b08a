//! DNS over UDP, served from a thread of its own that blocks on the socket
//! (as NSD's server process does): a plain query for one of our names is
//! answered at once, from its datagram ([`super::fast`]), by that thread;
//! any other gets a task on the runtime, at most `MAX_IN_FLIGHT` at once
//! (beyond, a datagram is dropped and counted: the client asks again), and
//! goes to the same [`Handler`] as TCP's, its answer sent without waiting
//! (a full send buffer drops it, as the network would).
//!
//! Why a thread: served from a task, every time the socket ran dry the task
//! parked, its worker slept in `epoll_wait` and was woken again; with
//! dnsperf the proxy spent a quarter of its time going to sleep and waking
//! (`__schedule`, `do_epoll_wait`), against NSD's 3%, and answered 0.74-0.89x
//! NSD's queries/s. A thread asleep in `recvfrom` is woken by the datagram
//! itself (BENCHMARKS.md, DNS).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use hickory_server::net::BufDnsStreamHandle;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::ResponseHandle;
use socket2::{SockAddr, SockRef};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::fast::{self, Fast};
use super::handler::Handler;

/// Datagrams being answered at once (each a small task; forwards are
/// bounded on their own).
const MAX_IN_FLIGHT: usize = 4096;
/// The largest datagram read; a longer one is cut (and then malformed), as
/// hickory's UDP stream did.
const MAX_DATAGRAM: usize = 4096;
/// How long the thread sleeps in `recvfrom` before it looks whether the
/// server stopped (a stop also wakes it at once: see [`UdpServer::stop`]).
const STOP_POLL: Duration = Duration::from_millis(500);

/// The UDP half of the DNS server: its thread runs until [`UdpServer::stop`]
/// or until dropped.
pub(crate) struct UdpServer {
    socket: Arc<UdpSocket>,
    stopped: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpServer {
    /// Serves `socket` from a new thread; queries that need the runtime
    /// (forwards, anything but a plain query for our names) run on the
    /// current one.
    pub(crate) fn start(socket: tokio::net::UdpSocket, handler: Handler) -> io::Result<UdpServer> {
        let socket = socket.into_std()?;
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(STOP_POLL))?;
        let socket = Arc::new(socket);
        let stopped = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new().name("dns-udp".into()).spawn({
            let (socket, stopped) = (Arc::clone(&socket), Arc::clone(&stopped));
            move || serve(&socket, &handler, &runtime, &stopped)
        })?;
        Ok(UdpServer {
            socket,
            stopped,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it to end (the socket then closes).
    pub(crate) async fn stop(mut self) {
        self.signal();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    fn signal(&self) {
        self.stopped.store(true, Ordering::Release);
        // Wakes a thread asleep in `recvfrom` (Linux does so even for an
        // unconnected socket, though it answers ENOTCONN); else the read
        // timeout does, within STOP_POLL.
        let _ = SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.signal();
        }
    }
}

fn serve(
    socket: &Arc<UdpSocket>,
    handler: &Handler,
    runtime: &tokio::runtime::Handle,
    stopped: &AtomicBool,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = [0u8; MAX_DATAGRAM];
    while !stopped.load(Ordering::Acquire) {
        let (len, src) = match socket.recv_from(&mut buf) {
            Ok((len, src)) => (len, src),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                // ICMP errors of earlier answers and the like: go on.
                debug!(%error, "dns: udp receive failed");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        if stopped.load(Ordering::Acquire) {
            break;
        }
        let bytes = &buf[..len];
        if !answerable(src) {
            warn!(%src, "dns: a datagram from an address that cannot be answered; dropped");
            continue;
        }
        let answered = {
            let table = handler.table.borrow();
            fast::answer(bytes, &table, handler.ttl, handler.upstream.is_some())
        };
        if let Fast::Answer(answer, result) = answered {
            handler.metrics.count(result);
            if let Err(error) = socket.send_to(&answer, src) {
                debug!(%error, "dns: udp answer not sent");
            }
            continue;
        }
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            handler.dropped(Protocol::Udp);
            continue;
        };
        let (bytes, handler, socket) = (bytes.to_vec(), handler.clone(), Arc::downgrade(socket));
        runtime.spawn(async move {
            let (responses, mut sent) = BufDnsStreamHandle::new(src);
            let handle = ResponseHandle::new(src, responses, Protocol::Udp);
            handler
                .handle_bytes(bytes, src, Protocol::Udp, handle)
                .await;
            drop(permit);
            // Its answer, now or (a forward: bounded on its own, and
            // stopped with the server) when the upstream has answered; the
            // stream ends with the last handle.
            while let Some(message) = sent.next().await {
                // Not kept open by an answer still on its way once the
                // server has stopped.
                let Some(socket) = socket.upgrade() else {
                    return;
                };
                let (answer, to) = message.into_parts();
                if let Err(error) = SockRef::from(&*socket).send_to_with_flags(
                    &answer,
                    &SockAddr::from(to),
                    libc::MSG_DONTWAIT,
                ) {
                    debug!(%error, "dns: udp answer not sent");
                }
            }
        });
    }
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
