//! User-written ServiceEntries the data plane honours (D4), as in the
//! gateway-connected multicluster setup of seed 003: hosts such as
//! `httpbin.bar.global`, a virtual address, and endpoints at a remote
//! gateway.
//!
//! They never change a name or an address meshpeer owns (P4): a host under
//! `mesh.internal` or a domain of this cluster's Segments, or equal to a
//! global hostname or a taken-over `svc.cluster.local` name, is ignored, and
//! so is an address in the VIP range; each with a diagnostic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::catalog::GlobalService;
use crate::cluster::ClusterSnapshot;
use crate::diag::{Diagnostic, ObjectRef, Rule, Severity};
use crate::labels;
use crate::objects::{NsName, is_managed};
use crate::ports::{ServicePort, protocol_of};
use crate::segments::SegmentDef;
use crate::vip::Cidr;

/// One endpoint of a manual entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualEndpoint {
    /// IP address or host name.
    pub address: String,
    /// Port name (of the entry's ports) -> port on this endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl ManualEndpoint {
    /// The endpoint port for one of the entry's ports (its own number when
    /// the endpoint does not map it).
    pub fn target(&self, port: &ServicePort) -> u16 {
        self.ports.get(&port.name).copied().unwrap_or(port.number)
    }
}

/// A user-written ServiceEntry with an address, ports and endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualEntry {
    pub name: NsName,
    pub hosts: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<ManualEndpoint>,
}

/// Whether `name` is `domain` or a name below it (label-wise, ASCII
/// case-insensitive; a trailing dot on either is ignored).
pub fn is_in_domain(name: &str, domain: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return false;
    }
    if name.eq_ignore_ascii_case(domain) {
        return true;
    }
    let Some(dot) = name.len().checked_sub(domain.len() + 1) else {
        return false;
    };
    name.as_bytes().get(dot) == Some(&b'.')
        && name
            .get(dot + 1..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(domain))
}

/// What meshpeer owns in a cluster, which manual entries may not claim (P4).
#[derive(Debug)]
pub(crate) struct Owned<'a> {
    /// `mesh.internal`, then this cluster's Segment definitions (name, domain).
    domains: Vec<(Option<&'a str>, &'a str)>,
    /// Global hostnames and taken-over local names -> the service they name.
    names: &'a dyn OwnedNames,
    vip_range: &'a Cidr,
}

/// The names global services own, looked up one at a time.
pub(crate) trait OwnedNames: std::fmt::Debug {
    /// The service (namespace, name) whose global hostname `host` is, or
    /// (`true`) whose taken-over cluster-local name it is.
    fn owner(&self, host: &str) -> Option<(String, String, bool)>;
}

/// The names of a list of global services (the from-scratch catalog's).
#[derive(Debug)]
pub(crate) struct ServiceNames<'a>(BTreeMap<&'a str, (&'a str, &'a str, bool)>);

impl<'a> ServiceNames<'a> {
    pub(crate) fn new(services: &'a [GlobalService]) -> Self {
        let mut names = BTreeMap::new();
        for s in services {
            let owner = (s.namespace.as_str(), s.name.as_str());
            names.insert(s.hostname.as_str(), (owner.0, owner.1, false));
            if let Some(t) = &s.takeover {
                names.insert(t.hostname.as_str(), (owner.0, owner.1, true));
            }
        }
        ServiceNames(names)
    }
}

impl OwnedNames for ServiceNames<'_> {
    fn owner(&self, host: &str) -> Option<(String, String, bool)> {
        self.0
            .get(host)
            .map(|(ns, n, t)| ((*ns).to_owned(), (*n).to_owned(), *t))
    }
}

impl<'a> Owned<'a> {
    pub(crate) fn new(
        segments: &'a [SegmentDef],
        names: &'a dyn OwnedNames,
        vip_range: &'a Cidr,
    ) -> Self {
        let mut domains = vec![(None, labels::DEFAULT_DOMAIN)];
        domains.extend(
            segments
                .iter()
                .map(|s| (Some(s.name.as_str()), s.domain.as_str())),
        );
        Owned {
            domains,
            names,
            vip_range,
        }
    }

