//! The output as upstream Istio reads it (`--istio-flavor upstream`, issue
//! 17): one ServiceEntry per global service that selects WorkloadEntries,
//! one WorkloadEntry per endpoint this cluster dials and one per remote
//! network's locality group. Each choice rests on istio/istio at 86c9f01
//! and istio/ztunnel at 62d8265 (ARCHITECTURE.md, "Istio flavors"):
//!
//! - Traffic distribution: upstream knows `PreferClose`/`PreferSameZone`
//!   and `PreferSameNode` only (`pilot/pkg/model/service.go`,
//!   `GetTrafficDistribution`); any other value is read as `Any`. Both
//!   `PreferNetwork` and `PreferClose` are written `PreferClose`, which
//!   upstream applies as failover priority network, region, zone
//!   (`loadbalancer.go` `GetEffectiveLbSetting`; ambient: routing
//!   preference NETWORK, REGION, ZONE): the network comes first as
//!   `PreferNetwork` asks, and zones inside a network are also preferred,
//!   which `PreferNetwork` would not do. `PreferRegion` becomes
//!   `PreferClose` too (zone preference added). `Any` writes nothing.
//!   meshpeer's own value stays in `meshpeer.io/traffic-distribution`.
//! - WorkloadEntries, not inline endpoints: istiod's ambient index gives
//!   inline endpoints the UID `<entry>/<address>`, so address-less remote
//!   endpoints collide and only one remote network survives
//!   (`serviceregistry/ambient/workloads.go`), and the tunnel protocol of
//!   inline endpoints is the entry's, not each Pod's. A WorkloadEntry has
//!   its own UID and its own `ambient.istio.io/redirection` annotation
//!   (`setTunnelProtocol`). One ServiceEntry per host keeps ambient whole:
//!   ztunnel keeps only the oldest entry of a namespace/host
//!   (`serviceregistry/ambient/services.go`).
//! - `workloadSelector` picks WorkloadEntries of the entry's namespace
//!   only (`serviceentry/conversion.go`), so both live in `istio-system`;
//!   the selector label is one per entry (`meshpeer.io/entry`).
//! - `subjectAltNames`: ztunnel checks the inner TLS of double HBONE
//!   against the service's SANs (`src/proxy/outbound.rs` `final_sans =
//!   service_sans()`), so they list the exporting Pods' identities,
//!   `spiffe://<cluster's trust domain>/ns/<namespace>/sa/<account>`.
//! - Remote groups carry `security.istio.io/tlsMode: istio`: the
//!   split-horizon filter keeps a cross-network endpoint only when it is
//!   mTLS-capable (`pilot/pkg/xds/endpoints/ep_filters.go`). Every entry
//!   sets `network` (an empty one counts as the client's own network).
//! - A WorkloadEntry at the address of one of this cluster's Pods does not
//!   shadow the Pod: ztunnel, finding several workloads at one address,
//!   prefers the Pod (`src/state/workload.rs`, `WorkloadByAddr::get`),
//!   while the service's endpoint list names the WorkloadEntry, whose
//!   tunnel protocol comes from its own annotation. Its identity is
//!   `istio-system`'s default account (no `serviceAccount`: it would name
//!   an account of `istio-system`); the Pod's own identity is among the
//!   entry's `subjectAltNames`, which ztunnel also accepts.
//! - A peer on this cluster's network (flat, seed 002) is dialled Pod to
//!   Pod: its Pods are WorkloadEntries named as Solo's are,
//!   `autogenflat.<cluster>.<namespace>.<pod>.<hash>` (one per service,
//!   the hash covering entry and address), which `check`'s Stale Workloads
//!   Check compares with the peers' current Pods.
//! - `topology.istio.io/cluster` is not written on endpoints: istiod
//!   overwrites it with its own cluster id; the contributing cluster is in
//!   `meshpeer.io/cluster`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{non_empty, service_entry_name};
use crate::catalog::{GlobalCatalog, GlobalService, Reach};
use crate::endpoints::AMBIENT_REDIRECTION;
use crate::labels;
use crate::objects::{
    ServiceEntry, ServiceEntrySpec, WorkloadEntry, WorkloadEntrySpec, WorkloadSelector,
};
use crate::scope::TrafficDistribution;

/// The label a ServiceEntry selects its WorkloadEntries by.
pub const ENTRY: &str = "meshpeer.io/entry";
/// The cluster a WorkloadEntry's endpoints are in.
pub const GEN_CLUSTER: &str = "meshpeer.io/cluster";
/// meshpeer's own traffic distribution, before the mapping.
pub const GEN_DISTRIBUTION: &str = "meshpeer.io/traffic-distribution";
/// Istio's mTLS marker on endpoints.
pub const TLS_MODE: &str = "security.istio.io/tlsMode";

/// What upstream Istio is given for one global service.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamEntry {
    pub service_entry: ServiceEntry,
    /// By name.
    pub workload_entries: Vec<WorkloadEntry>,
}

