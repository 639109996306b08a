//! East-west gateways: a cluster's own (C2) and its links to other clusters,
//! the remote-peer Gateways (C3, C4).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSnapshot;
use crate::diag::{Diagnostic, ObjectRef, Rule, Severity};
use crate::endpoints::Locality;
use crate::labels;
use crate::objects::{Gateway, GatewayAddress, NsName, annotation, label};
use crate::validate;

/// A link from this cluster to another: this cluster's control plane connects
/// to the peer and its workloads may send to it (C4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerLink {
    /// The peer cluster's name (from `istio-remote-peer-<cluster>`).
    pub cluster: String,
    /// The Gateway object that declares the link.
    pub gateway: NsName,
    /// The peer's network (label `topology.istio.io/network`; default: its name).
    pub network: String,
    /// The trust domain expected from the peer (C1).
    pub trust_domain: String,
    /// The peer gateway's service account, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Addresses of the peer's east-west gateway.
    pub addresses: Vec<GatewayAddress>,
    /// HBONE port (listener `cross-network`, default 15008).
    pub hbone_port: u16,
    /// Control-plane port (listener `xds-tls`, default 15012).
    pub xds_port: u16,
    #[serde(default, skip_serializing_if = "Locality::is_empty")]
    pub locality: Locality,
    /// The segment the peer must be in (P3): label `admin.solo.io/segment`
    /// on the remote-peer Gateway. `None`: not pinned (the peer's claim is
    /// trusted); `Some("")`: the default segment; `Some(name)`: that Segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

impl PeerLink {
    /// The pinned segment as a peer would claim it (`None`: the default
    /// segment); `None` when the link is not pinned.
    pub fn pinned_segment(&self) -> Option<Option<&str>> {
        self.segment
            .as_deref()
            .map(|s| if s.is_empty() { None } else { Some(s) })
    }
}

/// How a segment (`None`: the default one) is named in messages.
pub fn segment_display(segment: Option<&str>) -> String {
    match segment {
        Some(s) => format!("segment {s}"),
        None => "the default segment".to_owned(),
    }
}

/// This cluster's own east-west gateway (C2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EastWestGateway {
    pub gateway: NsName,
    /// `status.addresses`: present once the gateway is programmed.
    pub addresses: Vec<GatewayAddress>,
    pub hbone_port: u16,
    pub xds_port: u16,
}

impl EastWestGateway {
    /// Programmed = has an address (C2).
    pub fn programmed(&self) -> bool {
        !self.addresses.is_empty()
    }
}

/// Port of a named listener; the standard port when the listener is missing.
pub fn listener_port(gw: &Gateway, name: &str, default: u16) -> u16 {
    gw.spec
        .listeners
        .iter()
        .find(|l| l.name == name)
        .and_then(|l| u16::try_from(l.port).ok())
        .filter(|p| *p != 0)
        .unwrap_or(default)
}

fn check_address(a: &GatewayAddress) -> Result<(), String> {
    match a.kind() {
        "IPAddress" => a
            .value
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("{:?} is not an IP address", a.value)),
        "Hostname" => validate::dns_domain(&a.value)
            .map_err(|why| format!("{:?} is not a hostname: {why}", a.value)),
        other => Err(format!(
            "address type {other:?} is not supported; use IPAddress or Hostname"
        )),
    }
}

/// The links a cluster declares (its remote-peer Gateways), as the catalog
/// holds them; diagnostics about them are part of the cluster's export.
pub fn declared(snap: &ClusterSnapshot, network_of_self: &str) -> Vec<PeerLink> {
    peer_links(snap, network_of_self, &mut Vec::new())
}

