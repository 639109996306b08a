//! The Kubernetes manifests of `deploy/` (SPEC R2), checked offline.
//!
//! The kustomizations are rendered as `kubectl apply -k` would (a small
//! renderer: `resources` and JSON 6902 `patches`, and nothing else, so a
//! kustomize feature it does not know fails here instead of being ignored).
//! Every object is then validated as an API server with strict field
//! validation and kubeconform would: built-in kinds by reading them into the
//! k8s-openapi types and writing them back (a field that does not come back
//! is unknown, one that appears was required and missing), custom resources
//! with `meshpeer-crdcheck` against `schemas/` and `deploy/crds/`; then the
//! rules a live cluster would only show at run time: selectors that match
//! their pods, Service ports that reach a container port, probes, volumes
//! and mounts, the `cacerts` Secret where `--cacerts` points (the
//! controller only: the others mount its root-cert.pem alone, SPEC P7, and a
//! projected token), flags the binary has, the gateway and proxy reaching
//! the controller's cluster listener with their own identities, the
//! east-west Service sending 15008 to the gateways and 15012 to the
//! controller, and RBAC granting exactly what the Kubernetes source and sink
//! and the TokenReview authenticator use. The `Segment` CRD is the one generated from the Rust type.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, Namespace, Node, Pod, PodSpec, PodTemplateSpec, Probe,
    Service, ServiceAccount, ServicePort,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{NamespaceResourceScope, Resource};
use meshpeer_crdcheck::Validator;
use meshpeer_model::Kind;
use meshpeer_model::objects::{Gateway, Segment, ServiceEntry, WorkloadEntry};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

/// Where every namespaced object goes: the `cacerts` Secret is there, and a
/// Secret can only be mounted in its own namespace.
const NAMESPACE: &str = "istio-system";
const IMAGE: &str = concat!("ghcr.io/meshpeer/meshpeer:", env!("CARGO_PKG_VERSION"));
/// The Secret every meshpeer role mounts (Istio's `cacerts` layout).
const CACERTS_SECRET: &str = "cacerts";
/// Objects the install steps of deploy/README.md create by hand before the
/// manifests are applied (per-cluster content), as (kind, name).
const CREATED_BY_HAND: [(&str, &str); 2] = [
    ("Secret", CACERTS_SECRET),
    ("ConfigMap", "meshpeer-cluster"),
];
/// The roles a meshpeer container runs (its first argument).
const ROLES: [&str; 3] = ["controller", "gateway", "proxy"];
/// The node ports of the NodePort overlay.
const NODE_PORTS: [(&str, i32); 2] = [("tls-hbone", 30008), ("tls-xds", 30012)];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .canonicalize()
        .expect("deploy/ exists")
}

// ---------------------------------------------------------------- rendering

fn read_documents(path: &Path) -> Vec<Json> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Json> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    for d in &docs {
        assert!(
            d.is_object(),
            "{}: a document is not an object: {d}",
            path.display()
        );
    }
    docs
}

/// What a kustomization renders to, and the files it read.
struct Manifests {
    objects: Vec<Json>,
    files: BTreeSet<PathBuf>,
}

fn render(dir: &Path) -> Manifests {
    let mut files = BTreeSet::new();
    let objects = kustomize(dir, &mut files);
    let mut seen = BTreeSet::new();
    for o in &objects {
        assert!(
            seen.insert(id(o)),
            "{}: {} is defined twice (kustomize refuses that)",
            dir.display(),
            id(o)
        );
    }
    Manifests { objects, files }
}

fn kustomize(dir: &Path, files: &mut BTreeSet<PathBuf>) -> Vec<Json> {
    let path = dir.join("kustomization.yaml");
    let at = path.display().to_string();
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{at}: {e}"));
    files.insert(path);
    let k: Json = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{at}: {e}"));
    for key in k.as_object().expect("a kustomization is an object").keys() {
        assert!(
            ["apiVersion", "kind", "resources", "patches"].contains(&key.as_str()),
            "{at}: `{key}` is not something this test's renderer does; teach it (fn kustomize) or use resources and patches"
        );
    }
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1", "{at}");
    assert_eq!(k["kind"], "Kustomization", "{at}");
    let mut objects = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let r = r.as_str().expect("resources are paths");
        let p = dir
            .join(r)
            .canonicalize()
            .unwrap_or_else(|e| panic!("{at}: resource {r}: {e}"));
        if p.is_dir() {
            objects.extend(kustomize(&p, files));
        } else {
            assert!(
                p.starts_with(dir),
                "{at}: {r} is outside the kustomization's folder, which kustomize refuses; make it a folder with its own kustomization.yaml"
            );
            objects.extend(read_documents(&p));
            files.insert(p);
        }
    }
    for patch in k["patches"].as_array().into_iter().flatten() {
        apply_patch(&mut objects, patch, &at);
    }
    objects
}

fn apply_patch(objects: &mut [Json], patch: &Json, at: &str) {
    let target = patch["target"].as_object().unwrap_or_else(|| {
        panic!("{at}: a patch needs a target (this renderer does JSON 6902 patches only)")
    });
    for key in target.keys() {
        assert!(
            ["group", "version", "kind", "name", "namespace"].contains(&key.as_str()),
            "{at}: patch target field {key} is not supported here"
        );
    }
    let text = patch["patch"]
        .as_str()
        .unwrap_or_else(|| panic!("{at}: an inline patch is expected"));
    let ops: Json = serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{at}: {e}"));
    let ops = ops.as_array().unwrap_or_else(|| {
        panic!("{at}: only JSON 6902 patches (a list of operations) are supported")
    });
    let mut matched = 0;
    for obj in objects.iter_mut().filter(|o| matches_target(o, target)) {
        matched += 1;
        for op in ops {
            json_patch(obj, op).unwrap_or_else(|e| panic!("{at}: patching {}: {e}", id(obj)));
        }
    }
    assert!(matched > 0, "{at}: the patch target matches no object");
}

