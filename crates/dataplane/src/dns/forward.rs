//! Forwarding of queries that are not ours to the upstream resolvers.
//!
//! Several upstreams are asked in order, the next one when one does not
//! answer (timeout, refused connection, undecodable answer); the one that
//! answered last is asked first next time, so a dead first resolver costs
//! one timeout, not one per query.
//!
//! One fresh socket per query (a connected UDP socket, or a TCP connection): the
//! kernel then drops datagrams from other sources, concurrent queries never share
//! state, and a random id per query makes blind spoofing of replies harder.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::serialize::binary::DecodeError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

/// Largest DNS message; UDP datagrams and TCP frames are bounded by it.
const MAX_MESSAGE: usize = u16::MAX as usize;

/// Why a query could not be forwarded; the client gets SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("upstream {upstream} did not answer within {timeout:?}: check that it is reachable")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("exchange with upstream {upstream} over {transport} failed: {source}")]
    Io {
        upstream: SocketAddr,
        transport: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("upstream {upstream} sent an undecodable answer over {transport}: {source}")]
    Malformed {
        upstream: SocketAddr,
        transport: &'static str,
        #[source]
        source: DecodeError,
    },
    #[error("upstream {upstream} answered over TCP with an id or question that does not match")]
    Mismatch { upstream: SocketAddr },
    #[error("query of {len} bytes is not a DNS message that can be forwarded")]
    BadQuery { len: usize },
}

/// The resolvers that get every query that is not ours, in order of
/// preference.
#[derive(Debug)]
pub(crate) struct Upstreams {
    list: Vec<Upstream>,
    /// Index of the upstream that answered last: asked first.
    preferred: AtomicUsize,
}

impl Upstreams {
    /// None without any address: queries that are not ours are refused.
    pub(crate) fn new(addrs: &[SocketAddr], timeout: Duration) -> Option<Self> {
        if addrs.is_empty() {
            return None;
        }
        Some(Self {
            list: addrs
                .iter()
                .map(|&addr| Upstream { addr, timeout })
                .collect(),
            preferred: AtomicUsize::new(0),
        })
    }

    /// The longest a forward can take: every upstream timing out in turn.
    pub(crate) fn worst_case(&self) -> Duration {
        self.list.iter().map(|u| u.timeout).sum()
    }

    /// Asks the preferred upstream, then the others in order, until one
    /// answers; the last failure when none does.
    pub(crate) async fn forward(
        &self,
        query: &[u8],
        question: &Query,
        tcp: bool,
    ) -> Result<Message, ForwardError> {
        let n = self.list.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut k = first;
        loop {
            match self.list[k].forward(query, question, tcp).await {
                Ok(answer) => {
                    if k != first {
                        debug!(upstream = %self.list[k].addr, "dns upstream answered; asked first from now on");
                        self.preferred.store(k, Ordering::Relaxed);
                    }
                    return Ok(answer);
                }
                Err(error) => {
                    let next = (k + 1) % n;
                    if next == first {
                        return Err(error);
                    }
                    debug!(upstream = %self.list[k].addr, %error, "dns upstream failed; asking the next");
                    k = next;
                }
            }
        }
    }
}

/// One resolver that gets queries that are not ours.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) timeout: Duration,
}

impl Upstream {
    /// Sends `query` (a wire-format request, unchanged but for its id) and returns the
    /// answer, whose id is the one we chose (the caller restores the client's).
    /// UDP first unless `tcp`, then TCP when the UDP answer is truncated; the whole
    /// exchange is bounded by the timeout.
    pub(crate) async fn forward(
        &self,
        query: &[u8],
        question: &Query,
        tcp: bool,
    ) -> Result<Message, ForwardError> {
        let exchange = async {
            let id = fastrand::u16(..);
            let mut wire = query.to_vec();
            let Some(id_bytes) = wire.get_mut(..2) else {
                return Err(ForwardError::BadQuery { len: query.len() });
            };
            id_bytes.copy_from_slice(&id.to_be_bytes());
            if !tcp {
                let answer = self.udp(&wire, id, question).await?;
                if !answer.metadata.truncation {
                    return Ok(answer);
                }
            }
            self.tcp(&wire, id, question).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(ForwardError::Timeout {
                upstream: self.addr,
                timeout: self.timeout,
            }))
    }

    async fn udp(&self, wire: &[u8], id: u16, question: &Query) -> Result<Message, ForwardError> {
        let io_err = |source| ForwardError::Io {
            upstream: self.addr,
            transport: "udp",
            source,
        };
        let any: SocketAddr = match self.addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).await.map_err(io_err)?;
        socket.connect(self.addr).await.map_err(io_err)?;
        socket.send(wire).await.map_err(io_err)?;
        let mut buf = vec![0; MAX_MESSAGE];
        loop {
            let len = socket.recv(&mut buf).await.map_err(io_err)?;
            let datagram = &buf[..len];
            // Anything without our id is noise (late answer, spoofing attempt): keep waiting.
            if datagram.get(..2) != Some(&id.to_be_bytes()[..]) {
                continue;
            }
            let answer = Message::from_vec(datagram).map_err(|source| ForwardError::Malformed {
                upstream: self.addr,
                transport: "udp",
                source,
            })?;
            if answers(&answer, id, question) {
                return Ok(answer);
            }
        }
    }

    async fn tcp(&self, wire: &[u8], id: u16, question: &Query) -> Result<Message, ForwardError> {
        let io_err = |source| ForwardError::Io {
            upstream: self.addr,
            transport: "tcp",
            source,
        };
        let len =
            u16::try_from(wire.len()).map_err(|_| ForwardError::BadQuery { len: wire.len() })?;
        let mut stream = TcpStream::connect(self.addr).await.map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        let mut frame = Vec::with_capacity(wire.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(wire);
        stream.write_all(&frame).await.map_err(io_err)?;
        let len = stream.read_u16().await.map_err(io_err)?;
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await.map_err(io_err)?;
        let answer = Message::from_vec(&buf).map_err(|source| ForwardError::Malformed {
            upstream: self.addr,
            transport: "tcp",
            source,
        })?;
        if answers(&answer, id, question) {
            Ok(answer)
        } else {
            Err(ForwardError::Mismatch {
                upstream: self.addr,
            })
        }
    }
}

/// Whether `answer` answers our query. Error answers (FORMERR, REFUSED) may come
/// without the question section.
fn answers(answer: &Message, id: u16, question: &Query) -> bool {
    answer.metadata.id == id
        && answer.metadata.message_type == MessageType::Response
        && match answer.queries.as_slice() {
            [] => true,
            [echoed] => echoed == question,
            _ => false,
        }
}
