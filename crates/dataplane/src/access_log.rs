//! The L7 access log's line (L8), written by hand.
//!
//! One line per request is the busiest log of the data plane: through
//! `tracing`'s JSON formatter it cost about a tenth of the proxy's CPU per
//! request (field visitors, the span list, UTF-8 checks on every piece;
//! BENCHMARKS.md). When the process logs JSON, the binary hands this module
//! its line writer ([`set_json_sink`]) and the proxy writes the line itself,
//! in the layout `tracing` gives the process's other JSON lines
//! (`{"timestamp", "level", "fields": {"message", ...}, "target", "span",
//! "spans"}`). Otherwise (text logs, tests without a sink) the line goes
//! through `tracing`. Either way `RUST_LOG` decides whether there is a line
//! at all.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static SINK: OnceLock<fn(&[u8])> = OnceLock::new();

/// Where finished JSON lines go; set once, by a process that logs JSON.
pub fn set_json_sink(sink: fn(&[u8])) {
    let _ = SINK.set(sink);
}

pub(crate) fn json_sink() -> Option<fn(&[u8])> {
    SINK.get().copied()
}

/// A line's buffer at most kept for the thread's next line.
const KEPT_LINE: usize = 4096;

/// Held lines handed on once this many bytes wait ...
const HOLD_BYTES: usize = 16 * 1024;
/// ... or once the first has waited this long.
const HOLD_TIME: std::time::Duration = std::time::Duration::from_millis(2);

thread_local! {
    /// The thread's line buffer, used again line after line.
    static LINE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
    /// The lines of a thread that holds them ([`hold_on_this_thread`]).
    static HELD: std::cell::RefCell<Option<Held>> = const { std::cell::RefCell::new(None) };
}

struct Held {
    lines: Vec<u8>,
    /// When the first of `lines` was held.
    since: std::time::Instant,
    /// Where they go.
    sink: Option<fn(&[u8])>,
}

/// From now on, this thread's lines are held and handed to the sink
/// together: when the thread is about to sleep ([`release`], which its
/// runtime's park hook calls), when [`HOLD_BYTES`] wait, or when the first
/// has waited [`HOLD_TIME`]. An L7 loop then takes the sink's lock, and
/// writes to the buffer every loop writes to, once a batch instead of once
/// a request: each of those moves a cache line between cores.
pub(crate) fn hold_on_this_thread() {
    HELD.with(|h| {
        h.borrow_mut().get_or_insert_with(|| Held {
            lines: Vec::with_capacity(HOLD_BYTES + 1024),
            since: std::time::Instant::now(),
            sink: None,
        });
    });
}

/// Hands the lines this thread holds to the sink.
pub(crate) fn release() {
    HELD.with(|h| {
        if let Some(held) = h.borrow_mut().as_mut()
            && !held.lines.is_empty()
            && let Some(sink) = held.sink
        {
            sink(&held.lines);
            held.lines.clear();
        }
    });
}

/// Writes a finished line: held when the thread holds its lines, else
/// handed to the sink now.
fn emit(line: &[u8], sink: fn(&[u8])) {
    HELD.with(|h| match h.borrow_mut().as_mut() {
        Some(held) => {
            let now = std::time::Instant::now();
            if held.lines.is_empty() {
                held.since = now;
            }
            // One sink a process (set once, `set_json_sink`).
            held.sink = Some(sink);
            held.lines.extend_from_slice(line);
            if held.lines.len() >= HOLD_BYTES || now.duration_since(held.since) >= HOLD_TIME {
                sink(&held.lines);
                held.lines.clear();
            }
        }
        None => sink(line),
    });
}

/// A JSON log line being written.
pub(crate) struct JsonLine {
    buf: String,
}

impl JsonLine {
    /// Starts an `INFO` line with `message`.
    pub(crate) fn info(message: &str) -> JsonLine {
        let mut buf = LINE.take();
        buf.clear();
        buf.reserve(640);
        buf.push_str("{\"timestamp\":\"");
        rfc3339_micros(SystemTime::now(), &mut buf);
        buf.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":");
        let mut line = JsonLine { buf };
        line.string(message);
        line
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.string(value);
        self
    }

    pub(crate) fn display(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.key(key);
        self.buf.push('"');
        let _ = write!(Escaping(&mut self.buf), "{value}");
        self.buf.push('"');
        self
    }

    pub(crate) fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    fn key(&mut self, key: &str) {
        self.buf.push(',');
        self.string(key);
        self.buf.push(':');
    }

    fn string(&mut self, s: &str) {
        self.buf.push('"');
        let _ = Escaping(&mut self.buf).write_str(s);
        self.buf.push('"');
    }

    /// Closes the line, under the connection's span (`conn`, with the
    /// client's address and the address it connected to, as the proxy's
    /// connection span names them), and hands it to `sink`.
    pub(crate) fn finish(
        self,
        target: &str,
        peer: impl std::fmt::Display,
        dst: impl std::fmt::Display,
        sink: fn(&[u8]),
    ) {
        self.finish_in(target, &conn_span(peer, dst), sink);
    }

    /// [`JsonLine::finish`] with the span written before ([`conn_span`]):
    /// a connection's requests share it.
    pub(crate) fn finish_in(mut self, target: &str, span: &str, sink: fn(&[u8])) {
        self.buf.push_str("},\"target\":");
        self.string(target);
        self.buf.push_str(",\"span\":");
        self.buf.push_str(span);
        self.buf.push_str(",\"spans\":[");
        self.buf.push_str(span);
        self.buf.push_str("]}\n");
        emit(self.buf.as_bytes(), sink);
        if self.buf.capacity() <= KEPT_LINE {
            LINE.set(self.buf);
        }
    }
}

