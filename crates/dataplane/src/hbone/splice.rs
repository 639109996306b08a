//! The gateway's copy loop: caller's stream ⇄ upstream, both ways at once,
//! in one task without locks.
//!
//! Caller → upstream: each DATA chunk is written as it is (no copy), and
//! its flow-control capacity is released as it is written, so a slow
//! upstream slows the caller down instead of filling our memory. END_STREAM
//! shuts the upstream's write side down.
//!
//! Upstream → caller: reads go into a buffer that grows 1 KiB → 16 KiB →
//! 256 KiB whenever a read fills it (ztunnel's sizes: small for chatty
//! streams, large for bulk), and are handed to h2 without a copy under
//! reserved capacity. Upstream EOF becomes END_STREAM.
//!
//! A reset by the caller ends the splice at once, whatever the upstream is
//! doing; an upstream error resets the caller's stream (CONNECT_ERROR, RFC
//! 9113 §8.5).

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tracing::debug;

use super::metrics::TunnelCounters;
use super::server::Upstream;
use super::wire;

/// Read buffer sizes, stepped up after a read that filled the buffer.
const BUFFER_SIZES: [usize; 3] = [1024, 16 * 1024, 256 * 1024];

/// How a splice failed.
#[derive(Debug)]
pub(crate) enum SpliceError {
    /// The caller reset the stream, or its connection failed.
    Caller(io::Error),
    /// The caller reset the stream with CANCEL or NO_ERROR before it ended
    /// its side: it no longer wants the stream. Not a failure: ztunnel
    /// ends its tunnels so once its own copy is over, even while the
    /// upstream is still open (INTEROP.md, run I); a client that drops a
    /// tunnel mid-transfer looks the same.
    Cancelled(io::Error),
    /// Reading from or writing to the upstream failed.
    Upstream(io::Error),
}

pub(crate) struct Splice<'a> {
    upstream: Box<dyn Upstream>,
    send: SendStream<Bytes>,
    recv: RecvStream,
    counters: &'a TunnelCounters,
    // caller → upstream
    inbound: Bytes,
    caller_eof: bool,
    upstream_shut: bool,
    needs_flush: bool,
    from_caller: u64,
    // upstream → caller
    buf: BytesMut,
    size: usize,
    outbound: Bytes,
    upstream_eof: bool,
    caller_eos_sent: bool,
    to_caller: u64,
}

impl<'a> Splice<'a> {
    pub(crate) fn new(
        upstream: Box<dyn Upstream>,
        send: SendStream<Bytes>,
        recv: RecvStream,
        counters: &'a TunnelCounters,
    ) -> Self {
        Splice {
            upstream,
            send,
            recv,
            counters,
            inbound: Bytes::new(),
            caller_eof: false,
            upstream_shut: false,
            needs_flush: false,
            from_caller: 0,
            buf: BytesMut::new(),
            size: 0,
            outbound: Bytes::new(),
            upstream_eof: false,
            caller_eos_sent: false,
            to_caller: 0,
        }
    }