fn matches_target(obj: &Json, target: &serde_json::Map<String, Json>) -> bool {
    let api = obj["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
    target.iter().all(|(key, want)| {
        let have = match key.as_str() {
            "group" => group,
            "version" => version,
            "kind" => obj["kind"].as_str().unwrap_or(""),
            "name" => obj["metadata"]["name"].as_str().unwrap_or(""),
            _ => obj["metadata"]["namespace"].as_str().unwrap_or(""),
        };
        want.as_str() == Some(have)
    })
}

/// One RFC 6902 operation (add, replace, remove, test).
fn json_patch(doc: &mut Json, op: &Json) -> Result<(), String> {
    let path = op["path"].as_str().ok_or("an operation needs a path")?;
    let value = || op.get("value").cloned().ok_or(format!("{path}: no value"));
    let missing = || format!("{path} does not exist");
    let (parent, last) = path.rsplit_once('/').ok_or(format!("bad path {path}"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    match op["op"].as_str().unwrap_or_default() {
        "test" => {
            let have = doc.pointer(path).ok_or_else(missing)?;
            if *have == value()? {
                Ok(())
            } else {
                Err(format!("test failed: {path} is {have}, not {}", value()?))
            }
        }
        "replace" => {
            *doc.pointer_mut(path).ok_or_else(missing)? = value()?;
            Ok(())
        }
        "add" => match doc.pointer_mut(parent).ok_or_else(missing)? {
            Json::Object(m) => {
                m.insert(last, value()?);
                Ok(())
            }
            Json::Array(a) if last == "-" => {
                a.push(value()?);
                Ok(())
            }
            Json::Array(a) => {
                let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
                if i > a.len() {
                    return Err(format!("{path}: index out of range"));
                }
                a.insert(i, value()?);
                Ok(())
            }
            _ => Err(format!("{parent} is neither an object nor a list")),
        },
        "remove" => match doc.pointer_mut(parent).ok_or_else(missing)? {
            Json::Object(m) => m.remove(&last).map(drop).ok_or_else(missing),
            Json::Array(a) => {
                let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
                (i < a.len()).then(|| drop(a.remove(i))).ok_or_else(missing)
            }
            _ => Err(missing()),
        },
        other => Err(format!("operation {other:?} is not supported here")),
    }
}

fn id(obj: &Json) -> String {
    let kind = obj["kind"].as_str().unwrap_or("<no kind>");
    let name = obj["metadata"]["name"].as_str().unwrap_or("<no name>");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn base() -> Manifests {
    render(&deploy_dir().join("base"))
}

fn nodeport() -> Manifests {
    render(&deploy_dir().join("overlays/nodeport"))
}

/// The CRDs objects are checked against: the real ones of `schemas/`, and
/// the ones meshpeer ships (`deploy/crds/`).
fn crd_validator() -> Validator {
    let mut v = Validator::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas"))
        .expect("schemas/ loads");
    for entry in fs::read_dir(deploy_dir().join("crds")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != "kustomization.yaml")
            && path.extension().is_some_and(|e| e == "yaml")
        {
            v.add_crd_yaml(&fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    v
}

// ---------------------------------------------------------------- typed objects

/// The rendered objects, read into their types.
#[derive(Default)]
struct Objects {
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    config_maps: Vec<ConfigMap>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    crds: Vec<CustomResourceDefinition>,
    /// Custom resources (checked with crdcheck).
    custom: Vec<Json>,
}

fn is<T: Resource>(obj: &Json) -> bool {
    obj["apiVersion"] == T::API_VERSION && obj["kind"] == T::KIND
}

fn namespaced<T: Resource>() -> bool
where
    T::Scope: 'static,
{
    TypeId::of::<T::Scope>() == TypeId::of::<NamespaceResourceScope>()
}

/// Reads `obj` as a `T` strictly: what does not come back when the typed
/// value is written out again was not a field of `T`.
fn typed<T>(obj: &Json, problems: &mut Vec<String>) -> Option<T>
where
    T: Resource + DeserializeOwned + Serialize,
    T::Scope: 'static,
{
    let at = id(obj);
    let value: T = match serde_path_to_error::deserialize(obj.clone()) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("{at}: {}: {}", e.path(), e.inner()));
            return None;
        }
    };
    let back = serde_json::to_value(&value).unwrap();
    let mut found = Vec::new();
    compare(obj, &back, "", &mut found);
    problems.extend(found.into_iter().map(|f| format!("{at}: {f}")));
    let ns = obj["metadata"]["namespace"].as_str();
    match (namespaced::<T>(), ns) {
        (true, Some(NAMESPACE)) | (false, None) => {}
        (true, other) => problems.push(format!(
            "{at}: namespaced objects go in {NAMESPACE} (next to the cacerts Secret), not {other:?}"
        )),
        (false, Some(_)) => {
            problems.push(format!("{at}: a cluster-scoped object has no namespace"))
        }
    }
    Some(value)
}

/// Fields of `orig` that `back` lacks (unknown), fields `back` has and `orig`
/// lacks (required: the types default them), and values that changed.
fn compare(orig: &Json, back: &Json, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (orig, back) {
        (Json::Object(a), Json::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    None if v.is_null() => out.push(format!("{}: null (leave it out)", join(k))),
                    None => out.push(format!("{}: unknown field", join(k))),
                    Some(w) => compare(v, w, &join(k), out),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{}: required field missing", join(k)));
            }
        }
        (Json::Array(a), Json::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                compare(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ if orig == back => {}
        _ => out.push(format!("{path}: {orig} reads back as {back}")),
    }
}

fn parse(m: &Manifests, problems: &mut Vec<String>) -> Objects {
    let mut o = Objects::default();
    for obj in &m.objects {
        let p = &mut *problems;
        if is::<Deployment>(obj) {
            o.deployments.extend(typed(obj, p));
        } else if is::<DaemonSet>(obj) {
            o.daemon_sets.extend(typed(obj, p));
        } else if is::<Service>(obj) {
            o.services.extend(typed(obj, p));
        } else if is::<ServiceAccount>(obj) {
            o.service_accounts.extend(typed(obj, p));
        } else if is::<ConfigMap>(obj) {
            o.config_maps.extend(typed(obj, p));
        } else if is::<ClusterRole>(obj) {
            o.cluster_roles.extend(typed(obj, p));
        } else if is::<ClusterRoleBinding>(obj) {
            o.cluster_role_bindings.extend(typed(obj, p));
        } else if is::<Role>(obj) {
            o.roles.extend(typed(obj, p));
        } else if is::<RoleBinding>(obj) {
            o.role_bindings.extend(typed(obj, p));
        } else if is::<CustomResourceDefinition>(obj) {
            o.crds.extend(typed(obj, p));
        } else {
            o.custom.push(obj.clone());
        }
    }
    o
}

/// A Deployment's or DaemonSet's pod template.
struct Workload<'a> {
    id: String,
    namespace: &'a str,
    selector: &'a LabelSelector,
    template: &'a PodTemplateSpec,
}

impl<'a> Workload<'a> {
    fn pod(&self) -> &'a PodSpec {
        self.template
            .spec
            .as_ref()
            .expect("the pod template has a spec")
    }

    fn labels(&self) -> BTreeMap<String, String> {
        meta_labels(self.template.metadata.as_ref())
    }

    fn containers(&self) -> impl Iterator<Item = &'a Container> {
        let pod = self.pod();
        pod.init_containers.iter().flatten().chain(&pod.containers)
    }

    /// The meshpeer container running `role`, if any.
    fn role(&self, role: &str) -> Option<&'a Container> {
        self.pod()
            .containers
            .iter()
            .find(|c| role_of(c) == Some(role))
    }

    /// The container ports a Service port's `targetPort` reaches here.
    fn targets(&self, sp: &ServicePort) -> Vec<(&'a Container, &'a ContainerPort)> {
        let proto = sp.protocol.as_deref().unwrap_or("TCP");
        let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
        let mut out = Vec::new();
        for c in &self.pod().containers {
            for p in c.ports.iter().flatten() {
                let same = match &target {
                    IntOrString::Int(n) => p.container_port == *n,
                    IntOrString::String(name) => p.name.as_deref() == Some(name),
                };
                if same && p.protocol.as_deref().unwrap_or("TCP") == proto {
                    out.push((c, p));
                }
            }
        }
        out
    }
}

fn meta_labels(meta: Option<&ObjectMeta>) -> BTreeMap<String, String> {
    meta.and_then(|m| m.labels.clone()).unwrap_or_default()
}

