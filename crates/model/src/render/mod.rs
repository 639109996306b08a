//! Rendering a catalog as the Istio objects an operator finds with
//! `kubectl get serviceentry -n istio-system` (G7, S3), and the output formats
//! of `meshpeer render`.
//!
//! Two flavors. Solo's (this module, `--istio-flavor solo`): endpoints
//! inline in the ServiceEntry, one object per global service, updated
//! atomically, as the seeds show it. Upstream Istio's (`upstream`): a
//! ServiceEntry that selects WorkloadEntries, shaped by what upstream
//! istiod and ztunnel read (see that module).
//!
//! In Solo's flavor:
//! - Endpoints this cluster can address directly (its own, and those of peers
//!   in the same network) are listed one by one: address, ports (by the
//!   ServiceEntry's port names), locality, network, cluster label.
//! - Each group of endpoints of a peer in another network that share a
//!   locality is one entry with `network`, `locality`, and `weight` = the
//!   number of ready endpoints, and no address: as in Istio's multi-network
//!   model, such an endpoint is reached through that network's east-west
//!   gateway (the catalog's links say where it is).

use std::collections::BTreeMap;

pub mod upstream;

pub use upstream::{UpstreamEntry, render_upstream, upstream_entry};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use crate::catalog::{GlobalCatalog, GlobalService, MAX_RENDERED_ENDPOINTS, Reach};
use crate::labels;
use crate::objects::{ServiceEntry, ServiceEntryPort, ServiceEntrySpec, WorkloadEntrySpec};

/// The Istio distribution an output is shaped for (ARCHITECTURE.md, "Istio
/// flavors").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IstioFlavor {
    /// Upstream istio/istio: ServiceEntries selecting WorkloadEntries,
    /// mapped traffic distribution, subjectAltNames, mTLS and ambient
    /// markers ([`upstream`]).
    #[default]
    Upstream,
    /// Solo's distribution as the seeds show its objects: inline endpoints.
    Solo,
}

impl IstioFlavor {
    pub fn as_str(self) -> &'static str {
        match self {
            IstioFlavor::Upstream => "upstream",
            IstioFlavor::Solo => "solo",
        }
    }
}

impl std::fmt::Display for IstioFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `autogen.<namespace>.<name>`, or `autogen.<segment>.<namespace>.<name>`.
pub fn service_entry_name(svc: &GlobalService) -> String {
    match &svc.segment {
        Some(seg) => format!("autogen.{seg}.{}.{}", svc.namespace, svc.name),
        None => format!("autogen.{}.{}", svc.namespace, svc.name),
    }
}

/// The ServiceEntries of a catalog, in hostname order.
pub fn render(catalog: &GlobalCatalog) -> Vec<ServiceEntry> {
    catalog
        .services
        .values()
        .map(|s| service_entry(s))
        .collect()
}

/// The ServiceEntry of one global service.
pub fn service_entry(svc: &GlobalService) -> ServiceEntry {
    let mut se = entry_shell(svc);
    se.spec.endpoints = inline_endpoints(svc);
    se
}

/// A service's ServiceEntry without endpoints: names, labels and
/// annotations, hosts, VIP, ports, location and resolution (both flavors).
pub(crate) fn entry_shell(svc: &GlobalService) -> ServiceEntry {
    let mut labels_map = BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::GEN_SERVICE_NAME.to_owned(), svc.name.clone()),
        (
            labels::GEN_SERVICE_NAMESPACE.to_owned(),
            svc.namespace.clone(),
        ),
        (labels::GEN_SCOPE.to_owned(), svc.scope.to_string()),
    ]);
    if let Some(seg) = &svc.segment {
        labels_map.insert(labels::GEN_SEGMENT.to_owned(), seg.clone());
    }
    let clusters: Vec<&str> = svc.clusters().collect();
    let mut annotations = BTreeMap::from([
        (labels::GEN_CLUSTERS.to_owned(), clusters.join(",")),
        (
            labels::TRAFFIC_DISTRIBUTION.to_owned(),
            svc.distribution.to_string(),
        ),
    ]);
    if let Some(t) = &svc.takeover {
        annotations.insert(labels::GEN_TAKEOVER.to_owned(), t.hostname.clone());
    }

    ServiceEntry {
        metadata: ObjectMeta {
            name: Some(service_entry_name(svc)),
            namespace: Some(labels::ISTIO_SYSTEM.to_owned()),
            labels: Some(labels_map),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: ServiceEntrySpec {
            hosts: vec![svc.hostname.clone()],
            addresses: vec![svc.vip.to_string()],
            ports: svc
                .ports
                .iter()
                .map(|p| ServiceEntryPort {
                    number: u32::from(p.number),
                    protocol: Some(p.protocol.clone()),
                    name: p.name.clone(),
                    target_port: None,
                })
                .collect(),
            location: Some("MESH_INTERNAL".to_owned()),
            resolution: Some("STATIC".to_owned()),
            ..Default::default()
        },
    }
}

