//! HBONE metrics, registered under the `hbone` prefix.

use std::sync::Arc;

use meshpeer_listener::ListenerMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `inbound` (the gateway side) or `outbound` (the client side).
pub(crate) const INBOUND: &str = "inbound";
/// See [`INBOUND`].
pub(crate) const OUTBOUND: &str = "outbound";

/// Which side and how a tunnel was opened or closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Opened: `ok`, `refused` (an HTTP or TLS refusal) or `error`.
    /// Closed: `ok` (both directions ended) or `error` (reset, I/O error).
    pub outcome: &'static str,
}

/// Bytes relayed, by side and way.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `sent` into the tunnel or `received` from it, seen from this side.
    pub way: &'static str,
}

/// TLS handshakes refused, by side and [`meshpeer_identity::Refusal::reason`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `unknown_root`, `expired`, `wrong_trust_domain`, `no_spiffe_id`,
    /// `refused_by_peer` or `other`.
    pub reason: &'static str,
}

/// Just the side.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
}

/// Tunnel, traffic, TLS and pool metrics of both sides.
#[derive(Debug, Default)]
pub struct HboneMetrics {
    /// Tunnel attempts by side and outcome.
    pub tunnels_opened: Family<TunnelLabels, Counter>,
    /// Tunnels ended by side and outcome.
    pub tunnels_closed: Family<TunnelLabels, Counter>,
    /// Tunnels open now, by side.
    pub tunnels_active: Family<DirectionLabels, Gauge>,
    /// Payload bytes relayed, by side and way.
    pub bytes: Family<TrafficLabels, Counter>,
    /// Refused TLS handshakes, by side and reason.
    pub tls_refusals: Family<RefusalLabels, Counter>,
    /// HTTP/2 connections in the client pool (dialing or ready).
    pub pooled_connections: Gauge,
    /// HTTP/2 connections the gateway serves now.
    pub inbound_connections: Gauge,
    /// The gateway listener's bounds at work (SPEC B5):
    /// `hbone_listener_connections_closed_total{reason}`, pending and
    /// authenticated connections.
    pub listener: Arc<ListenerMetrics>,
}

impl HboneMetrics {
    /// Creates the metrics and registers them under `hbone_` in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = HboneMetrics::default();
        let r = registry.sub_registry_with_prefix("hbone");
        r.register(
            "tunnels_opened",
            "Tunnel attempts by direction and outcome (ok, refused, error)",
            m.tunnels_opened.clone(),
        );
        r.register(
            "tunnels_closed",
            "Tunnels ended by direction and outcome (ok; cancelled: the caller reset the stream with CANCEL before ending its side; error)",
            m.tunnels_closed.clone(),
        );
        r.register(
            "tunnels_active",
            "Tunnels open now, by direction",
            m.tunnels_active.clone(),
        );
        r.register(
            "bytes",
            "Payload bytes relayed through tunnels, by direction and way (sent, received)",
            m.bytes.clone(),
        );
        r.register(
            "tls_refusals",
            "Refused TLS handshakes by direction and reason",
            m.tls_refusals.clone(),
        );
        r.register(
            "pooled_connections",
            "HTTP/2 connections in the client pool",
            m.pooled_connections.clone(),
        );
        r.register(
            "inbound_connections",
            "HTTP/2 connections served by the gateway",
            m.inbound_connections.clone(),
        );
        let m = HboneMetrics {
            listener: ListenerMetrics::register(r),
            ..m
        };
        Arc::new(m)
    }

    pub(crate) fn opened(&self, direction: &'static str, outcome: &'static str) {
        self.tunnels_opened
            .get_or_create(&TunnelLabels { direction, outcome })
            .inc();
    }

    pub(crate) fn tls_refused(&self, direction: &'static str, reason: &'static str) {
        self.tls_refusals
            .get_or_create(&RefusalLabels { direction, reason })
            .inc();
    }

    /// Counters for one open tunnel; counts it active until dropped.
    pub(crate) fn tunnel(self: &Arc<Self>, direction: &'static str) -> TunnelCounters {
        let counter = |way| {
            self.bytes
                .get_or_create(&TrafficLabels { direction, way })
                .clone()
        };
        let active = self
            .tunnels_active
            .get_or_create(&DirectionLabels { direction })
            .clone();
        active.inc();
        TunnelCounters {
            sent: counter("sent"),
            received: counter("received"),
            active,
            metrics: self.clone(),
            direction,
        }
    }
}

/// Byte counters resolved once per tunnel (a label lookup per chunk would
/// take the family's lock on the hot path).
#[derive(Debug)]
pub(crate) struct TunnelCounters {
    pub(crate) sent: Counter,
    pub(crate) received: Counter,
    active: Gauge,
    metrics: Arc<HboneMetrics>,
    direction: &'static str,
}

impl TunnelCounters {
    /// Counts the tunnel closed with `outcome` (`ok`, `cancelled`,
    /// `error`); call once.
    pub(crate) fn closed(&self, outcome: &'static str) {
        self.metrics
            .tunnels_closed
            .get_or_create(&TunnelLabels {
                direction: self.direction,
                outcome,
            })
            .inc();
    }
}

impl Drop for TunnelCounters {
    fn drop(&mut self) {
        self.active.dec();
    }
}
