//! A cluster as meshpeer sees it: its config and the objects it holds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, ObjectRef, Rule, Severity};
use crate::objects::{
    Gateway, HttpRoute, Kind, NsName, Object, ObjectKey, Segment, ServiceEntry, WorkloadEntry,
};
use crate::parse::ParseError;
use crate::validate;

/// What is known about a cluster besides its objects: in Kubernetes mode the
/// controller's flags, in file mode the folder's `cluster.yaml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name; unique among linked clusters (a DNS label).
    pub name: String,
    /// Network; the `topology.istio.io/network` label of `istio-system` wins
    /// when present. Default: the cluster name (C1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Locality of workloads whose node and pod carry no topology labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// SPIFFE trust domain. Default: the cluster name (C1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
}

/// A `cluster.yaml` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub message: String,
}

impl ClusterConfig {
    pub fn new(name: impl Into<String>) -> Self {
        ClusterConfig {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Parses and checks a `cluster.yaml`.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            source_name: source_name.to_owned(),
            message,
        };
        let opts = crate::parse::yaml_options(text);
        let cfg: ClusterConfig = serde_saphyr::from_str_with_options(text, opts).map_err(|e| {
            err(format!(
                "{} (fields: name, network, region, zone, trustDomain)",
                e.without_snippet()
            ))
        })?;
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    /// The cluster name must be a DNS label: it becomes part of object names
    /// (`istio-remote-peer-<name>`) and label values.
    pub fn check(&self) -> Result<(), String> {
        if let Err(why) = validate::dns_label(&self.name) {
            return Err(format!(
                "name {:?} is not a valid cluster name: {why}",
                self.name
            ));
        }
        for (field, value) in [
            ("network", &self.network),
            ("region", &self.region),
            ("zone", &self.zone),
        ] {
            if let Some(v) = value
                && let Err(why) = validate::label_value(v)
            {
                return Err(format!("{field} {v:?} is not a valid label value: {why}"));
            }
        }
        if let Some(td) = &self.trust_domain
            && let Err(why) = validate::trust_domain(td)
        {
            return Err(format!("trustDomain {td:?} is not valid: {why}"));
        }
        Ok(())
    }

    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(&self.name)
    }
}

/// One change to a cluster's input, as sources report them. A batch of
/// changes is applied under one lock by the controller.
// Changes are transient: moved into the snapshot as soon as they arrive.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// An object was added or changed.
    Apply(Object),
    /// An object was removed.
    Delete(ObjectKey),
    /// Every object of a kind is replaced by these (a watcher's re-list, a
    /// folder reload).
    Replace(Kind, Vec<Object>),
    /// The cluster config changed (file mode: `cluster.yaml`).
    Config(ClusterConfig),
    /// The source's own findings (unreadable documents ...), replacing the
    /// ones it reported before.
    SourceDiagnostics(Vec<Diagnostic>),
}

/// Everything meshpeer reads from one cluster, keyed for deterministic
/// iteration. Built from a folder (file mode) or from watchers (Kubernetes
/// mode); the model never cares which.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    pub config: ClusterConfig,
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<NsName, Service>,
    pub pods: BTreeMap<NsName, Pod>,
    pub endpoint_slices: BTreeMap<NsName, EndpointSlice>,
    pub segments: BTreeMap<NsName, Segment>,
    pub gateways: BTreeMap<NsName, Gateway>,
    pub service_entries: BTreeMap<NsName, ServiceEntry>,
    pub workload_entries: BTreeMap<NsName, WorkloadEntry>,
    /// Gateway API HTTPRoutes (section 11): this cluster's own L7 routes.
    pub http_routes: BTreeMap<NsName, HttpRoute>,
    /// Problems found while loading the input (bad documents, duplicates).
    pub diagnostics: Vec<Diagnostic>,
}

impl ClusterSnapshot {
    pub fn new(config: ClusterConfig) -> Self {
        ClusterSnapshot {
            config,
            ..Default::default()
        }
    }