/// The JSON of a connection's span, as [`JsonLine::finish`] writes it.
pub(crate) fn conn_span(peer: impl std::fmt::Display, dst: impl std::fmt::Display) -> String {
    let mut s = String::with_capacity(96);
    s.push_str("{\"dst\":\"");
    let _ = write!(Escaping(&mut s), "{dst}");
    s.push_str("\",\"peer\":\"");
    let _ = write!(Escaping(&mut s), "{peer}");
    s.push_str("\",\"name\":\"conn\"}");
    s
}

/// Escapes what is written through it as the inside of a JSON string.
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            self.0.push_str(s);
            return Ok(());
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.push_str(&s[start..i]);
            if esc.is_empty() {
                let _ = write!(self.0, "\\u{b:04x}");
            } else {
                self.0.push_str(esc);
            }
            start = i + 1;
        }
        self.0.push_str(&s[start..]);
        Ok(())
    }
}

/// `t` as `tracing`'s JSON lines write it: RFC 3339, UTC, microseconds
/// (`2026-12-07T03:20:01.123456Z`).
fn rfc3339_micros(t: SystemTime, out: &mut String) {
    thread_local! {
        /// The second last written, and its text up to the fraction.
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, day) = meshpeer_identity::civil_from_days(days as i64);
            second.1.clear();
            let _ = write!(
                second.1,
                "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem / 60 % 60,
                rem % 60,
            );
            second.0 = secs;
        }
        out.push_str(&second.1);
    });
    let mut micros = d.subsec_micros();
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    static LAST: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

    fn keep(line: &[u8]) {
        *LAST.lock().unwrap() = line.to_vec();
    }

    #[test]
    fn l8_a_line_is_the_json_tracing_would_write() {
        let mut line = JsonLine::info("request");
        line.display("src", "10.0.0.1:5000")
            .str("path", "/a\"b\\c\n\u{1}é")
            .u64("status", 200);
        line.finish("t::l7", "10.0.0.1:5000", "[::1]:80", keep);
        let bytes = LAST.lock().unwrap().clone();
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-12-07T03:20:01.123456Z".len(), "{ts}");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "t::l7");
        assert_eq!(
            v["fields"],
            serde_json::json!({
                "message": "request",
                "src": "10.0.0.1:5000",
                "path": "/a\"b\\c\n\u{1}é",
                "status": 200,
            })
        );
        let span = serde_json::json!({"dst": "[::1]:80", "peer": "10.0.0.1:5000", "name": "conn"});
        assert_eq!(v["span"], span);
        assert_eq!(v["spans"], serde_json::json!([span]));
    }

    static BATCHES: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

    fn collect(lines: &[u8]) {
        BATCHES.lock().unwrap().push(lines.to_vec());
    }

    fn write(path: &str) {
        let mut line = JsonLine::info("request");
        line.str("path", path);
        line.finish_in("t", "{}", collect);
    }

    fn paths(batch: &[u8]) -> Vec<String> {
        batch
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                v["fields"]["path"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// An L7 loop holds its lines: they go out together, in order, when
    /// it releases them (before it sleeps), once `HOLD_BYTES` wait, or
    /// once the first has waited `HOLD_TIME`; none is lost or repeated.
    #[test]
    fn l8_held_lines_go_out_in_order_when_released_many_or_old() {
        std::thread::spawn(|| {
            hold_on_this_thread();
            let batches = || std::mem::take(&mut *BATCHES.lock().unwrap());
            write("/a");
            write("/b");
            assert!(batches().is_empty(), "held until released");
            release();
            let got = batches();
            assert_eq!(got.len(), 1);
            assert_eq!(paths(&got[0]), ["/a", "/b"]);
            release();
            assert!(batches().is_empty(), "nothing held twice");

            // Many: one batch once HOLD_BYTES wait, the rest held.
            let mut n = 0;
            while batches_len() == 0 {
                write(&format!("/{n}"));
                n += 1;
            }
            let got = batches();
            let expected: Vec<String> = (0..n).map(|i| format!("/{i}")).collect();
            assert_eq!(paths(&got[0]), expected);
            assert!(got[0].len() >= HOLD_BYTES, "{}", got[0].len());

            // Old: the next line takes the one held too long with it.
            write("/old");
            HELD.with(|h| {
                let mut h = h.borrow_mut();
                let held = h.as_mut().unwrap();
                held.since = std::time::Instant::now().checked_sub(HOLD_TIME).unwrap();
            });
            write("/new");
            let got = batches();
            assert_eq!(got.len(), 1);
            assert_eq!(paths(&got[0]), ["/old", "/new"]);
        })
        .join()
        .unwrap();

        fn batches_len() -> usize {
            BATCHES.lock().unwrap().len()
        }
    }

    #[test]
    fn l8_timestamps_are_rfc3339_utc_with_microseconds() {
        let mut s = String::new();
        rfc3339_micros(
            UNIX_EPOCH + std::time::Duration::new(1_796_613_601, 123_456_789),
            &mut s,
        );
        assert_eq!(s, "2026-12-07T03:20:01.123456Z");
        s.clear();
        rfc3339_micros(
            UNIX_EPOCH + std::time::Duration::new(951_868_799, 7_000),
            &mut s,
        );
        assert_eq!(s, "2000-02-29T23:59:59.000007Z");
    }
}
