//! The client's pool: HTTP/2 connections per (gateway, trust domain), each
//! carrying at most `max_streams_per_conn` tunnels.
//!
//! A caller claims a stream slot under one short lock: on a connection
//! (dialing or ready) with a free slot, else on a new connection whose dial
//! task it spawns. Callers that joined a dialing connection share its
//! outcome, so a burst of tunnels dials only as many connections as it
//! needs. Each connection's task dials, then drives it, pings it and closes
//! it when idle; whenever a connection ends it is taken out of the pool, so
//! the next caller dials again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::client::{ClientTls, ClusterTls};
use super::dial::{self, Dialed};
use super::metrics::{HboneMetrics, OUTBOUND};
use super::{HboneError, PoolConfig, wire};

/// How long an idle connection may take to say GOAWAY and close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What connections are pooled by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) gateway: SocketAddr,
    pub(crate) trust_domain: String,
    /// The cluster the gateway must speak for, when checked (SPEC P6).
    pub(crate) cluster: Option<String>,
}

/// A connection's lifecycle, published by its task.
enum ConnState {
    Dialing,
    Ready(SendRequest<Bytes>),
    Failed(HboneError),
    Closed,
}

/// One pooled connection.
pub(crate) struct Conn {
    pub(crate) id: u64,
    state: watch::Receiver<ConnState>,
    /// Slots held (tunnels and callers waiting for the dial). Incremented
    /// only under the pool lock, so a full or idle check there is exact.
    active: watch::Sender<u32>,
}

impl Conn {
    fn usable(&self) -> bool {
        matches!(
            *self.state.borrow(),
            ConnState::Dialing | ConnState::Ready(_)
        )
    }
}

/// Why a slot cannot carry a request.
pub(crate) enum NotReady {
    /// The dial failed (shared by everyone who waited on it).
    Dial(HboneError),
    /// The connection ended after it was ready.
    Closed,
}

/// A claim on one stream of a pooled connection, released on drop.
pub(crate) struct Slot {
    pub(crate) conn: Arc<Conn>,
    /// Whether the connection was already ready when claimed (a request
    /// failing on it may mean it went stale, and is worth one retry).
    pub(crate) reused: bool,
}

