//! Hand-written subsets of the custom resources meshpeer reads and writes:
//! `Segment` (admin.solo.io), Gateway API `Gateway`, Istio `ServiceEntry` and
//! `WorkloadEntry`. Unknown fields are ignored on input (a real Gateway has
//! many we do not use); every optional field is skipped when empty on output,
//! so server-side apply never sends `null`s or claims fields we do not set.
//!
//! They implement k8s-openapi's `Resource`/`Metadata`, which is all kube-rs
//! needs to use them with `Api<K>`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};

macro_rules! resource {
    ($ty:ident, $group:literal, $version:literal, $kind:literal, $plural:literal, status = $status:tt) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = concat!($group, "/", $version);
            const GROUP: &'static str = $group;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::ListableResource for $ty {
            const LIST_KIND: &'static str = concat!($kind, "List");
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut st = s.serialize_struct($kind, 5)?;
                st.serialize_field(
                    "apiVersion",
                    <$ty as k8s_openapi::Resource>::API_VERSION,
                )?;
                st.serialize_field("kind", $kind)?;
                st.serialize_field("metadata", &self.metadata)?;
                st.serialize_field("spec", &self.spec)?;
                resource!(@status self, st, $status);
                st.end()
            }
        }
    };
    (@status $self:ident, $st:ident, true) => {
        if let Some(status) = &$self.status {
            $st.serialize_field("status", status)?;
        }
    };
    (@status $self:ident, $st:ident, false) => {};
}

// ---------------------------------------------------------------- Segment

/// `admin.solo.io/v1alpha1` Segment (S1): a named DNS domain for the global
/// services of the clusters that join it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Segment {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: SegmentSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentSpec {
    /// DNS suffix of the segment's global hostnames, e.g. `cluster.dev`.
    pub domain: String,
}

resource!(
    Segment,
    "admin.solo.io",
    "v1alpha1",
    "Segment",
    "segments",
    status = false
);

// ---------------------------------------------------------------- Gateway

/// Gateway API `Gateway` (the fields SPEC C2/C3 use).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Gateway {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
    #[serde(default)]
    pub status: Option<GatewayStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GatewayAddress {
    /// `IPAddress` (the default) or `Hostname`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

impl GatewayAddress {
    pub fn ip(value: impl Into<String>) -> Self {
        GatewayAddress {
            type_: Some("IPAddress".into()),
            value: value.into(),
        }
    }
    pub fn hostname(value: impl Into<String>) -> Self {
        GatewayAddress {
            type_: Some("Hostname".into()),
            value: value.into(),
        }
    }
    /// The address type, with the Gateway API default applied.
    pub fn kind(&self) -> &str {
        self.type_.as_deref().unwrap_or("IPAddress")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenerTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition (`metav1.Condition`). Lenient on input: a hand-written
/// manifest may leave out fields a real API server would have filled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

resource!(
    Gateway,
    "gateway.networking.k8s.io",
    "v1",
    "Gateway",
    "gateways",
    status = true
);

// ---------------------------------------------------------------- Istio

/// Istio `ServiceEntry` (`networking.istio.io/v1`): what meshpeer generates for
/// each global service (G7), and what users write for manual remote entries (D4).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ServiceEntry {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ServiceEntrySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServiceEntryPort>,
    /// `MESH_INTERNAL` or `MESH_EXTERNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN` or `DYNAMIC_DNS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryPort {
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio `WorkloadEntry` spec; also the shape of a ServiceEntry endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

resource!(
    ServiceEntry,
    "networking.istio.io",
    "v1",
    "ServiceEntry",
    "serviceentries",
    status = false
);

/// Istio `WorkloadEntry` (`networking.istio.io/v1`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct WorkloadEntry {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: WorkloadEntrySpec,
}

resource!(
    WorkloadEntry,
    "networking.istio.io",
    "v1",
    "WorkloadEntry",
    "workloadentries",
    status = false
);

/// Whether an object's labels say meshpeer manages it.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(crate::labels::MANAGED_BY))
        .is_some_and(|v| v == crate::labels::MANAGED_BY_VALUE)
}
