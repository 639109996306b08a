//! An export as named, versioned resources, and back (the wire format of
//! `proto/meshpeer/peering/v1/peering.proto`).
//!
//! Resource names: `cluster` for the exporting cluster itself, and
//! `service/<namespace>/<name>` per exported service. A resource's version is
//! a hash of its encoded body, so unchanged resources are never resent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use meshpeer_model::{
    ArcMap, ClusterInfo, Endpoint, Export, ExportedService, Locality, LocalityGroup, NsName,
    PortTarget, Scope, SegmentDef, ServicePort, TrafficDistribution,
};
use prost::Message;

use crate::proto;

/// Name of the resource describing the exporting cluster.
pub const CLUSTER_RESOURCE: &str = "cluster";

/// Name of a service's resource.
pub fn service_resource_name(namespace: &str, name: &str) -> String {
    format!("service/{namespace}/{name}")
}

/// A resource received from a peer that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {resource}: {message}")]
pub struct WireError {
    pub resource: String,
    pub message: String,
}

fn invalid(resource: &str, message: impl Into<String>) -> WireError {
    WireError {
        resource: resource.to_owned(),
        message: message.into(),
    }
}

/// One resource, shared between the versions of a [`ResourceSet`]. Two are
/// equal when they are the same resource or have the same name and version
/// (the version is a hash of the body), so comparing versions never
/// compares bodies.
#[derive(Clone, Debug)]
pub struct Shared(pub Arc<proto::Resource>);

impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.version == other.0.version && self.0.name == other.0.name)
    }
}

/// An export as resources, keyed by name. A persistent map: a clone costs
/// O(1), a new version that changes one resource shares the rest with the
/// previous one, and [`ResourceSet::diff`] visits only what differs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet {
    resources: imbl::OrdMap<String, Shared>,
}

/// What changed between two resource sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    pub changed: Vec<Arc<proto::Resource>>,
    pub removed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

fn version_of(body: &proto::resource::Body) -> String {
    let bytes = match body {
        proto::resource::Body::Cluster(c) => c.encode_to_vec(),
        proto::resource::Body::Service(s) => s.encode_to_vec(),
    };
    // FNV-1a 64: stable, fast; a change of content changes the version.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn resource(name: String, body: proto::resource::Body) -> Arc<proto::Resource> {
    Arc::new(proto::Resource {
        version: version_of(&body),
        name,
        body: Some(body),
    })
}

fn cluster_resource(export: &Export) -> Arc<proto::Resource> {
    resource(
        CLUSTER_RESOURCE.to_owned(),
        proto::resource::Body::Cluster(cluster_to_proto(&export.cluster, &export.segments)),
    )
}

fn service_resource(s: &ExportedService) -> Arc<proto::Resource> {
    resource(
        service_resource_name(&s.namespace, &s.name),
        proto::resource::Body::Service(service_to_proto(s)),
    )
}

/// Whether a resource is a `segment`-scoped service (S7).
fn segment_scoped(r: &proto::Resource) -> bool {
    matches!(&r.body, Some(proto::resource::Body::Service(s)) if s.scope == proto::Scope::Segment as i32)
}

