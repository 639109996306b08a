//! What a client holds of a peer, and how a delta (in one message or in
//! chunks) changes it: each resource is checked on its own (SPEC B1), the
//! caps are checked on counts before anything is decoded (B2), and only
//! the resources a delta carries are decoded (I1).

use std::sync::Arc;

use meshpeer_model::{Export, NsName};

use super::decode::{cluster_from_proto, endpoint_count, expected_hostname, service_from_proto};
use super::{CLUSTER_RESOURCE, ResourceSet, Shared, WireError, invalid};
use crate::limits::{Limits, MAX_SHOWN, RefuseReason, RefusedResource, shown};
use crate::proto;

/// At most this many refused resources are remembered by name; beyond,
/// they are only counted (until the next full state).
pub const MAX_NAMED_REFUSALS: usize = 10_000;
/// At most this many refusals are listed in one ACK.
pub const MAX_ACK_REFUSALS: usize = 100;

/// The resources of a peer this cluster refused and does not hold (B1,
/// B2), as of the last delta applied. Cloning is O(1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Refusals {
    named: imbl::OrdMap<String, Arc<RefusedResource>>,
    /// Per reason (by [`RefuseReason::index`]): named and unnamed.
    counts: [usize; RefuseReason::ALL.len()],
    /// RefusedResource beyond [`MAX_NAMED_REFUSALS`]: counted, not named.
    unnamed: usize,
}

impl Refusals {
    /// How many resources are refused.
    pub fn len(&self) -> usize {
        self.named.len() + self.unnamed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many resources are refused for `reason`.
    pub fn count(&self, reason: RefuseReason) -> usize {
        self.counts[reason.index()]
    }

    /// RefusedResource resources by name, in name order (at most
    /// [`MAX_NAMED_REFUSALS`] of them).
    pub fn named(&self) -> impl Iterator<Item = &RefusedResource> {
        self.named.values().map(|r| &**r)
    }

    fn add(&mut self, r: RefusedResource) {
        if let Some(old) = self.named.get(&r.resource) {
            self.counts[old.reason.index()] -= 1;
        } else if self.named.len() >= MAX_NAMED_REFUSALS {
            self.counts[r.reason.index()] += 1;
            self.unnamed += 1;
            return;
        }
        self.counts[r.reason.index()] += 1;
        self.named.insert(r.resource.clone(), Arc::new(r));
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.named.remove(name) {
            self.counts[old.reason.index()] -= 1;
        }
    }
}

/// What a delta did beyond applying: the resources it carried that were
/// refused (for the ACK).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// The first [`MAX_ACK_REFUSALS`] refusals of this delta.
    pub refused: Vec<RefusedResource>,
    /// Every refusal of this delta.
    pub refused_total: usize,
    /// Refusals of this delta per reason (by [`RefuseReason::index`]).
    by_reason: [usize; RefuseReason::ALL.len()],
}

impl Applied {
    /// Refusals of this delta for `reason`.
    pub fn count(&self, reason: RefuseReason) -> usize {
        self.by_reason[reason.index()]
    }

    fn refuse(&mut self, r: &RefusedResource) {
        self.refused_total += 1;
        self.by_reason[r.reason.index()] += 1;
        if self.refused.len() < MAX_ACK_REFUSALS {
            self.refused.push(r.clone());
        }
    }

    /// The ACK of `nonce`.
    pub fn ack(&self, nonce: &str) -> proto::Ack {
        proto::Ack {
            nonce: nonce.to_owned(),
            refused: self
                .refused
                .iter()
                .map(|r| proto::Refusal {
                    resource: r.resource.clone(),
                    reason: r.reason.as_str().to_owned(),
                    message: r.message.clone(),
                })
                .collect(),
            refused_total: u32::try_from(self.refused_total).unwrap_or(u32::MAX),
        }
    }
}

