//! The global catalog: what one cluster sees, from its own snapshot and the
//! exports of its peers (G8, G9, G11, G12, S1-S7, T1, K1-K3, C4).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSnapshot;
use crate::diag::{self, Diagnostic, ObjectRef, Rule, Severity};
use crate::export::{ClusterInfo, Export, ExportedService, exports};
use crate::labels;
use crate::links::{self, PeerLink};
use crate::objects::is_managed;
use crate::pmap::{ArcMap, Keyed};
use crate::ports::{self, ServicePort};
use crate::scope::{Scope, TrafficDistribution};
use crate::segments::{self, SegmentDef};
use crate::trust::{self, PeerRefusal};
use crate::vip::{self, Cidr};

/// ServiceEntry endpoints are capped at this many by the Istio CRD.
pub const MAX_RENDERED_ENDPOINTS: usize = 4096;

/// Settings of a catalog computation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogConfig {
    /// Range VIPs are allocated from (G11). Default `240.241.0.0/16` (next to Istio's own auto-allocation range).
    pub vip_range: Cidr,
    /// VIPs handed out before (hostname -> address). A service that still
    /// exists keeps its address. Addresses found on meshpeer's own
    /// ServiceEntries in the snapshot are added to these.
    #[serde(default)]
    pub previous_vips: BTreeMap<String, IpAddr>,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            vip_range: Cidr::default_vip_range(),
            previous_vips: BTreeMap::new(),
        }
    }
}

/// How a cluster reaches a contribution's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// This cluster's own endpoints.
    Local,
    /// Another cluster in the same network: endpoint addresses are routable.
    Direct,
    /// Another network: through that cluster's east-west gateway (HBONE).
    Gateway,
}

/// One cluster's part of a global service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    pub cluster: String,
    pub network: String,
    pub reach: Reach,
    pub service: Arc<ExportedService>,
}

/// The local name and addresses of a taken-over Service (K1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalTakeover {
    /// `<name>.<namespace>.svc.cluster.local`
    pub hostname: String,
    /// The Service's cluster IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
}

/// A global service as one cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalService {
    pub hostname: String,
    pub namespace: String,
    pub name: String,
    /// Segment of the exporting clusters; `None` is the default segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// `segment` when every visible contribution is segment-scoped.
    pub scope: Scope,
    /// This cluster's VIP for the service (G11).
    pub vip: IpAddr,
    pub ports: Vec<ServicePort>,
    /// Effective traffic distribution (T1-T5, K3).
    pub distribution: TrafficDistribution,
    /// Some contributing cluster takes over its local name (K1).
    pub taken_over: bool,
    /// Set when this cluster's own Service is taken over (K1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<LocalTakeover>,
    /// Contributions, sorted by cluster name (G8).
    pub contributions: Vec<Contribution>,
}

impl Keyed for GlobalService {
    type Key = String;
    fn key(&self) -> String {
        self.hostname.clone()
    }
}

impl GlobalService {
    /// Names of the contributing clusters.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.contributions.iter().map(|c| c.cluster.as_str())
    }

    /// Ready endpoints over all contributions.
    pub fn endpoint_count(&self) -> usize {
        self.contributions
            .iter()
            .map(|c| c.service.endpoint_count())
            .sum()
    }

    /// The port of a given number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// Everything one cluster sees of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalCatalog {
    /// The cluster whose view this is.
    pub cluster: ClusterInfo,
    /// Clusters this one links to (C3, C4), sorted by name.
    pub links: Vec<PeerLink>,
    /// This cluster's Segment definitions: the DNS is authoritative for
    /// their domains and `mesh.internal` (D1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<crate::segments::SegmentDef>,
    /// Global services visible here, by hostname.
    #[serde(default, with = "crate::pmap::as_seq")]
    pub services: ArcMap<String, GlobalService>,
    /// User-written ServiceEntries the data plane honours (D4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manual: Vec<crate::manual::ManualEntry>,
    /// What was refused of the peers' exports (P2, P3), by peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_peers: Vec<PeerRefusal>,
    /// Findings about this cluster's input and its view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
    /// The range VIPs come from (G11), which the data plane never dials
    /// (P5); `None` in feeds of older controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_range: Option<Cidr>,
    /// L7 route tables of this cluster's own HTTPRoutes, by (host, port)
    /// (section 11). Never sent to peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Arc<crate::routes::RouteTable>>,
    /// The status of this cluster's HTTPRoutes (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_status: Vec<crate::routes::RouteStatus>,
}