impl ResourceSet {
    /// The resources of an export.
    pub fn from_export(export: &Export) -> Self {
        let mut resources = imbl::OrdMap::new();
        resources.insert(
            CLUSTER_RESOURCE.to_owned(),
            Shared(cluster_resource(export)),
        );
        for s in export.services.values() {
            let r = service_resource(s);
            resources.insert(r.name.clone(), Shared(r));
        }
        ResourceSet { resources }
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// What a peer in segment `peer_segment` may see (S7): segment-scoped
    /// services only go to clusters of the exporter's segment.
    pub fn visible_to(&self, exporter_segment: Option<&str>, peer_segment: Option<&str>) -> Self {
        if exporter_segment == peer_segment {
            return self.clone();
        }
        let resources = self
            .resources
            .iter()
            .filter(|(_, r)| !segment_scoped(&r.0))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ResourceSet { resources }
    }

    /// What to send to bring a client holding `self` to `newer`. Costs what
    /// differs when the two share structure (versions of one publisher).
    pub fn diff(&self, newer: &ResourceSet) -> Diff {
        let mut d = Diff::default();
        for item in self.resources.diff(&newer.resources) {
            match item {
                imbl::ordmap::DiffItem::Add(_, r)
                | imbl::ordmap::DiffItem::Update { new: (_, r), .. } => {
                    d.changed.push(Arc::clone(&r.0))
                }
                imbl::ordmap::DiffItem::Remove(name, _) => d.removed.push(name.clone()),
            }
        }
        d
    }

    /// Says whether the set changed.
    fn insert(&mut self, r: Arc<proto::Resource>) -> bool {
        let r = Shared(r);
        if self.resources.get(&r.0.name) == Some(&r) {
            return false;
        }
        self.resources.insert(r.0.name.clone(), r);
        true
    }

    /// Says whether the set changed.
    fn remove(&mut self, name: &str) -> bool {
        self.resources.remove(name).is_some()
    }

    /// The resources of the export `new`, from those of `old` (which `self`
    /// holds): only what changed is encoded. `global` is kept as the
    /// resources other segments may see (S7). Says whether `self` changed.
    pub fn update(&mut self, global: &mut ResourceSet, old: &Export, new: &Export) -> bool {
        let mut changed = false;
        if old.cluster != new.cluster || old.segments != new.segments || self.is_empty() {
            let r = cluster_resource(new);
            global.insert(Arc::clone(&r));
            changed |= self.insert(r);
        }
        for item in old.services.diff(&new.services) {
            match item {
                imbl::ordmap::DiffItem::Add(_, s)
                | imbl::ordmap::DiffItem::Update { new: (_, s), .. } => {
                    changed |= self.add_service(global, s);
                }
                imbl::ordmap::DiffItem::Remove(_, s) => {
                    let name = service_resource_name(&s.namespace, &s.name);
                    changed |= self.remove(&name);
                    global.remove(&name);
                }
            }
        }
        changed
    }

    fn add_service(&mut self, global: &mut ResourceSet, s: &ExportedService) -> bool {
        let r = service_resource(s);
        if segment_scoped(&r) {
            global.remove(&r.name);
        } else {
            global.insert(Arc::clone(&r));
        }
        self.insert(r)
    }

    /// The export these resources describe.
    pub fn to_export(&self) -> Result<Export, WireError> {
        let (cluster, segments) = self.cluster()?;
        let mut services = ArcMap::new();
        for (name, r) in &self.resources {
            if let Some(proto::resource::Body::Service(s)) = &r.0.body {
                let svc = service_from_proto(name, s, cluster.segment.as_ref())?;
                services.insert(NsName::new(&svc.namespace, &svc.name), Arc::new(svc));
            }
        }
        Ok(Export {
            cluster,
            segments,
            services,
            diagnostics: Vec::new(),
        })
    }

    fn cluster(&self) -> Result<(ClusterInfo, Vec<SegmentDef>), WireError> {
        match self
            .resources
            .get(CLUSTER_RESOURCE)
            .and_then(|r| r.0.body.as_ref())
        {
            Some(proto::resource::Body::Cluster(c)) => cluster_from_proto(c),
            _ => Err(invalid(
                CLUSTER_RESOURCE,
                "missing: a peer's state must describe the peer cluster",
            )),
        }
    }
}

/// What a client holds of a peer: the resources as received and the export
/// they make, both updated by each delta in proportion to its size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerState {
    resources: ResourceSet,
    export: Export,
}

impl PeerState {
    /// The export of the resources received so far.
    pub fn export(&self) -> &Export {
        &self.export
    }

    pub fn resources(&self) -> &ResourceSet {
        &self.resources
    }

    /// Applies a delta; on error `self` is unchanged. A full-state delta
    /// replaces everything. Only the resources in the delta are decoded,
    /// unless the peer's cluster resource changed (its segment decides
    /// which hostnames its services may have), then all are.
    pub fn apply(&mut self, delta: &proto::Delta) -> Result<(), WireError> {
        let mut next = if delta.full_state {
            PeerState::default()
        } else {
            self.clone()
        };
        let mut cluster_changed = delta.full_state;
        for r in &delta.resources {
            check_resource(r)?;
            if r.name == CLUSTER_RESOURCE {
                cluster_changed = true;
            }
            next.resources
                .resources
                .insert(r.name.clone(), Shared(Arc::new(r.clone())));
        }
        for name in &delta.removed {
            if name == CLUSTER_RESOURCE {
                cluster_changed = true;
            }
            next.resources.remove(name);
        }
        if cluster_changed {
            // The whole state must still make an export.
            next.export = next.resources.to_export()?;
        } else {
            let segment = next.export.cluster.segment.clone();
            for r in &delta.resources {
                if let Some(proto::resource::Body::Service(s)) = &r.body {
                    let svc = service_from_proto(&r.name, s, segment.as_ref())?;
                    next.export
                        .services
                        .insert(NsName::new(&svc.namespace, &svc.name), Arc::new(svc));
                }
            }
            for name in &delta.removed {
                if let Some((ns, n)) = name
                    .strip_prefix("service/")
                    .and_then(|rest| rest.split_once('/'))
                {
                    next.export.services.remove(&NsName::new(ns, n));
                }
            }
        }
        *self = next;
        Ok(())
    }
}

