//! [`ExportEngine`]: a cluster's snapshot and its export, kept up to date
//! change by change. Each changed object dirties the services it touches
//! (SPEC I1) and only those are recomputed; the result always equals
//! [`crate::exports`] of the same snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::cluster::{Change, ClusterSnapshot};
use crate::diag::Diagnostic;
use crate::endpoints::EndpointIndex;
use crate::export::{
    ClusterPart, Export, ServicePart, cluster_part, namespace_diagnostics, service_part,
};
use crate::labels;
use crate::objects::{Kind, NsName, Object, ObjectKey, label};
use crate::pmap::ArcMap;

/// What one batch of changes did to the export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStep {
    /// The snapshot changed.
    pub snapshot_changed: bool,
    /// Services whose export was recomputed.
    pub recomputed: usize,
    /// The cluster's identity or Segments changed: every service was recomputed.
    pub cluster_wide: bool,
    /// The export (cluster, Segments, services or findings) changed.
    pub export_changed: bool,
    /// Remote-peer or east-west Gateways changed (the catalog's links).
    pub gateways_changed: bool,
    /// ServiceEntries changed (manual entries, VIP reservations).
    pub service_entries_changed: bool,
    /// HTTPRoutes, or a Service while there are some, changed (section 11).
    pub routes_changed: bool,
}

/// Services of one namespace by the first label of their selector, so that
/// a Pod change finds the Services that may select it without scanning the
/// namespace.
#[derive(Clone, Debug, Default)]
struct SelectorIndex {
    /// namespace -> label key -> label value -> services
    by_first: HashMap<String, HashMap<String, HashMap<String, BTreeSet<NsName>>>>,
}

fn first_selector_label(svc: &Service) -> Option<(&String, &String)> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.iter().next())
}

