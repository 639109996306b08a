//! Admission of accepted connections: pending (capped, the oldest shed,
//! timed out) until authenticated, then one of a bounded number of places.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Limits;
use crate::metrics::ListenerMetrics;

/// How often a gate under pressure says so in the logs (a flood must not
/// become a flood of log lines).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was closed by its gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// Too many connections were pending; this one was the oldest.
    #[error(
        "closed before authentication: too many connections were waiting to authenticate and this one was the oldest"
    )]
    Shed,
    /// It did not authenticate in time.
    #[error("closed before authentication: the handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    /// It authenticated, but every place for authenticated connections was
    /// taken.
    #[error("refused: this listener holds its maximum of {0} authenticated connections")]
    Full(usize),
}

impl Cut {
    /// The metric label: `shed`, `handshake_timeout`, `full`.
    pub fn reason(&self) -> &'static str {
        match self {
            Cut::Shed => "shed",
            Cut::HandshakeTimeout(_) => "handshake_timeout",
            Cut::Full(_) => "full",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Pending,
    Established,
    Closed(Cut),
}

type Signal = Arc<watch::Sender<Phase>>;

struct State {
    next: u64,
    /// Pending connections by arrival: the first is the oldest.
    pending: BTreeMap<u64, Signal>,
    established: usize,
}

struct Inner {
    listener: &'static str,
    limits: Limits,
    metrics: Arc<ListenerMetrics>,
    state: Mutex<State>,
    /// Connections shed so far, and when that was last logged.
    shed: AtomicU64,
    warned: Mutex<Option<StdInstant>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauges(&self, state: &State) {
        self.metrics.set_pending(state.pending.len());
        self.metrics.set_connections(state.established);
    }

    /// Logs pressure at most every [`WARN_EVERY`].
    fn warn_pressure(&self, cut: Cut) {
        let now = StdInstant::now();
        let mut last = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        *last = Some(now);
        warn!(
            listener = self.listener,
            reason = cut.reason(),
            shed_total = self.shed.load(Ordering::Relaxed),
            limits = %self.limits,
            "listener under pressure: {cut}"
        );
    }
}

/// The admission of one listener's connections (see the crate docs).
/// Cloning shares it.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("listener", &self.inner.listener)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for the listener named `listener` (in logs).
    pub fn new(listener: &'static str, limits: Limits, metrics: Arc<ListenerMetrics>) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                listener,
                limits,
                metrics,
                state: Mutex::new(State {
                    next: 0,
                    pending: BTreeMap::new(),
                    established: 0,
                }),
                shed: AtomicU64::new(0),
                warned: Mutex::new(None),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.inner.metrics
    }

    /// Connections pending and authenticated now.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.pending.len(), state.established)
    }

    /// Takes in a connection just accepted: pending. When
    /// [`Limits::max_pending`] are pending already, the oldest of them is
    /// shed (its [`Slot::cut`] resolves) and counted.
    pub fn admit(&self) -> Slot {
        let (tx, rx) = watch::channel(Phase::Pending);
        let signal = Arc::new(tx);
        let inner = &self.inner;
        let mut shed = None;
        let id = {
            let mut state = inner.lock();
            let max = inner.limits.max_pending;
            while max > 0 && state.pending.len() >= max {
                let Some((_, oldest)) = state.pending.pop_first() else {
                    break;
                };
                if close(&oldest, Cut::Shed) {
                    shed = Some(Cut::Shed);
                    inner.shed.fetch_add(1, Ordering::Relaxed);
                    inner.metrics.closed(Cut::Shed.reason());
                }
            }
            let id = state.next;
            state.next += 1;
            state.pending.insert(id, Arc::clone(&signal));
            inner.gauges(&state);
            id
        };
        if let Some(cut) = shed {
            inner.warn_pressure(cut);
        }
        Slot {
            gate: Arc::clone(inner),
            id,
            signal,
            phase: rx,
            deadline: inner.limits.handshake_timeout.map(|t| Instant::now() + t),
        }
    }
}

/// Moves a pending connection to `cut`; false if it was not pending.
fn close(signal: &watch::Sender<Phase>, cut: Cut) -> bool {
    signal.send_if_modified(|phase| {
        if *phase == Phase::Pending {
            *phase = Phase::Closed(cut);
            true
        } else {
            false
        }
    })
}

/// One connection's place at its [`Gate`], given back on drop.
pub struct Slot {
    gate: Arc<Inner>,
    id: u64,
    signal: Signal,
    phase: watch::Receiver<Phase>,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("listener", &self.gate.listener)
            .field("phase", &*self.signal.borrow())
            .finish()
    }
}

impl Slot {
    /// Whether the connection is still waiting to authenticate.
    pub fn is_pending(&self) -> bool {
        *self.signal.borrow() == Phase::Pending
    }