    /// Builds a snapshot from objects. An object given twice (same kind,
    /// namespace and name) is a diagnostic; the copy kept is the one that
    /// sorts last by content, so the result does not depend on input order.
    pub fn from_objects(config: ClusterConfig, objects: impl IntoIterator<Item = Object>) -> Self {
        let mut snap = ClusterSnapshot::new(config);
        let mut all: Vec<Object> = objects.into_iter().collect();
        // Deterministic order for duplicates: by key, then by serialized form.
        let mut keyed: Vec<(ObjectKey, String, Object)> = all
            .drain(..)
            .map(|o| (o.key(), o.to_json().to_string(), o))
            .collect();
        keyed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut prev: Option<ObjectKey> = None;
        for (key, _, obj) in keyed {
            if prev.as_ref() == Some(&key) {
                let cluster = snap.config.name.clone();
                snap.diagnostics.push(Diagnostic::new(
                    &cluster,
                    Rule::F1,
                    Severity::Warning,
                    object_ref(&key),
                    format!("{key} is defined more than once; only one copy is used"),
                ));
            }
            prev = Some(key);
            snap.apply(obj);
        }
        snap
    }

    /// Adds the problems of unreadable documents as diagnostics.
    pub fn add_parse_errors<'a>(&mut self, errors: impl IntoIterator<Item = &'a ParseError>) {
        for e in errors {
            let d = Diagnostic::new(
                &self.config.name,
                Rule::F1,
                Severity::Error,
                ObjectRef::new("file", None, &e.source),
                format!(
                    "document {}{}{}: {}; the document is ignored",
                    e.document,
                    e.line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                    e.object
                        .as_ref()
                        .map(|o| format!(", {o}"))
                        .unwrap_or_default(),
                    e.message
                ),
            );
            self.diagnostics.push(d);
        }
    }

    /// Inserts or replaces an object; returns the one it replaced.
    pub fn apply(&mut self, obj: Object) -> Option<Object> {
        let key = obj.key();
        let ns = NsName::new(key.namespace.clone(), key.name.clone());
        match obj {
            Object::Namespace(o) => self.namespaces.insert(key.name, o).map(Object::Namespace),
            Object::Node(o) => self.nodes.insert(key.name, o).map(Object::Node),
            Object::Service(o) => self.services.insert(ns, o).map(Object::Service),
            Object::Pod(o) => self.pods.insert(ns, o).map(Object::Pod),
            Object::EndpointSlice(o) => self
                .endpoint_slices
                .insert(ns, o)
                .map(Object::EndpointSlice),
            Object::Segment(o) => self.segments.insert(ns, o).map(Object::Segment),
            Object::Gateway(o) => self.gateways.insert(ns, o).map(Object::Gateway),
            Object::ServiceEntry(o) => self.service_entries.insert(ns, o).map(Object::ServiceEntry),
            Object::WorkloadEntry(o) => self
                .workload_entries
                .insert(ns, o)
                .map(Object::WorkloadEntry),
            Object::HttpRoute(o) => self.http_routes.insert(ns, o).map(Object::HttpRoute),
        }
    }

    /// Removes an object; returns it if it was there.
    pub fn delete(&mut self, key: &ObjectKey) -> Option<Object> {
        let ns = NsName::new(key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::Namespace => self.namespaces.remove(&key.name).map(Object::Namespace),
            Kind::Node => self.nodes.remove(&key.name).map(Object::Node),
            Kind::Service => self.services.remove(&ns).map(Object::Service),
            Kind::Pod => self.pods.remove(&ns).map(Object::Pod),
            Kind::EndpointSlice => self.endpoint_slices.remove(&ns).map(Object::EndpointSlice),
            Kind::Segment => self.segments.remove(&ns).map(Object::Segment),
            Kind::Gateway => self.gateways.remove(&ns).map(Object::Gateway),
            Kind::ServiceEntry => self.service_entries.remove(&ns).map(Object::ServiceEntry),
            Kind::WorkloadEntry => self.workload_entries.remove(&ns).map(Object::WorkloadEntry),
            Kind::HttpRoute => self.http_routes.remove(&ns).map(Object::HttpRoute),
        }
    }

    /// Applies one change; says whether the snapshot changed.
    pub fn apply_change(&mut self, change: Change) -> bool {
        match change {
            Change::Apply(obj) => {
                let after = obj.clone();
                self.apply(obj).as_ref() != Some(&after)
            }
            Change::Delete(key) => self.delete(&key).is_some(),
            Change::Replace(kind, objects) => self.replace_kind(kind, objects),
            Change::Config(config) => {
                let changed = self.config != config;
                self.config = config;
                changed
            }
            Change::SourceDiagnostics(diags) => {
                let changed = self.diagnostics != diags;
                self.diagnostics = diags;
                changed
            }
        }
    }

    /// Replaces every object of `kind`; says whether anything changed.
    pub fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) -> bool {
        let mut fresh = ClusterSnapshot::new(self.config.clone());
        for o in objects.into_iter().filter(|o| o.kind() == kind) {
            fresh.apply(o);
        }
        macro_rules! swap {
            ($field:ident) => {{
                let changed = self.$field != fresh.$field;
                self.$field = fresh.$field;
                changed
            }};
        }
        match kind {
            Kind::Namespace => swap!(namespaces),
            Kind::Node => swap!(nodes),
            Kind::Service => swap!(services),
            Kind::Pod => swap!(pods),
            Kind::EndpointSlice => swap!(endpoint_slices),
            Kind::Segment => swap!(segments),
            Kind::Gateway => swap!(gateways),
            Kind::ServiceEntry => swap!(service_entries),
            Kind::WorkloadEntry => swap!(workload_entries),
            Kind::HttpRoute => swap!(http_routes),
        }
    }

    /// The keys of every object of `kind`, in key order.
    pub fn keys_of(&self, kind: Kind) -> Vec<ObjectKey> {
        fn keyed<V>(kind: Kind, map: &BTreeMap<NsName, V>) -> impl Iterator<Item = ObjectKey> + '_ {
            map.keys().map(move |k| ObjectKey {
                kind,
                namespace: k.namespace.clone(),
                name: k.name.clone(),
            })
        }
        fn named<V>(kind: Kind, map: &BTreeMap<String, V>) -> impl Iterator<Item = ObjectKey> + '_ {
            map.keys().map(move |k| ObjectKey {
                kind,
                namespace: String::new(),
                name: k.clone(),
            })
        }
        match kind {
            Kind::Namespace => named(kind, &self.namespaces).collect(),
            Kind::Node => named(kind, &self.nodes).collect(),
            Kind::Service => keyed(kind, &self.services).collect(),
            Kind::Pod => keyed(kind, &self.pods).collect(),
            Kind::EndpointSlice => keyed(kind, &self.endpoint_slices).collect(),
            Kind::Segment => keyed(kind, &self.segments).collect(),
            Kind::Gateway => keyed(kind, &self.gateways).collect(),
            Kind::ServiceEntry => keyed(kind, &self.service_entries).collect(),
            Kind::WorkloadEntry => keyed(kind, &self.workload_entries).collect(),
            Kind::HttpRoute => keyed(kind, &self.http_routes).collect(),
        }
    }

    /// Every object, in key order.
    pub fn objects(&self) -> Vec<Object> {
        let mut out = Vec::new();
        out.extend(self.namespaces.values().cloned().map(Object::Namespace));
        out.extend(self.nodes.values().cloned().map(Object::Node));
        out.extend(self.services.values().cloned().map(Object::Service));
        out.extend(self.pods.values().cloned().map(Object::Pod));
        out.extend(
            self.endpoint_slices
                .values()
                .cloned()
                .map(Object::EndpointSlice),
        );
        out.extend(self.segments.values().cloned().map(Object::Segment));
        out.extend(self.gateways.values().cloned().map(Object::Gateway));
        out.extend(
            self.service_entries
                .values()
                .cloned()
                .map(Object::ServiceEntry),
        );
        out.extend(
            self.workload_entries
                .values()
                .cloned()
                .map(Object::WorkloadEntry),
        );
        out.extend(self.http_routes.values().cloned().map(Object::HttpRoute));
        out
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.nodes.len()
            + self.services.len()
            + self.pods.len()
            + self.endpoint_slices.len()
            + self.segments.len()
            + self.gateways.len()
            + self.service_entries.len()
            + self.workload_entries.len()
            + self.http_routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pods of one namespace, in name order.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = (&'a NsName, &'a Pod)> {
        let start = NsName::new(namespace, "");
        let ns = namespace.to_owned();
        self.pods
            .range(start..)
            .take_while(move |(k, _)| k.namespace == ns)
    }
}

