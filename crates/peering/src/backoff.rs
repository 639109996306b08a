//! Reconnect delays: exponential, capped, with jitter so that many clusters
//! that lost a peer at once do not reconnect in lockstep.

use std::time::Duration;

/// Delays between connection attempts. `next_delay` grows the delay after
/// each failure: `base * 2^n`, capped at `cap`, then jittered to a value in
/// `[d/2, d]` ("equal jitter"). `reset` after a successful connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The un-jittered delay after `failures` failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.failures);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.rng.u64(0..=spread))
    }

    /// A connection succeeded: start again from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(30),
            fastrand::u64(..),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_jittered_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let c = b.ceiling(b.failures());
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_millis());
        }
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_clients() {
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|seed| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), seed);
                b.next_delay()
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
