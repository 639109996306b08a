//! The kinds of object a sink writes: ServiceEntries always, WorkloadEntries
//! for upstream Istio (`--istio-flavor upstream`). Both are namespaced Istio
//! resources whose managed copies carry meshpeer's managed-by label; the
//! sinks handle them with the same code.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshpeer_model::Object;
use meshpeer_model::objects::{ServiceEntry, WorkloadEntry};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One kind of object meshpeer generates.
pub trait Generated:
    k8s_openapi::Resource<Scope = NamespaceResourceScope>
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Clone
    + PartialEq
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The same object with `metadata` in place of its own.
    fn with_metadata(&self, metadata: ObjectMeta) -> Self;

    /// The object of this kind in a parsed document.
    fn from_object(o: Object) -> Option<Self>;
}

impl Generated for ServiceEntry {
    fn with_metadata(&self, metadata: ObjectMeta) -> Self {
        ServiceEntry {
            metadata,
            spec: self.spec.clone(),
        }
    }

    fn from_object(o: Object) -> Option<Self> {
        match o {
            Object::ServiceEntry(se) => Some(se),
            _ => None,
        }
    }
}

impl Generated for WorkloadEntry {
    fn with_metadata(&self, metadata: ObjectMeta) -> Self {
        WorkloadEntry {
            metadata,
            spec: self.spec.clone(),
        }
    }

    fn from_object(o: Object) -> Option<Self> {
        match o {
            Object::WorkloadEntry(we) => Some(we),
            _ => None,
        }
    }
}