    /// Resolves when the gate closes this connection before it
    /// authenticated: shed, handshake timed out, or refused for want of
    /// room. Never resolves once it is authenticated. Run the handshake
    /// (and, for plain HTTP, the connection) against it.
    pub async fn cut(&self) -> Cut {
        let mut phase = self.phase.clone();
        let timeout = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = phase.wait_for(|p| *p != Phase::Pending) => {
                if let Ok(p) = changed && let Phase::Closed(cut) = *p {
                    debug!(listener = self.gate.listener, reason = cut.reason(), "connection cut");
                    return cut;
                }
            }
            () = timeout => {
                let cut = Cut::HandshakeTimeout(self.gate.limits.handshake_timeout.unwrap_or_default());
                if close(&self.signal, cut) {
                    self.gate.metrics.closed(cut.reason());
                    debug!(listener = self.gate.listener, "handshake timed out");
                    return cut;
                }
                if let Phase::Closed(cut) = *self.signal.borrow() {
                    return cut;
                }
            }
        }
        // Authenticated: nothing more to wait for.
        std::future::pending().await
    }

    /// Counts a handshake that failed on the caller's side (garbage bytes,
    /// or it left), as `handshake_failed`.
    pub fn handshake_failed(&self) {
        self.gate.metrics.closed("handshake_failed");
    }

    /// The connection authenticated: it leaves the pending ones and takes a
    /// place among the authenticated, unless all are taken
    /// ([`Cut::Full`], counted) or it was cut already.
    pub fn authenticate(&self) -> Result<(), Cut> {
        let gate = &self.gate;
        let result = {
            let mut state = gate.lock();
            match *self.signal.borrow() {
                Phase::Established => return Ok(()),
                Phase::Closed(cut) => return Err(cut),
                Phase::Pending => {}
            }
            state.pending.remove(&self.id);
            let result = if state.established >= gate.limits.max_connections {
                let cut = Cut::Full(gate.limits.max_connections);
                self.signal.send_replace(Phase::Closed(cut));
                gate.metrics.closed(cut.reason());
                Err(cut)
            } else {
                state.established += 1;
                self.signal.send_replace(Phase::Established);
                Ok(())
            };
            gate.gauges(&state);
            result
        };
        if let Err(cut) = result {
            gate.warn_pressure(cut);
        }
        result
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let gate = &self.gate;
        let mut state = gate.lock();
        match *self.signal.borrow() {
            Phase::Established => state.established = state.established.saturating_sub(1),
            Phase::Pending | Phase::Closed(_) => {
                // Only this slot's own entry: a shed one was taken out already.
                if state
                    .pending
                    .get(&self.id)
                    .is_some_and(|s| Arc::ptr_eq(s, &self.signal))
                {
                    state.pending.remove(&self.id);
                }
            }
        }
        gate.gauges(&state);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn gate(max_pending: usize, max_connections: usize) -> Gate {
        Gate::new(
            "test",
            Limits {
                max_pending,
                handshake_timeout: Some(Duration::from_secs(10)),
                max_connections,
                idle_timeout: Duration::from_secs(60),
            },
            Arc::new(ListenerMetrics::default()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn b5_the_oldest_pending_connection_is_shed() {
        let gate = gate(2, 10);
        let first = gate.admit();
        let second = gate.admit();
        assert_eq!(gate.counts(), (2, 0));
        let third = gate.admit();
        assert_eq!(first.cut().await, Cut::Shed);
        assert!(!first.is_pending());
        assert_eq!(gate.counts(), (2, 0));
        // The others authenticate and leave the pending ones.
        second.authenticate().unwrap();
        third.authenticate().unwrap();
        assert_eq!(gate.counts(), (0, 2));
        assert_eq!(first.authenticate(), Err(Cut::Shed));
        drop(first);
        drop(second);
        assert_eq!(gate.counts(), (0, 1));
        assert_eq!(gate.metrics().closed_count("shed"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn b5_a_slow_handshake_times_out_and_authenticated_ones_never_do() {
        let gate = gate(10, 10);
        let slow = gate.admit();
        let quick = gate.admit();
        quick.authenticate().unwrap();
        assert_eq!(
            slow.cut().await,
            Cut::HandshakeTimeout(Duration::from_secs(10))
        );
        assert_eq!(gate.metrics().closed_count("handshake_timeout"), 1);
        let waited = tokio::time::timeout(Duration::from_secs(3600), quick.cut()).await;
        assert!(waited.is_err(), "an authenticated connection is never cut");
        drop(slow);
        assert_eq!(gate.counts(), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn b5_authenticated_places_are_bounded_and_given_back() {
        let gate = gate(10, 1);
        let a = gate.admit();
        let b = gate.admit();
        a.authenticate().unwrap();
        assert_eq!(b.authenticate(), Err(Cut::Full(1)));
        assert_eq!(b.cut().await, Cut::Full(1));
        assert_eq!(gate.metrics().closed_count("full"), 1);
        drop(a);
        let c = gate.admit();
        c.authenticate().unwrap();
        assert_eq!(gate.counts(), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn b5_thousands_of_pending_connections_stay_within_the_cap() {
        let gate = gate(100, 10);
        let mut slots: Vec<Slot> = (0..5000).map(|_| gate.admit()).collect();
        assert_eq!(gate.counts(), (100, 0));
        assert_eq!(gate.metrics().closed_count("shed"), 4900);
        // The newest can still authenticate.
        let newest = slots.pop().unwrap();
        newest.authenticate().unwrap();
        drop(slots);
        assert_eq!(gate.counts(), (0, 1));
    }
}