fn check_resource(r: &proto::Resource) -> Result<(), WireError> {
    match &r.body {
        Some(proto::resource::Body::Cluster(_)) if r.name == CLUSTER_RESOURCE => Ok(()),
        Some(proto::resource::Body::Service(s))
            if r.name == service_resource_name(&s.namespace, &s.name) =>
        {
            Ok(())
        }
        Some(_) => Err(invalid(
            &r.name,
            "the name does not match the resource's body",
        )),
        None => Err(invalid(&r.name, "has no body")),
    }
}

fn locality_to_proto(l: &Locality) -> Option<proto::Locality> {
    (!l.is_empty()).then(|| proto::Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    })
}

fn locality_from_proto(l: Option<&proto::Locality>) -> Locality {
    l.map(|l| Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    })
    .unwrap_or_default()
}

fn segment_to_proto(s: &SegmentDef) -> proto::Segment {
    proto::Segment {
        name: s.name.clone(),
        domain: s.domain.clone(),
    }
}

fn segment_from_proto(s: &proto::Segment) -> SegmentDef {
    SegmentDef {
        name: s.name.clone(),
        domain: s.domain.clone(),
    }
}

fn cluster_to_proto(c: &ClusterInfo, segments: &[SegmentDef]) -> proto::ClusterResource {
    proto::ClusterResource {
        name: c.name.clone(),
        network: c.network.clone(),
        trust_domain: c.trust_domain.clone(),
        locality: locality_to_proto(&c.locality),
        segment: c.segment.as_ref().map(segment_to_proto),
        segment_definitions: segments.iter().map(segment_to_proto).collect(),
    }
}

fn cluster_from_proto(
    c: &proto::ClusterResource,
) -> Result<(ClusterInfo, Vec<SegmentDef>), WireError> {
    if c.name.is_empty() || c.network.is_empty() || c.trust_domain.is_empty() {
        return Err(invalid(
            CLUSTER_RESOURCE,
            "name, network and trust domain are required",
        ));
    }
    Ok((
        ClusterInfo {
            name: c.name.clone(),
            network: c.network.clone(),
            trust_domain: c.trust_domain.clone(),
            locality: locality_from_proto(c.locality.as_ref()),
            segment: c.segment.as_ref().map(segment_from_proto),
        },
        c.segment_definitions
            .iter()
            .map(segment_from_proto)
            .collect(),
    ))
}

fn distribution_to_proto(d: Option<TrafficDistribution>) -> proto::TrafficDistribution {
    match d {
        None => proto::TrafficDistribution::Unspecified,
        Some(TrafficDistribution::PreferNetwork) => proto::TrafficDistribution::PreferNetwork,
        Some(TrafficDistribution::PreferClose) => proto::TrafficDistribution::PreferClose,
        Some(TrafficDistribution::PreferRegion) => proto::TrafficDistribution::PreferRegion,
        Some(TrafficDistribution::Any) => proto::TrafficDistribution::Any,
    }
}