impl Slot {
    /// Waits for the connection's dial and returns a handle for a request.
    pub(crate) async fn ready(&self) -> Result<SendRequest<Bytes>, NotReady> {
        let mut state = self.conn.state.clone();
        let state = state
            .wait_for(|s| !matches!(s, ConnState::Dialing))
            .await
            .map_err(|_| NotReady::Closed)?;
        match &*state {
            ConnState::Ready(send) => Ok(send.clone()),
            ConnState::Failed(err) => Err(NotReady::Dial(err.replicate())),
            ConnState::Dialing | ConnState::Closed => Err(NotReady::Closed),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conn.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

pub(crate) struct Pool {
    pub(crate) config: PoolConfig,
    tls: ClientTls,
    pub(crate) cluster_tls: Option<ClusterTls>,
    pub(crate) metrics: Arc<HboneMetrics>,
    next_id: AtomicU64,
    conns: Mutex<HashMap<Key, Vec<Arc<Conn>>>>,
}

impl Pool {
    pub(crate) fn new(
        tls: ClientTls,
        cluster_tls: Option<ClusterTls>,
        config: PoolConfig,
        metrics: Arc<HboneMetrics>,
    ) -> Self {
        Pool {
            config,
            tls,
            cluster_tls,
            metrics,
            next_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Vec<Arc<Conn>>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections in the pool, dialing or ready.
    pub(crate) fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Claims a stream slot for `key`: on a pooled connection with room
    /// (unless `new_conn`), else on a new connection, whose dial starts now.
    pub(crate) fn checkout(self: &Arc<Self>, key: &Key, new_conn: bool) -> Slot {
        let max = self.config.max_streams_per_conn.max(1);
        let mut conns = self.lock();
        let list = conns.entry(key.clone()).or_default();
        if !new_conn {
            for conn in list.iter() {
                if !conn.usable() {
                    continue;
                }
                let claimed = conn.active.send_if_modified(|n| {
                    let free = *n < max;
                    if free {
                        *n += 1;
                    }
                    free
                });
                if claimed {
                    let reused = matches!(*conn.state.borrow(), ConnState::Ready(_));
                    return Slot {
                        conn: conn.clone(),
                        reused,
                    };
                }
            }
        }
        let (state_tx, state_rx) = watch::channel(ConnState::Dialing);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            state: state_rx,
            active: watch::Sender::new(1),
        });
        list.push(conn.clone());
        drop(conns);
        self.metrics.pooled_connections.inc();
        let span = debug_span!(
            "hbone_conn",
            gateway = %key.gateway,
            trust_domain = %key.trust_domain,
            conn = conn.id,
        );
        tokio::spawn(run_conn(self.clone(), key.clone(), conn.clone(), state_tx).instrument(span));
        Slot {
            conn,
            reused: false,
        }
    }

    /// Takes `conn` out of the pool (no new tunnels will use it).
    pub(crate) fn remove(&self, key: &Key, conn: &Arc<Conn>) {
        let mut conns = self.lock();
        self.remove_locked(&mut conns, key, conn);
    }

    fn remove_locked(&self, conns: &mut HashMap<Key, Vec<Arc<Conn>>>, key: &Key, conn: &Arc<Conn>) {
        let Some(list) = conns.get_mut(key) else {
            return;
        };
        let before = list.len();
        list.retain(|c| !Arc::ptr_eq(c, conn));
        if list.len() < before {
            self.metrics.pooled_connections.dec();
        }
        if list.is_empty() {
            conns.remove(key);
        }
    }

    /// Takes `conn` out of the pool if it holds no slot; under the lock
    /// that claims slots, so no caller can be joining it meanwhile.
    fn remove_if_idle(&self, key: &Key, conn: &Arc<Conn>) -> bool {
        let mut conns = self.lock();
        if *conn.active.borrow() != 0 {
            return false;
        }
        self.remove_locked(&mut conns, key, conn);
        true
    }
}

/// A connection's task: dial, publish the outcome, drive until the end.
async fn run_conn(pool: Arc<Pool>, key: Key, conn: Arc<Conn>, state: watch::Sender<ConnState>) {
    let dialed = tokio::time::timeout(
        pool.config.connect_timeout,
        dial::dial(&pool.config, &pool.tls, pool.cluster_tls.as_ref(), &key),
    )
    .await
    .unwrap_or_else(|_| {
        Err(HboneError::Connect {
            gateway: key.gateway,
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no HTTP/2 over TLS connection within {:?}",
                    pool.config.connect_timeout
                ),
            ),
        })
    });
    match dialed {
        Err(err) => {
            pool.remove(&key, &conn);
            if let HboneError::Tls { refusal, .. } = &err {
                pool.metrics.tls_refused(OUTBOUND, refusal.reason());
                warn!(
                    gateway = %key.gateway,
                    reason = refusal.reason(),
                    %refusal,
                    "TLS with east-west gateway refused"
                );
            } else {
                debug!(error = %err, "dial failed");
            }
            state.send_replace(ConnState::Failed(err));
        }
        Ok(dialed) => {
            debug!("connected");
            drive(&pool, &key, &conn, dialed, &state).await;
            pool.remove(&key, &conn);
            state.send_replace(ConnState::Closed);
        }
    }
}

/// Drives a ready connection: frames, keepalive pings, idle expiry.
async fn drive(
    pool: &Pool,
    key: &Key,
    conn: &Arc<Conn>,
    (send, mut connection): Dialed,
    state: &watch::Sender<ConnState>,
) {
    let config = &pool.config;
    let ping_pong = connection.ping_pong();
    let (interval, timeout) = (config.keepalive_interval, config.keepalive_timeout);
    let mut keepalive = std::pin::pin!(async move {
        match ping_pong {
            Some(ping_pong) => wire::keepalive(ping_pong, interval, timeout).await,
            None => std::future::pending().await,
        }
    });
    state.send_replace(ConnState::Ready(send));
    let mut connection = std::pin::pin!(connection);
    let mut active = conn.active.subscribe();
    let mut idle_since = (*active.borrow_and_update() == 0).then(Instant::now);
    loop {
        let idle_deadline = idle_since.map(|since| since + config.idle_timeout);
        tokio::select! {
            result = &mut connection => {
                match result {
                    Ok(()) => debug!("gateway closed the connection"),
                    Err(err) => info!(error = %err, "connection to gateway failed"),
                }
                return;
            }
            changed = active.changed() => {
                if changed.is_err() {
                    return;
                }
                idle_since = (*active.borrow_and_update() == 0).then(Instant::now);
            }
            () = sleep_until(idle_deadline) => {
                if pool.remove_if_idle(key, conn) {
                    debug!(idle = ?config.idle_timeout, "closing idle connection");
                    break;
                }
                // A caller claimed a slot just now.
                idle_since = (*active.borrow_and_update() == 0).then(Instant::now);
            }
            () = &mut keepalive => {
                warn!(
                    gateway = %key.gateway,
                    timeout = ?config.keepalive_timeout,
                    "gateway did not answer a keepalive ping; dropping the connection"
                );
                return;
            }
        }
    }
    // Dropping the last request handle makes h2 send GOAWAY and close.
    state.send_replace(ConnState::Closed);
    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
