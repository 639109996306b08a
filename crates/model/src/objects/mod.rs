//! The Kubernetes objects meshpeer reads: core types from k8s-openapi, and
//! hand-written subsets of the custom resources.

mod custom;
mod httproute;

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

pub use custom::{
    Condition, Gateway, GatewayAddress, GatewaySpec, GatewayStatus, Listener, ListenerTls, Segment,
    SegmentSpec, ServiceEntry, ServiceEntryPort, ServiceEntrySpec, WorkloadEntry,
    WorkloadEntrySpec, WorkloadSelector, is_managed,
};
pub use httproute::{
    BackendRef, HeaderModifier, HttpBackendRef, HttpHeader, HttpPathMatch, HttpRoute,
    HttpRouteFilter, HttpRouteMatch, HttpRouteRule, HttpRouteSpec, HttpRouteStatus,
    HttpRouteTimeouts, HttpValueMatch, ParentRef, PathModifier, RequestMirror, RequestRedirect,
    RouteParentStatus, UrlRewrite,
};

/// The kinds meshpeer reads. Everything else in a manifest folder is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Namespace,
    Node,
    Service,
    Pod,
    EndpointSlice,
    Segment,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    HttpRoute,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Service,
        Kind::Pod,
        Kind::EndpointSlice,
        Kind::Segment,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::HttpRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Segment => "Segment",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::HttpRoute => "HTTPRoute",
        }
    }

    /// API group of the kind (empty for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Service | Kind::Pod => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Segment => "admin.solo.io",
            Kind::Gateway | Kind::HttpRoute => "gateway.networking.k8s.io",
            Kind::ServiceEntry | Kind::WorkloadEntry => "networking.istio.io",
        }
    }

    /// API versions accepted on input.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace | Kind::Node | Kind::Service | Kind::Pod | Kind::EndpointSlice => {
                &["v1"]
            }
            Kind::Segment => &["v1alpha1"],
            Kind::Gateway | Kind::HttpRoute => &["v1", "v1beta1"],
            Kind::ServiceEntry | Kind::WorkloadEntry => &["v1", "v1beta1", "v1alpha3"],
        }
    }

    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    /// Looks a kind up by API group and kind name.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace and name of a namespaced object. Ordered, so maps keyed by it
/// iterate in a deterministic order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NsName {
    pub namespace: String,
    pub name: String,
}

impl NsName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NsName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identity of an object in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of a kind meshpeer reads.
// Objects are transient: parsed, then moved into the snapshot's typed maps.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Service(Service),
    Pod(Pod),
    EndpointSlice(EndpointSlice),
    Segment(Segment),
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    HttpRoute(HttpRoute),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Pod(_) => Kind::Pod,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Segment(_) => Kind::Segment,
            Object::Gateway(_) => Kind::Gateway,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::WorkloadEntry(_) => Kind::WorkloadEntry,
            Object::HttpRoute(_) => Kind::HttpRoute,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Segment(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::WorkloadEntry(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Segment(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::ServiceEntry(o) => &mut o.metadata,
            Object::WorkloadEntry(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        let kind = self.kind();
        ObjectKey {
            kind,
            namespace: if kind.is_namespaced() {
                meta.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The object as JSON, with `apiVersion` and `kind`.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::EndpointSlice(o) => serde_json::to_value(o),
            Object::Segment(o) => serde_json::to_value(o),
            Object::Gateway(o) => serde_json::to_value(o),
            Object::ServiceEntry(o) => serde_json::to_value(o),
            Object::WorkloadEntry(o) => serde_json::to_value(o),
            Object::HttpRoute(o) => serde_json::to_value(o),
        };
        // Serializing these types cannot fail: they hold only strings, numbers,
        // maps and sequences with string keys.
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// Reads a label from object metadata.
pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Reads an annotation from object metadata.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Name of an object (empty when missing; parsing rejects such objects).
pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// Namespace of an object (empty for cluster-scoped objects).
pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}