impl Objects {
    fn workloads(&self) -> Vec<Workload<'_>> {
        let mut out = Vec::new();
        for d in &self.deployments {
            let spec = d.spec.as_ref().expect("a Deployment has a spec");
            out.push(Workload {
                id: format!("Deployment {}", name_of(&d.metadata)),
                namespace: d.metadata.namespace.as_deref().unwrap_or_default(),
                selector: &spec.selector,
                template: &spec.template,
            });
        }
        for d in &self.daemon_sets {
            let spec = d.spec.as_ref().expect("a DaemonSet has a spec");
            out.push(Workload {
                id: format!("DaemonSet {}", name_of(&d.metadata)),
                namespace: d.metadata.namespace.as_deref().unwrap_or_default(),
                selector: &spec.selector,
                template: &spec.template,
            });
        }
        out
    }

    /// The workload whose container runs `role`.
    fn running(&self, role: &str) -> (Workload<'_>, &Container) {
        let mut found = self.workloads().into_iter().filter_map(|w| {
            let c = w.role(role)?;
            Some((w, c))
        });
        let first = found
            .next()
            .unwrap_or_else(|| panic!("no workload runs meshpeer {role}"));
        assert!(found.next().is_none(), "two workloads run meshpeer {role}");
        first
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_deref() == Some(name)
        })
    }

    /// The workloads of the Service's namespace its selector picks.
    fn selected(&self, svc: &Service) -> Vec<Workload<'_>> {
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        self.workloads()
            .into_iter()
            .filter(|w| {
                Some(w.namespace) == svc.metadata.namespace.as_deref()
                    && !selector.is_empty()
                    && selector.iter().all(|(k, v)| w.labels().get(k) == Some(v))
            })
            .collect()
    }
}

fn name_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn role_of(c: &Container) -> Option<&str> {
    if c.command.is_some() {
        return None;
    }
    let first = c.args.as_ref()?.first()?.as_str();
    ROLES.contains(&first).then_some(first)
}

/// The value of `--name=VALUE` (or `--name VALUE`) in a container's args.
fn flag<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    let args = c.args.as_deref().unwrap_or_default();
    let long = format!("--{name}");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            Some(v)
        } else if *a == long {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

fn port_of(addr: &str) -> i32 {
    i32::from(
        addr.parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("{addr}: {e}"))
            .port(),
    )
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- name syntax

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// A label name or value (`[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63).
fn label_part(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn label_key(k: &str) -> bool {
    let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
    (prefix.is_empty() || dns_subdomain(prefix)) && !name.is_empty() && label_part(name)
}

/// A container port name (IANA_SVC_NAME).
fn port_name(s: &str) -> bool {
    dns_label(s) && s.len() <= 15 && !s.contains("--") && s.bytes().any(|b| b.is_ascii_lowercase())
}

// ---------------------------------------------------------------- validation

/// Every problem of a rendered set of manifests, one line each.
fn problems(m: &Manifests) -> Vec<String> {
    let mut p = Vec::new();
    let o = parse(m, &mut p);
    for obj in &m.objects {
        check_metadata(obj, &mut p);
    }
    check_workloads(&o, &mut p);
    check_services(&o, &mut p);
    check_bindings(&o, &mut p);
    check_crds(&o, &mut p);
    let crds = crd_validator();
    for obj in &o.custom {
        if let Err(violations) = crds.validate(obj) {
            for v in violations {
                p.push(format!("{}: {v}", id(obj)));
            }
        }
    }
    p
}

fn assert_valid(what: &str, m: &Manifests) {
    let p = problems(m);
    assert!(p.is_empty(), "{what} is not valid:\n  {}", p.join("\n  "));
}

fn check_metadata(obj: &Json, p: &mut Vec<String>) {
    let at = id(obj);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ok = if obj["kind"] == "Service" {
        dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
    } else {
        dns_subdomain(name)
    };
    if !ok {
        p.push(format!("{at}: metadata.name {name:?} is not a valid name"));
    }
    let mut labels: Vec<(&String, &Json)> = Vec::new();
    for path in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(m) = obj.pointer(path).and_then(Json::as_object) {
            labels.extend(m);
        }
    }
    for (k, v) in labels {
        if !label_key(k) || !v.as_str().is_some_and(label_part) {
            p.push(format!("{at}: label {k}={v} is not valid"));
        }
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object()
        && labels.get("app.kubernetes.io/part-of") != Some(&Json::from("meshpeer"))
    {
        p.push(format!(
            "{at}: label app.kubernetes.io/part-of=meshpeer missing"
        ));
    }
}

fn check_probe(at: &str, c: &Container, probe: Option<&Probe>, p: &mut Vec<String>) {
    let Some(probe) = probe else { return };
    let port = match (&probe.http_get, &probe.tcp_socket) {
        (Some(h), _) => &h.port,
        (_, Some(t)) => &t.port,
        _ => return,
    };
    let declared = c.ports.iter().flatten().any(|cp| match port {
        IntOrString::Int(n) => cp.container_port == *n,
        IntOrString::String(s) => cp.name.as_deref() == Some(s),
    });
    if !declared {
        p.push(format!(
            "{at}: container {}: a probe's port {port:?} is not a port of the container",
            c.name
        ));
    }
}

fn check_workloads(o: &Objects, p: &mut Vec<String>) {
    for w in o.workloads() {
        let at = &w.id;
        let labels = w.labels();
        let wanted = w.selector.match_labels.clone().unwrap_or_default();
        if wanted.is_empty() || w.selector.match_expressions.is_some() {
            p.push(format!(
                "{at}: the selector must be matchLabels (non-empty)"
            ));
        }
        for (k, v) in &wanted {
            if labels.get(k) != Some(v) {
                p.push(format!(
                    "{at}: selector {k}={v} does not match the pod template's labels"
                ));
            }
        }
        let pod = w.pod();
        if pod.containers.is_empty() {
            p.push(format!("{at}: no containers"));
        }
        match pod.service_account_name.as_deref() {
            Some(sa)
                if o.service_accounts.iter().any(|s| {
                    s.metadata.name.as_deref() == Some(sa)
                        && s.metadata.namespace.as_deref() == Some(w.namespace)
                }) => {}
            other => p.push(format!(
                "{at}: serviceAccountName {other:?} is not a ServiceAccount of these manifests"
            )),
        }
        let host_network = pod.host_network == Some(true);
        let mut names = BTreeSet::new();
        let mut port_names = BTreeSet::new();
        let mut port_numbers = BTreeSet::new();
        let volumes: BTreeMap<&str, _> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        if volumes.len() != pod.volumes.as_ref().map_or(0, Vec::len) {
            p.push(format!("{at}: two volumes share a name"));
        }
        let mut mounted = BTreeSet::new();
        for c in w.containers() {
            let cat = format!("{at}: container {}", c.name);
            if !dns_label(&c.name) || !names.insert(c.name.as_str()) {
                p.push(format!("{cat}: name invalid or not unique"));
            }
            if c.image.as_deref() != Some(IMAGE) {
                p.push(format!("{cat}: image {:?}, expected {IMAGE}", c.image));
            }
            if c.image_pull_policy.as_deref() != Some("IfNotPresent") {
                p.push(format!("{cat}: imagePullPolicy should be IfNotPresent"));
            }
            if c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_none()
            {
                p.push(format!("{cat}: no resource requests"));
            }
            let sc = c.security_context.as_ref();
            let drops_all = sc
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|caps| caps.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            if sc.and_then(|s| s.allow_privilege_escalation) != Some(false)
                || sc.and_then(|s| s.read_only_root_filesystem) != Some(true)
                || !drops_all
            {
                p.push(format!(
                    "{cat}: securityContext must set allowPrivilegeEscalation: false, readOnlyRootFilesystem: true and drop ALL capabilities"
                ));
            }
            for cp in c.ports.iter().flatten() {
                let proto = cp.protocol.as_deref().unwrap_or("TCP");
                if !["TCP", "UDP"].contains(&proto) || !(1..=65535).contains(&cp.container_port) {
                    p.push(format!(
                        "{cat}: port {} {proto} is not valid",
                        cp.container_port
                    ));
                }
                match cp.name.as_deref() {
                    Some(n) if port_name(n) && port_names.insert(n) => {}
                    other => p.push(format!(
                        "{cat}: port name {other:?} is missing, invalid or not unique in the pod"
                    )),
                }
                if !port_numbers.insert((cp.container_port, proto)) {
                    p.push(format!(
                        "{cat}: port {} {proto} is declared twice",
                        cp.container_port
                    ));
                }
                if host_network && cp.host_port.is_some_and(|h| h != cp.container_port) {
                    p.push(format!(
                        "{cat}: with hostNetwork, hostPort must equal containerPort"
                    ));
                }
                if !host_network && cp.host_port.is_some() {
                    p.push(format!("{cat}: hostPort without hostNetwork"));
                }
            }
            check_probe(&cat, c, c.readiness_probe.as_ref(), p);
            check_probe(&cat, c, c.liveness_probe.as_ref(), p);
            check_probe(&cat, c, c.startup_probe.as_ref(), p);
            for m in c.volume_mounts.iter().flatten() {
                mounted.insert(m.name.as_str());
                if !volumes.contains_key(m.name.as_str()) {
                    p.push(format!("{cat}: mounts undeclared volume {}", m.name));
                }
            }
            for e in c.env_from.iter().flatten() {
                if let Some(cm) = &e.config_map_ref
                    && !CREATED_BY_HAND.contains(&("ConfigMap", cm.name.as_str()))
                    && !o
                        .config_maps
                        .iter()
                        .any(|x| x.metadata.name.as_deref() == Some(cm.name.as_str()))
                {
                    p.push(format!(
                        "{cat}: envFrom ConfigMap {} is defined nowhere",
                        cm.name
                    ));
                }
                if e.secret_ref.is_some() {
                    p.push(format!("{cat}: envFrom a Secret: mount cacerts instead"));
                }
            }
            if role_of(c).is_some() {
                check_meshpeer_container(&cat, c, &volumes, p);
            }
        }
        for (name, v) in &volumes {
            if !mounted.contains(name) {
                p.push(format!("{at}: volume {name} is not mounted"));
            }
            if let Some(s) = &v.secret
                && s.secret_name.as_deref() != Some(CACERTS_SECRET)
            {
                p.push(format!(
                    "{at}: volume {name} mounts Secret {:?}; the only Secret is {CACERTS_SECRET}",
                    s.secret_name
                ));
            }
        }
    }
}

/// Where a container reads `path` from: the volume mounted at the
/// longest prefix of `path`, and the path inside it.
fn mounted_at<'a>(
    c: &Container,
    volumes: &BTreeMap<&str, &'a k8s_openapi::api::core::v1::Volume>,
    path: &str,
) -> Option<(&'a k8s_openapi::api::core::v1::Volume, String, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let rest = path.strip_prefix(&m.mount_path)?.strip_prefix('/')?;
            Some((m, rest.to_owned()))
        })
        .max_by_key(|(m, _)| m.mount_path.len())
        .and_then(|(m, rest)| {
            let v = volumes.get(m.name.as_str())?;
            Some((*v, rest, m.read_only == Some(true)))
        })
}