    /// Why `host` (lower-case) is meshpeer's, if it is.
    fn claims(&self, host: &str) -> Option<String> {
        let bare = host.strip_suffix('.').unwrap_or(host);
        if let Some((ns, name, takeover)) = self.names.owner(bare) {
            return Some(if takeover {
                format!(
                    "it is the cluster-local name of service {ns}/{name}, taken over by its global service (K1)"
                )
            } else {
                format!("it is the hostname of the global service {ns}/{name}")
            });
        }
        self.domains
            .iter()
            .find(|(_, d)| is_in_domain(bare, d))
            .map(|(segment, d)| match segment {
                None => format!("it is under {d}, the domain of meshpeer's global services"),
                Some(s) => format!(
                    "it is under {d}, the domain of Segment {s}, whose names are meshpeer's"
                ),
            })
    }
}

/// The usable manual entries of a cluster, in (namespace, name) order.
pub(crate) fn manual_entries(
    snap: &ClusterSnapshot,
    owned: &Owned<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<ManualEntry> {
    let mut out = Vec::new();
    for (key, se) in &snap.service_entries {
        if is_managed(&se.metadata) {
            continue;
        }
        let obj = ObjectRef::namespaced("serviceentry", &key.namespace, &key.name);
        let mut p4 = Vec::new();
        let mut refuse = |field: String, msg: String| {
            p4.push(
                Diagnostic::new(
                    &snap.config.name,
                    Rule::P4,
                    Severity::Warning,
                    obj.clone(),
                    msg,
                )
                .with_field(field),
            );
        };
        let mut hosts = Vec::new();
        for (i, h) in se.spec.hosts.iter().enumerate() {
            let host = h.to_ascii_lowercase();
            match owned.claims(&host) {
                Some(why) => refuse(
                    format!("spec.hosts[{i}]"),
                    format!(
                        "spec.hosts[{i}] {h:?} is ignored: {why}; a ServiceEntry may not change a name meshpeer owns (global services win)"
                    ),
                ),
                None => hosts.push(host),
            }
        }
        let parsed: Vec<(usize, IpAddr)> = se
            .spec
            .addresses
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Some((i, a.parse().ok()?)))
            .collect();
        let mut addresses = Vec::new();
        for (i, a) in &parsed {
            if owned.vip_range.contains(*a) {
                refuse(
                    format!("spec.addresses[{i}]"),
                    format!(
                        "spec.addresses[{i}] {a} is ignored: it is in the VIP range {} that meshpeer gives global services their addresses from",
                        owned.vip_range
                    ),
                );
            } else {
                addresses.push(*a);
            }
        }
        let unusable = if hosts.is_empty() && !se.spec.hosts.is_empty() {
            Some("no host is left")
        } else if addresses.is_empty() && !parsed.is_empty() {
            Some("no address is left")
        } else {
            None
        };
        if let Some(what) = unusable {
            refuse(
                "spec".into(),
                format!("{what} once meshpeer's are ignored; the entry is not used"),
            );
        }
        diags.append(&mut p4);
        if unusable.is_some() {
            continue;
        }
        let mut report = |msg: String| {
            diags.push(Diagnostic::new(
                &snap.config.name,
                Rule::D4,
                Severity::Warning,
                obj.clone(),
                msg,
            ));
        };
        if addresses.is_empty() {
            report("spec.addresses has no IP address; the data plane cannot capture connections to this entry's hosts".into());
            continue;
        }
        let mut ports = Vec::new();
        for p in &se.spec.ports {
            match u16::try_from(p.number).ok().filter(|n| *n != 0) {
                Some(n) => ports.push(ServicePort::new(
                    &p.name,
                    n,
                    p.protocol
                        .as_deref()
                        .unwrap_or_else(|| protocol_of(None, &p.name)),
                )),
                None => report(format!(
                    "port {} is not a port number; it is left out",
                    p.number
                )),
            }
        }
        if ports.is_empty() {
            report("spec.ports is empty; there is nothing to capture".into());
            continue;
        }
        let mut endpoints = Vec::new();
        for e in &se.spec.endpoints {
            let Some(address) = e.address.clone() else {
                report("an endpoint without address is left out (only addressed endpoints are reached)".into());
                continue;
            };
            let mut eports = BTreeMap::new();
            for (name, n) in &e.ports {
                match u16::try_from(*n).ok().filter(|n| *n != 0) {
                    Some(n) => {
                        eports.insert(name.clone(), n);
                    }
                    None => report(format!(
                        "endpoint {address}: port {name}={n} is not a port number"
                    )),
                }
            }
            endpoints.push(ManualEndpoint {
                address,
                ports: eports,
                network: e.network.clone(),
            });
        }
        if endpoints.is_empty() {
            report("no usable endpoint; connections to it will fail".into());
        }
        out.push(ManualEntry {
            name: key.clone(),
            hosts,
            addresses,
            ports,
            endpoints,
        });
    }
    out
}
