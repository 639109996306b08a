//! Bounded listeners (SPEC B5): what a listener holds before a caller is
//! authenticated, and for how long.
//!
//! Every listener of meshpeer (peering, HBONE, the cluster listener, the
//! plain API, the page, DNS over TCP) takes its connections through a
//! [`Gate`]:
//!
//! - A connection is *pending* from `accept` until it is authenticated (its
//!   TLS handshake verified a certificate; for plain HTTP, its first request
//!   arrived). At most [`Limits::max_pending`] are pending at once: a new
//!   one sheds the oldest pending connection, so a flood of idle or garbage
//!   connections cannot keep a legitimate caller out, who completes its
//!   handshake in milliseconds while the flood's connections wait to be
//!   shed. A pending connection is closed after
//!   [`Limits::handshake_timeout`].
//! - An authenticated connection takes one of [`Limits::max_connections`]
//!   places, which pending connections never use: the reserve that lets
//!   authenticated work proceed during a flood. Beyond, new authenticated
//!   connections are refused.
//! - An authenticated connection with nothing in flight for
//!   [`Limits::idle_timeout`] is closed ([`Activity`]).
//!
//! Each closing is counted (`<subsystem>_listener_connections_closed_total
//! {reason}`: `shed`, `handshake_timeout`, `full`, `idle`) and the pending
//! and authenticated connections are gauges ([`ListenerMetrics`]).
//!
//! Also here: [`LazyBufReader`], a read buffer allocated only once data
//! arrives (a connection that sends nothing costs no buffer), and
//! [`http`], HTTP/1.1 and HTTP/2 serving under these bounds.

mod activity;
mod gate;
pub mod http;
mod lazy;
mod metrics;

use std::time::Duration;

pub use activity::{Activity, Busy};
pub use gate::{Cut, Gate, Slot};
pub use lazy::LazyBufReader;
pub use metrics::{ListenerMetrics, ReasonLabels};

/// The bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections accepted and not yet authenticated, held at once; one
    /// more sheds the oldest. 0: no cap.
    pub max_pending: usize,
    /// How long a connection may stay unauthenticated (TLS handshake; for
    /// plain HTTP, until its first request's headers). `None`: no limit.
    pub handshake_timeout: Option<Duration>,
    /// Authenticated connections held at once; one more is refused.
    pub max_connections: usize,
    /// An authenticated connection with nothing in flight for this long is
    /// closed (for HTTP: no request or response in progress).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// 1,024 pending, 10 s handshakes, 4,096 connections, 5 min idle.
    fn default() -> Self {
        Limits {
            max_pending: 1024,
            handshake_timeout: Some(Duration::from_secs(10)),
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at most {} connections before authentication (the oldest shed), handshakes within {}, at most {} authenticated connections, closed after {:?} idle",
            self.max_pending,
            self.handshake_timeout
                .map_or_else(|| "no limit".to_owned(), |t| format!("{t:?}")),
            self.max_connections,
            self.idle_timeout
        )
    }
}
