//! What a peer sends, checked field by field and only then turned into
//! model types (SPEC B1, B2). Counts are checked before anything is
//! decoded, so a resource beyond a cap costs nothing but its refusal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use meshpeer_model::validate::{dns_domain, dns_label, label_value, trust_domain};
use meshpeer_model::{
    ClusterInfo, Endpoint, ExportedService, Locality, LocalityGroup, PortTarget, Scope, SegmentDef,
    ServicePort, TrafficDistribution,
};

use super::{CLUSTER_RESOURCE, WireError, invalid, service_resource_name};
use crate::limits::{Limits, MAX_SHOWN, RefuseReason, RefusedResource, shown};
use crate::proto;

/// Segment definitions a cluster resource may carry.
const MAX_SEGMENT_DEFINITIONS: usize = 1_000;
/// Longest endpoint name (a Pod name: a DNS subdomain).
const MAX_ENDPOINT_NAME: usize = 253;
/// Longest port name (a DNS label and `-<number>`).
const MAX_PORT_NAME: usize = 70;
/// Longest port protocol (`HTTP2`, `MONGO`, ...).
const MAX_PROTOCOL: usize = 16;
/// How much of a peer's value a message repeats.
const IN_MESSAGE: usize = 64;

fn refused(resource: &str, reason: RefuseReason, message: impl Into<String>) -> RefusedResource {
    RefusedResource {
        resource: shown(resource, MAX_SHOWN),
        reason,
        message: message.into(),
    }
}

/// `s` quoted for a message, cut if long.
fn q(s: &str) -> String {
    format!("{:?}", shown(s, IN_MESSAGE))
}

fn locality(l: Option<&proto::Locality>) -> Result<Locality, String> {
    let Some(l) = l else {
        return Ok(Locality::default());
    };
    for (part, v) in [
        ("region", &l.region),
        ("zone", &l.zone),
        ("subzone", &l.subzone),
    ] {
        label_value(v).map_err(|why| format!("locality {part} {} {why}", q(v)))?;
    }
    Ok(Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    })
}

fn segment(s: &proto::Segment) -> Result<SegmentDef, String> {
    if s.name.is_empty() {
        return Err("a segment has no name".into());
    }
    label_value(&s.name).map_err(|why| format!("segment name {} {why}", q(&s.name)))?;
    dns_domain(&s.domain).map_err(|why| format!("segment domain {} {why}", q(&s.domain)))?;
    Ok(SegmentDef {
        name: s.name.clone(),
        domain: s.domain.clone(),
    })
}

/// The peer cluster itself. An unusable one refuses the whole delta: the
/// peer's services cannot be read without it.
pub(crate) fn cluster_from_proto(
    c: &proto::ClusterResource,
) -> Result<(ClusterInfo, Vec<SegmentDef>), WireError> {
    let bad = |m: String| invalid(CLUSTER_RESOURCE, m);
    if c.name.is_empty() || c.network.is_empty() || c.trust_domain.is_empty() {
        return Err(bad("name, network and trust domain are required".into()));
    }
    dns_label(&c.name).map_err(|why| bad(format!("cluster name {} {why}", q(&c.name))))?;
    label_value(&c.network).map_err(|why| bad(format!("network {} {why}", q(&c.network))))?;
    trust_domain(&c.trust_domain)
        .map_err(|why| bad(format!("trust domain {} {why}", q(&c.trust_domain))))?;
    if c.segment_definitions.len() > MAX_SEGMENT_DEFINITIONS {
        return Err(bad(format!(
            "{} segment definitions (at most {MAX_SEGMENT_DEFINITIONS})",
            c.segment_definitions.len()
        )));
    }
    let mut definitions = Vec::with_capacity(c.segment_definitions.len());
    for s in &c.segment_definitions {
        definitions.push(segment(s).map_err(bad)?);
    }
    Ok((
        ClusterInfo {
            name: c.name.clone(),
            network: c.network.clone(),
            trust_domain: c.trust_domain.clone(),
            locality: locality(c.locality.as_ref()).map_err(bad)?,
            segment: c.segment.as_ref().map(segment).transpose().map_err(bad)?,
        },
        definitions,
    ))
}