impl SelectorIndex {
    fn service_changed(&mut self, key: &NsName, old: Option<&Service>, new: Option<&Service>) {
        if let Some((k, v)) = old.and_then(first_selector_label)
            && let Some(set) = self
                .by_first
                .get_mut(&key.namespace)
                .and_then(|m| m.get_mut(k))
                .and_then(|m| m.get_mut(v))
        {
            set.remove(key);
        }
        if let Some((k, v)) = new.and_then(first_selector_label) {
            self.by_first
                .entry(key.namespace.clone())
                .or_default()
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    /// Services of `namespace` whose selector's first label `pod` carries.
    fn candidates(&self, namespace: &str, pod: &Pod, out: &mut BTreeSet<NsName>) {
        let Some(by_key) = self.by_first.get(namespace) else {
            return;
        };
        for (k, v) in pod.metadata.labels.iter().flatten() {
            if let Some(set) = by_key.get(k).and_then(|m| m.get(v)) {
                out.extend(set.iter().cloned());
            }
        }
    }
}

/// What is dirty after a batch of changes, before recomputing.
#[derive(Default)]
struct Dirty {
    services: BTreeSet<NsName>,
    namespaces: BTreeSet<String>,
    cluster: bool,
    gateways: bool,
    service_entries: bool,
    routes: bool,
    snapshot: bool,
}

/// One Service's last computed part.
#[derive(Clone, Debug, Default)]
struct ServiceState {
    diagnostics: Vec<Diagnostic>,
    nodes: BTreeSet<String>,
}

/// A cluster's snapshot and export, updated incrementally.
#[derive(Clone, Debug)]
pub struct ExportEngine {
    snap: ClusterSnapshot,
    index: EndpointIndex,
    selectors: SelectorIndex,
    cluster: ClusterPart,
    states: BTreeMap<NsName, ServiceState>,
    namespace_diags: BTreeMap<String, Vec<Diagnostic>>,
    /// Exported services per namespace (K2 depends on whether there are any).
    exported_in: BTreeMap<String, usize>,
    /// Node -> services whose endpoints took their locality from it.
    node_services: HashMap<String, BTreeSet<NsName>>,
    /// Every finding of the cluster, service and namespace parts, counted
    /// (two parts may report the same one): the export's findings are its
    /// keys, in order, as `diag::normalize` sorts and dedups them.
    diagnostics: BTreeMap<Diagnostic, usize>,
    export: Export,
}

impl ExportEngine {
    /// Computes everything once from `snap`.
    pub fn new(snap: ClusterSnapshot) -> Self {
        let mut engine = ExportEngine {
            index: EndpointIndex::new(&snap),
            selectors: SelectorIndex::default(),
            cluster: cluster_part(&snap),
            states: BTreeMap::new(),
            namespace_diags: BTreeMap::new(),
            exported_in: BTreeMap::new(),
            node_services: HashMap::new(),
            diagnostics: BTreeMap::new(),
            export: Export::default(),
            snap,
        };
        count(&mut engine.diagnostics, &engine.cluster.diagnostics, true);
        engine.export.cluster = engine.cluster.cluster.clone();
        engine.export.segments = engine.cluster.segments.clone();
        for (key, svc) in &engine.snap.services {
            engine.selectors.service_changed(key, None, Some(svc));
        }
        let keys: BTreeSet<NsName> = engine.snap.services.keys().cloned().collect();
        for key in &keys {
            engine.recompute_service(key);
        }
        let namespaces: Vec<String> = engine.snap.namespaces.keys().cloned().collect();
        for ns in namespaces {
            engine.recompute_namespace(&ns);
        }
        engine.collect_diagnostics();
        engine
    }

    /// The snapshot as changed so far.
    pub fn snapshot(&self) -> &ClusterSnapshot {
        &self.snap
    }

    /// The current export; equal to `exports(self.snapshot())`.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// Applies a batch of changes and brings the export up to date.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> ExportStep {
        let mut dirty = Dirty::default();
        for change in changes {
            self.apply_change(change, &mut dirty);
        }
        let mut step = ExportStep {
            snapshot_changed: dirty.snapshot,
            gateways_changed: dirty.gateways,
            service_entries_changed: dirty.service_entries,
            routes_changed: dirty.routes,
            ..ExportStep::default()
        };
        let mut diags_changed = false;
        if dirty.cluster {
            let part = cluster_part(&self.snap);
            if part.cluster != self.cluster.cluster {
                // Hostnames, localities and the cluster named in findings
                // depend on it: every service.
                step.cluster_wide = true;
                dirty.services = self.snap.services.keys().cloned().collect();
                dirty.services.extend(self.states.keys().cloned());
                dirty.namespaces = self.snap.namespaces.keys().cloned().collect();
                dirty
                    .namespaces
                    .extend(self.namespace_diags.keys().cloned());
            }
            if part != self.cluster {
                if part.diagnostics != self.cluster.diagnostics {
                    count(&mut self.diagnostics, &self.cluster.diagnostics, false);
                    count(&mut self.diagnostics, &part.diagnostics, true);
                    diags_changed = true;
                }
                if part.cluster != self.export.cluster {
                    self.export.cluster = part.cluster.clone();
                    step.export_changed = true;
                }
                if part.segments != self.export.segments {
                    self.export.segments = part.segments.clone();
                    step.export_changed = true;
                }
                self.cluster = part;
            }
        }
        let before = self.export.services.clone();
        for key in &dirty.services {
            let (diags, counts) = self.recompute_service(key);
            diags_changed |= diags;
            if let Some(ns) = counts {
                dirty.namespaces.insert(ns);
            }
        }
        step.recomputed = dirty.services.len();
        if !before.ptr_eq(&self.export.services) && before != self.export.services {
            step.export_changed = true;
        }
        for ns in &dirty.namespaces {
            diags_changed |= self.recompute_namespace(ns);
        }
        if diags_changed {
            let old = std::mem::take(&mut self.export.diagnostics);
            self.collect_diagnostics();
            step.export_changed |= old != self.export.diagnostics;
        }
        step
    }

    fn apply_change(&mut self, change: Change, dirty: &mut Dirty) {
        match change {
            Change::Apply(obj) => self.apply_object(obj, dirty),
            Change::Delete(key) => {
                if let Some(old) = self.snap.delete(&key) {
                    self.object_changed(&key, Some(&old), None, dirty);
                }
            }
            Change::Replace(kind, objects) => {
                let fresh: BTreeMap<ObjectKey, Object> = objects
                    .into_iter()
                    .filter(|o| o.kind() == kind)
                    .map(|o| (o.key(), o))
                    .collect();
                let gone: Vec<ObjectKey> = self
                    .snap
                    .keys_of(kind)
                    .into_iter()
                    .filter(|k| !fresh.contains_key(k))
                    .collect();
                for key in gone {
                    self.apply_change(Change::Delete(key), dirty);
                }
                for obj in fresh.into_values() {
                    self.apply_object(obj, dirty);
                }
            }
            Change::Config(config) => {
                if self.snap.config != config {
                    self.snap.config = config;
                    dirty.cluster = true;
                    dirty.snapshot = true;
                }
            }
            Change::SourceDiagnostics(diags) => {
                if self.snap.diagnostics != diags {
                    self.snap.diagnostics = diags;
                    dirty.cluster = true;
                    dirty.snapshot = true;
                }
            }
        }
    }

    fn apply_object(&mut self, obj: Object, dirty: &mut Dirty) {
        let key = obj.key();
        let new = obj.clone();
        let old = self.snap.apply(obj);
        if old.as_ref() != Some(&new) {
            self.object_changed(&key, old.as_ref(), Some(&new), dirty);
        }
    }

    /// Marks what a changed object touches, and keeps the indexes in step.
    fn object_changed(
        &mut self,
        key: &ObjectKey,
        old: Option<&Object>,
        new: Option<&Object>,
        dirty: &mut Dirty,
    ) {
        dirty.snapshot = true;
        let ns_name = NsName::new(&key.namespace, &key.name);
        match key.kind {
            Kind::Namespace => {
                if key.name == labels::ISTIO_SYSTEM {
                    // Network and segment labels.
                    dirty.cluster = true;
                }
                dirty.namespaces.insert(key.name.clone());
                dirty.services.extend(self.services_in(&key.name));
            }
            Kind::Node => {
                if let Some(services) = self.node_services.get(&key.name) {
                    dirty.services.extend(services.iter().cloned());
                }
            }
            Kind::Service => {
                // Routes read their parents' and backends' Services.
                dirty.routes |= !self.snap.http_routes.is_empty();
                let (o, n) = (as_service(old), as_service(new));
                self.selectors.service_changed(&ns_name, o, n);
                dirty.services.insert(ns_name);
            }
            Kind::Pod => {
                let (o, n) = (as_pod(old), as_pod(new));
                self.index.pod_changed(&ns_name, o, n);
                for pod in [o, n].into_iter().flatten() {
                    self.selectors
                        .candidates(&key.namespace, pod, &mut dirty.services);
                }
            }
            Kind::EndpointSlice => {
                let (o, n) = (as_slice(old), as_slice(new));
                self.index.slice_changed(&ns_name, o, n);
                for s in [o, n].into_iter().flatten() {
                    if let Some(svc) = label(&s.metadata, labels::ENDPOINTSLICE_SERVICE_NAME) {
                        dirty.services.insert(NsName::new(&key.namespace, svc));
                    }
                }
            }
            Kind::Segment => dirty.cluster = true,
            Kind::Gateway => {
                dirty.cluster = true;
                dirty.gateways = true;
            }
            Kind::ServiceEntry => dirty.service_entries = true,
            Kind::WorkloadEntry => {}
            Kind::HttpRoute => dirty.routes = true,
        }
    }

    /// Services of a namespace, in key order.
    fn services_in(&self, namespace: &str) -> Vec<NsName> {
        self.snap
            .services
            .range(NsName::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Recomputes one service; says whether its findings changed and, when
    /// the namespace went from exporting something to nothing or back, which
    /// namespace (K2).
    fn recompute_service(&mut self, key: &NsName) -> (bool, Option<String>) {
        let part = match self.snap.services.get(key) {
            Some(svc) => service_part(&self.snap, &self.index, &self.cluster.cluster, key, svc),
            None => ServicePart::default(),
        };
        let old_state = self.states.remove(key).unwrap_or_default();
        for n in old_state.nodes.difference(&part.nodes) {
            if let Some(set) = self.node_services.get_mut(n) {
                set.remove(key);
                if set.is_empty() {
                    self.node_services.remove(n);
                }
            }
        }
        for n in part.nodes.difference(&old_state.nodes) {
            self.node_services
                .entry(n.clone())
                .or_default()
                .insert(key.clone());
        }
        let diags_changed = old_state.diagnostics != part.diagnostics;
        if diags_changed {
            count(&mut self.diagnostics, &old_state.diagnostics, false);
            count(&mut self.diagnostics, &part.diagnostics, true);
        }
        let was = self.export.services.get(key).cloned();
        let mut namespace_flip = None;
        match (&was, part.service) {
            (Some(old), Some(new)) => {
                // Equal content keeps the old Arc: readers that diff
                // versions see no change.
                if *old != new {
                    self.export.services.insert(key.clone(), new);
                }
            }
            (None, Some(new)) => {
                self.export.services.insert(key.clone(), new);
                let n = self.exported_in.entry(key.namespace.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    namespace_flip = Some(key.namespace.clone());
                }
            }
            (Some(_), None) => {
                self.export.services.remove(key);
                if let Some(n) = self.exported_in.get_mut(&key.namespace) {
                    *n -= 1;
                    if *n == 0 {
                        self.exported_in.remove(&key.namespace);
                        namespace_flip = Some(key.namespace.clone());
                    }
                }
            }
            (None, None) => {}
        }
        if self.snap.services.contains_key(key) {
            self.states.insert(
                key.clone(),
                ServiceState {
                    diagnostics: part.diagnostics,
                    nodes: part.nodes,
                },
            );
        }
        (diags_changed, namespace_flip)
    }

    /// Recomputes a namespace's own findings; says whether they changed.
    fn recompute_namespace(&mut self, name: &str) -> bool {
        let fresh = match self.snap.namespaces.get(name) {
            Some(ns) => namespace_diagnostics(
                &self.cluster.cluster.name,
                name,
                ns,
                self.exported_in.contains_key(name),
            ),
            None => Vec::new(),
        };
        let old = if fresh.is_empty() {
            self.namespace_diags.remove(name)
        } else {
            self.namespace_diags.insert(name.to_owned(), fresh.clone())
        }
        .unwrap_or_default();
        if old == fresh {
            return false;
        }
        count(&mut self.diagnostics, &old, false);
        count(&mut self.diagnostics, &fresh, true);
        true
    }

    fn collect_diagnostics(&mut self) {
        self.export.diagnostics = self.diagnostics.keys().cloned().collect();
    }

    /// The exported services, for readers that want only them.
    pub fn services(&self) -> &ArcMap<NsName, crate::ExportedService> {
        &self.export.services
    }
}

fn as_service(o: Option<&Object>) -> Option<&Service> {
    match o {
        Some(Object::Service(s)) => Some(s),
        _ => None,
    }
}

fn as_pod(o: Option<&Object>) -> Option<&Pod> {
    match o {
        Some(Object::Pod(p)) => Some(p),
        _ => None,
    }
}

/// Adds (`add`) or removes findings from a counted set.
fn count(set: &mut BTreeMap<Diagnostic, usize>, diags: &[Diagnostic], add: bool) {
    for d in diags {
        if add {
            *set.entry(d.clone()).or_default() += 1;
        } else if let Some(n) = set.get_mut(d) {
            *n -= 1;
            if *n == 0 {
                set.remove(d);
            }
        }
    }
}

fn as_slice(o: Option<&Object>) -> Option<&k8s_openapi::api::discovery::v1::EndpointSlice> {
    match o {
        Some(Object::EndpointSlice(s)) => Some(s),
        _ => None,
    }
}
