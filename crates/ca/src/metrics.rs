//! The signing endpoint's metrics (prefix `ca_` under the registry given).

use std::sync::Arc;

use meshpeer_listener::ListenerMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a refused request or connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A stable short reason (`unauthenticated`, `identity_mismatch`, ...).
    pub reason: String,
}

/// Counters of the signing endpoint and the listener it runs on.
#[derive(Debug, Default)]
pub struct CaMetrics {
    /// `ca_certificates_issued_total`.
    pub issued: Counter,
    /// `ca_refusals_total{reason}`: CreateCertificate calls refused.
    pub refusals: Family<ReasonLabels, Counter>,
    /// `ca_listener_tls_refusals_total{reason}`: connections whose TLS
    /// handshake failed (a client certificate not under the root, ...).
    pub tls_refusals: Family<ReasonLabels, Counter>,
    /// The listener's bounds at work (SPEC B5):
    /// `ca_listener_connections_closed_total{reason}` (shed, timed out,
    /// full, idle, handshake_failed), pending and served connections.
    pub listener: Arc<ListenerMetrics>,
}

impl CaMetrics {
    /// Registers the counters under `ca_` in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<CaMetrics> {
        let metrics = CaMetrics::default();
        let sub = registry.sub_registry_with_prefix("ca");
        sub.register(
            "certificates_issued",
            "Leaf certificates signed for callers",
            metrics.issued.clone(),
        );
        sub.register(
            "refusals",
            "CreateCertificate calls refused, by reason",
            metrics.refusals.clone(),
        );
        sub.register(
            "listener_tls_refusals",
            "Connections to the cluster listener refused during the TLS handshake, by reason",
            metrics.tls_refusals.clone(),
        );
        let metrics = CaMetrics {
            listener: ListenerMetrics::register(sub),
            ..metrics
        };
        Arc::new(metrics)
    }

    /// Counts one refusal for `reason`.
    pub fn refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
