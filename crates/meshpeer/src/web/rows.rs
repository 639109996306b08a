//! The JSON documents of the page's API, built from a controller's
//! [`View`]: one row per global service, one per linked peer, one per
//! diagnostic. Pure: no I/O, so the shapes are tested without a server.

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use meshpeer_model::objects::Condition;
use meshpeer_model::{
    Contribution, Diagnostic, GlobalService, PortTarget, Reach, Rule, Scope, ServicePort, Severity,
};
use serde::{Deserialize, Serialize};

use crate::controller::view::{PeerView, View};

/// `GET /api/v1/clusters`: the clusters this page serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterList {
    pub clusters: Vec<ClusterRow>,
}

/// One served cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRow {
    pub name: String,
    /// The controller's view version (0: not started yet).
    pub version: u64,
    /// The cluster's own name for itself, its network and segment, once read.
    pub network: String,
    /// `None`: the default segment.
    pub segment: Option<String>,
    pub global_services: usize,
    pub peers: usize,
    /// Diagnostics of severity `error` or `warning` (`info` is not counted).
    pub problems: usize,
}

/// `GET /api/v1/services`: the global services one cluster sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceList {
    pub cluster: String,
    pub version: u64,
    /// Sorted by hostname.
    pub services: Vec<ServiceRow>,
}

/// One global service, as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub hostname: String,
    pub namespace: String,
    pub name: String,
    /// `global` or `segment`.
    pub scope: Scope,
    /// Segment of the exporting clusters; `None`: the default segment.
    pub segment: Option<String>,
    /// This cluster's VIP for the service.
    pub vip: String,
    pub ports: Vec<ServicePort>,
    /// The effective traffic distribution.
    pub traffic_distribution: String,
    /// Some contributing cluster takes over its cluster-local name.
    pub taken_over: bool,
    /// The cluster-local hostname this cluster takes over, if it does.
    pub takeover: Option<String>,
    /// Contributing clusters, sorted by name.
    pub clusters: Vec<String>,
    /// Ready endpoints over every contribution.
    pub ready: usize,
    /// Endpoints listed over every contribution.
    pub total: usize,
    /// Per contributing cluster, in the order of `clusters`.
    pub contributions: Vec<ContributionRow>,
    /// HTTPRoutes of this cluster routing the service's ports (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRow>,
}

/// An HTTPRoute routing one port of a global service here (L7), with the
/// status meshpeer gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRow {
    pub port: u16,
    /// `namespace/name`.
    pub route: String,
    /// Its rules (one per match) on this port.
    pub rules: usize,
    /// `Accepted`, `ResolvedRefs`, `meshpeer.io/Conflicted`.
    pub conditions: Vec<meshpeer_model::objects::Condition>,
}

/// One cluster's part of a global service, with its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContributionRow {
    pub cluster: String,
    pub network: String,
    /// `local`, `direct` (same network) or `gateway` (through the peer's
    /// east-west gateway).
    pub reach: Reach,
    /// The peer's export is kept from a lost stream, for the grace period.
    pub stale: bool,
    pub ready: usize,
    pub total: usize,
    /// For a remote cluster: what the peer advertised.
    pub endpoints: Vec<EndpointRow>,
}

/// One endpoint of a contribution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRow {
    /// Pod name (or the EndpointSlice's target), may be empty.
    pub name: String,
    pub address: String,
    /// Exports carry ready endpoints only (G10), so this is `true` for every
    /// endpoint listed; a cluster whose pods are all unready contributes
    /// with no endpoint (`ready` = `total` = 0).
    pub ready: bool,
    /// `region/zone/subzone`, empty when unknown.
    pub locality: String,
    /// Service port -> endpoint port.
    pub ports: Vec<PortTarget>,
}

/// `GET /api/v1/peers`: the peers one cluster links to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerList {
    pub cluster: String,
    pub version: u64,
    /// The last output write failed with this; while it lasts, the
    /// conditions written on the Gateways say `PeerDataPlaneProgrammed`
    /// False (`OutputFailed`).
    pub output_error: Option<String>,
    /// Sorted by peer name.
    pub peers: Vec<PeerRow>,
}