/// Solo's flavor: every endpoint inline, by reach.
fn inline_endpoints(svc: &GlobalService) -> Vec<WorkloadEntrySpec> {
    let port_names: BTreeMap<u16, &str> = svc
        .ports
        .iter()
        .map(|p| (p.number, p.name.as_str()))
        .collect();
    let mut endpoints = Vec::new();
    for c in &svc.contributions {
        let cluster_label = BTreeMap::from([(labels::CLUSTER.to_owned(), c.cluster.clone())]);
        match c.reach {
            Reach::Local | Reach::Direct => {
                for (locality, ep) in c.service.endpoints() {
                    endpoints.push(WorkloadEntrySpec {
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
                        labels: cluster_label.clone(),
                        network: Some(c.network.clone()),
                        locality: non_empty(locality.to_istio()),
                        weight: None,
                        service_account: None,
                    });
                }
            }
            Reach::Gateway => {
                for (locality, eps) in c.service.locality_groups() {
                    endpoints.push(WorkloadEntrySpec {
                        address: None,
                        ports: served_through_gateway(&port_names, eps),
                        labels: cluster_label.clone(),
                        network: Some(c.network.clone()),
                        locality: non_empty(locality.to_istio()),
                        weight: Some(u32::try_from(eps.len()).unwrap_or(u32::MAX)),
                        service_account: None,
                    });
                }
            }
        }
    }
    endpoints.truncate(MAX_RENDERED_ENDPOINTS);
    endpoints
}

/// The ports a remote cluster's endpoints serve, by the entry's port
/// names, each to the service port: its gateway is asked for
/// `<hostname>:<service port>` (G9: only the ports that cluster serves).
pub(crate) fn served_through_gateway(
    port_names: &BTreeMap<u16, &str>,
    endpoints: &[crate::endpoints::Endpoint],
) -> BTreeMap<String, u32> {
    port_names
        .iter()
        .filter(|(number, _)| endpoints.iter().any(|e| e.target(**number).is_some()))
        .map(|(number, name)| ((*name).to_owned(), u32::from(*number)))
        .collect()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Multi-document YAML that `kubectl apply -f -` accepts.
pub fn to_yaml<T: serde::Serialize>(objects: &[T]) -> String {
    let mut out = String::new();
    for (i, se) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let v = serde_json::to_value(se).unwrap_or_default();
        out.push_str(&serde_saphyr::to_string(&v).unwrap_or_default());
    }
    out
}

/// `{"apiVersion":"v1","kind":"List","items":[...]}`, pretty-printed.
pub fn to_json_list<T: serde::Serialize>(entries: &[T]) -> String {
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": entries,
    });
    serde_json::to_string_pretty(&list).unwrap_or_default()
}

/// The `kubectl get serviceentry` table: `NAME HOSTS LOCATION RESOLUTION AGE`.
/// Ages are computed against `now`; without a creation time (objects not
/// created yet) the age is `<unknown>`, as kubectl shows it.
pub fn table(entries: &[ServiceEntry], now: Option<Timestamp>) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "HOSTS".to_owned(),
        "LOCATION".to_owned(),
        "RESOLUTION".to_owned(),
        "AGE".to_owned(),
    ]];
    for se in entries {
        let created = se.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let age = match (created, now) {
            (Some(c), Some(n)) => human_age(n.as_second() - c.as_second()),
            _ => "<unknown>".to_owned(),
        };
        rows.push([
            se.metadata.name.clone().unwrap_or_default(),
            serde_json::to_string(&se.spec.hosts).unwrap_or_default(),
            se.spec.location.clone().unwrap_or_default(),
            se.spec.resolution.clone().unwrap_or_default(),
            age,
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] + 3 - cell.chars().count();
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's short human duration: `16s`, `5m12s`, `3h`, `2d4h`, `45d`.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        let rem = s % 60;
        if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let rem = m % 60;
        if rem == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rem}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        let rem = h % 24;
        if rem == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rem}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(human_age(16), "16s");
        assert_eq!(human_age(119), "119s");
        assert_eq!(human_age(312), "5m12s");
        assert_eq!(human_age(3600), "60m");
        assert_eq!(human_age(4 * 3600 + 60), "4h1m");
        assert_eq!(human_age(20 * 3600), "20h");
        assert_eq!(human_age(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_age(40 * 86400), "40d");
    }
}
