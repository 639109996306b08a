//! Controller metrics, under the `controller` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: String,
}

/// A linked peer and why part of what it sent was refused (P2, P3).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    pub(crate) peer: String,
    pub(crate) reason: String,
}

#[derive(Debug)]
pub(crate) struct ControllerMetrics {
    /// Services of a linked peer refused by this cluster's own objects (P2,
    /// P3), in the current catalog; only linked peers get a label set.
    pub(crate) refused_peer_services: Family<RefusalLabels, Gauge>,
    /// Global services in this cluster's catalog.
    pub(crate) catalog_services: Gauge,
    /// Services this cluster exports.
    pub(crate) exported_services: Gauge,
    /// Time to recompute the export and the catalog.
    pub(crate) recompute_seconds: Histogram,
    /// Time to bring the export up to date with a batch of changes.
    pub(crate) export_seconds: Histogram,
    /// Services whose export was recomputed (I1: those a change touched).
    pub(crate) services_exported_again: Counter,
    /// Global services merged again (I1: those whose inputs changed).
    pub(crate) services_merged_again: Counter,
    /// Hostnames whose global service was replaced, added or removed.
    pub(crate) hostnames_changed: Counter,
    /// Catalog recomputations from scratch (this cluster's identity,
    /// Segments or links changed).
    pub(crate) full_recomputes: Counter,
    /// Batches received from the source.
    pub(crate) source_updates: Counter,
    /// Output writes, by result.
    pub(crate) output_applies: Family<ResultLabels, Counter>,
    /// HTTPRoute status writes (SPEC L7), by result.
    pub(crate) route_status_writes: Family<ResultLabels, Counter>,
}

impl ControllerMetrics {
    pub(crate) fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let m = ControllerMetrics {
            refused_peer_services: Family::default(),
            catalog_services: Gauge::default(),
            exported_services: Gauge::default(),
            recompute_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            export_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            services_exported_again: Counter::default(),
            services_merged_again: Counter::default(),
            hostnames_changed: Counter::default(),
            full_recomputes: Counter::default(),
            source_updates: Counter::default(),
            output_applies: Family::default(),
            route_status_writes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("controller");
        r.register(
            "catalog_services",
            "Global services in this cluster's catalog",
            m.catalog_services.clone(),
        );
        r.register(
            "exported_services",
            "Services this cluster exports",
            m.exported_services.clone(),
        );
        r.register(
            "recompute_seconds",
            "Time to recompute the export and the catalog",
            m.recompute_seconds.clone(),
        );
        r.register(
            "export_seconds",
            "Time to bring the export up to date with a batch of changes from the source",
            m.export_seconds.clone(),
        );
        r.register(
            "services_exported_again",
            "Services whose export was recomputed because a change touched them",
            m.services_exported_again.clone(),
        );
        r.register(
            "services_merged_again",
            "Global services merged again because their inputs changed",
            m.services_merged_again.clone(),
        );
        r.register(
            "hostnames_changed",
            "Hostnames whose global service was replaced, added or removed",
            m.hostnames_changed.clone(),
        );
        r.register(
            "full_recomputes",
            "Catalogs recomputed from scratch (the cluster's identity, Segments or links changed)",
            m.full_recomputes.clone(),
        );
        r.register(
            "source_updates",
            "Batches of changes received from the source",
            m.source_updates.clone(),
        );
        r.register(
            "refused_peer_services",
            "Services of a linked peer refused because its claims contradict this cluster's own objects (P2, P3), by peer and reason",
            m.refused_peer_services.clone(),
        );
        r.register(
            "output_applies",
            "Output writes, by result",
            m.output_applies.clone(),
        );
        r.register(
            "route_status_writes",
            "HTTPRoute status writes, by result",
            m.route_status_writes.clone(),
        );
        std::sync::Arc::new(m)
    }
}
