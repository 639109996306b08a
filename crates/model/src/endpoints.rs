//! Ready endpoints of a Service, from EndpointSlices or Pods (G10), with their
//! locality (C1).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSnapshot;
use crate::labels;
use crate::objects::{NsName, label};
use crate::ports::{ServicePort, TargetPort};

/// Where a workload runs: region / zone / subzone. Empty parts are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subzone: String,
}

impl Locality {
    pub fn new(region: &str, zone: &str) -> Self {
        Locality {
            region: region.to_owned(),
            zone: zone.to_owned(),
            subzone: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Istio's locality string `region/zone/subzone`, trailing empty parts dropped.
    pub fn to_istio(&self) -> String {
        let parts = [&self.region, &self.zone, &self.subzone];
        let last = parts.iter().rposition(|p| !p.is_empty());
        match last {
            None => String::new(),
            Some(i) => parts[..=i]
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("/"),
        }
    }

    /// Reads Istio's `region/zone/subzone` (trailing parts may be left
    /// out). `None` when it has more than three parts or a part that is
    /// not a label value (at most 63 letters, digits, '-', '_', '.').
    pub fn from_istio(s: &str) -> Option<Locality> {
        let mut parts = s.split('/');
        let mut next = || -> Option<String> {
            let p = parts.next().unwrap_or_default();
            crate::validate::label_value(p).ok()?;
            Some(p.to_owned())
        };
        let locality = Locality {
            region: next()?,
            zone: next()?,
            subzone: next()?,
        };
        parts.next().is_none().then_some(locality)
    }

    /// Fills unknown parts from `fallback`.
    fn or(mut self, fallback: &Locality) -> Locality {
        if self.region.is_empty() {
            self.region.clone_from(&fallback.region);
        }
        if self.zone.is_empty() {
            self.zone.clone_from(&fallback.zone);
        }
        if self.subzone.is_empty() {
            self.subzone.clone_from(&fallback.subzone);
        }
        self
    }

    fn from_labels(meta: &ObjectMeta) -> Locality {
        Locality {
            region: label(meta, labels::REGION).unwrap_or_default().to_owned(),
            zone: label(meta, labels::ZONE).unwrap_or_default().to_owned(),
            subzone: label(meta, labels::SUBZONE).unwrap_or_default().to_owned(),
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_istio();
        if s.is_empty() {
            f.write_str("(unknown)")
        } else {
            f.write_str(&s)
        }
    }
}

/// Which endpoint port serves a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortTarget {
    /// The service port number.
    pub port: u16,
    /// The port on the endpoint.
    pub target: u16,
}

/// One ready endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Pod name (or EndpointSlice target / hostname) for display.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Service ports this endpoint serves, sorted by service port. Shared by
    /// the endpoints that serve the same ports (most of them).
    pub ports: Arc<[PortTarget]>,
    /// The Pod's ServiceAccount (`spec.serviceAccountName`, `default` when
    /// unset); empty when no Pod is known (an EndpointSlice entry without
    /// a Pod). With the cluster's trust domain it is the workload identity
    /// Istio gives the Pod: `spiffe://<td>/ns/<namespace>/sa/<account>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// The Pod is captured by an Istio ambient data plane (istio-cni marks
    /// it `ambient.istio.io/redirection: enabled`): its node's ztunnel
    /// accepts HBONE for it on port 15008, which is where the gateway
    /// forwards ztunnel's double HBONE (issue 17).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ambient: bool,
}

/// The Pod annotation istio-cni sets on Pods whose traffic ztunnel
/// captures (`pkg/config/constants`: `AmbientRedirection`).
pub const AMBIENT_REDIRECTION: &str = "ambient.istio.io/redirection";

/// `(service account, ambient)` of a Pod.
fn workload_of(pod: &Pod) -> (String, bool) {
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    let ambient = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AMBIENT_REDIRECTION))
        .is_some_and(|v| v == "enabled");
    (sa, ambient)
}

impl Endpoint {
    /// The endpoint port serving a service port, if it serves it.
    pub fn target(&self, port: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.port == port).map(|p| p.target)
    }
}

/// The ready endpoints of a service in one locality, sorted by address. The
/// locality is held once per group, not per endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalityGroup {
    #[serde(default, skip_serializing_if = "Locality::is_empty")]
    pub locality: Locality,
    pub endpoints: Vec<Endpoint>,
}

