//! Proxy and gateway metrics, under the `dataplane` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `outbound` (proxy) or `inbound` (gateway).
    pub direction: String,
    /// `ok`, `reset`, `no_endpoint`, `refused`; for L7 clients also
    /// `header_timeout` and `invalid_request`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    pub direction: String,
    /// `sent` (to the destination) or `received` (from it).
    pub way: String,
}

/// L8: requests by destination service, destination cluster and status
/// class. Label values are catalog names (B6).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub service: String,
    /// The cluster that answered (empty: none did).
    pub destination_cluster: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// See [`crate::endpoint_policy::Refusal::as_str`].
    pub reason: String,
}

/// Counters of the proxy and the gateway.
#[derive(Debug)]
pub struct DataplaneMetrics {
    /// Connections closed, by direction and outcome.
    pub connections: Family<ConnLabels, Counter>,
    pub bytes: Family<ByteLabels, Counter>,
    /// Time from accepting a connection to its destination answering.
    pub connect_seconds: Histogram,
    /// Extra destinations tried after a failure (T6).
    pub retries: Counter,
    /// Destinations ejected by passive health checking, by kind
    /// (`endpoint`, `gateway`).
    pub ejections: Family<KindLabels, Counter>,
    /// Tunnels the gateway refused, by reason (`not_linked`, `segment`,
    /// `not_exported`, `no_endpoint`, `endpoint_policy`, `bad_request`).
    pub refusals: Family<KindLabels, Counter>,
    /// Captured addresses that could not be listened on.
    pub listen_errors: Counter,
    /// Endpoints not dialled, by reason (P5: `loopback`, `link_local`,
    /// `vip_range`, `node_address`, ...).
    pub endpoint_refusals: Family<ReasonLabels, Counter>,
    /// Catalog hostnames outside the zones this cluster answers for, left
    /// out of DNS and listeners in the current version (P2).
    pub names_outside_zones: Gauge,
    /// Cross-cluster traffic by source cluster, destination cluster and
    /// global service (issue 16).
    pub flows: crate::flows::Flows,
    /// L7 requests (L8).
    pub http_requests: Family<HttpLabels, Counter>,
    /// L7 request duration to the response head (L8); written by every
    /// request on every loop, so in per-thread slots.
    pub http_request_seconds: crate::sharded::Histogram,
    /// L7 requests the proxy exchanged itself: HTTP/1.1, without a body
    /// or with one of a declared length up to 64 KiB (L6).
    pub http1_direct: crate::sharded::Counter,
    /// L7 client connections handed to hyper for the rest of their life,
    /// by the reason of the first request the proxy's own HTTP/1.1
    /// exchange did not take (`http2`, `body`, `upgrade`, `version`,
    /// `filter`, `http2_backend`, ...).
    pub http1_handoffs: Family<ReasonLabels, Counter>,
}

impl Default for DataplaneMetrics {
    fn default() -> Self {
        DataplaneMetrics {
            connections: Family::default(),
            bytes: Family::default(),
            connect_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            retries: Counter::default(),
            ejections: Family::default(),
            refusals: Family::default(),
            listen_errors: Counter::default(),
            endpoint_refusals: Family::default(),
            names_outside_zones: Gauge::default(),
            flows: crate::flows::Flows::default(),
            http_requests: Family::default(),
            http_request_seconds: crate::sharded::Histogram::new(exponential_buckets(
                0.000_1, 2.0, 18,
            )),
            http1_direct: crate::sharded::Counter::default(),
            http1_handoffs: Family::default(),
        }
    }
}

impl DataplaneMetrics {
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let m = DataplaneMetrics::default();
        let r = registry.sub_registry_with_prefix("dataplane");
        r.register(
            "connections",
            "Connections closed, by direction and outcome",
            m.connections.clone(),
        );
        r.register(
            "bytes",
            "Bytes relayed, by direction and way",
            m.bytes.clone(),
        );
        r.register(
            "connect_seconds",
            "Time from accept to the destination answering",
            m.connect_seconds.clone(),
        );
        r.register(
            "retries",
            "Extra destinations tried after a failure",
            m.retries.clone(),
        );
        r.register(
            "ejections",
            "Destinations ejected by passive health checking",
            m.ejections.clone(),
        );
        r.register(
            "refusals",
            "Tunnels refused by the gateway, by reason",
            m.refusals.clone(),
        );
        r.register(
            "listen_errors",
            "Captured addresses that could not be listened on",
            m.listen_errors.clone(),
        );
        r.register(
            "endpoint_refusals",
            "Endpoints not dialled (loopback, link-local, VIP range, node address, ...), by reason",
            m.endpoint_refusals.clone(),
        );
        r.register(
            "names_outside_zones",
            "Catalog hostnames outside this cluster's zones, not answered nor listened for",
            m.names_outside_zones.clone(),
        );
        r.register(
            "flow_connections",
            "Connections by reporter, source cluster, destination cluster, global service and outcome",
            m.flows.connections.clone(),
        );
        r.register(
            "flow_bytes",
            "Bytes by reporter, source cluster, destination cluster, global service and way",
            m.flows.bytes.clone(),
        );
        r.register(
            "http_requests",
            "L7 requests by destination service, destination cluster and status class",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_seconds",
            "L7 request duration to the response head",
            m.http_request_seconds.clone(),
        );
        r.register(
            "http1_direct_requests",
            "L7 HTTP/1.1 requests (no body, or one of a declared length up to 64 KiB) the proxy exchanged itself",
            m.http1_direct.clone(),
        );
        r.register(
            "http1_handoffs",
            "L7 client connections handed to hyper, by the reason of the first request the proxy's own HTTP/1.1 exchange did not take",
            m.http1_handoffs.clone(),
        );
        std::sync::Arc::new(m)
    }

    /// The counter of L7 requests to `service` answered from
    /// `destination_cluster` with `status`'s class (L8).
    pub(crate) fn http_requests(
        &self,
        service: &str,
        destination_cluster: &str,
        status: http::StatusCode,
    ) -> Counter {
        self.http_requests
            .get_or_create(&HttpLabels {
                service: service.to_owned(),
                destination_cluster: destination_cluster.to_owned(),
                status_class: format!("{}xx", status.as_u16() / 100),
            })
            .clone()
    }

    pub(crate) fn connection(&self, direction: &str, outcome: &str) {
        self.connections
            .get_or_create(&ConnLabels {
                direction: direction.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub(crate) fn bytes(&self, direction: &str, sent: u64, received: u64) {
        for (way, n) in [("sent", sent), ("received", received)] {
            self.bytes
                .get_or_create(&ByteLabels {
                    direction: direction.to_owned(),
                    way: way.to_owned(),
                })
                .inc_by(n);
        }
    }

    pub(crate) fn ejection(&self, kind: &str) {
        self.ejections
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(crate) fn endpoint_refusal(&self, reason: &str) {
        self.endpoint_refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn http1_handoff(&self, reason: &str) {
        self.http1_handoffs
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn refusal(&self, kind: &str) {
        self.refusals
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
}