impl GlobalCatalog {
    pub fn service(&self, hostname: &str) -> Option<&GlobalService> {
        self.services.get(hostname).map(|s| &**s)
    }

    /// Domains whose names this cluster's DNS answers itself (D1):
    /// `mesh.internal` and the domains of its Segment definitions.
    pub fn global_domains(&self) -> Vec<String> {
        let mut d = vec![labels::DEFAULT_DOMAIN.to_owned()];
        d.extend(self.segments.iter().map(|s| s.domain.clone()));
        d.sort();
        d.dedup();
        d
    }

    /// Hostname -> VIP, to feed the next computation (G11).
    pub fn vips(&self) -> BTreeMap<String, IpAddr> {
        self.services
            .values()
            .map(|s| (s.hostname.clone(), s.vip))
            .collect()
    }
}

/// Computes what cluster `own` sees, given its peers' exports.
pub fn catalog<'a>(
    own: &ClusterSnapshot,
    peers: impl IntoIterator<Item = &'a Export>,
    config: &CatalogConfig,
) -> GlobalCatalog {
    let own_export = exports(own);
    catalog_with(own, &own_export, peers, config)
}

/// Like [`catalog`], with this cluster's export already computed. This is
/// the reference the incremental [`crate::engine::CatalogEngine`] is tested
/// against; both are built from the same steps ([`judge`], [`place`],
/// [`merge`], [`collision`], VIPs from [`vip_inputs`]).
pub fn catalog_with<'a>(
    own: &ClusterSnapshot,
    own_export: &Export,
    peers: impl IntoIterator<Item = &'a Export>,
    config: &CatalogConfig,
) -> GlobalCatalog {
    let me = own_export.cluster.clone();
    let mut diags = own_export.diagnostics.clone();
    let links = links::declared(own, &me.network);

    let mut by_name: BTreeMap<&str, Vec<&Export>> = BTreeMap::new();
    for p in peers {
        by_name.entry(p.cluster.name.as_str()).or_default().push(p);
    }
    let mut accepted: Vec<(&Export, Accepted)> = vec![(own_export, Accepted::own(own_export))];
    let mut refused_peers = Vec::new();
    for (name, exps) in by_name {
        let verdict = judge(&me, &own_export.segments, &links, name, &exps);
        diags.extend(verdict.diagnostics);
        refused_peers.extend(verdict.refusal);
        if let (Some(acc), [exp]) = (verdict.accepted, exps.as_slice()) {
            accepted.push((exp, acc));
        }
    }

    let mut merged: BTreeMap<MergeKey, Vec<Contribution>> = BTreeMap::new();
    for (exp, acc) in &accepted {
        let mut refused_hosts = Vec::new();
        for svc in exp.services.values() {
            match place(&me, &exp.cluster, acc, svc) {
                Placement::Merge(key, c) => merged.entry(key).or_default().push(c),
                Placement::Hidden => {}
                Placement::Refused => refused_hosts.push(svc.clone()),
            }
        }
        if let Some(refusal) = trust::refuse_hostnames(
            &exp.cluster.name,
            acc.local_segment.as_ref(),
            &refused_hosts.iter().map(|s| &**s).collect::<Vec<_>>(),
        ) {
            trust::report(&me.name, &refusal, &mut diags);
            refused_peers.push(refusal);
        }
    }

    let mut services = Vec::with_capacity(merged.len());
    let mut hostnames: BTreeMap<String, MergeKey> = BTreeMap::new();
    for (key, mut contributions) in merged {
        contributions.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        let svc = merge(&me, &key, contributions, &mut diags);
        if let Some(winner) = hostnames.get(&svc.hostname) {
            diags.push(collision(&me, &svc.hostname, winner, &key));
            continue;
        }
        hostnames.insert(svc.hostname.clone(), key);
        services.push(svc);
    }

    let (hints, reserved) = vip_inputs(own);
    let wanted: BTreeSet<&str> = services.iter().map(|s| s.hostname.as_str()).collect();
    let alloc = vip::allocate(
        &config.vip_range,
        &wanted,
        &config.previous_vips,
        &hints,
        &reserved,
    );
    let names = crate::manual::ServiceNames::new(&services);
    let owned = crate::manual::Owned::new(&own_export.segments, &names, &config.vip_range);
    let manual = crate::manual::manual_entries(own, &owned, &mut diags);
    for host in &alloc.exhausted {
        diags.push(exhausted(&me, host, &config.vip_range, wanted.len()));
    }
    let services: ArcMap<String, GlobalService> = services
        .into_iter()
        .filter_map(|mut s| {
            s.vip = *alloc.vips.get(&s.hostname)?;
            Some((s.hostname.clone(), Arc::new(s)))
        })
        .collect();
    let routes = crate::routes::compile(own, own_export, &services, &manual, &mut diags);
    diag::normalize(&mut diags);
    refused_peers.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    GlobalCatalog {
        cluster: me,
        links,
        segments: own_export.segments.clone(),
        services,
        manual,
        refused_peers,
        diagnostics: diags,
        vip_range: Some(config.vip_range),
        routes: routes.tables,
        route_status: routes.status,
    }
}

