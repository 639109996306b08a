//! Peering metrics, registered under the `peering` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A linked or served peer cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

/// Why something was refused or rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub peer: String,
    /// `unknown_root`, `expired`, `wrong_trust_domain`, `no_spiffe_id`,
    /// `unreachable`, `protocol`, `nack_sent`, `nack_received`, ...
    pub reason: String,
}

/// Every reason `rejects` counts under a peer's name (client side and
/// served linked peers), so that a peer's label sets can all be removed.
pub const REJECT_REASONS: [&str; 23] = [
    "unreachable",
    "unknown_root",
    "expired",
    "wrong_trust_domain",
    "no_spiffe_id",
    "not_a_controller",
    "tls",
    "refused",
    "refused_by_peer",
    "protocol",
    "nack_sent",
    "nack_received",
    "own_trust_domain",
    "own_cluster",
    "no_cluster_binding",
    "wrong_cluster",
    "peer_not_allowed",
    "cluster_name_mismatch",
    "segment_pin_mismatch",
    "trust_domain_not_bound",
    "wrong_identity",
    "other",
    "too_large_for_peer",
];

/// The label every client that is not a linked peer is counted under.
pub const UNKNOWN_PEER: &str = "unknown";

type HistogramFamily = Family<PeerLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Counters and gauges of peering, client and server side.
#[derive(Debug)]
pub struct Metrics {
    /// 1 while the stream to a linked peer is up (client side).
    pub peer_connected: Family<PeerLabels, Gauge>,
    /// 1 once the current stream delivered the peer's full state.
    pub peer_synced: Family<PeerLabels, Gauge>,
    /// 1 while a disconnected peer's last export is kept for the grace period.
    pub peer_stale: Family<PeerLabels, Gauge>,
    /// Resources received from a linked peer.
    pub resources_received: Family<PeerLabels, Counter>,
    /// Resources sent to a peer that asked (server side).
    pub resources_sent: Family<PeerLabels, Counter>,
    /// Time from sending a delta to its ACK (server side).
    pub delta_ack_seconds: HistogramFamily,
    /// Refused connections and rejected deltas, by reason.
    pub rejects: Family<RejectLabels, Counter>,
    /// Resources of a linked peer refused on their own (B1, B2), by reason
    /// (`invalid_name`, ..., `over_service_cap`: [`crate::RefuseReason`]).
    pub resources_refused: Family<RejectLabels, Counter>,
    /// Resources of a linked peer refused now (as of its last delta), by reason.
    pub refused_now: Family<RejectLabels, Gauge>,
    /// Peers currently served (server side).
    pub served_peers: Gauge,
    /// Streams ended because a newer one came from the same identity (B4).
    pub sessions_replaced: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            peer_connected: Family::default(),
            peer_synced: Family::default(),
            peer_stale: Family::default(),
            resources_received: Family::default(),
            resources_sent: Family::default(),
            delta_ack_seconds: Family::new_with_constructor(latency_histogram),
            rejects: Family::default(),
            resources_refused: Family::default(),
            refused_now: Family::default(),
            served_peers: Gauge::default(),
            sessions_replaced: Counter::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them under `peering_` in `registry`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("peering");
        r.register(
            "peer_connected",
            "1 while the stream to a linked peer is up",
            m.peer_connected.clone(),
        );
        r.register(
            "peer_synced",
            "1 once the current stream delivered the peer's full state",
            m.peer_synced.clone(),
        );
        r.register(
            "peer_stale",
            "1 while a disconnected peer's last export is kept",
            m.peer_stale.clone(),
        );
        r.register(
            "resources_received",
            "Resources received from linked peers",
            m.resources_received.clone(),
        );
        r.register(
            "resources_sent",
            "Resources sent to peers",
            m.resources_sent.clone(),
        );
        r.register(
            "delta_ack_seconds",
            "Time from sending a delta to its ACK",
            m.delta_ack_seconds.clone(),
        );
        r.register(
            "rejects",
            "Refused connections and rejected deltas, by reason",
            m.rejects.clone(),
        );
        r.register(
            "resources_refused",
            "Resources of linked peers refused on their own (invalid, or beyond a cap), by reason",
            m.resources_refused.clone(),
        );
        r.register(
            "refused_resources",
            "Resources of linked peers refused now, as of their last delta, by reason",
            m.refused_now.clone(),
        );
        r.register(
            "served_peers",
            "Peers currently served",
            m.served_peers.clone(),
        );
        r.register(
            "sessions_replaced",
            "Peering streams ended because a newer stream came from the same identity",
            m.sessions_replaced.clone(),
        );
        std::sync::Arc::new(m)
    }

    pub(crate) fn reject(&self, peer: &str, reason: &str) {
        self.rejects
            .get_or_create(&RejectLabels {
                peer: peer.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Removes every label set of `peer` (its link is gone: B6). Label sets
    /// keyed by a peer's name exist only for linked peers; served clients
    /// that this cluster does not link to are counted as `unknown`.
    pub fn forget_peer(&self, peer: &str) {
        let p = Metrics::peer(peer);
        self.peer_connected.remove(&p);
        self.peer_synced.remove(&p);
        self.peer_stale.remove(&p);
        self.resources_received.remove(&p);
        self.resources_sent.remove(&p);
        self.delta_ack_seconds.remove(&p);
        let reasons = REJECT_REASONS
            .iter()
            .copied()
            .chain(crate::RefuseReason::ALL.iter().map(|r| r.as_str()));
        for reason in reasons {
            let l = RejectLabels {
                peer: peer.to_owned(),
                reason: reason.to_owned(),
            };
            self.rejects.remove(&l);
            self.resources_refused.remove(&l);
            self.refused_now.remove(&l);
        }
    }

    pub(crate) fn peer(peer: &str) -> PeerLabels {
        PeerLabels {
            peer: peer.to_owned(),
        }
    }
}