/// The controller's `--cacerts` is the `cacerts` Secret's read-only mount;
/// the gateway's and proxy's `--root-cert` is the Secret's root-cert.pem
/// (alone) and `--token-file` a projected ServiceAccount token; every
/// address a container listens on is a declared container port.
fn check_meshpeer_container(
    at: &str,
    c: &Container,
    volumes: &BTreeMap<&str, &k8s_openapi::api::core::v1::Volume>,
    p: &mut Vec<String>,
) {
    if role_of(c) == Some("controller") {
        let cacerts = flag(c, "cacerts");
        let mount = c.volume_mounts.iter().flatten().find(|m| {
            volumes
                .get(m.name.as_str())
                .and_then(|v| v.secret.as_ref())
                .is_some_and(|s| s.secret_name.as_deref() == Some(CACERTS_SECRET))
        });
        match (cacerts, mount) {
            (Some(dir), Some(m)) if m.mount_path == dir && m.read_only == Some(true) => {}
            _ => p.push(format!(
                "{at}: --cacerts must be where the {CACERTS_SECRET} Secret is mounted read-only"
            )),
        }
    } else {
        match flag(c, "root-cert").and_then(|f| mounted_at(c, volumes, f)) {
            Some((v, file, true))
                if v.secret.as_ref().is_some_and(|s| {
                    s.secret_name.as_deref() == Some(CACERTS_SECRET)
                        && s.items.iter().flatten().any(|i| i.key == "root-cert.pem" && i.path == file)
                }) => {}
            _ => p.push(format!(
                "{at}: --root-cert must be root-cert.pem of the {CACERTS_SECRET} Secret, mounted read-only"
            )),
        }
        match flag(c, "token-file").and_then(|f| mounted_at(c, volumes, f)) {
            Some((v, file, true))
                if v.projected
                    .iter()
                    .flat_map(|pv| pv.sources.iter().flatten())
                    .any(|src| {
                        src.service_account_token
                            .as_ref()
                            .is_some_and(|t| t.path == file)
                    }) => {}
            _ => p.push(format!(
                "{at}: --token-file must be a projected ServiceAccount token, mounted read-only"
            )),
        }
    }
    for (listen, protocols) in [
        ("listen", &["TCP"][..]),
        ("peering-listen", &["TCP"]),
        ("cluster-listen", &["TCP"]),
        ("api-listen", &["TCP"]),
        ("metrics", &["TCP"]),
        ("dns-listen", &["TCP", "UDP"]),
    ] {
        let Some(addr) = flag(c, listen) else {
            continue;
        };
        let port = port_of(addr);
        for proto in protocols {
            let declared = c.ports.iter().flatten().any(|cp| {
                cp.container_port == port && cp.protocol.as_deref().unwrap_or("TCP") == *proto
            });
            if !declared {
                p.push(format!(
                    "{at}: --{listen}={addr} but port {port}/{proto} is not declared"
                ));
            }
        }
    }
}

