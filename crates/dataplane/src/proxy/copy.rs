//! Copying a proxied connection both ways with buffers that exist only
//! while data flows (SPEC B6): a connection that sends nothing holds no
//! buffer, and one that goes quiet after a trickle gives its buffers back.
//! A read that fits the stack (a request, an answer) is written on from
//! there: only a bulk flow, or bytes the writer cannot take yet, get a
//! buffer (allocating and zeroing one per message was the L4 hop's largest
//! cost in user space; BENCHMARKS.md).
//! Half-close is kept: when one side ends, the other's write side is shut
//! down and the other direction runs on.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A read of a direction without a buffer: on the stack. A read that fills
/// it is taken as the start of a bulk flow.
const FIRST_READ: usize = 2048;

/// A bulk flow's first buffer. A read that fills it doubles it, up to the
/// size given to [`copy_both`]: fewer, larger reads and writes for long
/// transfers (64 KiB to 256 KiB took a single iperf3 stream through the
/// proxy from 0.48x to 0.74x direct; BENCHMARKS.md), and a flow that never
/// fills 64 KiB never holds more.
const FIRST_BUFFER: usize = 64 * 1024;

/// Copies `a` to `b` and `b` to `a` until both directions ended, with a
/// buffer of at most `size` bytes each way; returns the bytes copied each
/// way `(a to b, b to a)`.
pub(super) async fn copy_both<A, B>(a: &mut A, b: &mut B, size: usize) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Half::new(size);
    let mut b_to_a = Half::new(size);
    poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (ab, ba) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction.
struct Half {
    /// The largest buffer.
    size: usize,
    /// The size of the next buffer taken.
    next: usize,
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    /// Bytes the last read brought: a quiet connection (small reads) gives
    /// its buffer back when it waits.
    last_read: usize,
    eof: bool,
    needs_flush: bool,
    done: bool,
    total: u64,
}

impl Half {
    fn new(size: usize) -> Self {
        let mut half = Half {
            size: size.max(FIRST_READ),
            next: 0,
            buf: None,
            pos: 0,
            cap: 0,
            last_read: 0,
            eof: false,
            needs_flush: false,
            done: false,
            total: 0,
        };
        half.next = half.first_buffer();
        half
    }

    /// A bulk flow's first buffer: [`FIRST_BUFFER`], within the cap.
    fn first_buffer(&self) -> usize {
        FIRST_BUFFER.clamp(FIRST_READ, self.size)
    }

    /// Whether a buffer is held now.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }

    /// The size of the buffer held now.
    #[cfg(test)]
    fn buffer_len(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.total));
            }
            if self.pos == self.cap && !self.eof {
                self.pos = 0;
                self.cap = 0;
                let read = if self.buf.is_none() {
                    self.poll_small(cx, reader.as_mut(), writer.as_mut())
                } else {
                    self.poll_fill(cx, reader.as_mut())
                };
                match read {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        if self.pos < self.cap {
                            // Bytes the writer could not take: it wakes us.
                            return Poll::Pending;
                        }
                        if self.needs_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.needs_flush = false;
                        }
                        if self.last_read < self.size / 4 {
                            // Quiet: no buffer, and a bulk flow that
                            // starts again starts small.
                            self.buf = None;
                            self.next = self.first_buffer();
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = &self.buf else {
                    return Poll::Ready(Err(io::Error::other("copy buffer missing")));
                };
                let n = ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.total += n as u64;
                self.needs_flush = true;
            }
            if self.eof {
                // Shutting down flushes.
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }

    /// Without a buffer: reads onto the stack and writes what it read on
    /// at once. A buffer is taken for what the writer does not take (then
    /// `Pending`: the writer wakes us), or when the read filled the stack
    /// (a bulk flow: the next reads go to the buffer).
    fn poll_small<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let mut stack = [0u8; FIRST_READ];
        let mut read = ReadBuf::new(&mut stack);
        ready!(reader.poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.last_read = n;
        if n == 0 {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        let mut written = 0;
        while written < n {
            match writer.as_mut().poll_write(cx, &stack[written..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(w)) => {
                    written += w;
                    self.total += w as u64;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if written < n || n == FIRST_READ {
            let mut buf = vec![0; self.next].into_boxed_slice();
            let rest = n - written;
            buf[..rest].copy_from_slice(&stack[written..n]);
            self.buf = Some(buf);
            self.cap = rest;
            if rest > 0 {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads into the buffer.
    fn poll_fill<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
    ) -> Poll<io::Result<()>> {
        if self.buf.as_ref().is_some_and(|b| b.len() < self.next) {
            // The last read filled the buffer: a larger one (it is empty).
            self.buf = Some(vec![0; self.next].into_boxed_slice());
        }
        let Some(buf) = &mut self.buf else {
            return Poll::Ready(Err(io::Error::other("copy buffer missing")));
        };
        let mut read = ReadBuf::new(buf);
        ready!(reader.poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == buf.len() {
            self.next = (buf.len() * 2).min(self.size);
        }
        self.last_read = n;
        if n == 0 {
            self.eof = true;
        }
        self.cap = n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn b6_bytes_flow_both_ways_with_half_close_and_buffers_come_and_go() {
        let (mut client, mut a) = tokio::io::duplex(1 << 16);
        let (mut b, mut server) = tokio::io::duplex(1 << 16);
        let copier = tokio::spawn(async move { copy_both(&mut a, &mut b, 64 * 1024).await });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            client.write_all(&up2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up, "client to server, then EOF (half-close)");
        server.write_all(&down2).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), down);
        let (ab, ba) = copier.await.unwrap().unwrap();
        assert_eq!((ab, ba), (up.len() as u64, down.len() as u64));
    }

    /// Request and answer sized messages are written on from the stack: no
    /// buffer is taken for them; a bulk flow takes one, and gives it back
    /// once it goes quiet.
    #[test]
    fn b6_small_messages_take_no_buffer_and_a_bulk_flow_gives_its_back() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut client, mut a) = tokio::io::duplex(1 << 20);
        let (mut b, mut server) = tokio::io::duplex(1 << 20);
        let mut half = Half::new(64 * 1024);
        let mut poll = |half: &mut Half| {
            assert!(
                half.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b))
                    .is_pending()
            );
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for i in 0..10u8 {
            let msg = vec![i; 700];
            rt.block_on(client.write_all(&msg)).unwrap();
            poll(&mut half);
            assert!(!half.holds_buffer(), "message {i}");
            let mut got = vec![0; 700];
            rt.block_on(server.read_exact(&mut got)).unwrap();
            assert_eq!(got, msg);
        }
        let bulk: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        rt.block_on(client.write_all(&bulk)).unwrap();
        poll(&mut half);
        // The writer's pipe holds 1 MiB: everything went through, and the
        // last read was a full buffer's worth or a tail.
        let mut got = vec![0; bulk.len()];
        rt.block_on(server.read_exact(&mut got)).unwrap();
        assert_eq!(got, bulk);
        rt.block_on(client.write_all(b"quiet")).unwrap();
        poll(&mut half);
        assert!(!half.holds_buffer(), "a trickle after the flow");
        let mut got = [0; 5];
        rt.block_on(server.read_exact(&mut got)).unwrap();
        assert_eq!(&got, b"quiet");
        assert_eq!(half.total, 7_000 + 200_000 + 5);
    }

    /// A bulk flow starts with a 64 KiB buffer and doubles it while reads
    /// fill it, up to the cap; a quiet flow gives it back.
    #[test]
    fn b6_a_bulk_flows_buffer_grows_to_the_cap_while_reads_fill_it() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut client, mut a) = tokio::io::duplex(4 << 20);
        let (mut b, mut server) = tokio::io::duplex(4 << 20);
        let mut half = Half::new(256 * 1024);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut sizes = Vec::new();
        let mut sent = 0usize;
        for round in 0..6 {
            let chunk = vec![round as u8; 300_000];
            rt.block_on(client.write_all(&chunk)).unwrap();
            sent += chunk.len();
            assert!(
                half.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b))
                    .is_pending()
            );
            sizes.push((half.buffer_len(), half.next));
            let mut got = vec![0; chunk.len()];
            rt.block_on(server.read_exact(&mut got)).unwrap();
            assert_eq!(got, chunk);
        }
        // The first round's reads filled 64 KiB, then 128 KiB: the next
        // buffer is the cap, and it stays there.
        assert_eq!(sizes[0].1, 256 * 1024, "{sizes:?}");
        assert!(
            sizes.iter().all(|(_, next)| *next <= 256 * 1024),
            "{sizes:?}"
        );
        assert!(
            sizes.iter().any(|(len, _)| *len == 256 * 1024),
            "the buffer reached the cap: {sizes:?}"
        );
        assert_eq!(half.total, sent as u64);
    }

    /// Bytes the writer cannot take yet are kept in a buffer, and written
    /// once it can.
    #[test]
    fn b6_what_the_writer_cannot_take_yet_waits_in_a_buffer() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut client, mut a) = tokio::io::duplex(1 << 16);
        // A pipe that takes 100 bytes at a time.
        let (mut b, mut server) = tokio::io::duplex(100);
        let mut half = Half::new(64 * 1024);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let msg: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8).collect();
        rt.block_on(client.write_all(&msg)).unwrap();
        let mut got = Vec::new();
        while got.len() < msg.len() {
            assert!(
                half.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b))
                    .is_pending()
            );
            assert!(half.holds_buffer() || got.len() + 100 >= msg.len());
            let mut chunk = [0; 100];
            let n = rt.block_on(server.read(&mut chunk)).unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, msg);
    }

    #[test]
    fn b6_a_silent_direction_holds_no_buffer() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let mut half = Half::new(64 * 1024);
        assert!(
            half.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b))
                .is_pending()
        );
        assert!(!half.holds_buffer());
    }
}