pub(crate) fn object_ref(key: &ObjectKey) -> ObjectRef {
    let ns = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
    ObjectRef::new(&key.kind.as_str().to_ascii_lowercase(), ns, &key.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f2_cluster_config_is_checked() {
        let ok = ClusterConfig::from_yaml(
            "cluster.yaml",
            "name: cluster1\nnetwork: net1\nregion: us-east\nzone: us-east-1\ntrustDomain: cluster1.local\n",
        )
        .unwrap();
        assert_eq!(ok.name, "cluster1");
        assert_eq!(ok.trust_domain(), "cluster1.local");

        let e = ClusterConfig::from_yaml("c.yaml", "name: Cluster_1\n").unwrap_err();
        assert!(e.to_string().contains("not a valid cluster name"), "{e}");
        let e = ClusterConfig::from_yaml("c.yaml", "name: c1\ntrustdomain: x\n").unwrap_err();
        assert!(e.to_string().contains("trustdomain"), "{e}");
        assert!(e.to_string().contains("trustDomain"), "{e}");
        let e = ClusterConfig::from_yaml("c.yaml", "network: x\n").unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }

    #[test]
    fn changes_apply_and_say_whether_anything_changed() {
        use crate::testing_support::ns;
        let mut snap = ClusterSnapshot::new(ClusterConfig::new("c"));
        assert!(snap.apply_change(Change::Apply(ns("a"))));
        assert!(
            !snap.apply_change(Change::Apply(ns("a"))),
            "same object again"
        );
        assert!(snap.apply_change(Change::Replace(Kind::Namespace, vec![ns("b"), ns("c")])));
        assert_eq!(snap.namespaces.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert!(!snap.apply_change(Change::Replace(Kind::Namespace, vec![ns("c"), ns("b")])));
        assert!(!snap.apply_change(Change::Replace(Kind::Service, vec![])));
        let key = ns("b").key();
        assert!(snap.apply_change(Change::Delete(key.clone())));
        assert!(!snap.apply_change(Change::Delete(key)));
        assert!(snap.apply_change(Change::Config(ClusterConfig::new("d"))));
        assert!(!snap.apply_change(Change::SourceDiagnostics(vec![])));
    }

    #[test]
    fn duplicates_are_reported_and_resolved_independently_of_order() {
        let text_a = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {x: '1'}\n";
        let text_b = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {x: '2'}\n";
        let a = crate::parse::parse_documents("a", text_a).objects;
        let b = crate::parse::parse_documents("b", text_b).objects;
        let s1 = ClusterSnapshot::from_objects(
            ClusterConfig::new("c"),
            a.iter().chain(b.iter()).cloned(),
        );
        let s2 = ClusterSnapshot::from_objects(
            ClusterConfig::new("c"),
            b.iter().chain(a.iter()).cloned(),
        );
        assert_eq!(s1, s2);
        assert_eq!(s1.diagnostics.len(), 1);
        assert!(s1.diagnostics[0].message.contains("more than once"));
    }
}
