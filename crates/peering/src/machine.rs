//! The life of a link as an explicit state machine, without I/O: the link
//! task feeds it what happened and does what it decides (how long to wait,
//! whether the peer's export is stale or dropped). Tested step by step here,
//! and with tokio's paused clock through the task (`tests/protocol.rs`).
//!
//! ```text
//!            connect ok              first delta applied
//! Connecting ----------> Streaming -----------------------> Streaming (synced)
//!     ^  |                   | stream ends                       | stream ends
//!     |  | connect fails     v                                   v
//!     |  +-------------> Waiting { until } <---------------------+
//!     +---- wait over ------+   (export kept, stale, until the grace period ends)
//! ```

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// Where a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A connection attempt is under way.
    Connecting { attempt: u32 },
    /// The stream is open; `synced` once a delta was applied.
    Streaming { synced: bool },
    /// Waiting before the next attempt.
    Waiting { until: Instant },
}

/// What the link task tells the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    ConnectOk,
    ConnectFailed,
    /// A delta was applied: the peer's export is current.
    Applied,
    /// The stream ended; `now`: reconnect without waiting (our Hello changed).
    StreamEnded {
        now: bool,
    },
    /// The wait is over (or our Hello changed while waiting).
    WaitOver,
}

/// What the machine decided, for the task to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Connect now.
    Connect { attempt: u32 },
    /// Wait this long, then send `WaitOver`.
    Wait { delay: Duration, stale: bool },
    /// Keep streaming.
    Stream,
}

/// The state of one link: its phase, its back-off and the peer's export.
#[derive(Debug, Clone)]
pub struct LinkMachine {
    phase: Phase,
    backoff: Backoff,
    grace: Duration,
    /// An export of the peer is held (current or stale).
    held: bool,
    /// When a stale export is dropped.
    stale_until: Option<Instant>,
}

impl LinkMachine {
    pub fn new(backoff: Backoff, grace: Duration) -> Self {
        LinkMachine {
            phase: Phase::Connecting { attempt: 1 },
            backoff,
            grace,
            held: false,
            stale_until: None,
        }
    }

