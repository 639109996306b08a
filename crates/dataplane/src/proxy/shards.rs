//! Event loops for L7 connections (SPEC section 11): threads, each running
//! a single-threaded runtime, that serve the client connections of routed
//! ports, handed to them in turn as they are accepted. Everything a
//! request needs runs on its connection's loop: hyper's server, the
//! route, and the pooled connections to backends (one pool per loop, see
//! `Ctx::l7_clients`), so a request never wakes another core.
//!
//! Why: on the shared work-stealing runtime a request crossed between the
//! client connection's task and the backend connection's, often on the
//! other worker, and the workers woke each other (0.45 `futex` a request);
//! at 64 connections the proxy took 34 µs of CPU a request and served
//! 37-39k requests/s, with these loops 51-57k (BENCHMARKS.md, L7). L4
//! copies stay on the shared runtime, where a busy worker's flows can be
//! taken over by an idle one.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The loop this thread runs: its set's id and its index.
    static CURRENT: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// A set of event loops; dropping it stops them (their tasks are dropped).
pub(super) struct Shards {
    id: usize,
    loops: Vec<(Handle, oneshot::Sender<()>)>,
    next: AtomicUsize,
}

impl Shards {
    /// Starts `n` loops (threads `l7-loop-<i>`).
    pub(super) fn start(n: usize) -> io::Result<Shards> {
        static IDS: AtomicUsize = AtomicUsize::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let mut loops = Vec::with_capacity(n);
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // The access-log lines a loop holds go out before it sleeps.
                .on_thread_park(crate::access_log::release)
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("l7-loop-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some((id, index))));
                    crate::access_log::hold_on_this_thread();
                    // Until the set is dropped (its sender with it).
                    let _ = runtime.block_on(stopped);
                    crate::access_log::release();
                    // Connections still open are dropped with their tasks;
                    // lookups on blocking threads are not waited for.
                    runtime.shutdown_background();
                })?;
            loops.push((handle, stop));
        }
        Ok(Shards {
            id,
            loops,
            next: AtomicUsize::new(0),
        })
    }

    pub(super) fn len(&self) -> usize {
        self.loops.len()
    }

    /// Runs `task` on the next loop in turn.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        drop(self.loops[i].0.spawn(task));
    }

    /// The index of the loop of this set that the calling thread runs.
    pub(super) fn current(&self) -> Option<usize> {
        CURRENT
            .with(Cell::get)
            .and_then(|(id, index)| (id == self.id).then_some(index))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Tasks go to the loops in turn, each runs on its loop's thread (and
    /// knows which), and a thread of another set is not taken for one of
    /// this set's.
    #[tokio::test]
    async fn l6_tasks_take_the_loops_in_turn_and_know_their_loop() {
        let shards = Arc::new(Shards::start(3).unwrap());
        let other = Shards::start(1).unwrap();
        assert_eq!(shards.current(), None, "the test's own thread");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..6 {
            let (tx, set) = (tx.clone(), Arc::clone(&shards));
            shards.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((set.current(), name)).unwrap();
            });
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(
                tokio::time::timeout(DEADLINE, rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        for (index, name) in &seen {
            let index = index.expect("a task runs on one of the set's loops");
            assert_eq!(name.as_deref(), Some(format!("l7-loop-{index}").as_str()));
        }
        let used: BTreeSet<usize> = seen.iter().filter_map(|(i, _)| *i).collect();
        assert_eq!(used, BTreeSet::from([0, 1, 2]));
        let (tx, rx) = oneshot::channel();
        let set = Arc::clone(&shards);
        other.spawn(async move {
            tx.send(set.current()).unwrap();
        });
        assert_eq!(
            tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap(),
            None
        );
    }

    static LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn keep(lines: &[u8]) {
        LINES.lock().unwrap().extend_from_slice(lines);
    }

    /// A loop holds its access-log lines (L8) and hands them on before it
    /// sleeps: a line written by a request, with nothing after it, is out
    /// once the loop has nothing more to do.
    #[tokio::test]
    async fn l8_a_loop_hands_on_its_held_lines_before_it_sleeps() {
        let shards = Shards::start(1).unwrap();
        let (tx, rx) = oneshot::channel();
        shards.spawn(async move {
            let mut line = crate::access_log::JsonLine::info("request");
            line.str("path", "/held");
            line.finish_in("t", "{}", keep);
            // Still held: the loop has not slept since.
            let held = !String::from_utf8_lossy(&LINES.lock().unwrap()).contains("/held");
            tx.send(held).unwrap();
        });
        assert!(
            tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap(),
            "the loop holds its lines while it runs"
        );
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !String::from_utf8_lossy(&LINES.lock().unwrap()).contains("/held") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the idle loop never handed its line on"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Dropping the set stops its loops: a task still waiting there is
    /// dropped.
    #[tokio::test]
    async fn l6_dropping_the_loops_drops_their_tasks() {
        struct Dropped(Arc<Mutex<Option<oneshot::Sender<()>>>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                if let Some(tx) = self.0.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        }
        let shards = Shards::start(2).unwrap();
        let (tx, rx) = oneshot::channel();
        let (started_tx, started) = oneshot::channel();
        let guard = Dropped(Arc::new(Mutex::new(Some(tx))));
        shards.spawn(async move {
            let _guard = guard;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        tokio::time::timeout(DEADLINE, started)
            .await
            .unwrap()
            .unwrap();
        drop(shards);
        tokio::time::timeout(DEADLINE, rx)
            .await
            .expect("the waiting task was not dropped")
            .unwrap();
    }
}