fn service_to_proto(s: &ExportedService) -> proto::ServiceResource {
    proto::ServiceResource {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        hostname: s.hostname.clone(),
        scope: match s.scope {
            Scope::Global => proto::Scope::Global,
            Scope::Segment => proto::Scope::Segment,
        } as i32,
        traffic_distribution: distribution_to_proto(s.traffic_distribution) as i32,
        takeover: s.takeover,
        ports: s
            .ports
            .iter()
            .map(|p| proto::Port {
                name: p.name.clone(),
                number: u32::from(p.number),
                protocol: p.protocol.clone(),
            })
            .collect(),
        localities: s
            .localities
            .iter()
            .map(|g| proto::LocalityGroup {
                locality: locality_to_proto(&g.locality),
                endpoints: g
                    .endpoints
                    .iter()
                    .map(|e| proto::Endpoint {
                        address: match e.address {
                            IpAddr::V4(a) => a.octets().to_vec(),
                            IpAddr::V6(a) => a.octets().to_vec(),
                        },
                        name: e.name.clone(),
                        ports: e
                            .ports
                            .iter()
                            .map(|p| proto::PortTarget {
                                port: u32::from(p.port),
                                target: u32::from(p.target),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn port_number(resource: &str, what: &str, n: u32) -> Result<u16, WireError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(resource, format!("{what} {n} is not a port number")))
}

fn service_from_proto(
    resource: &str,
    s: &proto::ServiceResource,
    exporter_segment: Option<&SegmentDef>,
) -> Result<ExportedService, WireError> {
    let scope = match proto::Scope::try_from(s.scope) {
        Ok(proto::Scope::Global) => Scope::Global,
        Ok(proto::Scope::Segment) => Scope::Segment,
        _ => return Err(invalid(resource, format!("unknown scope {}", s.scope))),
    };
    let traffic_distribution = match proto::TrafficDistribution::try_from(s.traffic_distribution) {
        Ok(proto::TrafficDistribution::Unspecified) => None,
        Ok(proto::TrafficDistribution::PreferNetwork) => Some(TrafficDistribution::PreferNetwork),
        Ok(proto::TrafficDistribution::PreferClose) => Some(TrafficDistribution::PreferClose),
        Ok(proto::TrafficDistribution::PreferRegion) => Some(TrafficDistribution::PreferRegion),
        Ok(proto::TrafficDistribution::Any) => Some(TrafficDistribution::Any),
        Err(_) => {
            return Err(invalid(
                resource,
                format!("unknown traffic distribution {}", s.traffic_distribution),
            ));
        }
    };
    // The hostname must be the one the exporter's segment gives (S3): a peer
    // cannot claim names outside its own domain. This only checks that the
    // peer is consistent; whether that domain is the one this cluster gives
    // the segment is decided against local Segments in the catalog (P2).
    let expected = meshpeer_model::segments::hostname(&s.name, &s.namespace, exporter_segment);
    if s.hostname != expected {
        return Err(invalid(
            resource,
            format!(
                "hostname {} is not {expected}, the name the peer's segment gives",
                s.hostname
            ),
        ));
    }
    let mut ports = Vec::with_capacity(s.ports.len());
    for p in &s.ports {
        ports.push(ServicePort::new(
            &p.name,
            port_number(resource, "port", p.number)?,
            &p.protocol,
        ));
    }
    let mut localities = Vec::with_capacity(s.localities.len());
    for g in &s.localities {
        let mut endpoints = Vec::with_capacity(g.endpoints.len());
        let mut last: Option<Arc<[PortTarget]>> = None;
        for e in &g.endpoints {
            let address = match e.address.len() {
                4 => {
                    let mut o = [0u8; 4];
                    o.copy_from_slice(&e.address);
                    IpAddr::V4(Ipv4Addr::from(o))
                }
                16 => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&e.address);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
                n => {
                    return Err(invalid(
                        resource,
                        format!("endpoint address of {n} bytes (4 or 16 expected)"),
                    ));
                }
            };
            let mut targets = Vec::with_capacity(e.ports.len());
            for p in &e.ports {
                targets.push(PortTarget {
                    port: port_number(resource, "endpoint port", p.port)?,
                    target: port_number(resource, "endpoint target port", p.target)?,
                });
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
            });
        }
        localities.push(LocalityGroup {
            locality: locality_from_proto(g.locality.as_ref()),
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

#[cfg(test)]
mod tests {
    use meshpeer_model::exports;
    use meshpeer_model::testing::{ClusterBuilder, svc};

    use super::*;

    fn sample() -> Export {
        let snap = ClusterBuilder::new("cluster2")
            .locality("us-west", "us-west-1")
            .segment("dev", "cluster.dev")
            .join("dev")
            .service(
                svc("httpbin", "in-ambient")
                    .global()
                    .ready(2)
                    .distribution("Any"),
            )
            .service(
                svc("httpbin", "private")
                    .scope("segment")
                    .ready(1)
                    .takeover("true"),
            )
            .build();
        exports(&snap)
    }

    /// What a peer can rebuild: the export without local-only fields.
    fn wire_view(e: &Export) -> Export {
        let mut e = e.clone();
        e.diagnostics.clear();
        e.services = e
            .services
            .iter()
            .map(|(k, s)| {
                let mut s = (**s).clone();
                s.cluster_ips.clear();
                (k.clone(), Arc::new(s))
            })
            .collect();
        e
    }

    #[test]
    fn exports_round_trip_through_resources() {
        let e = sample();
        let back = ResourceSet::from_export(&e).to_export().unwrap();
        assert_eq!(back, wire_view(&e));
    }

    #[test]
    fn diff_sends_only_what_changed_and_removes_explicitly() {
        let a = ResourceSet::from_export(&sample());
        assert!(a.diff(&a).is_empty());
        let mut e = sample();
        e.services.remove(&NsName::new("httpbin", "private"));
        let b = ResourceSet::from_export(&e);
        let d = a.diff(&b);
        assert!(d.changed.is_empty());
        assert_eq!(d.removed, ["service/httpbin/private"]);
        let full = ResourceSet::default().diff(&a);
        assert_eq!(full.changed.len(), 3);
    }

    #[test]
    fn s7_segment_scoped_resources_are_not_sent_to_other_segments() {
        let a = ResourceSet::from_export(&sample());
        assert_eq!(a.visible_to(Some("dev"), Some("dev")).len(), 3);
        assert_eq!(a.visible_to(Some("dev"), Some("prod")).len(), 2);
        assert_eq!(a.visible_to(Some("dev"), None).len(), 2);
    }

    fn full(set: &ResourceSet, nonce: &str) -> proto::Delta {
        proto::Delta {
            nonce: nonce.into(),
            version: 1,
            full_state: true,
            resources: set.resources.values().map(|r| (*r.0).clone()).collect(),
            removed: vec![],
        }
    }

    #[test]
    fn a_peer_state_follows_deltas_and_decodes_only_what_they_carry() {
        let e = sample();
        let mut state = PeerState::default();
        state
            .apply(&full(&ResourceSet::from_export(&e), "1"))
            .unwrap();
        assert_eq!(state.export(), &wire_view(&e));
        // A publisher's next version, as deltas from the last.
        let mut all = ResourceSet::from_export(&e);
        let mut global = all.visible_to(Some("dev"), None);
        let mut next = e.clone();
        next.services.remove(&NsName::new("httpbin", "private"));
        let before = all.clone();
        assert!(all.update(&mut global, &e, &next));
        let d = before.diff(&all);
        assert_eq!(d.removed, ["service/httpbin/private"]);
        let before_export = state.export().services.clone();
        state
            .apply(&proto::Delta {
                nonce: "2".into(),
                version: 2,
                full_state: false,
                resources: d.changed.iter().map(|r| (**r).clone()).collect(),
                removed: d.removed,
            })
            .unwrap();
        assert_eq!(state.export(), &wire_view(&next));
        // The untouched service is the same shared value as before.
        let key = NsName::new("httpbin", "in-ambient");
        assert!(Arc::ptr_eq(
            &before_export[&key],
            &state.export().services[&key]
        ));
        // Publishing the same export again changes nothing.
        assert!(!all.update(&mut global, &next, &next));
        assert_eq!(global.len(), 2);
    }

    #[test]
    fn bad_resources_are_rejected_and_leave_the_state_unchanged() {
        let good_set = ResourceSet::from_export(&sample());
        let mut good = PeerState::default();
        good.apply(&full(&good_set, "0")).unwrap();
        let mut state = good.clone();
        let mut bad = (*good_set.resources["service/httpbin/in-ambient"].0).clone();
        if let Some(proto::resource::Body::Service(s)) = &mut bad.body {
            s.hostname = "in-ambient.httpbin.mesh.internal".into();
        }
        let delta = proto::Delta {
            nonce: "1".into(),
            version: 2,
            full_state: false,
            resources: vec![bad],
            removed: vec![],
        };
        let err = state.apply(&delta).unwrap_err();
        assert!(
            err.message.contains("the name the peer's segment gives"),
            "{err}"
        );
        assert_eq!(state, good);
        // A full state without the cluster resource is rejected too.
        let delta = proto::Delta {
            nonce: "2".into(),
            version: 3,
            full_state: true,
            resources: vec![],
            removed: vec![],
        };
        assert!(state.apply(&delta).is_err());
        assert_eq!(state, good);
    }
}