    /// Starts with an export of the peer already held and stale until
    /// `until` (kept across an edit of the link): a sync clears it, else
    /// it is dropped then.
    pub fn hold_until(&mut self, until: Instant) {
        self.held = true;
        self.stale_until = Some(until);
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// An export is held but its stream is gone.
    pub fn stale(&self) -> bool {
        self.held && self.stale_until.is_some()
    }

    /// When the stale export is dropped, if one is held.
    pub fn expires_at(&self) -> Option<Instant> {
        self.stale_until.filter(|_| self.held)
    }

    /// Feeds one input at time `now`.
    pub fn step(&mut self, input: Input, now: Instant) -> Decision {
        match (self.phase, input) {
            (Phase::Connecting { .. }, Input::ConnectOk) => {
                self.phase = Phase::Streaming { synced: false };
                Decision::Stream
            }
            (Phase::Connecting { .. }, Input::ConnectFailed) => self.wait(now, false),
            (Phase::Streaming { synced }, Input::Applied) => {
                if !synced {
                    // A stream that delivered the peer's state is a success.
                    self.backoff.reset();
                }
                self.phase = Phase::Streaming { synced: true };
                self.held = true;
                self.stale_until = None;
                Decision::Stream
            }
            (Phase::Streaming { .. }, Input::StreamEnded { now: at_once }) => {
                if self.held && self.stale_until.is_none() {
                    self.stale_until = Some(now + self.grace);
                }
                self.wait(now, at_once)
            }
            (Phase::Waiting { .. }, Input::WaitOver) => {
                self.phase = Phase::Connecting {
                    attempt: self.backoff.failures() + 1,
                };
                Decision::Connect {
                    attempt: self.backoff.failures() + 1,
                }
            }
            // Anything else does not change the phase.
            (Phase::Connecting { attempt }, _) => Decision::Connect { attempt },
            (Phase::Streaming { .. }, _) => Decision::Stream,
            (Phase::Waiting { until }, _) => Decision::Wait {
                delay: until.saturating_duration_since(now),
                stale: self.stale(),
            },
        }
    }

    /// Drops the held export now, whatever the grace period (the peer
    /// refused us: what it sent before may no longer be ours to see).
    /// Returns whether one was held.
    pub fn drop_held(&mut self) -> bool {
        let held = self.held;
        self.held = false;
        self.stale_until = None;
        held
    }

    /// The grace period may have ended: drops the stale export. Says whether
    /// it was dropped now.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.stale_until {
            Some(t) if t <= now && self.held => {
                self.held = false;
                self.stale_until = None;
                true
            }
            _ => false,
        }
    }

    fn wait(&mut self, now: Instant, at_once: bool) -> Decision {
        let delay = if at_once {
            Duration::ZERO
        } else {
            self.backoff.next_delay()
        };
        self.phase = Phase::Waiting { until: now + delay };
        Decision::Wait {
            delay,
            stale: self.stale(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> LinkMachine {
        LinkMachine::new(
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 1),
            Duration::from_secs(120),
        )
    }

    fn delay(d: Decision) -> Duration {
        match d {
            Decision::Wait { delay, .. } => delay,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn failures_back_off_and_a_synced_stream_resets() {
        let t0 = Instant::now();
        let mut m = machine();
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let d = delay(m.step(Input::ConnectFailed, t0));
            ceilings.push(d);
            assert_eq!(
                m.step(Input::WaitOver, t0),
                Decision::Connect {
                    attempt: ceilings.len() as u32 + 1
                }
            );
        }
        assert!(ceilings[5] > ceilings[0]);
        assert!(ceilings.iter().all(|d| *d <= Duration::from_secs(1)));
        // Connected but nothing applied yet: the back-off is not reset.
        assert_eq!(m.step(Input::ConnectOk, t0), Decision::Stream);
        assert!(delay(m.step(Input::StreamEnded { now: false }, t0)) >= Duration::from_millis(500));
        m.step(Input::WaitOver, t0);
        m.step(Input::ConnectOk, t0);
        m.step(Input::Applied, t0);
        assert!(delay(m.step(Input::StreamEnded { now: false }, t0)) <= Duration::from_millis(100));
    }

    #[test]
    fn a_lost_stream_keeps_the_export_stale_until_the_grace_period_ends() {
        let t0 = Instant::now();
        let mut m = machine();
        m.step(Input::ConnectOk, t0);
        m.step(Input::Applied, t0);
        assert!(!m.stale());
        let Decision::Wait { stale, .. } = m.step(Input::StreamEnded { now: false }, t0) else {
            panic!()
        };
        assert!(stale);
        assert_eq!(m.expires_at(), Some(t0 + Duration::from_secs(120)));
        // Failed reconnects do not move the deadline.
        m.step(Input::WaitOver, t0 + Duration::from_secs(1));
        m.step(Input::ConnectFailed, t0 + Duration::from_secs(1));
        assert_eq!(m.expires_at(), Some(t0 + Duration::from_secs(120)));
        assert!(!m.expire(t0 + Duration::from_secs(119)));
        assert!(m.expire(t0 + Duration::from_secs(120)));
        assert!(!m.stale());
        assert_eq!(m.expires_at(), None);
    }

    #[test]
    fn a_resync_clears_staleness_and_a_hello_change_reconnects_at_once() {
        let t0 = Instant::now();
        let mut m = machine();
        m.step(Input::ConnectOk, t0);
        m.step(Input::Applied, t0);
        m.step(Input::StreamEnded { now: false }, t0);
        m.step(Input::WaitOver, t0);
        m.step(Input::ConnectOk, t0);
        m.step(Input::Applied, t0);
        assert!(!m.stale());
        assert_eq!(m.expires_at(), None);
        assert_eq!(
            delay(m.step(Input::StreamEnded { now: true }, t0)),
            Duration::ZERO
        );
        assert_eq!(m.phase(), Phase::Waiting { until: t0 });
    }
}