fn check_services(o: &Objects, p: &mut Vec<String>) {
    for svc in &o.services {
        let at = format!("Service {}", name_of(&svc.metadata));
        let spec = svc.spec.clone().unwrap_or_default();
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !["ClusterIP", "LoadBalancer", "NodePort"].contains(&ty) {
            p.push(format!("{at}: type {ty} is not expected here"));
        }
        let selected = o.selected(svc);
        if selected.is_empty() {
            p.push(format!("{at}: the selector matches no workload"));
        }
        let ports = service_ports(svc);
        if ports.is_empty() {
            p.push(format!("{at}: no ports"));
        }
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for sp in ports {
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            match sp.name.as_deref() {
                Some(n) if dns_label(n) && names.insert(n) => {}
                other => p.push(format!(
                    "{at}: port name {other:?} missing, invalid or not unique"
                )),
            }
            if !numbers.insert((sp.port, proto)) {
                p.push(format!("{at}: port {} {proto} twice", sp.port));
            }
            match (ty, sp.node_port) {
                (_, None) => {}
                ("NodePort" | "LoadBalancer", Some(n)) if (30000..=32767).contains(&n) => {}
                (_, Some(n)) => p.push(format!(
                    "{at}: nodePort {n} needs type NodePort or LoadBalancer and the range 30000-32767"
                )),
            }
            if selected.iter().all(|w| w.targets(sp).is_empty()) {
                p.push(format!(
                    "{at}: port {:?} ({} -> {:?} {proto}) reaches no container port of the selected pods",
                    sp.name, sp.port, sp.target_port
                ));
            }
        }
        for w in &selected {
            if ports.iter().all(|sp| w.targets(sp).is_empty()) {
                p.push(format!(
                    "{at}: selects {} but serves none of its ports",
                    w.id
                ));
            }
        }
    }
}

fn check_bindings(o: &Objects, p: &mut Vec<String>) {
    let sa_exists = |ns: Option<&str>, name: &str| {
        o.service_accounts.iter().any(|s| {
            s.metadata.name.as_deref() == Some(name) && s.metadata.namespace.as_deref() == ns
        })
    };
    let mut check_rules = |at: String, rules: &[PolicyRule]| {
        for r in rules {
            let all = r
                .api_groups
                .iter()
                .flatten()
                .chain(r.resources.iter().flatten())
                .chain(&r.verbs);
            if all.clone().any(|x| x == "*") || r.resources.is_none() {
                p.push(format!(
                    "{at}: wildcards or non-resource rules are not allowed"
                ));
            }
        }
    };
    for r in &o.cluster_roles {
        check_rules(
            format!("ClusterRole {}", name_of(&r.metadata)),
            r.rules.as_deref().unwrap_or_default(),
        );
    }
    for r in &o.roles {
        check_rules(
            format!("Role {}", name_of(&r.metadata)),
            r.rules.as_deref().unwrap_or_default(),
        );
    }
    let bindings = o
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.metadata, &b.role_ref, b.subjects.as_deref()))
        .chain(
            o.role_bindings
                .iter()
                .map(|b| (&b.metadata, &b.role_ref, b.subjects.as_deref())),
        );
    for (meta, role_ref, subjects) in bindings {
        let at = format!("binding {}", name_of(meta));
        let exists = match role_ref.kind.as_str() {
            "ClusterRole" => o
                .cluster_roles
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(role_ref.name.as_str())),
            "Role" => o.roles.iter().any(|r| {
                r.metadata.name.as_deref() == Some(role_ref.name.as_str())
                    && r.metadata.namespace == meta.namespace
            }),
            _ => false,
        };
        if !exists || role_ref.api_group != "rbac.authorization.k8s.io" {
            p.push(format!("{at}: roleRef {role_ref:?} is not defined here"));
        }
        for s in subjects.unwrap_or_default() {
            if s.kind != "ServiceAccount" || !sa_exists(s.namespace.as_deref(), &s.name) {
                p.push(format!(
                    "{at}: subject {} {} is not a ServiceAccount here",
                    s.kind, s.name
                ));
            }
        }
    }
}

fn check_crds(o: &Objects, p: &mut Vec<String>) {
    for crd in &o.crds {
        let at = format!("CRD {}", name_of(&crd.metadata));
        let expected = format!("{}.{}", crd.spec.names.plural, crd.spec.group);
        if crd.metadata.name.as_deref() != Some(expected.as_str()) {
            p.push(format!("{at}: must be named {expected}"));
        }
        if crd.spec.versions.iter().filter(|v| v.storage).count() != 1 {
            p.push(format!("{at}: exactly one storage version"));
        }
        let mut v = Validator::new();
        if let Err(e) = v.add_crd_yaml(&serde_json::to_string(crd).unwrap()) {
            p.push(format!("{at}: {e}"));
        }
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn r2_every_yaml_file_under_deploy_is_rendered_or_an_example() {
    let mut rendered: BTreeSet<PathBuf> = base().files;
    rendered.extend(nodeport().files);
    let mut stray = Vec::new();
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                // Every YAML file parses.
                read_documents(&path);
                if !rendered.contains(&path) && !path.starts_with(deploy_dir().join("examples")) {
                    stray.push(path.display().to_string());
                }
            }
        }
    }
    assert!(
        stray.is_empty(),
        "YAML files no kustomization renders (add them to one, or move them to deploy/examples): {stray:?}"
    );
}

#[test]
fn r2_base_manifests_are_valid() {
    let m = base();
    assert_valid("deploy/base", &m);
    let o = parse(&m, &mut Vec::new());
    // The three roles, each once.
    for role in ROLES {
        o.running(role);
    }
    assert_eq!(o.crds.len(), 1, "the Segment CRD is part of the base");
}

#[test]
fn r2_nodeport_overlay_changes_only_the_east_west_service() {
    let base = base();
    let overlay = nodeport();
    assert_valid("deploy/overlays/nodeport", &overlay);
    assert_eq!(base.objects.len(), overlay.objects.len());
    let o = parse(&base, &mut Vec::new());
    let east_west = east_west_service(&o);
    let east_west_id = format!(
        "Service {}/{}",
        NAMESPACE,
        east_west.metadata.name.as_deref().unwrap()
    );
    assert_eq!(
        east_west.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer"),
        "the base exposes the east-west gateway with a load balancer"
    );
    for (b, n) in base.objects.iter().zip(&overlay.objects) {
        if id(b) != east_west_id {
            assert_eq!(b, n, "the overlay changed {}", id(b));
            continue;
        }
        let svc: Service = serde_json::from_value(n.clone()).unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let got: Vec<(&str, Option<i32>)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref().unwrap(), p.node_port))
            .collect();
        let want: Vec<(&str, Option<i32>)> =
            NODE_PORTS.iter().map(|(n, p)| (*n, Some(*p))).collect();
        assert_eq!(got, want);
        // Nothing else changed.
        let mut undone = n.clone();
        undone["spec"]["type"] = b["spec"]["type"].clone();
        for p in undone["spec"]["ports"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("nodePort");
        }
        assert_eq!(&undone, b);
    }
    // deploy/README.md links with the overlay's node ports.
    let readme = fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    let flags = format!(
        "--hbone-port {} --xds-port {}",
        NODE_PORTS[0].1, NODE_PORTS[1].1
    );
    assert!(
        readme.contains(&flags),
        "deploy/README.md should say {flags}"
    );
}

/// The one LoadBalancer Service of the base: the east-west gateway's.
fn east_west_service(o: &Objects) -> &Service {
    let mut lbs = o
        .services
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"));
    let svc = lbs.next().expect("a LoadBalancer Service");
    assert!(lbs.next().is_none(), "one LoadBalancer Service");
    svc
}