/// One linked peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub cluster: String,
    /// `namespace/name` of the remote-peer Gateway.
    pub gateway: String,
    pub network: String,
    /// `Connecting`, `Connected`, `Synced`, `Disconnected` or `Failed`.
    pub state: String,
    /// Where the peer is dialled.
    pub addresses: Vec<String>,
    /// The peer address of the current stream.
    pub remote: Option<String>,
    /// RFC 3339, UTC.
    pub connected_since: Option<String>,
    /// RFC 3339, UTC.
    pub last_sync: Option<String>,
    /// Version of the peer's export last applied.
    pub version: Option<u64>,
    pub stale: bool,
    /// RFC 3339, UTC.
    pub stale_until: Option<String>,
    /// Services the peer exports to this cluster.
    pub services: usize,
    pub last_error: Option<String>,
    /// The SPEC C5 conditions, as the controller computed them for the
    /// remote-peer Gateway's status.
    pub conditions: Vec<Condition>,
}

/// `GET /api/v1/diagnostics`: why the cluster's input is, or is not,
/// exported and imported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticList {
    pub cluster: String,
    pub version: u64,
    /// Errors first, then warnings, then info; within a severity by rule,
    /// object, field and message.
    pub diagnostics: Vec<DiagnosticRow>,
}

/// One finding of a SPEC rule about the cluster's input or its view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticRow {
    /// The SPEC rule id (`G5`), or `F1`/`F2` for an unreadable manifest or
    /// cluster config.
    pub rule: Rule,
    /// `error`, `warning` or `info`.
    pub severity: Severity,
    /// `kind namespace/name` or `kind name`, e.g. `service httpbin/in-ambient`.
    pub object: String,
    /// Lower-case kind of the object: `service`, `namespace`, `gateway` ...
    pub kind: String,
    /// `None` for an object that is not namespaced.
    pub namespace: Option<String>,
    pub name: String,
    /// The field at fault, e.g. `metadata.labels[solo.io/service-scope]`.
    pub field: Option<String>,
    pub message: String,
    /// The cluster whose input (or view) the finding is about.
    pub cluster: String,
}

/// A cluster's summary row.
pub fn cluster_row(name: &str, view: &View) -> ClusterRow {
    let c = &view.catalog.cluster;
    ClusterRow {
        name: name.to_owned(),
        version: view.version,
        network: c.network.clone(),
        segment: c.segment_name().map(str::to_owned),
        global_services: view.catalog.services.len(),
        peers: view.status.peers.len(),
        problems: view
            .catalog
            .diagnostics
            .iter()
            .filter(|d| is_problem(d.severity))
            .count(),
    }
}

/// What the page counts on its Problems tab: errors and warnings.
fn is_problem(s: Severity) -> bool {
    matches!(s, Severity::Error | Severity::Warning)
}

/// Every diagnostic of a view, errors first.
pub fn diagnostics(name: &str, view: &View) -> DiagnosticList {
    let mut found: Vec<&Diagnostic> = view.catalog.diagnostics.iter().collect();
    found.sort_by(|a, b| order(a).cmp(&order(b)));
    DiagnosticList {
        cluster: name.to_owned(),
        version: view.version,
        diagnostics: found.into_iter().map(diagnostic_row).collect(),
    }
}

/// Errors first, then warnings, then info; then by rule, object, field,
/// message.
fn order(d: &Diagnostic) -> impl Ord + '_ {
    (
        d.severity, d.rule, &d.object, &d.field, &d.message, &d.cluster,
    )
}

fn diagnostic_row(d: &Diagnostic) -> DiagnosticRow {
    DiagnosticRow {
        rule: d.rule,
        severity: d.severity,
        object: d.object.to_string(),
        kind: d.object.kind.clone(),
        namespace: d.object.namespace.clone(),
        name: d.object.name.clone(),
        field: d.field.clone(),
        message: d.message.clone(),
        cluster: d.cluster.clone(),
    }
}

/// Every global service of a view.
pub fn services(name: &str, view: &View) -> ServiceList {
    let stale: Vec<&str> = view
        .status
        .peers
        .iter()
        .filter(|p| p.stale)
        .map(|p| p.cluster.as_str())
        .collect();
    ServiceList {
        cluster: name.to_owned(),
        version: view.version,
        services: view
            .catalog
            .services
            .values()
            .map(|s| service_row(s, &stale, &view.catalog))
            .collect(),
    }
}