/// The value written for upstream, `None` for nothing (Istio's default).
pub fn upstream_distribution(d: TrafficDistribution) -> Option<&'static str> {
    match d {
        TrafficDistribution::PreferNetwork
        | TrafficDistribution::PreferClose
        | TrafficDistribution::PreferRegion => Some("PreferClose"),
        TrafficDistribution::Any => None,
    }
}

/// The `meshpeer.io/entry` value of a ServiceEntry: its name when that is a
/// label value (at most 63 characters), else its first 46 characters and a
/// hash of the whole name.
pub fn entry_key(se_name: &str) -> String {
    if se_name.len() <= 63 {
        return se_name.to_owned();
    }
    let mut head: String = se_name.chars().take(46).collect();
    while head.ends_with(['.', '-']) {
        head.pop();
    }
    let mut key = head;
    let _ = write!(key, "-{:016x}", fnv1a(se_name.as_bytes()));
    key
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where the upstream rendering cannot name every identity: per global
/// service, the clusters whose endpoints carry no ServiceAccount (an
/// EndpointSlice without its Pods). ztunnel checks double HBONE's inner TLS
/// against the entry's `subjectAltNames`, so tunnels to those endpoints
/// would fail; a G7 warning says so.
pub fn identity_gaps(catalog: &GlobalCatalog) -> Vec<crate::Diagnostic> {
    catalog
        .services
        .values()
        .filter_map(|svc| identity_gap(&catalog.cluster.name, svc))
        .collect()
}

/// [`identity_gaps`] of one global service, as cluster `me` reports it.
fn identity_gap(me: &str, svc: &crate::GlobalService) -> Option<crate::Diagnostic> {
    let unknown = clusters_without_identity(svc);
    if unknown.is_empty() {
        return None;
    }
    Some(crate::Diagnostic::new(
        me,
        crate::Rule::G7,
        crate::Severity::Warning,
        crate::ObjectRef::service(&svc.namespace, &svc.name),
        format!(
            "{}: endpoints in {} have no known Pod, so their ServiceAccounts are not in the entry's subjectAltNames; ztunnel checks double HBONE's inner TLS against those names and would refuse them (export Pods with the EndpointSlices, or add the identities by hand)",
            svc.hostname,
            unknown.join(", ")
        ),
    ))
}

/// The clusters whose endpoints of `svc` include some of no known Pod
/// (no ServiceAccount).
pub fn clusters_without_identity(svc: &crate::GlobalService) -> Vec<&str> {
    svc.contributions
        .iter()
        .filter(|c| {
            c.service
                .endpoints()
                .any(|(_, e)| e.service_account.is_empty())
        })
        .map(|c| c.cluster.as_str())
        .collect()
}

/// The G7 warning a controller gives, once per exporting cluster, while
/// some global services have endpoints of no known Pod in `cluster`: one
/// finding per cluster, not per service, so that a mesh of many such
/// services costs its findings list nothing more (`render` names the
/// services one by one).
pub fn cluster_identity_gap(me: &str, cluster: &str) -> crate::Diagnostic {
    crate::Diagnostic::new(
        me,
        crate::Rule::G7,
        crate::Severity::Warning,
        crate::ObjectRef::cluster(cluster),
        format!(
            "global services have endpoints in cluster {cluster} of no known Pod, so their ServiceAccounts are not in the entries' subjectAltNames; ztunnel checks double HBONE's inner TLS against those names and would refuse them (`meshpeer render --istio-flavor upstream` names the services; export Pods with the EndpointSlices, or add the identities by hand)"
        ),
    )
}

/// The prefix of the WorkloadEntries of a flat network's peer Pods.
pub const FLAT_PREFIX: &str = "autogenflat.";

/// `autogenflat.<cluster>.<namespace>.<pod>.<hash>` (seed 002's names):
/// the hash (12 hex digits) covers the entry and the address, so that one
/// Pod behind two global services gets one WorkloadEntry per service, and
/// an endpoint without a Pod name is named by its address. Always a valid
/// object name (a DNS-1123 subdomain of at most 253 characters), whatever
/// a peer calls its Pod (B1 lets `_`, upper case and empty labels through,
/// which no Kubernetes object name may hold: such a name would fail the
/// write).
pub fn flat_name(
    entry: &str,
    cluster: &str,
    namespace: &str,
    ep: &crate::endpoints::Endpoint,
) -> String {
    let addr = ep.address.to_string();
    let pod = subdomain_labels(&ep.name);
    let pod = if pod.is_empty() {
        addr.replace([':', '.'], "-")
    } else {
        pod
    };
    let hash = fnv1a(format!("{entry}/{addr}").as_bytes()) & 0xffff_ffff_ffff;
    let mut head = format!("{FLAT_PREFIX}{cluster}.{namespace}.{pod}");
    head.truncate(253 - 13);
    while head.ends_with(['.', '-']) {
        head.pop();
    }
    format!("{head}.{hash:012x}")
}

/// `name` as DNS-1123 labels: lower case, any other character than a
/// letter, a digit, `-` or `.` made `-`, labels trimmed of `-`, empty ones
/// left out.
fn subdomain_labels(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    name.split('.')
        .map(|l| l.trim_matches('-'))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// The entries of a catalog, in hostname order.
pub fn render_upstream(catalog: &GlobalCatalog) -> Vec<UpstreamEntry> {
    catalog
        .services
        .values()
        .map(|s| upstream_entry(catalog, s))
        .collect()
}

/// One global service as upstream Istio reads it.
pub fn upstream_entry(catalog: &GlobalCatalog, svc: &GlobalService) -> UpstreamEntry {
    let mut se = super::entry_shell(svc);
    let name = service_entry_name(svc);
    let key = entry_key(&name);
    let annotations = se.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.remove(labels::TRAFFIC_DISTRIBUTION);
    annotations.insert(GEN_DISTRIBUTION.to_owned(), svc.distribution.to_string());
    if let Some(v) = upstream_distribution(svc.distribution) {
        annotations.insert(labels::TRAFFIC_DISTRIBUTION.to_owned(), v.to_owned());
    }
    let port_names: BTreeMap<u16, &str> = svc
        .ports
        .iter()
        .map(|p| (p.number, p.name.as_str()))
        .collect();
    let trust_domain = |cluster: &str| -> Option<&str> {
        if cluster == catalog.cluster.name {
            return Some(&catalog.cluster.trust_domain);
        }
        catalog
            .links
            .iter()
            .find(|l| l.cluster == cluster)
            .map(|l| l.trust_domain.as_str())
    };
    let mut sans = BTreeSet::new();
    let mut workload_entries = Vec::new();
    let base_labels = |cluster: &str| {
        BTreeMap::from([
            (
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            ),
            (ENTRY.to_owned(), key.clone()),
            (GEN_CLUSTER.to_owned(), cluster.to_owned()),
        ])
    };
    for c in &svc.contributions {
        let td = trust_domain(&c.cluster);
        for (_, ep) in c.service.endpoints() {
            if let (Some(td), false) = (td, ep.service_account.is_empty()) {
                sans.insert(format!(
                    "spiffe://{td}/ns/{}/sa/{}",
                    svc.namespace, ep.service_account
                ));
            }
        }
        match c.reach {
            Reach::Local | Reach::Direct => {
                for (locality, ep) in c.service.endpoints() {
                    let we_name = match c.reach {
                        // A peer's Pod reached directly (flat network,
                        // seed 002): named as Solo's `autogenflat`
                        // entries are, per service.
                        Reach::Direct => flat_name(&name, &c.cluster, &svc.namespace, ep),
                        _ => format!(
                            "{name}.{}.{}",
                            c.cluster,
                            ep.address.to_string().replace([':', '.'], "-")
                        ),
                    };
                    let annotations = ep.ambient.then(|| {
                        BTreeMap::from([(AMBIENT_REDIRECTION.to_owned(), "enabled".to_owned())])
                    });
                    workload_entries.push(WorkloadEntry {
                        metadata: ObjectMeta {
                            name: Some(we_name),
                            namespace: Some(labels::ISTIO_SYSTEM.to_owned()),
                            labels: Some(base_labels(&c.cluster)),
                            annotations,
                            ..Default::default()
                        },
                        spec: WorkloadEntrySpec {
                            address: Some(ep.address.to_string()),
                            ports: ep
                                .ports
                                .iter()
                                .filter_map(|p| {
                                    port_names
                                        .get(&p.port)
                                        .map(|n| ((*n).to_owned(), u32::from(p.target)))
                                })
                                .collect(),
                            labels: BTreeMap::new(),
                            network: Some(c.network.clone()),
                            locality: non_empty(locality.to_istio()),
                            weight: None,
                            service_account: None,
                        },
                    });
                }
            }
            Reach::Gateway => {
                for (locality, eps) in c.service.locality_groups() {
                    let loc = locality.to_istio();
                    let suffix = if loc.is_empty() {
                        "any".to_owned()
                    } else {
                        format!("{:08x}", fnv1a(loc.as_bytes()) as u32)
                    };
                    let mut l = base_labels(&c.cluster);
                    l.insert(TLS_MODE.to_owned(), "istio".to_owned());
                    workload_entries.push(WorkloadEntry {
                        metadata: ObjectMeta {
                            name: Some(format!("{name}.{}.{suffix}", c.cluster)),
                            namespace: Some(labels::ISTIO_SYSTEM.to_owned()),
                            labels: Some(l),
                            ..Default::default()
                        },
                        spec: WorkloadEntrySpec {
                            address: None,
                            ports: super::served_through_gateway(&port_names, eps),
                            labels: BTreeMap::new(),
                            network: Some(c.network.clone()),
                            locality: non_empty(loc),
                            weight: Some(u32::try_from(eps.len()).unwrap_or(u32::MAX)),
                            service_account: None,
                        },
                    });
                }
            }
        }
    }
    workload_entries.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    se.spec = ServiceEntrySpec {
        workload_selector: Some(WorkloadSelector {
            labels: BTreeMap::from([(ENTRY.to_owned(), key.clone())]),
        }),
        subject_alt_names: sans.into_iter().collect(),
        ..se.spec
    };
    UpstreamEntry {
        service_entry: se,
        workload_entries,
    }
}
