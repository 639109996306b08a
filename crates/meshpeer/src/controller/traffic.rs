//! Cross-cluster traffic as this cluster's proxies and gateways report it
//! (issue 16): the latest report of each reporter, summed per flow (the
//! reporter's role, source cluster, destination cluster, global service),
//! with rates from each reporter's last two reports. Served as `GET
//! /v1/traffic` on the API and `/api/v1/traffic` on the page.
//!
//! Bounded (SPEC B6): at most [`MAX_REPORTERS`] reporters, a reporter is
//! forgotten after three of its intervals without a report (its counts
//! kept, folded into the totals of reporters gone), label values are
//! names of this cluster's catalog only (a service it does not hold is
//! `unknown`, a cluster that is neither this one, a linked peer nor a
//! caller is `unlinked`), and a flow leaves once its service or peer left
//! the catalog.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_dataplane::report::{MAX_FLOWS, TrafficReport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The most reporters (proxy and gateway processes) a controller keeps.
pub const MAX_REPORTERS: usize = 1024;

/// A reporter is forgotten after this many of its intervals without a report.
const STALE_INTERVALS: u32 = 3;

/// `GET /v1/traffic`: the flows this cluster's data plane reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficDoc {
    /// The cluster whose controller this is.
    pub cluster: String,
    /// The catalog version the names were checked against.
    pub version: u64,
    /// When this document was made (RFC 3339, UTC).
    pub generated_at: String,
    /// Reporters heard from, by identity and instance.
    pub reporters: Vec<ReporterRow>,
    /// Sorted by reporter, source, destination, service.
    pub flows: Vec<FlowRow>,
}

/// A proxy or gateway process that reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReporterRow {
    /// `proxy` or `gateway`.
    pub role: String,
    /// Its SPIFFE ID (cluster listener), `loopback` (plain API) or what
    /// the process embedding it says.
    pub identity: String,
    pub instance: String,
    pub last_report: String,
    pub interval_ms: u64,
    /// Flows in its last report.
    pub flows: usize,
}

/// One flow: counts since its reporters started (and of reporters gone),
/// rates over each reporter's last two reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRow {
    /// Who counted it: `proxy` (the caller's side: this cluster's clients)
    /// or `gateway` (this cluster's east-west gateway: callers from peers).
    pub reporter: String,
    pub source_cluster: String,
    /// `none`: no destination answered (a proxy's failed connection).
    pub destination_cluster: String,
    pub service: String,
    pub connections: u64,
    pub failures: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connections_per_second: f64,
    pub failures_per_second: f64,
    pub bytes_sent_per_second: f64,
    pub bytes_received_per_second: f64,
    /// failures / connections over the rate window when connections
    /// happened there, else over the totals (0 without connections).
    pub error_rate: f64,
}

/// Why a report was not taken (answered with 4xx and the reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefusal {
    #[error("role {0:?} is not proxy or gateway")]
    Role(String),
    #[error("{0} flows in one report; at most {MAX_FLOWS}")]
    TooManyFlows(usize),
    #[error("instance name longer than 256 bytes")]
    Instance,
    #[error("this controller already keeps {MAX_REPORTERS} reporters")]
    TooManyReporters,
}

impl ReportRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            ReportRefusal::Role(_) => "bad_role",
            ReportRefusal::TooManyFlows(_) => "too_many_flows",
            ReportRefusal::Instance => "bad_instance",
            ReportRefusal::TooManyReporters => "too_many_reporters",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FlowKey {
    reporter: String,
    source: String,
    destination: String,
    service: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    connections: u64,
    failures: u64,
    sent: u64,
    received: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.connections = self.connections.saturating_add(o.connections);
        self.failures = self.failures.saturating_add(o.failures);
        self.sent = self.sent.saturating_add(o.sent);
        self.received = self.received.saturating_add(o.received);
    }

    /// Some count went down: the reporter started over.
    fn below(&self, o: &Totals) -> bool {
        self.connections < o.connections
            || self.failures < o.failures
            || self.sent < o.sent
            || self.received < o.received
    }
}