/// Where merged contributions meet: (segment of the exporters, namespace,
/// name) (G8, S4).
pub(crate) type MergeKey = (Option<String>, String, String);

/// How this cluster takes an export it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) reach: Reach,
    /// This cluster's own definition of the exporter's segment (P2).
    pub(crate) local_segment: Option<SegmentDef>,
}

impl Accepted {
    pub(crate) fn own(own: &Export) -> Self {
        Accepted {
            reach: Reach::Local,
            local_segment: own.cluster.segment.clone(),
        }
    }
}

/// What this cluster makes of the peers presenting one name.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Verdict {
    /// Set when the (single) export is used.
    pub(crate) accepted: Option<Accepted>,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Why the whole export is refused by this cluster's objects (P2, P3).
    pub(crate) refusal: Option<PeerRefusal>,
}

/// Judges the exports presenting name `name` against this cluster's own
/// identity, Segments and links (C1, C3, C4, S1, P2, P3).
pub(crate) fn judge(
    me: &ClusterInfo,
    own_segments: &[SegmentDef],
    links: &[PeerLink],
    name: &str,
    exps: &[&Export],
) -> Verdict {
    let mut v = Verdict::default();
    let obj = ObjectRef::cluster(name);
    let mut report = |rule: Rule, sev: Severity, msg: String| {
        v.diagnostics
            .push(Diagnostic::new(&me.name, rule, sev, obj.clone(), msg));
    };
    if name == me.name {
        report(
            Rule::C4,
            Severity::Error,
            "a peer presents this cluster's own name; its export is ignored".into(),
        );
        return v;
    }
    let exp = match exps {
        [exp] => *exp,
        _ => {
            report(
                Rule::C4,
                Severity::Error,
                format!(
                    "{} peers present the name {name}; cluster names must be unique; none of their exports is used",
                    exps.len()
                ),
            );
            return v;
        }
    };
    let Some(link) = links.iter().find(|l| l.cluster == name) else {
        report(
            Rule::C4,
            Severity::Info,
            format!(
                "not linked from this cluster (no Gateway {}/{}{name}); its services are not imported",
                labels::ISTIO_EASTWEST,
                labels::PEER_GATEWAY_PREFIX
            ),
        );
        return v;
    };
    if link.trust_domain != exp.cluster.trust_domain {
        report(
            Rule::C1,
            Severity::Warning,
            format!(
                "trust domain is {} but gateway {} expects {} (annotation {})",
                exp.cluster.trust_domain,
                link.gateway,
                link.trust_domain,
                labels::TRUST_DOMAIN
            ),
        );
    }
    if link.network != exp.cluster.network {
        report(
            Rule::C3,
            Severity::Warning,
            format!(
                "network is {} but gateway {} says {} (label {}); the peer's own value is used",
                exp.cluster.network,
                link.gateway,
                link.network,
                labels::NETWORK
            ),
        );
    }
    segments::compare(
        &me.name,
        own_segments,
        name,
        &exp.segments,
        &mut v.diagnostics,
    );
    // P2, P3: the peer's segment, by this cluster's own objects.
    match trust::judge_peer(own_segments, link, exp) {
        Ok(local) => {
            v.accepted = Some(Accepted {
                reach: if exp.cluster.network == me.network {
                    Reach::Direct
                } else {
                    Reach::Gateway
                },
                local_segment: local.cloned(),
            });
        }
        Err(refusal) => {
            trust::report(&me.name, &refusal, &mut v.diagnostics);
            v.refusal = Some(refusal);
        }
    }
    v
}

/// Where one service of an accepted export goes.
pub(crate) enum Placement {
    /// Into the global service of this key.
    Merge(MergeKey, Contribution),
    /// Nowhere: not visible to this cluster (S6, S7).
    Hidden,
    /// Nowhere: its hostname is not the one this cluster gives it (P2).
    Refused,
}