/// The links this cluster declares, one per peer cluster, sorted by cluster.
pub(crate) fn peer_links(
    snap: &ClusterSnapshot,
    network_of_self: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<PeerLink> {
    let me = &snap.config.name;
    let mut out: Vec<PeerLink> = Vec::new();
    for (key, gw) in &snap.gateways {
        if gw.spec.gateway_class_name != labels::REMOTE_CLASS {
            continue;
        }
        let obj = ObjectRef::namespaced("gateway", &key.namespace, &key.name);
        let mut report = |sev: Severity, msg: String| {
            diags.push(Diagnostic::new(me, Rule::C3, sev, obj.clone(), msg));
        };
        let Some(cluster) = key.name.strip_prefix(labels::PEER_GATEWAY_PREFIX) else {
            report(
                Severity::Error,
                format!(
                    "a gateway of class {} must be named {}<cluster>; this link is ignored",
                    labels::REMOTE_CLASS,
                    labels::PEER_GATEWAY_PREFIX
                ),
            );
            continue;
        };
        if let Err(why) = validate::dns_label(cluster) {
            report(
                Severity::Error,
                format!(
                    "cluster name {cluster:?} in the gateway name is not valid: {why}; this link is ignored"
                ),
            );
            continue;
        }
        if cluster == me {
            report(
                Severity::Error,
                "points at this cluster itself; a cluster does not peer with itself; this link is ignored".into(),
            );
            continue;
        }
        if let Some(prev) = out.iter().find(|l| l.cluster == cluster) {
            report(
                Severity::Error,
                format!(
                    "cluster {cluster} is already linked by gateway {}; only that one is used",
                    prev.gateway
                ),
            );
            continue;
        }
        let mut addresses = Vec::new();
        for a in &gw.spec.addresses {
            match check_address(a) {
                Ok(()) => addresses.push(a.clone()),
                Err(why) => report(
                    Severity::Error,
                    format!("spec.addresses: {why}; the address is ignored"),
                ),
            }
        }
        if addresses.is_empty() {
            report(
                Severity::Error,
                format!(
                    "spec.addresses has no usable address of cluster {cluster}'s east-west gateway; the peer cannot be reached"
                ),
            );
        }
        let network = match label(&gw.metadata, labels::NETWORK) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => {
                report(
                    Severity::Warning,
                    format!(
                        "no label {}; assuming the peer's network is {cluster}",
                        labels::NETWORK
                    ),
                );
                cluster.to_owned()
            }
        };
        if network == network_of_self {
            report(
                Severity::Info,
                format!(
                    "peer {cluster} is in this cluster's network {network}: its endpoints are reached directly (flat network)"
                ),
            );
        }
        let trust_domain = match annotation(&gw.metadata, labels::TRUST_DOMAIN) {
            Some(td) => match validate::trust_domain(td) {
                Ok(()) => td.to_owned(),
                Err(why) => {
                    report(
                        Severity::Error,
                        format!(
                            "annotation {} {td:?} is not a trust domain: {why}; expecting {cluster}",
                            labels::TRUST_DOMAIN
                        ),
                    );
                    cluster.to_owned()
                }
            },
            None => cluster.to_owned(),
        };
        // P3: a pin the operator wrote; an unusable one pins to a segment
        // no peer can claim, so the link refuses rather than trusts.
        let segment = label(&gw.metadata, labels::SEGMENT).map(|pin| {
            if let Err(why) = validate::label_value(pin) {
                diags.push(
                    Diagnostic::new(
                        me,
                        Rule::P3,
                        Severity::Error,
                        obj.clone(),
                        format!(
                            "label {}={pin:?} is not a segment name: {why}; the peer's claims are refused until it is fixed",
                            labels::SEGMENT
                        ),
                    )
                    .with_field(format!("metadata.labels[{}]", labels::SEGMENT)),
                );
            }
            pin.to_owned()
        });
        out.push(PeerLink {
            cluster: cluster.to_owned(),
            gateway: key.clone(),
            network,
            trust_domain,
            service_account: annotation(&gw.metadata, labels::SERVICE_ACCOUNT).map(str::to_owned),
            addresses,
            hbone_port: listener_port(gw, "cross-network", labels::HBONE_PORT),
            xds_port: listener_port(gw, "xds-tls", labels::XDS_PORT),
            locality: Locality {
                region: label(&gw.metadata, labels::REGION)
                    .unwrap_or_default()
                    .to_owned(),
                zone: label(&gw.metadata, labels::ZONE)
                    .unwrap_or_default()
                    .to_owned(),
                subzone: String::new(),
            },
            segment,
        });
    }
    out.sort();
    out
}

/// This cluster's east-west gateway, if any (C2). Reports a network label
/// that disagrees with the cluster's network.
pub(crate) fn eastwest_gateway(
    snap: &ClusterSnapshot,
    network: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<EastWestGateway> {
    let me = &snap.config.name;
    let mut found = snap
        .gateways
        .iter()
        .filter(|(_, gw)| gw.spec.gateway_class_name == labels::EASTWEST_CLASS);
    let (key, gw) = found.next()?;
    for (other, _) in found {
        diags.push(Diagnostic::new(
            me,
            Rule::C2,
            Severity::Warning,
            ObjectRef::namespaced("gateway", &other.namespace, &other.name),
            format!(
                "more than one gateway of class {}; gateway {key} is used",
                labels::EASTWEST_CLASS
            ),
        ));
    }
    let obj = ObjectRef::namespaced("gateway", &key.namespace, &key.name);
    if let Some(n) = label(&gw.metadata, labels::NETWORK)
        && n != network
    {
        diags.push(
            Diagnostic::new(
                me,
                Rule::C2,
                Severity::Warning,
                obj.clone(),
                format!(
                    "label {}={n:?} differs from the cluster's network {network:?} (label on namespace {}); peers will reach this cluster's endpoints under the wrong network",
                    labels::NETWORK,
                    labels::ISTIO_SYSTEM
                ),
            )
            .with_field(format!("metadata.labels[{}]", labels::NETWORK)),
        );
    }
    let addresses = gw
        .status
        .as_ref()
        .map(|s| s.addresses.clone())
        .unwrap_or_default();
    Some(EastWestGateway {
        gateway: key.clone(),
        addresses,
        hbone_port: listener_port(gw, "cross-network", labels::HBONE_PORT),
        xds_port: listener_port(gw, "xds-tls", labels::XDS_PORT),
    })
}