/// What a client holds of a peer: the resources it took, the export they
/// make and what it refused, all updated by each delta in proportion to
/// its size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerState {
    resources: ResourceSet,
    export: Export,
    refusals: Refusals,
    /// Endpoints of every service held.
    endpoints: usize,
}

impl PeerState {
    /// The export of the resources taken so far.
    pub fn export(&self) -> &Export {
        &self.export
    }

    pub fn resources(&self) -> &ResourceSet {
        &self.resources
    }

    /// The resources refused, as of the last delta.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Endpoints held, all services together.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }

    /// Applies a delta sent in one message; on error `self` is unchanged.
    pub fn apply(&mut self, delta: &proto::Delta, limits: &Limits) -> Result<Applied, WireError> {
        let mut pending = self.begin(delta);
        pending.add(delta, limits);
        let (next, applied) = pending.finish()?;
        *self = next;
        Ok(applied)
    }

    /// Starts receiving the delta whose first chunk is `first` (add it with
    /// [`Pending::add`]). A full state starts from nothing, a delta from
    /// `self` (an O(1) copy).
    pub fn begin(&self, first: &proto::Delta) -> Pending {
        let next = if first.full_state {
            PeerState::default()
        } else {
            self.clone()
        };
        Pending {
            nonce: first.nonce.clone(),
            version: first.version,
            full_state: first.full_state,
            next,
            cluster_changed: first.full_state,
            applied: Applied::default(),
            error: None,
            chunks: 0,
        }
    }

    fn drop_service(&mut self, name: &str) {
        self.resources.remove(name);
        if let Some(key) = service_key(name)
            && let Some(old) = self.export.services.remove(&key)
        {
            self.endpoints = self.endpoints.saturating_sub(old.endpoint_count());
        }
    }
}

/// `service/<ns>/<name>` as the export's key.
fn service_key(name: &str) -> Option<NsName> {
    let (ns, n) = name.strip_prefix("service/")?.split_once('/')?;
    Some(NsName::new(ns, n))
}

/// A delta being received, chunk by chunk: applied to a copy of the state
/// as chunks arrive (so the caps bound what is held at every step), taken
/// only when the last chunk is in.
#[derive(Debug)]
pub struct Pending {
    nonce: String,
    version: u64,
    full_state: bool,
    next: PeerState,
    cluster_changed: bool,
    applied: Applied,
    /// The first error that refuses the whole delta.
    error: Option<WireError>,
    chunks: usize,
}

impl Pending {
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn full_state(&self) -> bool {
        self.full_state
    }

    /// Chunks added so far.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Services held so far (a full state grows as its chunks arrive).
    pub fn services(&self) -> usize {
        self.next.export.services.len()
    }

    /// Adds one chunk (its `nonce` must be this delta's: the caller checks).
    pub fn add(&mut self, chunk: &proto::Delta, limits: &Limits) {
        self.chunks += 1;
        if self.error.is_some() {
            return;
        }
        // Removals first: they make room under the caps.
        for name in &chunk.removed {
            if name == CLUSTER_RESOURCE {
                self.error = Some(invalid(
                    CLUSTER_RESOURCE,
                    "removed: a peer's state must describe the peer cluster",
                ));
                return;
            }
            self.next.drop_service(name);
            self.next.refusals.remove(name);
        }
        for r in &chunk.resources {
            self.resource(r, limits);
            if self.error.is_some() {
                return;
            }
        }
    }

    fn refuse(&mut self, r: RefusedResource) {
        // A refused update leaves nothing of the older version behind.
        self.next.drop_service(&r.resource);
        self.applied.refuse(&r);
        self.next.refusals.add(r);
    }

