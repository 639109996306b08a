//! Log lines written to stderr by a thread of their own: a worker that logs
//! (the L7 access log is one line per request, L8) appends the formatted
//! line to a buffer and goes on; the writer thread, woken by the first line,
//! lets lines gather for [`GATHER`] and writes them at once. Under load a
//! line costs its logger a copy, not a `write` nor a wake-up; when idle a
//! line is written within a few milliseconds.
//!
//! Bounded: past [`MAX_PENDING`] bytes waiting, a logging thread writes
//! its line itself (back-pressure rather than memory or lost lines). Lines
//! keep their order. [`flush`] waits until everything logged so far is
//! written; `main` calls it before the process exits.

use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes waiting at most before loggers write themselves.
const MAX_PENDING: usize = 4 << 20;

/// How long the writer thread lets lines gather once one arrived: a busy
/// proxy logs in batches, and loggers rarely need to wake the thread.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Bytes handed to the writer thread and not yet written.
    writing: bool,
    /// The writer thread sleeps until a line arrives.
    idle: bool,
    /// There is no writer thread (it could not be started): loggers write.
    direct: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// A line arrived while the writer thread was idle.
    arrived: Condvar,
    /// A batch was written (for `flush`).
    written: Condvar,
}

static SHARED: OnceLock<&'static Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::default());
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_thread(shared));
        if spawned.is_err() {
            // No thread: loggers write themselves (see `write`).
            shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .direct = true;
        }
        shared
    })
}

fn writer_thread(shared: &'static Shared) {
    let mut batch = Vec::new();
    loop {
        {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.writing = false;
            shared.written.notify_all();
            while p.buf.is_empty() {
                p.idle = true;
                p = shared.arrived.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            p.idle = false;
        }
        std::thread::sleep(GATHER);
        {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut batch, &mut p.buf);
            p.writing = true;
        }
        let _ = std::io::stderr().write_all(&batch);
        batch.clear();
        if batch.capacity() > MAX_PENDING {
            batch.shrink_to(64 << 10);
        }
    }
}

/// The `MakeWriter` of the roles' logs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BatchedStderr;

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

pub(crate) struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let shared = shared();
        let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.direct || p.buf.len() + line.len() > MAX_PENDING {
            // Back-pressure: what waits goes first, then this line, in order.
            let waiting = std::mem::take(&mut p.buf);
            let mut err = std::io::stderr().lock();
            err.write_all(&waiting)?;
            err.write_all(line)?;
            return Ok(line.len());
        }
        p.buf.extend_from_slice(line);
        if p.idle {
            p.idle = false;
            shared.arrived.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until every line logged so far is written.
pub(crate) fn flush() {
    let Some(shared) = SHARED.get() else { return };
    let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !p.buf.is_empty() || p.writing {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        p = shared
            .written
            .wait_timeout(p, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_in_order_and_flush_waits_for_them() {
        let mut w = BatchedStderr.make_writer();
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes())
                .unwrap_or_default();
        }
        flush();
        let p = shared().pending.lock().unwrap_or_else(|e| e.into_inner());
        assert!(p.buf.is_empty() && !p.writing);
    }
}
