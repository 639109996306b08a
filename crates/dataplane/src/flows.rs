//! Cross-cluster traffic (issue 16): connections, bytes and failures by
//! source cluster, destination cluster and global service, counted by the
//! proxy (the caller's side: `reporter="proxy"`) and the gateway (the
//! destination's side: `reporter="gateway"`), as
//! `dataplane_flow_connections_total` and `dataplane_flow_bytes_total`.
//!
//! Label values come from the catalog only: a service is a catalog
//! hostname (anything else is `unknown`), a cluster is this one, a linked
//! peer, or `unlinked`; a series whose service or peer leaves the catalog
//! is removed with the next version (B6), so a caller cannot grow them.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::state::DataplaneState;

/// A flow's identity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct FlowLabels {
    /// `proxy` or `gateway`.
    pub reporter: String,
    pub source_cluster: String,
    pub destination_cluster: String,
    /// The global hostname, or `unknown`.
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowOutcomeLabels {
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `ok`, `reset`, `failed` (no destination answered; its destination
    /// cluster is `none`), or the gateway's refusal
    /// reason (`not_linked`, `not_exported`, `segment`, `no_endpoint`, ...).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowByteLabels {
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `sent` (towards the destination) or `received` (from it).
    pub way: String,
}

/// The flow counters, and which series exist (to remove them).
#[derive(Debug, Default)]
pub struct Flows {
    pub connections: Family<FlowOutcomeLabels, Counter>,
    pub bytes: Family<FlowByteLabels, Counter>,
    created: Mutex<HashSet<(FlowLabels, String)>>,
    /// The catalog version the series were last pruned at.
    pruned_at: AtomicU64,
}

/// Outcome labels seen per flow are kept to remove them; `way` values are
/// fixed.
const WAYS: [&str; 2] = ["sent", "received"];

impl Flows {
    /// The labels of a flow, from catalog names only.
    pub fn labels(
        state: &DataplaneState,
        reporter: &str,
        source: &str,
        destination: &str,
        service: &str,
    ) -> FlowLabels {
        let me = &state.feed.catalog.cluster.name;
        let known = |c: &str| {
            // `none` again when a flow's labels are checked by `prune`.
            if c.is_empty() || c == "none" {
                "none".to_owned()
            } else if c == me
                || state.feed.catalog.links.iter().any(|l| l.cluster == c)
                || state.feed.callers.iter().any(|l| l.cluster == c)
            {
                c.to_owned()
            } else {
                "unlinked".to_owned()
            }
        };
        let service = if state.service_by_host(service).is_some() {
            service.to_ascii_lowercase()
        } else {
            "unknown".to_owned()
        };
        FlowLabels {
            reporter: reporter.to_owned(),
            source_cluster: known(source),
            destination_cluster: known(destination),
            service,
        }
    }

    /// Counts one connection of `flow` that ended (or was refused) with
    /// `outcome`.
    pub fn connection(&self, state: &DataplaneState, flow: &FlowLabels, outcome: &str) {
        self.connection_counter(state, flow, outcome).inc();
    }

    /// The counter [`Flows::connection`] counts into, for a caller that
    /// counts many exchanges of one flow (an L7 connection's requests):
    /// valid while the catalog version is `state`'s (a newer one may prune
    /// it).
    pub fn connection_counter(
        &self,
        state: &DataplaneState,
        flow: &FlowLabels,
        outcome: &str,
    ) -> Counter {
        self.prune(state);
        if let Ok(mut c) = self.created.lock() {
            c.insert((flow.clone(), outcome.to_owned()));
        }
        self.connections
            .get_or_create(&FlowOutcomeLabels {
                flow: flow.clone(),
                outcome: outcome.to_owned(),
            })
            .clone()
    }

    /// The byte counters of `flow`: `(sent, received)`.
    pub fn byte_counters(&self, flow: &FlowLabels) -> (Counter, Counter) {
        let get = |way: &str| {
            self.bytes
                .get_or_create(&FlowByteLabels {
                    flow: flow.clone(),
                    way: way.to_owned(),
                })
                .clone()
        };
        (get(WAYS[0]), get(WAYS[1]))
    }

    /// Removes the series of services and clusters the catalog no longer
    /// holds, once per catalog version.
    pub fn prune(&self, state: &DataplaneState) {
        let version = state.feed.version;
        if self.pruned_at.swap(version, Ordering::Relaxed) == version {
            return;
        }
        let Ok(mut created) = self.created.lock() else {
            return;
        };
        created.retain(|(flow, outcome)| {
            let fresh = Flows::labels(
                state,
                &flow.reporter,
                &flow.source_cluster,
                &flow.destination_cluster,
                &flow.service,
            );
            let keep = fresh == *flow || flow.service == "unknown" && fresh.service == "unknown";
            if !keep {
                self.connections.remove(&FlowOutcomeLabels {
                    flow: flow.clone(),
                    outcome: outcome.clone(),
                });
                for way in WAYS {
                    self.bytes.remove(&FlowByteLabels {
                        flow: flow.clone(),
                        way: way.to_owned(),
                    });
                }
            }
            keep
        });
    }

    /// The counts of every flow held now (cumulative since this process
    /// started, less what [`Flows::prune`] removed), one per flow, sorted:
    /// what the proxy and the gateway report to their controller
    /// ([`crate::report`]). `failures` are connections whose outcome is
    /// not `ok`.
    pub fn snapshot(&self) -> Vec<crate::report::FlowCount> {
        let created: Vec<(FlowLabels, String)> = match self.created.lock() {
            Ok(c) => c.iter().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut by_flow: std::collections::BTreeMap<FlowLabels, crate::report::FlowCount> =
            std::collections::BTreeMap::new();
        for (flow, outcome) in created {
            let n = self
                .connections
                .get(&FlowOutcomeLabels {
                    flow: flow.clone(),
                    outcome: outcome.clone(),
                })
                .map_or(0, |c| c.get());
            let count = by_flow
                .entry(flow.clone())
                .or_insert_with(|| crate::report::FlowCount {
                    source_cluster: flow.source_cluster.clone(),
                    destination_cluster: flow.destination_cluster.clone(),
                    service: flow.service.clone(),
                    ..Default::default()
                });
            count.connections += n;
            if outcome != "ok" {
                count.failures += n;
            }
        }
        for (flow, count) in &mut by_flow {
            let bytes = |way: &str| {
                self.bytes
                    .get(&FlowByteLabels {
                        flow: flow.clone(),
                        way: way.to_owned(),
                    })
                    .map_or(0, |c| c.get())
            };
            count.bytes_sent = bytes(WAYS[0]);
            count.bytes_received = bytes(WAYS[1]);
        }
        by_flow.into_values().collect()
    }

    /// Series of connections held (for tests and the bound).
    pub fn series(&self) -> usize {
        self.created.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// A stream that adds what goes through it to a flow's byte counters as it
/// goes (a long connection shows up before it ends).
pub struct Counted<S> {
    inner: S,
    /// Bytes written into `inner` (towards the destination).
    sent: Counter,
    /// Bytes read from `inner`.
    received: Counter,
    pub(crate) totals: (u64, u64),
}

impl<S> Counted<S> {
    pub fn new(inner: S, (sent, received): (Counter, Counter)) -> Self {
        Counted {
            inner,
            sent,
            received,
            totals: (0, 0),
        }
    }

    /// `(sent, received)` so far.
    pub fn totals(&self) -> (u64, u64) {
        self.totals
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.received.inc_by(n);
            self.totals.1 += n;
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent.inc_by(*n as u64);
            self.totals.0 += *n as u64;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent.inc_by(*n as u64);
            self.totals.0 += *n as u64;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meshpeer_model::testing::{ClusterBuilder, svc};
    use meshpeer_model::{CatalogConfig, catalog, exports};

    use super::*;
    use crate::feed::CatalogFeed;
    use crate::state::StateOptions;

    /// cluster1's view at `version`, linked to cluster2, with the global
    /// services `names` exported by cluster2.
    fn state(version: u64, names: &[&str]) -> DataplaneState {
        let mut c2 = ClusterBuilder::new("cluster2");
        for n in names {
            c2 = c2.service(svc("shop", n).global().ready(1));
        }
        let c1 = ClusterBuilder::new("cluster1").link("cluster2").build();
        let feed = CatalogFeed {
            version,
            catalog: Arc::new(catalog(
                &c1,
                &[exports(&c2.build())],
                &CatalogConfig::default(),
            )),
            callers: Vec::new(),
            ..CatalogFeed::default()
        };
        DataplaneState::build(Arc::new(feed), &StateOptions::default())
    }

    #[test]
    fn b6_flow_series_leave_with_their_service_or_peer() {
        let flows = Flows::default();
        let v1 = state(1, &["web", "cart"]);
        for name in ["web", "cart"] {
            let host = format!("{name}.shop.mesh.internal");
            let flow = Flows::labels(&v1, "proxy", "cluster1", "cluster2", &host);
            assert_eq!(flow.service, host);
            assert_eq!(flow.destination_cluster, "cluster2");
            flows.connection(&v1, &flow, "ok");
            flows.connection(&v1, &flow, "reset");
        }
        // Names outside the catalog share one series.
        let odd = Flows::labels(
            &v1,
            "proxy",
            "cluster1",
            "cluster7",
            "nope.shop.mesh.internal",
        );
        assert_eq!(odd.service, "unknown");
        assert_eq!(odd.destination_cluster, "unlinked");
        flows.connection(&v1, &odd, "failed");
        // A connection no destination took: its cluster is `none`.
        let failed = Flows::labels(&v1, "proxy", "cluster1", "", "web.shop.mesh.internal");
        assert_eq!(failed.destination_cluster, "none");
        flows.connection(&v1, &failed, "failed");
        assert_eq!(flows.series(), 6);

        // `cart` leaves the catalog: its series go, the others stay.
        let v2 = state(2, &["web"]);
        flows.prune(&v2);
        assert_eq!(flows.series(), 4, "failures with no destination stay too");
        let cart = Flows::labels(
            &v1,
            "proxy",
            "cluster1",
            "cluster2",
            "cart.shop.mesh.internal",
        );
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("flow", "", flows.connections.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        assert!(!text.contains(&cart.service), "{text}");
        assert!(text.contains("web.shop.mesh.internal"), "{text}");
        // Pruned once per version.
        flows.prune(&v2);
        assert_eq!(flows.series(), 4);
    }

    #[test]
    fn a_snapshot_sums_outcomes_per_flow_failures_apart() {
        let flows = Flows::default();
        let v1 = state(1, &["web"]);
        let host = "web.shop.mesh.internal";
        let flow = Flows::labels(&v1, "proxy", "cluster1", "cluster2", host);
        for outcome in ["ok", "ok", "ok", "reset"] {
            flows.connection(&v1, &flow, outcome);
        }
        let (sent, received) = flows.byte_counters(&flow);
        sent.inc_by(40);
        received.inc_by(400);
        let failed = Flows::labels(&v1, "proxy", "cluster1", "", host);
        flows.connection(&v1, &failed, "failed");
        let snap = flows.snapshot();
        assert_eq!(
            snap,
            [
                crate::report::FlowCount {
                    source_cluster: "cluster1".into(),
                    destination_cluster: "cluster2".into(),
                    service: host.into(),
                    connections: 4,
                    failures: 1,
                    bytes_sent: 40,
                    bytes_received: 400,
                },
                crate::report::FlowCount {
                    source_cluster: "cluster1".into(),
                    destination_cluster: "none".into(),
                    service: host.into(),
                    connections: 1,
                    failures: 1,
                    bytes_sent: 0,
                    bytes_received: 0,
                },
            ]
        );
        // Reading does not create byte series for the failed flow.
        assert!(
            flows
                .bytes
                .get(&FlowByteLabels {
                    flow: failed,
                    way: "sent".into()
                })
                .is_none()
        );
    }
}
