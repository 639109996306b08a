//! The client's end of a tunnel as a byte stream.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{Span, debug};

use super::metrics::TunnelCounters;
use super::pool::Slot;
use super::wire;

/// An open tunnel: a byte stream to the target behind the gateway.
///
/// `shutdown()` half-closes (END_STREAM: the target reads EOF, and we can
/// still read its reply); reading returns EOF once the target closed its
/// side. Dropping it before both directions ended resets the stream
/// (RST_STREAM CANCEL). A reset from the other side (the target's
/// connection failed or was reset) is an I/O error of kind
/// `ConnectionReset`. Writes wait for HTTP/2 flow control; `flush` has
/// nothing to do (the connection's task writes the frames).
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The rest of the last chunk received.
    pending: Bytes,
    read_eof: bool,
    write_closed: bool,
    failed: bool,
    sent: u64,
    received: u64,
    counters: TunnelCounters,
    span: Span,
    /// Holds our stream slot on the pooled connection until we drop.
    _slot: Slot,
}

impl Tunnel {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        slot: Slot,
        counters: TunnelCounters,
        span: Span,
    ) -> Self {
        Tunnel {
            send,
            recv,
            pending: Bytes::new(),
            read_eof: false,
            write_closed: false,
            failed: false,
            sent: 0,
            received: 0,
            counters,
            span,
            _slot: slot,
        }
    }

    fn fail(&mut self, err: io::Error) -> io::Error {
        if !self.failed {
            self.failed = true;
            debug!(parent: &self.span, error = %err, "tunnel failed");
        }
        err
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    // Released as soon as taken: h2 then holds at most one
                    // window per stream, and the sender never stalls on us.
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    this.received += chunk.len() as u64;
                    this.counters.received.inc_by(chunk.len() as u64);
                    this.pending = chunk;
                }
                Some(Err(err)) => return Poll::Ready(Err(this.fail(wire::h2_to_io(err)))),
                None => this.read_eof = true,
            }
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel is shut down for writing",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        let err = match ready!(this.send.poll_capacity(cx)) {
            Some(Ok(granted)) => {
                let n = granted.min(buf.len());
                match this
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                {
                    Ok(()) => {
                        this.sent += n as u64;
                        this.counters.sent.inc_by(n as u64);
                        return Poll::Ready(Ok(n));
                    }
                    Err(err) => Some(err),
                }
            }
            Some(Err(err)) => Some(err),
            None => None,
        };
        let err = wire::send_failure(&mut this.send, cx, err);
        Poll::Ready(Err(this.fail(err)))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Err(err) => {
                let err = wire::send_failure(&mut this.send, cx, Some(err));
                Poll::Ready(Err(this.fail(err)))
            }
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let ended = self.read_eof && self.write_closed;
        if !ended {
            self.send.send_reset(Reason::CANCEL);
        }
        let ok = ended && !self.failed;
        self.counters.closed(if ok { "ok" } else { "error" });
        debug!(
            parent: &self.span,
            sent = self.sent,
            received = self.received,
            ok,
            reset = !ended,
            "tunnel closed"
        );
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("conn", &self._slot.conn.id)
            .field("stream", &self.send.stream_id())
            .field("read_eof", &self.read_eof)
            .field("write_closed", &self.write_closed)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}