/// Endpoints a service resource carries, counted without decoding.
pub(crate) fn endpoint_count(s: &proto::ServiceResource) -> usize {
    s.localities.iter().map(|g| g.endpoints.len()).sum()
}

fn port_number(n: u32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn protocol_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_PROTOCOL
        && p.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// A Service's port name (a DNS label) or one meshpeer makes
/// (`<name>-<number>`).
fn port_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_PORT_NAME
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn endpoint_name_ok(n: &str) -> bool {
    n.len() <= MAX_ENDPOINT_NAME
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The hostname the exporter's segment gives a service (S3).
pub(crate) fn expected_hostname(
    name: &str,
    namespace: &str,
    exporter_segment: Option<&SegmentDef>,
) -> String {
    meshpeer_model::segments::hostname(name, namespace, exporter_segment)
}

/// A service resource, checked against `limits` (counts first) and the
/// exporter's segment; refused on its own when anything is wrong.
pub(crate) fn service_from_proto(
    resource: &str,
    s: &proto::ServiceResource,
    exporter_segment: Option<&SegmentDef>,
    limits: &Limits,
) -> Result<ExportedService, RefusedResource> {
    let no = |reason, message: String| refused(resource, reason, message);
    // B2: counts before anything is decoded.
    if s.ports.len() > limits.max_ports_per_service {
        return Err(no(
            RefuseReason::TooManyPorts,
            format!(
                "{} ports (at most {}, --max-ports-per-service)",
                s.ports.len(),
                limits.max_ports_per_service
            ),
        ));
    }
    let endpoints = endpoint_count(s);
    if endpoints > limits.max_endpoints_per_service {
        return Err(no(
            RefuseReason::TooManyEndpoints,
            format!(
                "{endpoints} endpoints (at most {}, --max-endpoints-per-service)",
                limits.max_endpoints_per_service
            ),
        ));
    }
    // B1: names are DNS-1123 labels (they become object names and paths).
    for (what, v) in [("namespace", &s.namespace), ("name", &s.name)] {
        dns_label(v).map_err(|why| {
            no(
                RefuseReason::InvalidName,
                format!("{what} {} is not a DNS-1123 label: {why}", q(v)),
            )
        })?;
    }
    if resource != service_resource_name(&s.namespace, &s.name) {
        return Err(no(
            RefuseReason::InvalidName,
            "the name does not match the resource's body".into(),
        ));
    }
    // The hostname must be the one the exporter's segment gives (S3): a peer
    // cannot claim names outside its own domain. Whether that domain is the
    // one this cluster gives the segment is decided against local Segments
    // in the catalog (P2).
    let expected = expected_hostname(&s.name, &s.namespace, exporter_segment);
    if s.hostname != expected {
        return Err(no(
            RefuseReason::InvalidHostname,
            format!(
                "hostname {} is not {expected}, the name the peer's segment gives",
                q(&s.hostname)
            ),
        ));
    }
    dns_domain(&s.hostname).map_err(|why| {
        no(
            RefuseReason::InvalidHostname,
            format!("hostname {} {why}", q(&s.hostname)),
        )
    })?;
    let scope = match proto::Scope::try_from(s.scope) {
        Ok(proto::Scope::Global) => Scope::Global,
        Ok(proto::Scope::Segment) => Scope::Segment,
        _ => {
            return Err(no(
                RefuseReason::InvalidField,
                format!("unknown scope {}", s.scope),
            ));
        }
    };
    let traffic_distribution = match proto::TrafficDistribution::try_from(s.traffic_distribution) {
        Ok(proto::TrafficDistribution::Unspecified) => None,
        Ok(proto::TrafficDistribution::PreferNetwork) => Some(TrafficDistribution::PreferNetwork),
        Ok(proto::TrafficDistribution::PreferClose) => Some(TrafficDistribution::PreferClose),
        Ok(proto::TrafficDistribution::PreferRegion) => Some(TrafficDistribution::PreferRegion),
        Ok(proto::TrafficDistribution::Any) => Some(TrafficDistribution::Any),
        Err(_) => {
            return Err(no(
                RefuseReason::InvalidField,
                format!("unknown traffic distribution {}", s.traffic_distribution),
            ));
        }
    };
    let mut ports = Vec::with_capacity(s.ports.len());
    for p in &s.ports {
        let number = port_number(p.number).ok_or_else(|| {
            no(
                RefuseReason::InvalidPort,
                format!("port {} is not in 1-65535", p.number),
            )
        })?;
        if !port_name_ok(&p.name) {
            return Err(no(
                RefuseReason::InvalidPort,
                format!(
                    "port {number}: name {} is not one (1-{MAX_PORT_NAME} letters, digits, '-', '.', '_')",
                    q(&p.name)
                ),
            ));
        }
        if !protocol_ok(&p.protocol) {
            return Err(no(
                RefuseReason::InvalidPort,
                format!("port {number}: protocol {} is not one", q(&p.protocol)),
            ));
        }
        ports.push(ServicePort::new(&p.name, number, &p.protocol));
    }
    let mut localities = Vec::with_capacity(s.localities.len());
    for g in &s.localities {
        let locality =
            locality(g.locality.as_ref()).map_err(|why| no(RefuseReason::InvalidField, why))?;
        let mut endpoints = Vec::with_capacity(g.endpoints.len());
        let mut last: Option<Arc<[PortTarget]>> = None;
        for e in &g.endpoints {
            let address = address(&e.address).ok_or_else(|| {
                no(
                    RefuseReason::InvalidAddress,
                    format!(
                        "endpoint address of {} bytes (4 or 16 expected)",
                        e.address.len()
                    ),
                )
            })?;
            if let Some(special) = limits.address_refused(address) {
                return Err(no(
                    RefuseReason::InvalidAddress,
                    format!("endpoint {address} is {special} (SPEC P5)"),
                ));
            }
            if !endpoint_name_ok(&e.name) {
                return Err(no(
                    RefuseReason::InvalidField,
                    format!(
                        "endpoint {address}: name {} is not a Pod name (at most {MAX_ENDPOINT_NAME} letters, digits, '-', '.', '_')",
                        q(&e.name)
                    ),
                ));
            }
            if !e.service_account.is_empty()
                && let Err(why) = meshpeer_model::validate::dns_domain(&e.service_account)
            {
                return Err(no(
                    RefuseReason::InvalidField,
                    format!(
                        "endpoint {address}: service account {} is not a DNS-1123 subdomain: {why}",
                        q(&e.service_account)
                    ),
                ));
            }
            if e.ports.len() > limits.max_ports_per_service {
                return Err(no(
                    RefuseReason::TooManyPorts,
                    format!(
                        "endpoint {address} serves {} ports (at most {})",
                        e.ports.len(),
                        limits.max_ports_per_service
                    ),
                ));
            }
            let mut targets = Vec::with_capacity(e.ports.len());
            for p in &e.ports {
                match (port_number(p.port), port_number(p.target)) {
                    (Some(port), Some(target)) => targets.push(PortTarget { port, target }),
                    _ => {
                        return Err(no(
                            RefuseReason::InvalidPort,
                            format!(
                                "endpoint {address}: port {} -> {} is not in 1-65535",
                                p.port, p.target
                            ),
                        ));
                    }
                }
            }
            let targets = match &last {
                Some(prev) if **prev == *targets => Arc::clone(prev),
                _ => {
                    let t: Arc<[PortTarget]> = targets.into();
                    last = Some(Arc::clone(&t));
                    t
                }
            };
            endpoints.push(Endpoint {
                address,
                name: e.name.clone(),
                ports: targets,
                service_account: e.service_account.clone(),
                ambient: e.ambient,
            });
        }
        localities.push(LocalityGroup {
            locality,
            endpoints,
        });
    }
    Ok(ExportedService {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        hostname: s.hostname.clone(),
        scope,
        traffic_distribution,
        takeover: s.takeover,
        ports,
        localities,
        cluster_ips: Vec::new(),
    })
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => {
            let mut o = [0u8; 4];
            o.copy_from_slice(bytes);
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(bytes);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}