#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    wall: SystemTime,
    flows: BTreeMap<FlowKey, Totals>,
}

#[derive(Clone, Debug)]
struct Reporter {
    role: String,
    interval: Duration,
    latest: Sample,
    previous: Option<Sample>,
}

impl Reporter {
    fn stale_at(&self) -> Instant {
        self.latest.at + self.interval * STALE_INTERVALS
    }
}

#[derive(Debug, Default)]
struct Book {
    /// (identity, instance) -> its reports.
    reporters: BTreeMap<(String, String), Reporter>,
    /// Counts of reporters gone (stopped, stale, restarted).
    retired: BTreeMap<FlowKey, Totals>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The reports of this cluster's data plane.
#[derive(Debug)]
pub struct TrafficBook {
    feed: watch::Receiver<Arc<CatalogFeed>>,
    book: Mutex<Book>,
    reports: Family<ResultLabels, Counter>,
    reporters: Gauge,
    /// Reports taken so far: [`TrafficBook::subscribe`].
    taken: watch::Sender<u64>,
}

impl TrafficBook {
    /// Registers `traffic_reports_total{result}` and `traffic_reporters`.
    pub fn new(feed: watch::Receiver<Arc<CatalogFeed>>, registry: &mut Registry) -> Arc<Self> {
        let book = TrafficBook::unregistered(feed);
        registry.register(
            "traffic_reports",
            "Flow reports from proxies and gateways, by result (accepted or the refusal reason)",
            book.reports.clone(),
        );
        registry.register(
            "traffic_reporters",
            "Proxies and gateways whose flow reports are kept",
            book.reporters.clone(),
        );
        Arc::new(book)
    }

    /// A book whose metrics are not registered anywhere (tests, tools).
    pub fn unregistered(feed: watch::Receiver<Arc<CatalogFeed>>) -> Self {
        TrafficBook {
            feed,
            book: Mutex::new(Book::default()),
            reports: Family::default(),
            reporters: Gauge::default(),
            taken: watch::channel(0).0,
        }
    }

    /// Changes with every report taken (its value: how many so far).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.taken.subscribe()
    }

    /// Counts a report's result: `accepted`, or why it was refused
    /// (also before it was read: who sent it, its size or syntax).
    pub fn count_result(&self, reason: &'static str) {
        self.reports
            .get_or_create(&ResultLabels { result: reason })
            .inc();
    }

    /// Takes `report` from `identity` (who the connection proved it is).
    pub fn ingest(&self, identity: &str, report: TrafficReport) -> Result<(), ReportRefusal> {
        self.ingest_at(identity, report, Instant::now(), SystemTime::now())
    }