/// Keys of objects, in key order.
type Keys = BTreeSet<NsName>;

/// EndpointSlices of each Service and Pods by label, so that finding a
/// Service's endpoints does not scan every Pod of its namespace. Built once
/// from a snapshot ([`EndpointIndex::new`]) and then kept in step with it,
/// object by object ([`EndpointIndex::pod_changed`],
/// [`EndpointIndex::slice_changed`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EndpointIndex {
    /// namespace -> service name -> slices
    slices: HashMap<String, HashMap<String, Keys>>,
    /// namespace -> label key -> label value -> pods
    pods: HashMap<String, HashMap<String, HashMap<String, Keys>>>,
}

impl EndpointIndex {
    pub(crate) fn new(snap: &ClusterSnapshot) -> Self {
        let mut index = EndpointIndex::default();
        for (key, pod) in &snap.pods {
            index.pod_changed(key, None, Some(pod));
        }
        for (key, slice) in &snap.endpoint_slices {
            index.slice_changed(key, None, Some(slice));
        }
        index
    }

    /// A Pod was added (`old` None), changed, or removed (`new` None).
    pub(crate) fn pod_changed(&mut self, key: &NsName, old: Option<&Pod>, new: Option<&Pod>) {
        for (k, v) in old.iter().flat_map(|p| p.metadata.labels.iter().flatten()) {
            let emptied = self
                .pods
                .get_mut(&key.namespace)
                .and_then(|by_key| by_key.get_mut(k))
                .and_then(|by_value| {
                    let set = by_value.get_mut(v)?;
                    set.remove(key);
                    set.is_empty().then_some(by_value)
                });
            if let Some(by_value) = emptied {
                by_value.remove(v);
            }
        }
        for (k, v) in new.iter().flat_map(|p| p.metadata.labels.iter().flatten()) {
            self.pods
                .entry(key.namespace.clone())
                .or_default()
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    /// An EndpointSlice was added, changed or removed.
    pub(crate) fn slice_changed(
        &mut self,
        key: &NsName,
        old: Option<&EndpointSlice>,
        new: Option<&EndpointSlice>,
    ) {
        if let Some(svc) = old.and_then(|s| label(&s.metadata, labels::ENDPOINTSLICE_SERVICE_NAME))
            && let Some(by_service) = self.slices.get_mut(&key.namespace)
            && let Some(set) = by_service.get_mut(svc)
        {
            set.remove(key);
            if set.is_empty() {
                by_service.remove(svc);
            }
        }
        if let Some(svc) = new.and_then(|s| label(&s.metadata, labels::ENDPOINTSLICE_SERVICE_NAME))
        {
            self.slices
                .entry(key.namespace.clone())
                .or_default()
                .entry(svc.to_owned())
                .or_default()
                .insert(key.clone());
        }
    }

    /// Pods of `namespace` carrying label `key=value`, in key order.
    pub(crate) fn pods_labelled<'s>(
        &'s self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> impl Iterator<Item = &'s NsName> + 's {
        self.pods
            .get(namespace)
            .and_then(|by_key| by_key.get(key))
            .and_then(|by_value| by_value.get(value))
            .into_iter()
            .flatten()
    }

    /// Pods of `namespace` whose labels match `selector` (non-empty), in key order.
    fn pods_matching<'s>(
        &'s self,
        snap: &'s ClusterSnapshot,
        namespace: &str,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'s NsName, &'s Pod)> + 's {
        // Candidates: the pods carrying the selector's first label; then the rest must match.
        let candidates: Box<dyn Iterator<Item = &'s NsName> + 's> = match selector.iter().next() {
            Some((k, v)) => Box::new(self.pods_labelled(namespace, k, v)),
            None => Box::new(std::iter::empty()),
        };
        candidates.filter_map(move |key| {
            let (key, pod) = snap.pods.get_key_value(key)?;
            let labels = pod.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                .then_some((key, pod))
        })
    }

    /// The EndpointSlices of Service `svc`, in key order.
    fn slices<'s>(&self, snap: &'s ClusterSnapshot, svc: &NsName) -> Vec<&'s EndpointSlice> {
        self.slices
            .get(&svc.namespace)
            .and_then(|m| m.get(&svc.name))
            .into_iter()
            .flatten()
            .filter_map(|k| snap.endpoint_slices.get(k))
            .collect()
    }
}