pub(crate) fn place(
    me: &ClusterInfo,
    exporter: &ClusterInfo,
    acc: &Accepted,
    svc: &Arc<ExportedService>,
) -> Placement {
    // P2: only the hostname this cluster's own Segment gives.
    if acc.reach != Reach::Local && !trust::hostname_allowed(svc, acc.local_segment.as_ref()) {
        return Placement::Refused;
    }
    // S6, S7: segment scope is visible only within the segment.
    let exporter_segment = exporter.segment_name();
    if svc.scope == Scope::Segment && exporter_segment != me.segment_name() {
        return Placement::Hidden;
    }
    Placement::Merge(
        (
            exporter_segment.map(str::to_owned),
            svc.namespace.clone(),
            svc.name.clone(),
        ),
        Contribution {
            cluster: exporter.name.clone(),
            network: exporter.network.clone(),
            reach: acc.reach,
            service: Arc::clone(svc),
        },
    )
}

/// S1: a second global service claims a hostname the first one has.
pub(crate) fn collision(
    me: &ClusterInfo,
    hostname: &str,
    winner: &MergeKey,
    loser: &MergeKey,
) -> Diagnostic {
    Diagnostic::new(
        &me.name,
        Rule::S1,
        Severity::Error,
        ObjectRef::service(&loser.1, &loser.2),
        format!(
            "hostname {hostname} is claimed by segment {} and by segment {} (service {}/{}); two segments share a domain; only the first is used",
            winner.0.as_deref().unwrap_or("(default)"),
            loser.0.as_deref().unwrap_or("(default)"),
            winner.1,
            winner.2
        ),
    )
}

/// G11: no address left for a hostname.
pub(crate) fn exhausted(me: &ClusterInfo, host: &str, range: &Cidr, wanted: usize) -> Diagnostic {
    Diagnostic::new(
        &me.name,
        Rule::G11,
        Severity::Error,
        ObjectRef::new("globalservice", None, host),
        format!(
            "no VIP left in range {range} ({wanted} global services); the service gets no address and is not rendered; use a larger range"
        ),
    )
}

/// VIPs from this cluster's own ServiceEntries: hints from the generated
/// ones (addresses handed out before a restart, G11), and addresses of
/// user-written ones, which are never handed out.
pub(crate) fn vip_inputs(own: &ClusterSnapshot) -> (BTreeMap<String, IpAddr>, BTreeSet<IpAddr>) {
    let mut hints = BTreeMap::new();
    let mut reserved = BTreeSet::new();
    for se in own.service_entries.values() {
        let addrs = se
            .spec
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok());
        if is_managed(&se.metadata) {
            if let (Some(host), Some(ip)) = (se.spec.hosts.first(), addrs.clone().next()) {
                hints.insert(host.clone(), ip);
            }
        } else {
            reserved.extend(addrs);
        }
    }
    (hints, reserved)
}