#[test]
fn c2_east_west_service_sends_hbone_to_the_gateways_and_peering_to_the_controller() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    let svc = east_west_service(&o);
    let (_, gateway) = o.running("gateway");
    let (_, controller) = o.running("controller");
    let hbone = port_of(flag(gateway, "listen").expect("gateway --listen"));
    let peering = port_of(flag(controller, "peering-listen").expect("controller --peering-listen"));
    // The ports `meshpeer expose` writes into the east-west Gateway (C2).
    let want = [
        (
            i32::from(meshpeer_model::labels::HBONE_PORT),
            gateway,
            hbone,
        ),
        (
            i32::from(meshpeer_model::labels::XDS_PORT),
            controller,
            peering,
        ),
    ];
    assert_eq!(service_ports(svc).len(), want.len());
    for (port, container, container_port) in want {
        let sp = service_ports(svc)
            .iter()
            .find(|p| p.port == port)
            .unwrap_or_else(|| panic!("the east-west Service has no port {port}"));
        let reached: Vec<(String, i32)> = o
            .selected(svc)
            .iter()
            .flat_map(|w| w.targets(sp))
            .map(|(c, cp)| (c.name.clone(), cp.container_port))
            .collect();
        assert_eq!(
            reached,
            [(container.name.clone(), container_port)],
            "port {port} must reach exactly the {} container's port {container_port}",
            container.name
        );
    }
}

#[test]
fn p7_p8_gateway_and_proxy_reach_the_controllers_cluster_listener() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    let (_, controller) = o.running("controller");
    let cluster = port_of(flag(controller, "cluster-listen").expect("controller --cluster-listen"));
    for role in ["gateway", "proxy"] {
        let (_, c) = o.running(role);
        let target = flag(c, "controller").unwrap_or_else(|| panic!("{role} has no --controller"));
        let (host, port) = target.rsplit_once(':').unwrap();
        let port: i32 = port.parse().unwrap();
        let parts: Vec<&str> = host.split('.').collect();
        assert!(
            parts.len() >= 3 && parts[2] == "svc",
            "{role}: --controller {target} should be <service>.<namespace>.svc:<port>"
        );
        let svc = o
            .service(parts[1], parts[0])
            .unwrap_or_else(|| panic!("{role}: --controller {target}: no such Service"));
        let sp = service_ports(svc)
            .iter()
            .find(|p| p.port == port)
            .unwrap_or_else(|| {
                panic!("{role}: --controller {target}: the Service has no port {port}")
            });
        let reached: Vec<(String, i32)> = o
            .selected(svc)
            .iter()
            .flat_map(|w| w.targets(sp))
            .map(|(c, cp)| (c.name.clone(), cp.container_port))
            .collect();
        assert_eq!(
            reached,
            [(controller.name.clone(), cluster)],
            "{role}: --controller {target} must reach the controller's --cluster-listen"
        );
    }
}

/// The identity a gateway or proxy container asks for: its
/// `--namespace`/`--service-account`, else the role's default.
fn identity_of(role: &str, c: &Container) -> (String, String) {
    let (ns, sa) = match role {
        "gateway" => meshpeer::dataplane::GATEWAY_IDENTITY,
        _ => meshpeer::dataplane::PROXY_IDENTITY,
    };
    (
        flag(c, "namespace").unwrap_or(ns).to_owned(),
        flag(c, "service-account").unwrap_or(sa).to_owned(),
    )
}

#[test]
fn p7_only_the_controller_mounts_the_ca_key() {
    for (what, m) in [("base", base()), ("nodeport", nodeport())] {
        let o = parse(&m, &mut Vec::new());
        for w in o.workloads() {
            let runs_controller = w.role("controller").is_some();
            for v in w.pod().volumes.iter().flatten() {
                let mut secrets = Vec::new();
                if let Some(s) = &v.secret {
                    secrets.push((s.secret_name.clone(), s.items.clone()));
                }
                for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                    if let Some(s) = &src.secret {
                        secrets.push((Some(s.name.clone()), s.items.clone()));
                    }
                }
                for (name, items) in secrets {
                    if name.as_deref() != Some(CACERTS_SECRET) {
                        continue;
                    }
                    // Without items, every key of the Secret is mounted.
                    let keys: Vec<String> = match &items {
                        Some(items) => items.iter().map(|i| i.key.clone()).collect(),
                        None => vec![meshpeer_identity::CA_KEY_FILE.to_owned()],
                    };
                    let has_key = keys.iter().any(|k| k == meshpeer_identity::CA_KEY_FILE);
                    assert!(
                        runs_controller || !has_key,
                        "{what}: {} mounts {} of Secret {CACERTS_SECRET} (volume {}): only the controller may (SPEC P7)",
                        w.id,
                        meshpeer_identity::CA_KEY_FILE,
                        v.name
                    );
                    if !runs_controller {
                        assert_eq!(
                            keys,
                            [meshpeer_identity::ROOT_CERT_FILE],
                            "{what}: {} should mount only the shared root",
                            w.id
                        );
                    }
                }
            }
        }
        let (_, controller) = o.running("controller");
        assert!(flag(controller, "cacerts").is_some());
        for role in ["gateway", "proxy"] {
            let (_, c) = o.running(role);
            assert!(flag(c, "cacerts").is_none(), "{role} takes no --cacerts");
        }
    }
}

#[test]
fn p7_gateway_and_proxy_present_a_projected_token_for_istio_ca() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    let (_, controller) = o.running("controller");
    let audience = flag(controller, "token-audience").unwrap_or(meshpeer_ca::DEFAULT_AUDIENCE);
    for role in ["gateway", "proxy"] {
        let (w, c) = o.running(role);
        let volumes: BTreeMap<&str, _> = w
            .pod()
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        let token = flag(c, "token-file").unwrap_or_else(|| panic!("{role} has no --token-file"));
        let (v, file, _) = mounted_at(c, &volumes, token)
            .unwrap_or_else(|| panic!("{role}: --token-file {token} is not mounted"));
        let source = v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .find_map(|s| s.service_account_token.as_ref().filter(|t| t.path == file))
            .unwrap_or_else(|| panic!("{role}: {token} is not a projected ServiceAccount token"));
        assert_eq!(
            source.audience.as_deref(),
            Some(audience),
            "{role}: the token must be for the controller's TokenReview audience"
        );
        assert!(
            source.expiration_seconds.is_some_and(|s| s <= 86_400),
            "{role}: short-lived token"
        );
        // The token names the pod's ServiceAccount: the identity it asks for
        // must be that ServiceAccount's, or the controller refuses (SPEC P7).
        let sa = w.pod().service_account_name.clone().unwrap();
        assert_eq!(
            identity_of(role, c),
            (w.namespace.to_owned(), sa),
            "{role}: --namespace/--service-account must be the pod's ServiceAccount"
        );
    }
}

#[test]
fn p8_the_controller_lets_exactly_the_gateway_and_proxy_follow_the_feed() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    let (_, controller) = o.running("controller");
    let allowed: BTreeSet<(String, String)> = flag(controller, "feed-identities")
        .expect("the controller names who may follow the catalog")
        .split(',')
        .map(|p| {
            let (ns, sa) = p.split_once('/').unwrap();
            (ns.to_owned(), sa.to_owned())
        })
        .collect();
    let wanted: BTreeSet<(String, String)> = ["gateway", "proxy"]
        .iter()
        .map(|role| {
            let (_, c) = o.running(role);
            identity_of(role, c)
        })
        .collect();
    assert_eq!(allowed, wanted);
}