    fn resource(&mut self, r: &proto::Resource, limits: &Limits) {
        match &r.body {
            Some(proto::resource::Body::Cluster(c)) if r.name == CLUSTER_RESOURCE => {
                match cluster_from_proto(c) {
                    Ok((cluster, segments)) => {
                        self.next.export.cluster = cluster;
                        self.next.export.segments = segments;
                        self.next
                            .resources
                            .insert_shared(Shared(Arc::new(r.clone())));
                        self.cluster_changed = true;
                    }
                    Err(e) => self.error = Some(e),
                }
            }
            Some(proto::resource::Body::Service(s)) => self.service(r, s, limits),
            Some(proto::resource::Body::Cluster(_)) => self.refuse(RefusedResource {
                resource: shown(&r.name, MAX_SHOWN),
                reason: RefuseReason::InvalidName,
                message: "a cluster body under another name than \"cluster\"".into(),
            }),
            None => self.refuse(RefusedResource {
                resource: shown(&r.name, MAX_SHOWN),
                reason: RefuseReason::InvalidName,
                message: "has no body".into(),
            }),
        }
    }

    fn service(&mut self, r: &proto::Resource, s: &proto::ServiceResource, limits: &Limits) {
        let held = &self.next;
        let key = service_key(&r.name);
        let old = key.as_ref().and_then(|k| held.export.services.get(k));
        // B2: the peer's caps, on counts, before decoding.
        if old.is_none() && held.export.services.len() >= limits.max_services {
            return self.refuse(RefusedResource {
                resource: shown(&r.name, MAX_SHOWN),
                reason: RefuseReason::OverServiceCap,
                message: format!(
                    "the peer already has {} services here (at most {}, --max-peer-services)",
                    held.export.services.len(),
                    limits.max_services
                ),
            });
        }
        let others = held.endpoints - old.map_or(0, |o| o.endpoint_count());
        let count = endpoint_count(s);
        if others.saturating_add(count) > limits.max_endpoints {
            return self.refuse(RefusedResource {
                resource: shown(&r.name, MAX_SHOWN),
                reason: RefuseReason::OverEndpointCap,
                message: format!(
                    "{count} more endpoints would make {} for the peer (at most {}, --max-peer-endpoints)",
                    others.saturating_add(count),
                    limits.max_endpoints
                ),
            });
        }
        let segment = self.next.export.cluster.segment.as_ref();
        match service_from_proto(&r.name, s, segment, limits) {
            Ok(svc) => {
                let next = &mut self.next;
                next.endpoints = others + svc.endpoint_count();
                next.export
                    .services
                    .insert(NsName::new(&svc.namespace, &svc.name), Arc::new(svc));
                next.resources.insert_shared(Shared(Arc::new(r.clone())));
                next.refusals.remove(&r.name);
            }
            Err(refused) => self.refuse(refused),
        }
    }

    /// The state with the whole delta applied, or why none of it is taken.
    pub fn finish(mut self) -> Result<(PeerState, Applied), WireError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.next.resources.get(CLUSTER_RESOURCE).is_none() {
            return Err(invalid(
                CLUSTER_RESOURCE,
                "missing: a peer's state must describe the peer cluster",
            ));
        }
        // The peer's segment decides its services' hostnames: when it
        // changed, the services taken before are checked again (the server
        // sends them all again then, so this only catches a peer that
        // does not).
        let segment = self.next.export.cluster.segment.clone();
        if self.cluster_changed {
            let wrong: Vec<(String, String)> = self
                .next
                .export
                .services
                .values()
                .filter(|svc| {
                    svc.hostname != expected_hostname(&svc.name, &svc.namespace, segment.as_ref())
                })
                .map(|svc| {
                    (
                        super::service_resource_name(&svc.namespace, &svc.name),
                        svc.hostname.clone(),
                    )
                })
                .collect();
            for (name, hostname) in wrong {
                self.refuse(RefusedResource {
                    message: format!(
                        "hostname {hostname} is not the name the peer's segment {} gives",
                        segment.as_ref().map_or("(default)", |s| s.name.as_str())
                    ),
                    resource: name,
                    reason: RefuseReason::InvalidHostname,
                });
            }
        }
        Ok((self.next, self.applied))
    }
}
