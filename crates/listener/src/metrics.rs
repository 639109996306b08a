//! Counters and gauges of one listener, registered by the subsystem that
//! owns it under its own prefix (`hbone_listener_...`, `dns_tcp_...`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Why a connection was closed: `shed`, `handshake_timeout`, `full`,
/// `idle` by its gate; `handshake_failed` when the caller sent what is not
/// a handshake (garbage) or left during it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The reasons a gate closes connections; each starts at 0.
const REASONS: [&str; 5] = [
    "shed",
    "handshake_timeout",
    "full",
    "idle",
    "handshake_failed",
];

/// `listener_connections_closed_total{reason}`, `listener_pending_connections`,
/// `listener_connections` (under the owner's prefix).
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    closed: Family<ReasonLabels, Counter>,
    pending: Gauge,
    connections: Gauge,
}

impl ListenerMetrics {
    /// Creates the metrics and registers them under `listener_` in
    /// `registry` (give it the subsystem's sub-registry).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = ListenerMetrics::default();
        for reason in REASONS {
            let _ = m.closed.get_or_create(&ReasonLabels { reason });
        }
        let r = registry.sub_registry_with_prefix("listener");
        r.register(
            "connections_closed",
            "Connections closed before or instead of being served, by reason: shed (too many waiting to authenticate; the oldest goes), handshake_timeout, full (no room for another authenticated connection), idle, handshake_failed (garbage, or the caller left; certificate refusals are counted by the subsystem)",
            m.closed.clone(),
        );
        r.register(
            "pending_connections",
            "Connections accepted and not yet authenticated",
            m.pending.clone(),
        );
        r.register(
            "connections",
            "Authenticated connections held",
            m.connections.clone(),
        );
        Arc::new(m)
    }

    /// Counts a connection closed for `reason`.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How many were closed for `reason` so far.
    pub fn closed_count(&self, reason: &'static str) -> u64 {
        self.closed.get_or_create(&ReasonLabels { reason }).get()
    }

    pub(crate) fn set_pending(&self, n: usize) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_connections(&self, n: usize) {
        self.connections.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn b6_listener_metrics_have_fixed_label_sets() {
        let mut registry = Registry::with_prefix("meshpeer");
        let m = ListenerMetrics::register(registry.sub_registry_with_prefix("hbone"));
        m.closed("shed");
        m.set_pending(3);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("meshpeer_hbone_listener_connections_closed_total{reason=\"shed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshpeer_hbone_listener_connections_closed_total{reason=\"idle\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("meshpeer_hbone_listener_pending_connections 3"),
            "{text}"
        );
    }
}
