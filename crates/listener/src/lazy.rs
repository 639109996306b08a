//! A read buffer that exists only once data arrives.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Like tokio's `BufReader`, but its buffer is allocated on the first read
/// that returns data: a connection that sends nothing (a flood's idle
/// connections) costs no buffer (SPEC B6). Writes pass through.
#[derive(Debug)]
pub struct LazyBufReader<R> {
    inner: R,
    capacity: usize,
    buf: Option<Box<[u8]>>,
    pos: usize,
    filled: usize,
}

impl<R> LazyBufReader<R> {
    pub fn new(capacity: usize, inner: R) -> Self {
        LazyBufReader {
            inner,
            capacity: capacity.max(1),
            buf: None,
            pos: 0,
            filled: 0,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Whether the buffer has been allocated.
    pub fn is_allocated(&self) -> bool {
        self.buf.is_some()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LazyBufReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.filled
            && let Some(buf) = &this.buf
        {
            let n = (this.filled - this.pos).min(out.remaining());
            out.put_slice(&buf[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        let Some(buf) = this.buf.as_mut() else {
            // No buffer yet: read straight into the caller's; allocate once
            // something came.
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            if out.filled().len() > before {
                this.buf = Some(vec![0; this.capacity].into_boxed_slice());
            }
            return Poll::Ready(Ok(()));
        };
        if out.remaining() >= buf.len() {
            // A large read needs no copy through the buffer.
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut fill = ReadBuf::new(buf);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
        this.filled = fill.filled().len();
        this.pos = 0;
        let n = this.filled.min(out.remaining());
        out.put_slice(&buf[..n]);
        this.pos = n;
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncWrite + Unpin> AsyncWrite for LazyBufReader<R> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn b6_the_buffer_comes_with_the_first_bytes() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut reader = LazyBufReader::new(64 * 1024, server);
        assert!(!reader.is_allocated());
        let mut client = client;
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                client.write_all(&data).await.unwrap();
                client.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::new();
        let mut small = [0u8; 1000];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        writer.await.unwrap();
        assert!(reader.is_allocated());
        assert_eq!(got, data);
    }
}
