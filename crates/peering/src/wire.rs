//! An export as named, versioned resources, and back (the wire format of
//! `proto/meshpeer/peering/v1/peering.proto`).
//!
//! Resource names: `cluster` for the exporting cluster itself, and
//! `service/<namespace>/<name>` per exported service. A resource's version is
//! a hash of its encoded body, so unchanged resources are never resent.
//!
//! Decoding is in `decode` (every field a peer sends is checked first:
//! SPEC B1, B2) and `peer_state` (what a client holds, delta by delta).

mod decode;
mod peer_state;

use std::net::IpAddr;
use std::sync::Arc;

use meshpeer_model::{
    ClusterInfo, Export, ExportedService, Locality, Scope, SegmentDef, TrafficDistribution,
};
use prost::Message;

use crate::limits::Limits;
use crate::proto;

pub use peer_state::{Applied, MAX_ACK_REFUSALS, MAX_NAMED_REFUSALS, PeerState, Pending, Refusals};

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

    /// The export these resources describe, everything trusted (this
    /// cluster's own resources, read back); an error names the first
    /// resource that cannot be read.
    pub fn to_export(&self) -> Result<Export, WireError> {
        let limits = Limits::unbounded();
        let mut state = PeerState::default();
        let delta = proto::Delta {
            full_state: true,
            resources: self.resources.values().map(|r| (*r.0).clone()).collect(),
            ..Default::default()
        };
        let applied = state.apply(&delta, &limits)?;
        if let Some(r) = applied.refused.first() {
            return Err(invalid(&r.resource, r.message.clone()));
        }
        Ok(state.export().clone())
    }

    /// The resource named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<proto::Resource>> {
        self.resources.get(name).map(|r| &r.0)
    }

    /// Inserts a resource as received (checked by the caller).
    fn insert_shared(&mut self, r: Shared) {
        self.resources.insert(r.0.name.clone(), r);
    }
}

fn locality_to_proto(l: &Locality) -> Option<proto::Locality> {
    (!l.is_empty()).then(|| proto::Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    })
}

fn segment_to_proto(s: &SegmentDef) -> proto::Segment {
    proto::Segment {
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
                        service_account: e.service_account.clone(),
                        ambient: e.ambient,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