#[test]
fn g11_proxies_route_the_controllers_vip_range_to_themselves() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    let (_, controller) = o.running("controller");
    let cidr = flag(controller, "vip-cidr").expect("the controller names its VIP range");
    cidr.parse::<meshpeer_model::Cidr>().unwrap();
    let (proxy, _) = o.running("proxy");
    assert_eq!(
        proxy.pod().host_network,
        Some(true),
        "the proxy runs in the node's network"
    );
    let route = proxy
        .pod()
        .init_containers
        .iter()
        .flatten()
        .find_map(|c| c.command.clone())
        .expect("an init container routes the VIP range");
    assert_eq!(
        route,
        ["ip", "route", "replace", "local", cidr, "dev", "lo"],
        "the proxy's route must be the controller's --vip-cidr"
    );
}

/// (group, resource) of a kind, from the types' own constants.
fn resource_of(kind: Kind) -> (&'static str, &'static str) {
    fn of<T: Resource>() -> (&'static str, &'static str) {
        (T::GROUP, T::URL_PATH_SEGMENT)
    }
    match kind {
        Kind::Namespace => of::<Namespace>(),
        Kind::Node => of::<Node>(),
        Kind::Service => of::<Service>(),
        Kind::Pod => of::<Pod>(),
        Kind::EndpointSlice => of::<EndpointSlice>(),
        Kind::Segment => of::<Segment>(),
        Kind::Gateway => of::<Gateway>(),
        Kind::ServiceEntry => of::<ServiceEntry>(),
        Kind::WorkloadEntry => of::<WorkloadEntry>(),
        Kind::HttpRoute => of::<meshpeer_model::objects::HttpRoute>(),
    }
}

type Grants = BTreeMap<(Option<String>, String, String), BTreeSet<String>>;

fn grant(g: &mut Grants, ns: Option<&str>, rules: &[PolicyRule]) {
    for r in rules {
        for group in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                g.entry((ns.map(str::to_owned), group.clone(), res.clone()))
                    .or_default()
                    .extend(r.verbs.iter().cloned());
            }
        }
    }
}