    pub(crate) fn ingest_at(
        &self,
        identity: &str,
        report: TrafficReport,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(), ReportRefusal> {
        let r = self.check_and_take(identity, report, now, wall);
        let result = match &r {
            Ok(()) => "accepted",
            Err(e) => e.reason(),
        };
        self.count_result(result);
        if r.is_ok() {
            self.taken.send_modify(|n| *n += 1);
        }
        r
    }

    fn check_and_take(
        &self,
        identity: &str,
        report: TrafficReport,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(), ReportRefusal> {
        if report.role != "proxy" && report.role != "gateway" {
            return Err(ReportRefusal::Role(report.role.chars().take(64).collect()));
        }
        if report.flows.len() > MAX_FLOWS {
            return Err(ReportRefusal::TooManyFlows(report.flows.len()));
        }
        if report.instance.len() > 256 {
            return Err(ReportRefusal::Instance);
        }
        let feed = self.feed.borrow().clone();
        let names = Names::of(&feed);
        let mut flows: BTreeMap<FlowKey, Totals> = BTreeMap::new();
        for f in &report.flows {
            let key = FlowKey {
                reporter: report.role.clone(),
                source: names.cluster(&f.source_cluster),
                destination: names.cluster(&f.destination_cluster),
                service: names.service(&f.service),
            };
            // A proxy counts its own cluster's clients; a gateway the
            // callers of its own cluster.
            let own = if report.role == "proxy" {
                &key.source
            } else {
                &key.destination
            };
            if *own != names.me {
                continue;
            }
            flows.entry(key).or_default().add(&Totals {
                connections: f.connections,
                failures: f.failures.min(f.connections),
                sent: f.bytes_sent,
                received: f.bytes_received,
            });
        }
        let interval = Duration::from_millis(report.interval_ms)
            .clamp(Duration::from_secs(1), Duration::from_secs(300));
        let Ok(mut book) = self.book.lock() else {
            return Ok(());
        };
        book.prune(now, &names);
        let key = (identity.to_owned(), report.instance.clone());
        if !book.reporters.contains_key(&key) && book.reporters.len() >= MAX_REPORTERS {
            return Err(ReportRefusal::TooManyReporters);
        }
        let sample = Sample {
            at: now,
            wall,
            flows,
        };
        let book = &mut *book;
        match book.reporters.remove(&key) {
            Some(mut old) => {
                let restarted = old
                    .latest
                    .flows
                    .iter()
                    .any(|(k, was)| sample.flows.get(k).is_some_and(|now_| now_.below(was)));
                if restarted {
                    fold(&mut book.retired, &old.latest.flows);
                    old.previous = None;
                } else {
                    old.previous = Some(old.latest);
                }
                old.latest = sample;
                old.interval = interval;
                old.role = report.role.clone();
                if report.last {
                    fold(&mut book.retired, &old.latest.flows);
                } else {
                    book.reporters.insert(key, old);
                }
            }
            None => {
                if report.last {
                    fold(&mut book.retired, &sample.flows);
                } else {
                    book.reporters.insert(
                        key,
                        Reporter {
                            role: report.role.clone(),
                            interval,
                            latest: sample,
                            previous: None,
                        },
                    );
                }
            }
        }
        self.reporters
            .set(i64::try_from(book.reporters.len()).unwrap_or(i64::MAX));
        Ok(())
    }

    /// The document `GET /v1/traffic` serves.
    pub fn doc(&self) -> TrafficDoc {
        self.doc_at(Instant::now(), SystemTime::now())
    }

    pub(crate) fn doc_at(&self, now: Instant, wall: SystemTime) -> TrafficDoc {
        let feed = self.feed.borrow().clone();
        let names = Names::of(&feed);
        let Ok(mut book) = self.book.lock() else {
            return TrafficDoc::default();
        };
        book.prune(now, &names);
        self.reporters
            .set(i64::try_from(book.reporters.len()).unwrap_or(i64::MAX));
        let mut totals: BTreeMap<FlowKey, Totals> = book.retired.clone();
        // Per flow: the sum of the reporters' increases and the seconds
        // they span (rates add up over reporters).
        let mut rates: BTreeMap<FlowKey, [f64; 4]> = BTreeMap::new();
        let mut reporters = Vec::new();
        for ((identity, instance), r) in &book.reporters {
            fold(&mut totals, &r.latest.flows);
            reporters.push(ReporterRow {
                role: r.role.clone(),
                identity: identity.clone(),
                instance: instance.clone(),
                last_report: crate::web::rows::rfc3339(r.latest.wall),
                interval_ms: u64::try_from(r.interval.as_millis()).unwrap_or(u64::MAX),
                flows: r.latest.flows.len(),
            });
            let Some(prev) = &r.previous else { continue };
            let span = r.latest.at.saturating_duration_since(prev.at).as_secs_f64();
            // A reporter that went quiet for longer than two of its
            // reports' spacing has no current rate.
            let quiet = now.saturating_duration_since(r.latest.at).as_secs_f64();
            if span <= 0.0 || quiet > 2.0 * span + 1.0 {
                continue;
            }
            for (k, t) in &r.latest.flows {
                let p = prev.flows.get(k).copied().unwrap_or_default();
                let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / span;
                let e = rates.entry(k.clone()).or_default();
                e[0] += d(t.connections, p.connections);
                e[1] += d(t.failures, p.failures);
                e[2] += d(t.sent, p.sent);
                e[3] += d(t.received, p.received);
            }
        }
        let flows = totals
            .into_iter()
            .map(|(k, t)| {
                let [cps, fps, sps, rps] = rates.get(&k).copied().unwrap_or_default();
                let error_rate = if cps > 0.0 {
                    (fps / cps).min(1.0)
                } else if t.connections > 0 {
                    t.failures as f64 / t.connections as f64
                } else {
                    0.0
                };
                FlowRow {
                    reporter: k.reporter,
                    source_cluster: k.source,
                    destination_cluster: k.destination,
                    service: k.service,
                    connections: t.connections,
                    failures: t.failures,
                    bytes_sent: t.sent,
                    bytes_received: t.received,
                    connections_per_second: cps,
                    failures_per_second: fps,
                    bytes_sent_per_second: sps,
                    bytes_received_per_second: rps,
                    error_rate,
                }
            })
            .collect();
        TrafficDoc {
            cluster: names.me.clone(),
            version: feed.version,
            generated_at: crate::web::rows::rfc3339(wall),
            reporters,
            flows,
        }
    }
}

fn fold(into: &mut BTreeMap<FlowKey, Totals>, flows: &BTreeMap<FlowKey, Totals>) {
    for (k, t) in flows {
        into.entry(k.clone()).or_default().add(t);
    }
}

impl Book {
    /// Forgets reporters gone quiet (their counts kept) and flows whose
    /// names left the catalog.
    fn prune(&mut self, now: Instant, names: &Names<'_>) {
        let stale: Vec<(String, String)> = self
            .reporters
            .iter()
            .filter(|(_, r)| now >= r.stale_at())
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(r) = self.reporters.remove(&k) {
                fold(&mut self.retired, &r.latest.flows);
            }
        }
        let keep = |k: &FlowKey| names.keeps(k);
        self.retired.retain(|k, _| keep(k));
        for r in self.reporters.values_mut() {
            r.latest.flows.retain(|k, _| keep(k));
            if let Some(p) = &mut r.previous {
                p.flows.retain(|k, _| keep(k));
            }
        }
    }
}

/// The names a flow may carry: this catalog's.
struct Names<'a> {
    me: String,
    feed: &'a CatalogFeed,
}