/// The routes of the catalog's tables for `hostname`, by port and route.
fn route_rows(catalog: &meshpeer_model::GlobalCatalog, hostname: &str) -> Vec<RouteRow> {
    let mut rows: Vec<RouteRow> = Vec::new();
    for t in catalog.routes.iter().filter(|t| t.host == hostname) {
        for r in &t.rules {
            match rows
                .iter_mut()
                .find(|x| x.port == t.port && x.route == r.route)
            {
                Some(row) => row.rules += 1,
                None => {
                    let conditions = catalog
                        .route_status
                        .iter()
                        .find(|s| format!("{}/{}", s.namespace, s.name) == r.route)
                        .and_then(|s| s.parents.first())
                        .map(|p| p.conditions.clone())
                        .unwrap_or_default();
                    rows.push(RouteRow {
                        port: t.port,
                        route: r.route.clone(),
                        rules: 1,
                        conditions,
                    });
                }
            }
        }
    }
    rows
}

fn service_row(
    s: &GlobalService,
    stale: &[&str],
    catalog: &meshpeer_model::GlobalCatalog,
) -> ServiceRow {
    let contributions: Vec<ContributionRow> = s
        .contributions
        .iter()
        .map(|c| contribution_row(c, stale.contains(&c.cluster.as_str())))
        .collect();
    ServiceRow {
        hostname: s.hostname.clone(),
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        scope: s.scope,
        segment: s.segment.clone(),
        vip: s.vip.to_string(),
        ports: s.ports.clone(),
        traffic_distribution: s.distribution.as_str().to_owned(),
        taken_over: s.taken_over,
        takeover: s.takeover.as_ref().map(|t| t.hostname.clone()),
        clusters: s.clusters().map(str::to_owned).collect(),
        ready: contributions.iter().map(|c| c.ready).sum(),
        total: contributions.iter().map(|c| c.total).sum(),
        contributions,
        routes: route_rows(catalog, &s.hostname),
    }
}

fn contribution_row(c: &Contribution, stale: bool) -> ContributionRow {
    let endpoints: Vec<EndpointRow> = c
        .service
        .endpoints()
        .map(|(locality, e)| EndpointRow {
            name: e.name.clone(),
            address: e.address.to_string(),
            ready: true,
            locality: locality.to_istio(),
            ports: e.ports.to_vec(),
        })
        .collect();
    ContributionRow {
        cluster: c.cluster.clone(),
        network: c.network.clone(),
        reach: c.reach,
        stale,
        ready: endpoints.iter().filter(|e| e.ready).count(),
        total: endpoints.len(),
        endpoints,
    }
}

/// Every linked peer of a view, with the conditions the controller wrote.
pub fn peers(name: &str, view: &View) -> PeerList {
    let mut peers: Vec<PeerRow> = view.status.peers.iter().map(peer_row).collect();
    peers.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    PeerList {
        cluster: name.to_owned(),
        version: view.version,
        output_error: view.status.output_error.clone(),
        peers,
    }
}

fn peer_row(p: &PeerView) -> PeerRow {
    PeerRow {
        cluster: p.cluster.clone(),
        gateway: p.gateway.clone(),
        network: p.network.clone(),
        state: p.state.as_str().to_owned(),
        addresses: p.addresses.clone(),
        remote: p.remote.clone(),
        connected_since: p.connected_since.map(rfc3339),
        last_sync: p.last_sync.map(rfc3339),
        version: p.version,
        stale: p.stale,
        stale_until: p.stale_until.map(rfc3339),
        services: p.services,
        last_error: p.last_error.clone(),
        conditions: p.conditions.clone(),
    }
}