/// What finding a Service's endpoints ran into, besides the endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// Nodes whose labels the endpoints' localities were read from (or
    /// would have been, had they existed): the endpoints change when they do.
    pub(crate) nodes: BTreeSet<String>,
    /// Service port name -> (number, named targetPort, pods that do not
    /// declare it) (G10: left out of that port's endpoints).
    pub(crate) unresolved: BTreeMap<String, (u16, String, Vec<String>)>,
}

/// Where a Service's endpoints came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    EndpointSlices,
    Pods,
    /// No selector and no EndpointSlice: the Service has no endpoints.
    None,
}

/// The ready endpoints of a Service grouped by locality, in locality order.
/// When the Service has EndpointSlices they are authoritative (as for
/// kube-proxy); otherwise the Pods its selector matches are used.
///
/// `found` receives the Nodes that gave localities and the Pods left out of
/// a port because they do not declare its named target port.
pub(crate) fn ready_endpoints(
    snap: &ClusterSnapshot,
    index: &EndpointIndex,
    key: &NsName,
    svc: &Service,
    ports: &[ServicePort],
    default_locality: &Locality,
    found: &mut Found,
) -> (Vec<LocalityGroup>, Source) {
    let svc_slices = index.slices(snap, key);
    let (mut eps, source) = if !svc_slices.is_empty() {
        (
            from_slices(snap, &svc_slices, ports, default_locality, &mut found.nodes),
            Source::EndpointSlices,
        )
    } else {
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty());
        match selector {
            Some(sel) => (
                from_pods(
                    snap,
                    index.pods_matching(snap, &key.namespace, sel),
                    ports,
                    default_locality,
                    found,
                ),
                Source::Pods,
            ),
            None => (Vec::new(), Source::None),
        }
    };
    eps.sort_by(|a, b| (&a.0, a.1.address).cmp(&(&b.0, b.1.address)));
    let mut groups: Vec<LocalityGroup> = Vec::new();
    for (locality, ep) in eps {
        match groups.last_mut() {
            Some(g) if g.locality == locality => g.endpoints.push(ep),
            _ => groups.push(LocalityGroup {
                locality,
                endpoints: vec![ep],
            }),
        }
    }
    // Exports are held for as long as a peer is connected: no spare capacity.
    for g in &mut groups {
        g.endpoints.shrink_to_fit();
    }
    groups.shrink_to_fit();
    (groups, source)
}

fn node_locality(
    snap: &ClusterSnapshot,
    node: Option<&str>,
    nodes: &mut BTreeSet<String>,
) -> Locality {
    if let Some(n) = node
        && !nodes.contains(n)
    {
        nodes.insert(n.to_owned());
    }
    node.and_then(|n| snap.nodes.get(n))
        .map(|n: &Node| Locality::from_labels(&n.metadata))
        .unwrap_or_default()
}

fn from_slices(
    snap: &ClusterSnapshot,
    slices: &[&EndpointSlice],
    ports: &[ServicePort],
    default_locality: &Locality,
    nodes: &mut BTreeSet<String>,
) -> Vec<(Locality, Endpoint)> {
    // Address -> its index in `out`.
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        let targets: Arc<[PortTarget]> = ports
            .iter()
            .filter_map(|sp| {
                if slice_ports.is_empty() {
                    return Some(PortTarget {
                        port: sp.number,
                        target: sp.target_number().unwrap_or(sp.number),
                    });
                }
                slice_ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or_default() == sp.source_name())
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .map(|target| PortTarget {
                        port: sp.number,
                        target,
                    })
            })
            .collect();
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            // A nil `ready` means unknown, which consumers treat as ready.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true)
                && !cond.and_then(|c| c.terminating).unwrap_or(false);
            if !ready {
                continue;
            }
            let Some(address) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if merge_seen(&mut out, &seen, address, &targets) {
                continue;
            }
            seen.insert(address, out.len());
            let mut locality = node_locality(snap, ep.node_name.as_deref(), nodes);
            if locality.zone.is_empty()
                && let Some(z) = &ep.zone
            {
                locality.zone.clone_from(z);
            }
            let name = ep
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| ep.hostname.clone())
                .unwrap_or_default();
            let (service_account, ambient) = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let ns = r
                        .namespace
                        .as_deref()
                        .or(slice.metadata.namespace.as_deref())?;
                    snap.pods.get(&NsName::new(ns, r.name.as_deref()?))
                })
                .map(workload_of)
                .unwrap_or_default();
            out.push((
                locality.or(default_locality),
                Endpoint {
                    address,
                    name,
                    ports: Arc::clone(&targets),
                    service_account,
                    ambient,
                },
            ));
        }
    }
    out
}