impl<'a> Names<'a> {
    fn of(feed: &'a CatalogFeed) -> Self {
        Names {
            me: feed.catalog.cluster.name.clone(),
            feed,
        }
    }

    fn cluster(&self, c: &str) -> String {
        if c == "none" || c == "unlinked" || self.known_cluster(c) {
            c.to_owned()
        } else {
            "unlinked".to_owned()
        }
    }

    fn known_cluster(&self, c: &str) -> bool {
        !c.is_empty()
            && (c == self.me
                || self.feed.catalog.links.iter().any(|l| l.cluster == c)
                || self.feed.callers.iter().any(|l| l.cluster == c))
    }

    fn service(&self, s: &str) -> String {
        let lower = s.to_ascii_lowercase();
        if self.feed.catalog.service(&lower).is_some() {
            lower
        } else {
            "unknown".to_owned()
        }
    }

    /// Whether a flow's names are still this catalog's.
    fn keeps(&self, k: &FlowKey) -> bool {
        let cluster = |c: &str| c == "none" || c == "unlinked" || self.known_cluster(c);
        cluster(&k.source)
            && cluster(&k.destination)
            && (k.service == "unknown" || self.feed.catalog.service(&k.service).is_some())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use meshpeer_dataplane::feed::Caller;
    use meshpeer_dataplane::report::FlowCount;
    use meshpeer_model::testing::{ClusterBuilder, svc};
    use meshpeer_model::{CatalogConfig, catalog, exports};

    use super::*;

    const WEB: &str = "web.shop.mesh.internal";

    /// cluster1's feed at `version`: linked to cluster2, called by
    /// cluster3, with `names` exported by cluster2.
    fn feed(version: u64, names: &[&str]) -> Arc<CatalogFeed> {
        let mut c2 = ClusterBuilder::new("cluster2");
        for n in names {
            c2 = c2.service(svc("shop", n).global().ready(1));
        }
        let c1 = ClusterBuilder::new("cluster1").link("cluster2").build();
        Arc::new(CatalogFeed {
            version,
            catalog: Arc::new(catalog(
                &c1,
                &[exports(&c2.build())],
                &CatalogConfig::default(),
            )),
            callers: vec![Caller {
                cluster: "cluster3".into(),
                trust_domain: "cluster3".into(),
                segment: None,
                connected: true,
            }],
            ..CatalogFeed::default()
        })
    }

    fn count(src: &str, dst: &str, service: &str, n: u64, failed: u64) -> FlowCount {
        FlowCount {
            source_cluster: src.into(),
            destination_cluster: dst.into(),
            service: service.into(),
            connections: n,
            failures: failed,
            bytes_sent: n * 10,
            bytes_received: n * 100,
        }
    }

    fn report(role: &str, flows: Vec<FlowCount>) -> TrafficReport {
        TrafficReport {
            role: role.into(),
            instance: format!("{role} 1"),
            interval_ms: 1000,
            last: false,
            flows,
        }
    }

    fn row<'a>(doc: &'a TrafficDoc, reporter: &str, src: &str, dst: &str) -> &'a FlowRow {
        doc.flows
            .iter()
            .find(|f| {
                f.reporter == reporter && f.source_cluster == src && f.destination_cluster == dst
            })
            .unwrap_or_else(|| panic!("no {reporter} {src}->{dst} in {doc:#?}"))
    }

    #[test]
    fn b6_flow_names_are_the_catalogs_and_leave_with_it() {
        let (tx, rx) = watch::channel(feed(1, &["web", "cart"]));
        let book = TrafficBook::unregistered(rx);
        let (t0, w0) = (Instant::now(), SystemTime::now());
        book.ingest_at(
            "p",
            report(
                "proxy",
                vec![
                    count("cluster1", "cluster2", WEB, 4, 0),
                    count("cluster1", "cluster2", "cart.shop.mesh.internal", 2, 0),
                    // Names outside the catalog share one flow.
                    count("cluster1", "cluster9", "evil.example.com", 1, 1),
                    count("cluster1", "cluster8", "other.example.com", 1, 0),
                    // Not this cluster's clients: not a proxy of cluster1's.
                    count("cluster2", "cluster1", WEB, 5, 0),
                ],
            ),
            t0,
            w0,
        )
        .unwrap();
        book.ingest_at(
            "g",
            report(
                "gateway",
                vec![
                    count("cluster3", "cluster1", WEB, 3, 1),
                    // A gateway counts callers of its own cluster only.
                    count("cluster3", "cluster2", WEB, 9, 0),
                ],
            ),
            t0,
            w0,
        )
        .unwrap();
        let doc = book.doc_at(t0, w0);
        assert_eq!(doc.cluster, "cluster1");
        assert_eq!(doc.flows.len(), 4, "{doc:#?}");
        let odd = row(&doc, "proxy", "cluster1", "unlinked");
        assert_eq!((odd.service.as_str(), odd.connections), ("unknown", 2));
        assert_eq!((odd.failures, odd.bytes_sent), (1, 20));
        let called = row(&doc, "gateway", "cluster3", "cluster1");
        assert_eq!((called.connections, called.failures), (3, 1));
        assert!((called.error_rate - 1.0 / 3.0).abs() < 1e-9);

        // cart leaves the catalog, and cluster3 stops calling: their flows go.
        let mut next = (*feed(2, &["web"])).clone();
        next.callers.clear();
        tx.send_replace(Arc::new(next));
        let doc = book.doc_at(t0, w0);
        let listed: Vec<(&str, &str, &str)> = doc
            .flows
            .iter()
            .map(|f| {
                (
                    f.reporter.as_str(),
                    f.destination_cluster.as_str(),
                    f.service.as_str(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [("proxy", "cluster2", WEB), ("proxy", "unlinked", "unknown")]
        );
    }

    #[test]
    fn rates_come_from_a_reporters_last_two_reports_and_stop_when_it_is_quiet() {
        let (_tx, rx) = watch::channel(feed(1, &["web"]));
        let book = TrafficBook::unregistered(rx);
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let at = |s: u64| t0 + Duration::from_secs(s);
        let take = |s: u64, n: u64, failed: u64| {
            book.ingest_at(
                "p",
                report("proxy", vec![count("cluster1", "cluster2", WEB, n, failed)]),
                at(s),
                w0,
            )
            .unwrap();
        };
        take(0, 10, 0);
        let doc = book.doc_at(at(0), w0);
        assert_eq!(
            row(&doc, "proxy", "cluster1", "cluster2").connections_per_second,
            0.0
        );
        take(2, 30, 5);
        let f = row(&book.doc_at(at(2), w0), "proxy", "cluster1", "cluster2").clone();
        assert_eq!(f.connections, 30);
        assert_eq!(f.connections_per_second, 10.0);
        assert_eq!(f.failures_per_second, 2.5);
        assert_eq!(f.bytes_sent_per_second, 100.0);
        assert_eq!(f.bytes_received_per_second, 1000.0);
        assert_eq!(f.error_rate, 0.25, "over the window, not the totals");
        // No report for longer than twice their spacing: no current rate.
        let f = row(&book.doc_at(at(8), w0), "proxy", "cluster1", "cluster2").clone();
        assert_eq!(f.connections_per_second, 0.0);
        assert_eq!(f.connections, 30);
        assert!(
            (f.error_rate - 5.0 / 30.0).abs() < 1e-9,
            "then over the totals"
        );
    }

    #[test]
    fn b6_reporters_gone_keep_their_counts_and_are_bounded() {
        let (_tx, rx) = watch::channel(feed(1, &["web"]));
        let book = TrafficBook::unregistered(rx);
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let one = |n| vec![count("cluster1", "cluster2", WEB, n, 0)];
        let take = |who: &str, r: TrafficReport, s: u64| {
            book.ingest_at(who, r, t0 + Duration::from_secs(s), w0)
        };
        // Stale after three intervals without a report: forgotten, counts kept.
        take("a", report("proxy", one(5)), 0).unwrap();
        let doc = book.doc_at(t0 + Duration::from_secs(4), w0);
        assert!(doc.reporters.is_empty(), "{doc:#?}");
        assert_eq!(row(&doc, "proxy", "cluster1", "cluster2").connections, 5);
        // A restarted reporter (counts went down): the old counts are kept.
        take("b", report("proxy", one(7)), 4).unwrap();
        take("b", report("proxy", one(2)), 5).unwrap();
        let doc = book.doc_at(t0 + Duration::from_secs(5), w0);
        assert_eq!(row(&doc, "proxy", "cluster1", "cluster2").connections, 14);
        // A last report: the reporter goes, its counts stay.
        let mut last = report("proxy", one(3));
        last.last = true;
        take("b", last, 6).unwrap();
        let doc = book.doc_at(t0 + Duration::from_secs(6), w0);
        assert!(doc.reporters.is_empty());
        assert_eq!(row(&doc, "proxy", "cluster1", "cluster2").connections, 15);

        // Bounds: flows per report, instance names, roles, reporters.
        let many = vec![count("cluster1", "cluster2", WEB, 1, 0); MAX_FLOWS + 1];
        assert_eq!(
            take("c", report("proxy", many), 7),
            Err(ReportRefusal::TooManyFlows(MAX_FLOWS + 1))
        );
        let mut long = report("proxy", one(1));
        long.instance = "x".repeat(300);
        assert_eq!(take("c", long, 7), Err(ReportRefusal::Instance));
        assert_eq!(
            take("c", report("controller", one(1)), 7).map_err(|e| e.reason()),
            Err("bad_role")
        );
        for i in 0..MAX_REPORTERS {
            take(&format!("r{i}"), report("gateway", Vec::new()), 7).unwrap();
        }
        assert_eq!(
            take("one-more", report("gateway", Vec::new()), 7),
            Err(ReportRefusal::TooManyReporters)
        );
        // One already kept still reports.
        take("r0", report("gateway", Vec::new()), 7).unwrap();
        // Once the others went quiet, there is room again.
        take("one-more", report("gateway", Vec::new()), 20).unwrap();
        assert_eq!(
            book.doc_at(t0 + Duration::from_secs(20), w0)
                .reporters
                .len(),
            1
        );
    }

    /// SPEC B7 for the controller's report parser and book: arbitrary bytes
    /// (and edited valid reports) through the JSON reader, arbitrary
    /// structured reports (any names, counts up to `u64::MAX`) through the
    /// book: no panic, and what is served stays within the catalog's names
    /// and the bounds. Seeded, so a failure replays.
    #[test]
    fn b7_arbitrary_reports_never_panic_and_stay_within_the_catalogs_names() {
        let (_tx, rx) = watch::channel(feed(1, &["web", "cart"]));
        let book = TrafficBook::unregistered(rx);
        let mut rng = fastrand::Rng::with_seed(16);
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let names = [
            "cluster1",
            "cluster2",
            "cluster3",
            "cluster9",
            "none",
            "unlinked",
            "",
            WEB,
            "cart.shop.mesh.internal",
            "WEB.SHOP.MESH.INTERNAL",
            "x\u{0}y",
            "ü",
        ];
        let valid = serde_json::to_vec(&report(
            "proxy",
            vec![count("cluster1", "cluster2", WEB, 3, 1)],
        ))
        .unwrap();
        for case in 0..2_000u64 {
            let at = t0 + Duration::from_millis(case * 7);
            // Bytes: random, or a valid report with some bytes changed.
            let mut bytes = if rng.bool() {
                (0..rng.usize(0..200))
                    .map(|_| rng.u8(..))
                    .collect::<Vec<u8>>()
            } else {
                valid.clone()
            };
            for _ in 0..rng.usize(0..4) {
                if !bytes.is_empty() {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = rng.u8(..);
                }
            }
            if let Ok(r) = serde_json::from_slice::<TrafficReport>(&bytes) {
                let _ = book.ingest_at("bytes", r, at, w0);
            }
            // Structured: any names, any counts.
            let pick = |rng: &mut fastrand::Rng| names[rng.usize(..names.len())].to_owned();
            let big = |rng: &mut fastrand::Rng| {
                if rng.u8(..) < 16 {
                    u64::MAX - rng.u64(..3)
                } else {
                    rng.u64(..1_000)
                }
            };
            let flows = (0..rng.usize(0..12))
                .map(|_| FlowCount {
                    source_cluster: pick(&mut rng),
                    destination_cluster: pick(&mut rng),
                    service: pick(&mut rng),
                    connections: big(&mut rng),
                    failures: big(&mut rng),
                    bytes_sent: big(&mut rng),
                    bytes_received: big(&mut rng),
                })
                .collect();
            let r = TrafficReport {
                role: ["proxy", "gateway", "Proxy", ""][rng.usize(..4)].to_owned(),
                instance: format!("i{}", rng.u8(..4)),
                interval_ms: rng.u64(..),
                last: rng.u8(..) < 10,
                flows,
            };
            let _ = book.ingest_at(&format!("id{}", rng.u8(..3)), r, at, w0);
            let doc = book.doc_at(at, w0);
            let clusters = ["cluster1", "cluster2", "cluster3", "none", "unlinked"];
            for f in &doc.flows {
                assert!(clusters.contains(&f.source_cluster.as_str()), "{f:?}");
                assert!(clusters.contains(&f.destination_cluster.as_str()), "{f:?}");
                assert!(
                    [WEB, "cart.shop.mesh.internal", "unknown"].contains(&f.service.as_str()),
                    "{f:?}"
                );
                assert!(f.failures <= f.connections, "{f:?}");
                assert!(f.error_rate.is_finite() && (0.0..=1.0).contains(&f.error_rate));
                assert!(f.connections_per_second.is_finite());
                let own = if f.reporter == "proxy" {
                    &f.source_cluster
                } else {
                    &f.destination_cluster
                };
                assert_eq!(own, "cluster1", "{f:?}");
            }
            // 2 roles x 5 sources x 5 destinations x 3 services at most.
            assert!(doc.flows.len() <= 150);
            assert!(doc.reporters.len() <= MAX_REPORTERS);
        }
    }
}