    /// Bytes relayed so far: (from the caller, to the caller).
    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.from_caller, self.to_caller)
    }

    /// Resets the caller's stream after an upstream failure.
    pub(crate) fn reset_caller(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
    }

    fn poll_to_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SpliceError>> {
        loop {
            if self.upstream_shut {
                return Poll::Ready(Ok(()));
            }
            if !self.inbound.is_empty() {
                let written = ready!(Pin::new(&mut self.upstream).poll_write(cx, &self.inbound))
                    .map_err(SpliceError::Upstream)?;
                if written == 0 {
                    return Poll::Ready(Err(SpliceError::Upstream(
                        io::ErrorKind::WriteZero.into(),
                    )));
                }
                self.inbound.advance(written);
                self.needs_flush = true;
                let _ = self.recv.flow_control().release_capacity(written);
                self.from_caller += written as u64;
                self.counters.received.inc_by(written as u64);
                continue;
            }
            if self.caller_eof {
                // Shutting down flushes. A failure means the upstream is
                // gone already; its read side reports that.
                if let Err(err) = ready!(Pin::new(&mut self.upstream).poll_shutdown(cx)) {
                    debug!(error = %err, "cannot shut the upstream's write side down");
                }
                self.upstream_shut = true;
                return Poll::Ready(Ok(()));
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.inbound = chunk,
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(caller_error(err))),
                Poll::Ready(None) => self.caller_eof = true,
                Poll::Pending => {
                    if self.needs_flush {
                        ready!(Pin::new(&mut self.upstream).poll_flush(cx))
                            .map_err(SpliceError::Upstream)?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_to_caller(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SpliceError>> {
        loop {
            if self.caller_eos_sent {
                return Poll::Ready(Ok(()));
            }
            if !self.outbound.is_empty() {
                ready!(wire::poll_send(&mut self.send, cx, &mut self.outbound))
                    .map_err(SpliceError::Caller)?;
                continue;
            }
            if self.upstream_eof {
                self.send
                    .send_data(Bytes::new(), true)
                    .map_err(caller_error)?;
                self.caller_eos_sent = true;
                return Poll::Ready(Ok(()));
            }
            let size = BUFFER_SIZES[self.size];
            if self.buf.capacity() < size {
                // Reuses the allocation once h2 has written the last chunk out.
                self.buf.reserve(size);
            }
            let read = pin!(self.upstream.read_buf(&mut self.buf)).poll(cx);
            let n = ready!(read).map_err(SpliceError::Upstream)?;
            if n == 0 {
                self.upstream_eof = true;
                continue;
            }
            if n >= size && self.size + 1 < BUFFER_SIZES.len() {
                self.size += 1;
            }
            self.to_caller += n as u64;
            self.counters.sent.inc_by(n as u64);
            self.outbound = self.buf.split().freeze();
        }
    }
}

/// A caller's h2 error: a reset with CANCEL or NO_ERROR is a cancel.
fn caller_error(err: h2::Error) -> SpliceError {
    let cancel = err.is_reset()
        && err.is_remote()
        && matches!(err.reason(), Some(Reason::CANCEL | Reason::NO_ERROR));
    let err = wire::h2_to_io(err);
    if cancel {
        SpliceError::Cancelled(err)
    } else {
        SpliceError::Caller(err)
    }
}

impl Future for Splice<'_> {
    type Output = Result<(), SpliceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.poll_both(cx) {
            // A caller that ended its side (END_STREAM) and then cancels
            // the stream is done, not failing: ztunnel ends its tunnels so
            // (it drops the stream once its copy is over: RST_STREAM
            // CANCEL). What the upstream still had for it is dropped.
            Poll::Ready(Err(SpliceError::Caller(_) | SpliceError::Cancelled(_)))
                if this.finished_by_caller(cx) =>
            {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl Splice<'_> {
    /// The caller sent END_STREAM, then reset with CANCEL or NO_ERROR.
    fn finished_by_caller(&mut self, cx: &mut Context<'_>) -> bool {
        self.caller_eof
            && matches!(
                self.send.poll_reset(cx),
                Poll::Ready(Ok(Reason::CANCEL | Reason::NO_ERROR))
            )
    }

    fn poll_both(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SpliceError>> {
        let this = self;
        let to_upstream = this.poll_to_upstream(cx)?;
        let to_caller = this.poll_to_caller(cx)?;
        if to_upstream.is_ready() && to_caller.is_ready() {
            return Poll::Ready(Ok(()));
        }
        // Both directions may be waiting on the upstream alone; a reset by
        // the caller must still end the tunnel (and close the upstream).
        match this.send.poll_reset(cx) {
            Poll::Ready(Ok(reason @ (Reason::CANCEL | Reason::NO_ERROR))) => {
                Poll::Ready(Err(SpliceError::Cancelled(wire::reset_error(reason))))
            }
            Poll::Ready(Ok(reason)) => {
                Poll::Ready(Err(SpliceError::Caller(wire::reset_error(reason))))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(caller_error(err))),
            Poll::Pending => Poll::Pending,
        }
    }
}
