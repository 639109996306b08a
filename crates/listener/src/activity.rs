//! What is in flight on a connection, and when it has been idle long
//! enough to close.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Counts the work in flight on one connection (requests, tunnels).
#[derive(Clone, Debug)]
pub struct Activity {
    count: Arc<watch::Sender<usize>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            count: Arc::new(watch::channel(0).0),
        }
    }
}

/// One piece of work in flight; done when dropped.
#[derive(Debug)]
pub struct Busy {
    count: Arc<watch::Sender<usize>>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity::default()
    }

    /// Work starts; it ends when the returned guard is dropped.
    pub fn enter(&self) -> Busy {
        self.count.send_modify(|n| *n += 1);
        Busy {
            count: Arc::clone(&self.count),
        }
    }

    /// Work in flight now.
    pub fn in_flight(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves once nothing has been in flight for `idle` (counted from
    /// the end of the last piece of work, or from now if none is running).
    pub async fn idle_for(&self, idle: Duration) {
        let mut rx = self.count.subscribe();
        loop {
            if rx.wait_for(|n| *n == 0).await.is_err() {
                return std::future::pending().await;
            }
            rx.mark_unchanged();
            tokio::select! {
                () = tokio::time::sleep(idle) => {
                    if *rx.borrow() == 0 {
                        return;
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn b5_idle_is_counted_from_the_end_of_the_last_work() {
        let activity = Activity::new();
        let start = tokio::time::Instant::now();
        let busy = activity.enter();
        let waiter = {
            let activity = activity.clone();
            tokio::spawn(async move { activity.idle_for(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiter.is_finished(), "busy is not idle");
        drop(busy);
        let _ = waiter.await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        assert_eq!(activity.in_flight(), 0);
    }
}
