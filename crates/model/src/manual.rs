//! User-written ServiceEntries the data plane honours (D4), as in the
//! gateway-connected multicluster setup of seed 003: hosts such as
//! `httpbin.bar.global`, a virtual address, and endpoints at a remote
//! gateway.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSnapshot;
use crate::diag::{Diagnostic, ObjectRef, Rule, Severity};
use crate::objects::{NsName, is_managed};
use crate::ports::{ServicePort, protocol_of};

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

/// The usable manual entries of a cluster, in (namespace, name) order.
pub(crate) fn manual_entries(
    snap: &ClusterSnapshot,
    diags: &mut Vec<Diagnostic>,
) -> Vec<ManualEntry> {
    let mut out = Vec::new();
    for (key, se) in &snap.service_entries {
        if is_managed(&se.metadata) {
            continue;
        }
        let obj = ObjectRef::namespaced("serviceentry", &key.namespace, &key.name);
        let mut report = |msg: String| {
            diags.push(Diagnostic::new(
                &snap.config.name,
                Rule::D4,
                Severity::Warning,
                obj.clone(),
                msg,
            ));
        };
        let addresses: Vec<IpAddr> = se
            .spec
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
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
            hosts: se
                .spec
                .hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            addresses,
            ports,
            endpoints,
        });
    }
    out
}