/// `2026-11-22T03:12:52Z`; empty for a time jiff cannot hold.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use meshpeer_model::testing::{ClusterBuilder, svc};
    use meshpeer_model::{CatalogConfig, ObjectRef, catalog, exports};

    use super::*;
    use crate::controller::view::LinkState;

    /// cluster1's view, computed by the model as the controller computes
    /// it: httpbin/in-ambient exported by cluster1 (two ready pods, one
    /// not ready, on a node in r1/z1) and cluster2 (one ready pod), taken
    /// over in cluster1; a mislabelled service in cluster1; peers cluster3
    /// and cluster2 (stale), in that order.
    fn view() -> View {
        let c1 = ClusterBuilder::new("cluster1")
            .link("cluster2")
            .link("cluster3")
            .node("node-a", "r1", "z1")
            .service(
                svc("httpbin", "in-ambient")
                    .global()
                    .takeover("true")
                    .distribution("PreferClose")
                    .ready(2)
                    .not_ready(1)
                    .on_node("node-a"),
            )
            .service(svc("sample", "helloworld").scope("globl"))
            .build();
        let c2 = ClusterBuilder::new("cluster2")
            .link("cluster1")
            .service(svc("httpbin", "in-ambient").global().ready(1))
            .build();
        let c3 = ClusterBuilder::new("cluster3").link("cluster1").build();
        let catalog = catalog(
            &c1,
            &[exports(&c2), exports(&c3)],
            &CatalogConfig::default(),
        );
        let mut v = View {
            version: 7,
            catalog: Arc::new(catalog),
            ..View::default()
        };
        for (cluster, stale) in [("cluster3", false), ("cluster2", true)] {
            v.status.peers.push(PeerView {
                cluster: cluster.into(),
                state: LinkState::Synced,
                stale,
                connected_since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)),
                conditions: vec![Condition {
                    type_: "gloo.solo.io/PeerConnected".into(),
                    status: "True".into(),
                    reason: Some("Connected".into()),
                    message: Some(format!("connected to {cluster}")),
                    last_transition_time: None,
                    observed_generation: None,
                }],
                ..PeerView::default()
            });
        }
        v
    }

    #[test]
    fn o6_service_rows_carry_every_column() {
        let v = view();
        let list = services("cluster1", &v);
        assert_eq!(list.version, 7);
        let [row] = list.services.as_slice() else {
            panic!("one row expected: {list:?}");
        };
        // The VIP is the one the catalog allocated, in the default range.
        let vip = v.catalog.vips()["in-ambient.httpbin.mesh.internal"];
        assert_eq!(row.vip, vip.to_string());
        assert!(row.vip.starts_with("240.241."), "{}", row.vip);
        assert_eq!(row.traffic_distribution, "PreferClose");
        assert!(row.taken_over);
        assert_eq!(
            row.takeover.as_deref(),
            Some("in-ambient.httpbin.svc.cluster.local")
        );
        assert_eq!(row.clusters, ["cluster1", "cluster2"]);
        // Summed over contributions; the pod that is not ready is not there.
        assert_eq!((row.ready, row.total), (3, 3));
        let [local, remote] = row.contributions.as_slice() else {
            panic!("two contributions expected: {row:?}");
        };
        assert_eq!((local.reach, remote.reach), (Reach::Local, Reach::Gateway));
        assert_eq!((local.ready, local.total), (2, 2));
        assert_eq!((remote.ready, remote.total), (1, 1));
        let names: Vec<&str> = local.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["in-ambient-0", "in-ambient-1"]);
        // Locality from the pods' node, as region/zone.
        assert!(local.endpoints.iter().all(|e| e.locality == "r1/z1"));
        assert_eq!(
            local.endpoints[0].ports,
            [PortTarget {
                port: 8000,
                target: 8080
            }]
        );
        // Stale comes from the peer's status, per contribution.
        assert!(!local.stale);
        assert!(remote.stale, "cluster2's export is kept from a lost stream");
    }

    #[test]
    fn l7_service_rows_list_the_routes_of_their_ports_with_their_status() {
        use meshpeer_model::routes::{
            RouteMatch, RouteRule, RouteStatus, RouteTable, RouteTimeouts,
        };
        let mut v = view();
        let mut catalog = (*v.catalog).clone();
        let rule = |i: usize| RouteRule {
            route: "httpbin/r".into(),
            rule: i,
            rule_name: None,
            matches: RouteMatch::default(),
            filters: Vec::new(),
            backends: Vec::new(),
            timeouts: RouteTimeouts::default(),
            retries: 2,
        };
        catalog.routes = vec![Arc::new(RouteTable {
            host: "in-ambient.httpbin.mesh.internal".into(),
            port: 8000,
            rules: vec![rule(0), rule(1)],
        })];
        let accepted = Condition {
            type_: "Accepted".into(),
            status: "True".into(),
            reason: Some("Accepted".into()),
            message: None,
            last_transition_time: None,
            observed_generation: None,
        };
        catalog.route_status = vec![RouteStatus {
            namespace: "httpbin".into(),
            name: "r".into(),
            generation: None,
            parents: vec![meshpeer_model::objects::RouteParentStatus {
                parent_ref: Default::default(),
                controller_name: "meshpeer.io/mesh-controller".into(),
                conditions: vec![accepted.clone()],
            }],
        }];
        v.catalog = Arc::new(catalog);
        let list = services("cluster1", &v);
        assert_eq!(
            list.services[0].routes,
            [RouteRow {
                port: 8000,
                route: "httpbin/r".into(),
                rules: 2,
                conditions: vec![accepted],
            }]
        );
        let json = serde_json::to_value(&list).unwrap_or_default();
        assert_eq!(
            json["services"][0]["routes"][0]["conditions"][0]["type"],
            "Accepted"
        );
        // No routes: no field.
        let json = serde_json::to_value(services("cluster1", &view())).unwrap_or_default();
        assert!(json["services"][0].get("routes").is_none());
    }

    #[test]
    fn o6_service_rows_serialize_in_camel_case() {
        let json = serde_json::to_value(services("cluster1", &view())).unwrap_or_default();
        let row = &json["services"][0];
        assert_eq!(row["trafficDistribution"], "PreferClose");
        assert_eq!(row["scope"], "global");
        assert_eq!(row["segment"], serde_json::Value::Null);
        assert_eq!(row["takenOver"], true);
        assert_eq!(row["contributions"][1]["reach"], "gateway");
        assert_eq!(row["contributions"][1]["stale"], true);
    }

    #[test]
    fn o6_peer_rows_are_sorted_and_keep_the_controller_conditions() {
        let v = view();
        let list = peers("cluster1", &v);
        let names: Vec<&str> = list.peers.iter().map(|p| p.cluster.as_str()).collect();
        assert_eq!(names, ["cluster2", "cluster3"]);
        let p = &list.peers[0];
        assert_eq!(p.state, "Synced");
        assert!(p.stale);
        assert_eq!(p.connected_since.as_deref(), Some("1970-01-02T00:00:00Z"));
        assert_eq!(p.conditions, v.status.peers[1].conditions);
    }

    #[test]
    fn o6_diagnostic_rows_put_errors_first_and_count_problems() {
        let mut v = view();
        // The model's own findings: G5 for the mislabelled service.
        let computed = v.catalog.diagnostics.clone();
        let g5 = computed
            .iter()
            .find(|d| d.rule == Rule::G5)
            .unwrap_or_else(|| panic!("{computed:#?}"));
        assert_eq!(g5.object, ObjectRef::service("sample", "helloworld"));
        Arc::make_mut(&mut v.catalog).diagnostics.extend([
            Diagnostic::new(
                "cluster1",
                Rule::C1,
                Severity::Info,
                ObjectRef::cluster("cluster1"),
                "worth knowing",
            ),
            Diagnostic::new(
                "cluster1",
                Rule::F1,
                Severity::Error,
                ObjectRef::new("file", None, "broken.yaml"),
                "cannot be read",
            ),
        ]);
        let list = diagnostics("cluster1", &v);
        assert_eq!(list.version, 7);
        assert_eq!(list.diagnostics.len(), computed.len() + 2);
        let severities: Vec<Severity> = list.diagnostics.iter().map(|d| d.severity).collect();
        let mut sorted = severities.clone();
        sorted.sort();
        assert_eq!(severities, sorted, "errors, then warnings, then info");
        assert_eq!(list.diagnostics[0].rule, Rule::F1);
        assert_eq!(list.diagnostics[0].namespace, None);
        let g5 = list
            .diagnostics
            .iter()
            .find(|d| d.rule == Rule::G5)
            .unwrap_or_else(|| panic!("{list:#?}"));
        assert_eq!(g5.object, "service sample/helloworld");
        assert_eq!(
            (g5.kind.as_str(), g5.namespace.as_deref(), g5.name.as_str()),
            ("service", Some("sample"), "helloworld")
        );
        assert!(g5.message.contains("\"globl\""), "{}", g5.message);
        let problems = v
            .catalog
            .diagnostics
            .iter()
            .filter(|d| d.severity != Severity::Info)
            .count();
        assert!(problems >= 2, "the G5 warning and the F1 error");
        assert_eq!(
            cluster_row("cluster1", &v).problems,
            problems,
            "info is no problem"
        );
        let row = cluster_row("cluster1", &v);
        assert_eq!((row.global_services, row.peers), (1, 2));
        assert_eq!(row.network, "cluster1");

        let json = serde_json::to_value(&list).unwrap_or_default();
        let at = list
            .diagnostics
            .iter()
            .position(|d| d.rule == Rule::G5)
            .unwrap_or_default();
        let row = &json["diagnostics"][at];
        assert_eq!(row["rule"], "G5");
        assert_eq!(row["severity"], "warning");
        assert_eq!(row["field"], "metadata.labels[solo.io/service-scope]");
        assert_eq!(json["diagnostics"][0]["field"], serde_json::Value::Null);
    }
}