fn from_pods<'p>(
    snap: &ClusterSnapshot,
    pods: impl Iterator<Item = (&'p NsName, &'p Pod)>,
    ports: &[ServicePort],
    default_locality: &Locality,
    found: &mut Found,
) -> Vec<(Locality, Endpoint)> {
    let mut out = Vec::new();
    // Address -> its index in `out`.
    let mut seen = HashMap::new();
    // Pods of one Service nearly always serve the same ports: share them.
    let mut last: Option<Arc<[PortTarget]>> = None;
    for (key, pod) in pods {
        if !pod_ready(pod) {
            continue;
        }
        let Some(address) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let mut targets: Vec<PortTarget> = Vec::with_capacity(ports.len());
        for sp in ports {
            let target = match &sp.target {
                None => Some(sp.number),
                Some(TargetPort::Number(n)) => Some(*n),
                Some(TargetPort::Named(name)) => {
                    let t = container_port(pod, name);
                    if t.is_none() {
                        // G10: as Kubernetes does, the Pod is no endpoint
                        // of this port.
                        found
                            .unresolved
                            .entry(sp.name.clone())
                            .or_insert_with(|| (sp.number, name.clone(), Vec::new()))
                            .2
                            .push(key.name.clone());
                    }
                    t
                }
            };
            if let Some(target) = target {
                targets.push(PortTarget {
                    port: sp.number,
                    target,
                });
            }
        }
        if targets.is_empty() {
            continue;
        }
        if merge_seen(&mut out, &seen, address, &targets) {
            continue;
        }
        seen.insert(address, out.len());
        let targets = match &last {
            Some(prev) if **prev == *targets => Arc::clone(prev),
            _ => {
                let t: Arc<[PortTarget]> = targets.into();
                last = Some(Arc::clone(&t));
                t
            }
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let locality = node_locality(snap, node, &mut found.nodes)
            .or(&Locality::from_labels(&pod.metadata))
            .or(default_locality);
        let (service_account, ambient) = workload_of(pod);
        out.push((
            locality,
            Endpoint {
                address,
                name: key.name.clone(),
                ports: targets,
                service_account,
                ambient,
            },
        ));
    }
    out
}

/// When `address` is already an endpoint (EndpointSlices may list one
/// address twice while they are rebalanced; host-network pods of one node
/// share the node's address), adds the service ports it serves here that
/// the first entry lacks, and says so. The first entry's name, locality and
/// targets are kept.
fn merge_seen(
    out: &mut [(Locality, Endpoint)],
    seen: &HashMap<IpAddr, usize>,
    address: IpAddr,
    targets: &[PortTarget],
) -> bool {
    let Some(&i) = seen.get(&address) else {
        return false;
    };
    let ep = &mut out[i].1;
    let missing: Vec<PortTarget> = targets
        .iter()
        .filter(|t| ep.target(t.port).is_none())
        .copied()
        .collect();
    if !missing.is_empty() {
        let mut all: Vec<PortTarget> = ep.ports.iter().copied().chain(missing).collect();
        all.sort_by_key(|t| t.port);
        ep.ports = all.into();
    }
    true
}

/// Ready = the Ready condition is True, the pod has an IP, it is not being
/// deleted and has not finished.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return false;
    }
    status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locality_strings() {
        assert_eq!(
            Locality::new("us-east", "us-east-1").to_istio(),
            "us-east/us-east-1"
        );
        assert_eq!(Locality::new("us-east", "").to_istio(), "us-east");
        assert_eq!(Locality::new("", "z").to_istio(), "/z");
        assert_eq!(Locality::default().to_istio(), "");
    }
}
