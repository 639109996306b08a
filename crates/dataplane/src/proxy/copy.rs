//! Copying a proxied connection both ways with buffers that exist only
//! while data flows (SPEC B6): a connection that sends nothing holds no
//! buffer, and one that goes quiet after a trickle gives its buffers back.
//! Half-close is kept: when one side ends, the other's write side is shut
//! down and the other direction runs on.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First read of a direction without a buffer: on the stack.
const FIRST_READ: usize = 1024;

/// Copies `a` to `b` and `b` to `a` until both directions ended; returns
/// the bytes copied each way `(a to b, b to a)`.
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
    size: usize,
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
        Half {
            size: size.max(FIRST_READ),
            buf: None,
            pos: 0,
            cap: 0,
            last_read: 0,
            eof: false,
            needs_flush: false,
            done: false,
            total: 0,
        }
    }

    /// Whether a buffer is held now.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
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
                match self.poll_fill(cx, reader.as_mut()) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        if self.needs_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.needs_flush = false;
                        }
                        if self.last_read < self.size / 4 {
                            self.buf = None;
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

    /// Reads into the buffer, allocating it once data arrives.
    fn poll_fill<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
    ) -> Poll<io::Result<()>> {
        let n = match &mut self.buf {
            Some(buf) => {
                let mut read = ReadBuf::new(buf);
                ready!(reader.poll_read(cx, &mut read))?;
                read.filled().len()
            }
            None => {
                let mut first = [0u8; FIRST_READ];
                let mut read = ReadBuf::new(&mut first);
                ready!(reader.poll_read(cx, &mut read))?;
                let n = read.filled().len();
                if n > 0 {
                    let mut buf = vec![0; self.size].into_boxed_slice();
                    buf[..n].copy_from_slice(&first[..n]);
                    self.buf = Some(buf);
                }
                n
            }
        };
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