#[test]
fn r2_p7_rbac_grants_exactly_what_the_kubernetes_source_sink_and_token_review_use() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    let sa_of = |role: &str| {
        let (w, _) = o.running(role);
        (
            w.namespace.to_owned(),
            w.pod().service_account_name.clone().unwrap(),
        )
    };
    let holds = |subjects: Option<&[k8s_openapi::api::rbac::v1::Subject]>,
                 sa: &(String, String)| {
        subjects.unwrap_or_default().iter().any(|s| {
            s.kind == "ServiceAccount" && s.namespace.as_ref() == Some(&sa.0) && s.name == sa.1
        })
    };
    let granted = |sa: &(String, String)| {
        let mut g = Grants::new();
        for b in &o.cluster_role_bindings {
            if holds(b.subjects.as_deref(), sa) {
                let role = o
                    .cluster_roles
                    .iter()
                    .find(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
                    .unwrap();
                grant(&mut g, None, role.rules.as_deref().unwrap_or_default());
            }
        }
        for b in &o.role_bindings {
            if holds(b.subjects.as_deref(), sa) {
                let ns = b.metadata.namespace.as_deref();
                let rules = if b.role_ref.kind == "Role" {
                    o.roles
                        .iter()
                        .find(|r| {
                            r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                                && r.metadata.namespace.as_deref() == ns
                        })
                        .and_then(|r| r.rules.clone())
                } else {
                    o.cluster_roles
                        .iter()
                        .find(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
                        .and_then(|r| r.rules.clone())
                };
                grant(&mut g, ns, rules.as_deref().unwrap_or_default());
            }
        }
        g
    };

    let mut want = Grants::new();
    let mut add = |ns: Option<&str>, (group, res): (&str, &str), verbs: &[&str]| {
        want.entry((ns.map(str::to_owned), group.to_owned(), res.to_owned()))
            .or_default()
            .extend(verbs.iter().map(|v| (*v).to_owned()));
    };
    // crates/store/src/kube_source.rs: one watcher per kind, all namespaces.
    for kind in meshpeer_store::kube_source::WATCHED_KINDS {
        add(None, resource_of(kind), &["list", "watch"]);
    }
    // crates/store/src/kube_sink.rs: peer conditions on remote-peer Gateways
    // (any namespace): read the Gateway, server-side apply its status.
    let (gw_group, gateways) = resource_of(Kind::Gateway);
    add(None, (gw_group, gateways), &["get"]);
    add(None, (gw_group, &format!("{gateways}/status")), &["patch"]);
    // crates/store/src/kube_sink/routes.rs: HTTPRoute status (L7), any
    // namespace: read the route, server-side apply its status.
    let (route_group, routes) = resource_of(Kind::HttpRoute);
    add(None, (route_group, routes), &["get"]);
    add(None, (route_group, &format!("{routes}/status")), &["patch"]);
    // ServiceEntries in its namespace: server-side apply (patch; create for
    // one that does not exist yet), prune (delete with a uid precondition).
    add(
        Some(meshpeer_store::kube_sink::NAMESPACE),
        resource_of(Kind::ServiceEntry),
        &["create", "patch", "delete"],
    );
    // WorkloadEntries (upstream flavor) the same way, and listed there
    // (the source does not watch them).
    add(
        Some(meshpeer_store::kube_sink::NAMESPACE),
        resource_of(Kind::WorkloadEntry),
        &["create", "patch", "delete", "list"],
    );
    // crates/ca/src/tokenreview.rs: the signing endpoint's TokenReviews
    // (cluster-scoped).
    let (group, resource, verb) = meshpeer_ca::tokenreview::required_permission();
    add(None, (group, resource), &[verb]);
    assert_eq!(granted(&sa_of("controller")), want);

    // The data plane does not talk to the API server.
    for role in ["gateway", "proxy"] {
        assert_eq!(
            granted(&sa_of(role)),
            Grants::new(),
            "{role} has permissions"
        );
        let (w, _) = o.running(role);
        assert_eq!(
            w.pod().automount_service_account_token,
            Some(false),
            "{role} needs no API token"
        );
    }
}

/// The `--flags` and `[env: ...]` names of `meshpeer <role> --help`.
fn help_words(role: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args([role, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "meshpeer {role} --help failed");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| (w.starts_with("--") && w.len() > 2) || w.starts_with("MESHPEER_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn r2_containers_use_flags_and_variables_the_binary_has() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    let mut env_names = BTreeSet::new();
    for role in ROLES {
        let (_, c) = o.running(role);
        let help = help_words(role);
        env_names.extend(help.iter().filter(|w| w.starts_with("MESHPEER_")).cloned());
        for arg in c.args.iter().flatten().skip(1) {
            if let Some(rest) = arg.strip_prefix("--") {
                let name = format!("--{}", rest.split('=').next().unwrap());
                assert!(
                    help.contains(&name),
                    "meshpeer {role} has no flag {name} (its --help: {help:?})"
                );
            }
        }
        for e in c.env.iter().flatten() {
            assert!(
                help.contains(&e.name),
                "meshpeer {role} reads no {}",
                e.name
            );
        }
    }
    // The variables the comments and the install steps tell users to set.
    let mut texts = vec![fs::read_to_string(deploy_dir().join("README.md")).unwrap()];
    for f in base().files {
        texts.push(fs::read_to_string(f).unwrap());
    }
    for text in texts {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("MESHPEER_") && word != "MESHPEER_BLESS" {
                assert!(
                    env_names.contains(word),
                    "{word} is mentioned but no role reads it"
                );
            }
        }
    }
}

#[test]
fn s1_segment_crd_is_the_one_generated_from_the_rust_type() {
    let path = deploy_dir().join("crds/segment.yaml");
    let generated = meshpeer_model::crd::segment_crd_yaml();
    if std::env::var_os("MESHPEER_BLESS").is_some_and(|v| v == "1") {
        fs::write(&path, &generated).unwrap();
        return;
    }
    let on_disk = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "deploy/crds/segment.yaml is not the CRD generated from meshpeer_model::objects::Segment \
         (meshpeer_model::crd); regenerate it with\n  MESHPEER_BLESS=1 cargo nextest run -p meshpeer --test deploy\n\
         --- on disk:\n{on_disk}\n--- generated:\n{generated}"
    );
}

#[test]
fn s1_the_shipped_segment_crd_accepts_the_seeds_segments_and_rejects_bad_ones() {
    let path = deploy_dir().join("crds/segment.yaml");
    let docs = read_documents(&path);
    assert_eq!(docs.len(), 1);
    let mut p = Vec::new();
    let crd: CustomResourceDefinition = typed(&docs[0], &mut p).unwrap();
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(crd.spec.group, Kind::Segment.group());
    assert_eq!(crd.spec.names.kind, Kind::Segment.as_str());

    // The examples (the seeds' dev and prod segments) are valid, and the
    // model reads them.
    let examples = Manifests {
        objects: read_documents(&deploy_dir().join("examples/segments.yaml")),
        files: BTreeSet::new(),
    };
    assert_valid("deploy/examples/segments.yaml", &examples);
    for obj in &examples.objects {
        let seg: Segment = serde_json::from_value(obj.clone()).unwrap();
        assert!(seg.spec.domain.starts_with("cluster."));
    }

    let v = crd_validator();
    let segment = |spec: Json| {
        serde_json::json!({
            "apiVersion": "admin.solo.io/v1alpha1",
            "kind": "Segment",
            "metadata": {"name": "dev-segment", "namespace": "istio-system"},
            "spec": spec,
        })
    };
    v.validate(&segment(serde_json::json!({"domain": "cluster.dev"})))
        .unwrap();
    for bad in [
        serde_json::json!({}),
        serde_json::json!({"domain": ""}),
        serde_json::json!({"domain": ["cluster.dev"]}),
        serde_json::json!({"domain": "cluster.dev", "domains": ["x"]}),
    ] {
        assert!(v.validate(&segment(bad.clone())).is_err(), "{bad} accepted");
    }
}

#[test]
fn r2_the_image_is_built_with_the_workspace_toolchain_and_tagged_with_its_version() {
    let dockerfile = fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let builder = format!("FROM rust:{}", env!("CARGO_PKG_RUST_VERSION"));
    assert!(
        dockerfile.contains(&builder),
        "the Dockerfile should build {builder}"
    );
    assert!(
        dockerfile.contains(&format!("-t {IMAGE} ")),
        "the Dockerfile's build command should tag {IMAGE}"
    );
    // The proxy's init container runs `ip`.
    assert!(dockerfile.contains("iproute2"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/meshpeer\"]"));
    let ignore = fs::read_to_string(deploy_dir().join("Dockerfile.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target"));
}

#[test]
fn r2_paths_in_the_install_steps_exist() {
    let readme = fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    let root = deploy_dir().join("..");
    let mut seen = 0;
    for word in readme.split(|c: char| c.is_whitespace() || "`()[],:;\"'".contains(c)) {
        let word = word.trim_end_matches('.');
        if word.starts_with("deploy/") || word.starts_with("schemas/") {
            seen += 1;
            assert!(
                root.join(word).exists(),
                "deploy/README.md names {word}, which does not exist"
            );
        }
    }
    assert!(seen > 0);
}

fn meshpeer(args: &[&str], dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshpeer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn o2_o3_install_steps_make_gateways_the_api_server_accepts() {
    // Steps 3 and 4 of deploy/README.md, with one cluster on a load balancer
    // (hostname) and one on node ports.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for c in ["cluster1", "cluster2"] {
        fs::create_dir_all(dir.join("clusters").join(c)).unwrap();
        fs::write(
            dir.join("clusters").join(c).join("cluster.yaml"),
            format!("name: {c}\nnetwork: {c}\n"),
        )
        .unwrap();
    }
    let mut printed = vec![meshpeer(&["expose", "clusters/cluster1"], dir)];
    meshpeer(
        &[
            "expose",
            "clusters/cluster1",
            "--address",
            "a1.elb.example.com",
            "--write",
        ],
        dir,
    );
    let (hbone, xds) = (NODE_PORTS[0].1.to_string(), NODE_PORTS[1].1.to_string());
    meshpeer(
        &[
            "expose",
            "clusters/cluster2",
            "--address",
            "192.0.2.20",
            "--hbone-port",
            &hbone,
            "--xds-port",
            &xds,
            "--write",
        ],
        dir,
    );
    for (from, to) in [("cluster1", "cluster2"), ("cluster2", "cluster1")] {
        printed.push(meshpeer(
            &[
                "link",
                "--from",
                &format!("clusters/{from}"),
                "--to",
                &format!("clusters/{to}"),
                "--dry-run",
            ],
            dir,
        ));
    }
    let v = crd_validator();
    let mut objects = Vec::new();
    for text in &printed {
        let docs: Vec<Json> = serde_saphyr::from_multiple(text).unwrap();
        assert_eq!(docs.len(), 1, "one Gateway per command: {text}");
        for d in docs {
            v.validate(&d)
                .unwrap_or_else(|e| panic!("{} is rejected: {e:?}", id(&d)));
            objects.push(d);
        }
    }
    assert_eq!(objects[0]["metadata"]["name"], "istio-eastwest");
    // cluster1 reaches cluster2 on its node ports; cluster2 reaches
    // cluster1's load balancer on the standard ports.
    let ports = |gw: &Json| -> Vec<i64> {
        gw["spec"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["port"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(objects[1]["metadata"]["name"], "istio-remote-peer-cluster2");
    assert_eq!(ports(&objects[1]), [30008, 30012]);
    assert_eq!(objects[2]["metadata"]["name"], "istio-remote-peer-cluster1");
    assert_eq!(
        objects[2]["spec"]["addresses"][0]["value"],
        "a1.elb.example.com"
    );
    assert_eq!(ports(&objects[2]), [15008, 15012]);
}

#[test]
fn p5_the_gateway_knows_its_node_address_and_the_proxy_is_on_the_node() {
    let m = base();
    let o = parse(&m, &mut Vec::new());
    // The gateway sees only its Pod's addresses: the node's comes from the
    // downward API, so that it is never dialled for an endpoint.
    let (_, gw) = o.running("gateway");
    let node_ip = gw
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "MESHPEER_NODE_IP")
        .expect("the gateway sets MESHPEER_NODE_IP");
    let field = node_ip
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field, Some("status.hostIP"));
    // The proxy runs in the node's network: it reads the node's addresses.
    let (w, _) = o.running("proxy");
    assert_eq!(w.pod().host_network, Some(true));
}