/// Builds one global service from its contributions (sorted by cluster).
pub(crate) fn merge(
    me: &ClusterInfo,
    key: &MergeKey,
    contributions: Vec<Contribution>,
    diags: &mut Vec<Diagnostic>,
) -> GlobalService {
    let (segment, namespace, name) = (key.0.as_deref(), key.1.as_str(), key.2.as_str());
    let obj = ObjectRef::service(namespace, name);
    let mut report = |rule: Rule, sev: Severity, msg: String| {
        diags.push(Diagnostic::new(&me.name, rule, sev, obj.clone(), msg));
    };

    // Hostname: contributions of one segment agree unless their Segment
    // definitions differ (S1, reported when comparing definitions).
    let host_votes: Vec<(&str, &str)> = contributions
        .iter()
        .map(|c| (c.cluster.as_str(), c.service.hostname.as_str()))
        .collect();
    let hostname = pick(&host_votes)
        .map(|(h, _)| h.to_owned())
        .unwrap_or_default();

    let merged_ports = ports::merge(
        contributions
            .iter()
            .map(|c| (c.cluster.as_str(), c.service.ports.as_slice())),
    );
    for conflict in merged_ports.conflicts {
        report(Rule::G9, Severity::Warning, conflict);
    }

    let taken_over = contributions.iter().any(|c| c.service.takeover);
    // T1: a cluster that does not annotate votes for the default; it is a
    // value too, and losing it changes that cluster's routing.
    let dist_votes: Vec<(&str, TrafficDistribution)> = contributions
        .iter()
        .map(|c| {
            (
                c.cluster.as_str(),
                c.service.traffic_distribution.unwrap_or_default(),
            )
        })
        .collect();
    let annotated = contributions
        .iter()
        .any(|c| c.service.traffic_distribution.is_some());
    let mut distribution = match pick(&dist_votes) {
        Some((d, disagreed)) => {
            if disagreed && annotated {
                let seen: Vec<String> = contributions
                    .iter()
                    .map(|c| match c.service.traffic_distribution {
                        Some(d) => format!("{}={d}", c.cluster),
                        None => format!(
                            "{}={} (not annotated: the default)",
                            c.cluster,
                            TrafficDistribution::default()
                        ),
                    })
                    .collect();
                report(
                    Rule::T1,
                    Severity::Warning,
                    format!(
                        "clusters disagree on annotation {}: {}; using {d} (most clusters, ties to the cluster whose name sorts first); annotate the service the same way in every cluster",
                        labels::TRAFFIC_DISTRIBUTION,
                        seen.join(", ")
                    ),
                );
            }
            d
        }
        None => TrafficDistribution::default(),
    };
    if taken_over && distribution == TrafficDistribution::PreferNetwork {
        // A cluster that asks for PreferNetwork on its own taken-over service
        // was told so by its own export; here the conflict is between clusters.
        let asking: Vec<&str> = contributions
            .iter()
            .filter(|c| {
                c.service.traffic_distribution == Some(TrafficDistribution::PreferNetwork)
                    && !c.service.takeover
            })
            .map(|c| c.cluster.as_str())
            .collect();
        if !asking.is_empty() {
            let takers: Vec<&str> = contributions
                .iter()
                .filter(|c| c.service.takeover)
                .map(|c| c.cluster.as_str())
                .collect();
            report(
                Rule::K3,
                Severity::Warning,
                format!(
                    "{} ask for PreferNetwork, which is not allowed for a taken-over service (takeover in {}); PreferClose is used",
                    asking.join(", "),
                    takers.join(", ")
                ),
            );
        }
        distribution = TrafficDistribution::PreferClose;
    }

    let scope = if contributions
        .iter()
        .all(|c| c.service.scope == Scope::Segment)
    {
        Scope::Segment
    } else {
        Scope::Global
    };

    let takeover = contributions
        .iter()
        .find(|c| c.reach == Reach::Local && c.service.takeover)
        .map(|c| LocalTakeover {
            hostname: format!("{name}.{namespace}.{}", labels::CLUSTER_LOCAL_SUFFIX),
            cluster_ips: c.service.cluster_ips.clone(),
        });

    let rendered: usize = contributions
        .iter()
        .map(|c| match c.reach {
            Reach::Local | Reach::Direct => c.service.endpoint_count(),
            Reach::Gateway => c.service.locality_groups().count(),
        })
        .sum();
    if rendered > MAX_RENDERED_ENDPOINTS {
        report(
            Rule::G7,
            Severity::Error,
            format!(
                "{rendered} endpoints exceed the {MAX_RENDERED_ENDPOINTS} a ServiceEntry may hold; only the first {MAX_RENDERED_ENDPOINTS} are rendered (the data plane still uses all)"
            ),
        );
    }

    GlobalService {
        hostname,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        segment: segment.map(str::to_owned),
        scope,
        vip: IpAddr::from([0, 0, 0, 0]),
        ports: merged_ports.ports,
        distribution,
        taken_over,
        takeover,
        contributions,
    }
}

/// The value most clusters chose; on a tie, the one of the cluster whose name
/// sorts first. Also says whether clusters disagreed.
pub(crate) fn pick<T: Ord + Clone>(votes: &[(&str, T)]) -> Option<(T, bool)> {
    let mut tally: BTreeMap<&T, (usize, &str)> = BTreeMap::new();
    for (cluster, v) in votes {
        let e = tally.entry(v).or_insert((0, cluster));
        e.0 += 1;
        if *cluster < e.1 {
            e.1 = cluster;
        }
    }
    let disagreed = tally.len() > 1;
    let (v, _) = tally
        .iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| b.1.1.cmp(a.1.1)))?;
    Some(((*v).clone(), disagreed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_majority_then_first_cluster() {
        assert_eq!(pick::<u8>(&[]), None);
        assert_eq!(pick(&[("a", 1)]), Some((1, false)));
        assert_eq!(pick(&[("b", 1), ("a", 2)]), Some((2, true)));
        assert_eq!(pick(&[("a", 1), ("b", 2), ("c", 2)]), Some((2, true)));
        assert_eq!(pick(&[("c", 2), ("b", 1), ("a", 2)]), Some((2, true)));
    }
}
