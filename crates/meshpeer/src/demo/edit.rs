//! Editing a cluster folder the way `kubectl` edits a cluster.
//!
//! `meshpeer demo label`: `kubectl label` for one object of a folder (the
//! object's document is rewritten; the rest of the file stays as written).
//!
//! `meshpeer demo scale`: what `kubectl scale deployment/NAME --replicas N`
//! does to a cluster folder. The Deployment's pods (Pods matching its
//! selector) are taken out of the folder into
//! `.meshpeer/scaled/<namespace>.<deployment>.yaml` when scaling down, and
//! put back (into `scaled-<namespace>-<deployment>.yaml`) when scaling up.
//! The controller and the demo's backends follow the folder as usual.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// One YAML document of a file, as written.
#[derive(Clone, Debug)]
struct Doc {
    text: String,
    value: Option<Value>,
}

fn split(text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut push = |cur: &mut String| {
        if !cur.trim().is_empty() {
            let value = serde_saphyr::from_str::<Value>(cur).ok();
            docs.push(Doc {
                text: std::mem::take(cur),
                value,
            });
        }
        cur.clear();
    };
    for line in text.lines() {
        if line == "---" {
            push(&mut cur);
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    push(&mut cur);
    docs
}

fn join(docs: &[Doc]) -> String {
    docs.iter()
        .map(|d| d.text.as_str())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn is(v: &Value, kind: &str, ns: &str, name: Option<&str>) -> bool {
    v["kind"] == kind
        && v["metadata"]["namespace"].as_str().unwrap_or("default") == ns
        && name.is_none_or(|n| v["metadata"]["name"] == n)
}

fn matches(selector: &BTreeMap<String, String>, pod: &Value) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| pod["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

/// What a scale did.
#[derive(Debug, PartialEq, Eq)]
pub struct Scaled {
    pub before: usize,
    pub after: usize,
}

/// Scales `deployment` of `namespace` in the cluster folder `dir`.
pub fn scale(
    dir: &Path,
    namespace: &str,
    deployment: &str,
    replicas: usize,
) -> anyhow::Result<Scaled> {
    let mut files = load(dir)?;
    let selector: BTreeMap<String, String> = files
        .values()
        .flatten()
        .filter_map(|d| d.value.as_ref())
        .find(|v| is(v, "Deployment", namespace, Some(deployment)))
        .map(|v| {
            serde_json::from_value(v["spec"]["selector"]["matchLabels"].clone()).unwrap_or_default()
        })
        .with_context(|| {
            format!(
                "no Deployment {namespace}/{deployment} in {} (deployments there: {})",
                dir.display(),
                deployments(&files).join(", ")
            )
        })?;
    if selector.is_empty() {
        bail!("Deployment {namespace}/{deployment} has no spec.selector.matchLabels");
    }
    let stash_path = dir
        .join(".meshpeer")
        .join("scaled")
        .join(format!("{namespace}.{deployment}.yaml"));
    let mut stash: Vec<Doc> = match fs::read_to_string(&stash_path) {
        Ok(t) => split(&t),
        Err(_) => Vec::new(),
    };
    let sel = &selector;
    let running: Vec<(PathBuf, usize)> = files
        .iter()
        .flat_map(|(p, docs)| {
            docs.iter().enumerate().filter_map(move |(i, d)| {
                let v = d.value.as_ref()?;
                (is(v, "Pod", namespace, None) && matches(sel, v)).then(|| (p.clone(), i))
            })
        })
        .collect();
    let stashed_endpoints = stash.iter().any(|d| {
        d.value
            .as_ref()
            .is_some_and(|v| v["kind"] == STASHED_ENDPOINT)
    });
    if stashed_endpoints || !slice_endpoints(&files, namespace, deployment).is_empty() {
        // Endpoints given as EndpointSlices (Bookinfo's example): scale
        // those, and the Pods they name with them.
        let scaled = scale_slices(dir, &mut files, &mut stash, namespace, deployment, replicas)?;
        save_stash(&stash_path, &stash)?;
        return Ok(scaled);
    }
    let before = running.len();
    if replicas < before {
        // Take the last ones out, as a ReplicaSet scaling down would.
        let mut out: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (p, i) in running.iter().skip(replicas) {
            out.entry(p.clone()).or_default().push(*i);
        }
        for (p, idx) in out {
            let docs = files.remove(&p).unwrap_or_default();
            let (gone, kept): (Vec<_>, Vec<_>) = docs
                .into_iter()
                .enumerate()
                .partition(|(i, _)| idx.contains(i));
            stash.extend(gone.into_iter().map(|(_, d)| d));
            let kept: Vec<Doc> = kept.into_iter().map(|(_, d)| d).collect();
            if kept.is_empty() {
                fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            } else {
                write_atomic(&p, &join(&kept))?;
            }
        }
    } else if replicas > before {
        let want = replicas - before;
        if stash.is_empty() {
            bail!(
                "Deployment {namespace}/{deployment} has {before} pod(s) and none scaled away to bring back; \
                 the demo can only bring back pods it took out (add Pods to the folder to run more)"
            );
        }
        let back: Vec<Doc> = stash.drain(..want.min(stash.len())).collect();
        let path = dir.join(format!("scaled-{namespace}-{deployment}.yaml"));
        let mut docs = match fs::read_to_string(&path) {
            Ok(t) => split(&t),
            Err(_) => Vec::new(),
        };
        docs.extend(back);
        write_atomic(&path, &join(&docs))?;
    }
    save_stash(&stash_path, &stash)?;
    let after = load(dir)?
        .values()
        .flatten()
        .filter_map(|d| d.value.as_ref())
        .filter(|v| is(v, "Pod", namespace, None) && matches(&selector, v))
        .count();
    Ok(Scaled { before, after })
}

/// The kind of a stash document holding one EndpointSlice endpoint.
const STASHED_ENDPOINT: &str = "MeshpeerDemoStashedEndpoint";

fn save_stash(path: &Path, stash: &[Doc]) -> anyhow::Result<()> {
    if stash.is_empty() {
        let _ = fs::remove_file(path);
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_atomic(path, &join(stash))
}

fn doc_of(v: Value) -> anyhow::Result<Doc> {
    let text = serde_saphyr::to_string(&v).context("cannot write an object back as YAML")?;
    Ok(Doc {
        text,
        value: Some(v),
    })
}

/// `(file, document, endpoint, pod)` of every EndpointSlice endpoint of
/// `namespace` whose Pod belongs to `deployment` (`<deployment>-...`). One
/// Pod may be an endpoint of several slices (several Services select it).
fn slice_endpoints(
    files: &BTreeMap<PathBuf, Vec<Doc>>,
    namespace: &str,
    deployment: &str,
) -> Vec<(PathBuf, usize, usize, String)> {
    let prefix = format!("{deployment}-");
    let mut out = Vec::new();
    for (p, docs) in files {
        for (i, d) in docs.iter().enumerate() {
            let Some(v) = &d.value else { continue };
            if !is(v, "EndpointSlice", namespace, None) {
                continue;
            }
            for (k, ep) in v["endpoints"].as_array().into_iter().flatten().enumerate() {
                let r = &ep["targetRef"];
                if r["kind"] == "Pod"
                    && let Some(pod) = r["name"].as_str().filter(|n| n.starts_with(&prefix))
                {
                    out.push((p.clone(), i, k, pod.to_owned()));
                }
            }
        }
    }
    out
}

/// Scaling when a Deployment's pods appear as EndpointSlice endpoints:
/// endpoints leave their slice into the stash, and come back to it; the
/// Pods they name leave and come back with them.
fn scale_slices(
    dir: &Path,
    files: &mut BTreeMap<PathBuf, Vec<Doc>>,
    stash: &mut Vec<Doc>,
    namespace: &str,
    deployment: &str,
    replicas: usize,
) -> anyhow::Result<Scaled> {
    let current = slice_endpoints(files, namespace, deployment);
    let before = pods_of(&current).len();
    let mut touched: Vec<PathBuf> = Vec::new();
    if replicas < before {
        // The last pods go, with every endpoint they are.
        let leaving: Vec<String> = pods_of(&current).into_iter().skip(replicas).collect();
        let mut gone: BTreeMap<(PathBuf, usize), Vec<usize>> = BTreeMap::new();
        for (p, i, k, pod) in current {
            if leaving.contains(&pod) {
                gone.entry((p, i)).or_default().push(k);
            }
        }
        // Their Pods go too: an endpoint of no known Pod has no identity
        // (G7).
        for (p, docs) in files.iter_mut() {
            let before = docs.len();
            let mut i = 0;
            while i < docs.len() {
                let leaves = docs[i].value.as_ref().is_some_and(|v| {
                    is(v, "Pod", namespace, None)
                        && v["metadata"]["name"]
                            .as_str()
                            .is_some_and(|n| leaving.iter().any(|l| l == n))
                });
                if leaves {
                    stash.push(docs.remove(i));
                } else {
                    i += 1;
                }
            }
            if docs.len() != before {
                touched.push(p.clone());
            }
        }
        for ((p, i), ks) in gone {
            let Some(doc) = files.get_mut(&p).and_then(|d| d.get_mut(i)) else {
                continue;
            };
            let Some(mut v) = doc.value.clone() else {
                continue;
            };
            let slice = v["metadata"]["name"].clone();
            let eps = v["endpoints"]
                .as_array_mut()
                .context("endpoints is not a list")?;
            for k in ks.iter().rev() {
                let ep = eps.remove(*k);
                stash.push(doc_of(serde_json::json!({
                    "kind": STASHED_ENDPOINT,
                    "slice": slice,
                    "endpoint": ep,
                }))?);
            }
            *doc = doc_of(v)?;
            touched.push(p);
        }
    } else if replicas > before {
        // The first pods stashed come back, with every endpoint they were.
        let stashed_pod = |d: &Doc| -> Option<String> {
            let v = d.value.as_ref().filter(|v| v["kind"] == STASHED_ENDPOINT)?;
            Some(
                v["endpoint"]["targetRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        let mut returning: Vec<String> = Vec::new();
        for pod in stash.iter().filter_map(stashed_pod) {
            if returning.len() < replicas - before && !returning.contains(&pod) {
                returning.push(pod);
            }
        }
        let mut kept = Vec::new();
        let mut pods_back = Vec::new();
        for d in stash.drain(..) {
            let pod_back = d.value.as_ref().is_some_and(|v| {
                is(v, "Pod", namespace, None)
                    && v["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| returning.iter().any(|r| r == n))
            });
            if pod_back {
                pods_back.push(d);
                continue;
            }
            let back = stashed_pod(&d).is_some_and(|p| returning.contains(&p));
            if !back {
                kept.push(d);
                continue;
            }
            let Some(entry) = d.value else { continue };
            let target = files.iter_mut().find_map(|(p, docs)| {
                let i = docs.iter().position(|doc| {
                    doc.value.as_ref().is_some_and(|v| {
                        is(v, "EndpointSlice", namespace, None)
                            && v["metadata"]["name"] == entry["slice"]
                    })
                })?;
                Some((p.clone(), &mut docs[i]))
            });
            let Some((p, doc)) = target else {
                kept.push(doc_of(entry)?);
                continue;
            };
            let Some(mut v) = doc.value.clone() else {
                continue;
            };
            if !v["endpoints"].is_array() {
                v["endpoints"] = Value::Array(Vec::new());
            }
            if let Some(eps) = v["endpoints"].as_array_mut() {
                eps.push(entry["endpoint"].clone());
            }
            *doc = doc_of(v)?;
            touched.push(p);
        }
        *stash = kept;
        if !pods_back.is_empty() {
            // Back in a file of their own, as the Pod path brings pods back.
            let path = dir.join(format!("scaled-{namespace}-{deployment}.yaml"));
            let docs = files.entry(path.clone()).or_default();
            docs.extend(pods_back);
            touched.push(path);
        }
        if replicas > before && touched.is_empty() {
            bail!(
                "Deployment {namespace}/{deployment} has {before} endpoint(s) and none scaled away to bring back"
            );
        }
    }
    touched.sort();
    touched.dedup();
    for p in touched {
        match files.get(&p) {
            Some(docs) if docs.is_empty() => {
                fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
            Some(docs) => write_atomic(&p, &join(docs))?,
            None => {}
        }
    }
    let after = pods_of(&slice_endpoints(files, namespace, deployment)).len();
    Ok(Scaled { before, after })
}

/// The distinct pods of [`slice_endpoints`], in their order.
fn pods_of(endpoints: &[(PathBuf, usize, usize, String)]) -> Vec<String> {
    let mut pods: Vec<String> = Vec::new();
    for (_, _, _, pod) in endpoints {
        if !pods.contains(pod) {
            pods.push(pod.clone());
        }
    }
    pods
}

/// The kind a `kubectl` resource name means.
fn kind_of(resource: &str) -> Option<&'static str> {
    Some(match resource.to_ascii_lowercase().as_str() {
        "ns" | "namespace" | "namespaces" => "Namespace",
        "svc" | "service" | "services" => "Service",
        "po" | "pod" | "pods" => "Pod",
        "deploy" | "deployment" | "deployments" => "Deployment",
        "gtw" | "gateway" | "gateways" => "Gateway",
        "segment" | "segments" => "Segment",
        "se" | "serviceentry" | "serviceentries" => "ServiceEntry",
        "no" | "node" | "nodes" => "Node",
        _ => return None,
    })
}

/// Sets (`key=value`) or removes (`key-`) labels of one object in the
/// folder `dir`, as `kubectl label [--overwrite]`. `resource` is
/// `svc/NAME` or `svc` with `name` given. Returns `kubectl`'s message.
pub fn label(
    dir: &Path,
    namespace: &str,
    resource: &str,
    name: Option<&str>,
    changes: &[String],
    overwrite: bool,
) -> anyhow::Result<String> {
    let (res, name) = match (resource.split_once('/'), name) {
        (Some((r, n)), None) => (r, n),
        (None, Some(n)) => (resource, n),
        _ => bail!("name the object as KIND/NAME or KIND NAME"),
    };
    let kind = kind_of(res).with_context(|| {
        format!("unknown resource type {res:?} (namespace, service, pod, deployment, gateway, segment, serviceentry, node)")
    })?;
    let cluster_scoped = matches!(kind, "Namespace" | "Node");
    let mut set: Vec<(String, Option<String>)> = Vec::new();
    for c in changes {
        if let Some(k) = c.strip_suffix('-') {
            set.push((k.to_owned(), None));
        } else if let Some((k, v)) = c.split_once('=') {
            set.push((k.to_owned(), Some(v.to_owned())));
        } else {
            bail!("{c:?}: expected KEY=VALUE or KEY-");
        }
    }
    if set.is_empty() {
        bail!("no labels given (KEY=VALUE or KEY-)");
    }
    let files = load(dir)?;
    for (path, mut docs) in files {
        let Some(i) = docs.iter().position(|d| {
            d.value.as_ref().is_some_and(|v| {
                v["kind"] == kind
                    && v["metadata"]["name"] == name
                    && (cluster_scoped
                        || v["metadata"]["namespace"].as_str().unwrap_or("default") == namespace)
            })
        }) else {
            continue;
        };
        let Some(mut v) = docs[i].value.clone() else {
            continue;
        };
        if !v["metadata"]["labels"].is_object() {
            v["metadata"]["labels"] = Value::Object(serde_json::Map::new());
        }
        let labels = v["metadata"]["labels"]
            .as_object_mut()
            .context("metadata.labels is not a map")?;
        let mut changed = false;
        for (k, val) in &set {
            match val {
                Some(val) => {
                    let old = labels.get(k).and_then(Value::as_str);
                    if old.is_some_and(|o| o != val) && !overwrite {
                        bail!(
                            "'{k}' already has a value ({}), and --overwrite is false",
                            old.unwrap_or_default()
                        );
                    }
                    if old != Some(val.as_str()) {
                        labels.insert(k.clone(), Value::String(val.clone()));
                        changed = true;
                    }
                }
                None => changed |= labels.remove(k).is_some(),
            }
        }
        let shown = format!("{}/{name}", res.to_ascii_lowercase());
        if !changed {
            return Ok(format!("{shown} not labeled"));
        }
        let text = serde_saphyr::to_string(&v).context("cannot write the object back as YAML")?;
        docs[i] = Doc {
            text,
            value: Some(v),
        };
        write_atomic(&path, &join(&docs))?;
        return Ok(format!("{shown} labeled"));
    }
    bail!(
        "no {kind} {}{name} in {}",
        if cluster_scoped {
            String::new()
        } else {
            format!("{namespace}/")
        },
        dir.display()
    )
}

/// The documents of every manifest file of a folder.
fn load(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, Vec<Doc>>> {
    let mut files = BTreeMap::new();
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let text =
            fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        files.insert(p, split(&text));
    }
    Ok(files)
}

fn deployments(files: &BTreeMap<PathBuf, Vec<Doc>>) -> Vec<String> {
    files
        .values()
        .flatten()
        .filter_map(|d| d.value.as_ref())
        .filter(|v| v["kind"] == "Deployment")
        .map(|v| {
            format!(
                "{}/{}",
                v["metadata"]["namespace"].as_str().unwrap_or("default"),
                v["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLDER: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: web-a, namespace: shop, labels: {app: web}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: web-b, namespace: shop, labels: {app: web}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: db-a, namespace: shop, labels: {app: db}}\n";

    fn pods(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = load(dir)
            .unwrap()
            .values()
            .flatten()
            .filter_map(|d| d.value.as_ref())
            .filter(|v| v["kind"] == "Pod")
            .map(|v| v["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn labels_are_set_overwritten_and_removed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "# header comment\n{FOLDER}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec: {{ports: [{{port: 80}}]}}\n"
        );
        fs::write(dir.path().join("shop.yaml"), &text).unwrap();
        let m = label(
            dir.path(),
            "shop",
            "svc/web",
            None,
            &["solo.io/service-scope=global".into()],
            false,
        )
        .unwrap();
        assert_eq!(m, "svc/web labeled");
        let e = label(
            dir.path(),
            "shop",
            "svc",
            Some("web"),
            &["solo.io/service-scope=segment".into()],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--overwrite"), "{e}");
        label(
            dir.path(),
            "shop",
            "svc",
            Some("web"),
            &["solo.io/service-scope=segment".into()],
            true,
        )
        .unwrap();
        let written = fs::read_to_string(dir.path().join("shop.yaml")).unwrap();
        assert!(written.starts_with("# header comment\n"), "{written}");
        assert_eq!(pods(dir.path()), ["db-a", "web-a", "web-b"]);
        let v: Vec<Value> = split(&written)
            .into_iter()
            .filter_map(|d| d.value)
            .collect();
        let svc = v.iter().find(|v| v["kind"] == "Service").unwrap();
        assert_eq!(
            svc["metadata"]["labels"]["solo.io/service-scope"],
            "segment"
        );
        assert_eq!(svc["spec"]["ports"][0]["port"], 80);
        label(
            dir.path(),
            "shop",
            "svc/web",
            None,
            &["solo.io/service-scope-".into()],
            false,
        )
        .unwrap();
        let written = fs::read_to_string(dir.path().join("shop.yaml")).unwrap();
        assert!(!written.contains("service-scope"), "{written}");
        let e = label(dir.path(), "shop", "svc/nope", None, &["a=b".into()], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no Service shop/nope"), "{e}");
    }

    #[test]
    fn scaling_endpoint_slices_takes_endpoints_out_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: pp-v1, namespace: b}\nspec:\n  selector: {matchLabels: {app: pp}}\n---\n\
            apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: pp-x, namespace: b}\naddressType: IPv4\n\
            endpoints:\n- addresses: [10.0.0.1]\n  targetRef: {kind: Pod, name: pp-v1-abc-1}\n- addresses: [10.0.0.9]\n  targetRef: {kind: Pod, name: other-1}\nports: [{port: 9080}]\n";
        fs::write(dir.path().join("b.yaml"), text).unwrap();
        fs::write(dir.path().join("cluster.yaml"), "name: c1\n").unwrap();
        assert_eq!(
            scale(dir.path(), "b", "pp-v1", 0).unwrap(),
            Scaled {
                before: 1,
                after: 0
            }
        );
        let snap = meshpeer_store::load_cluster_dir(dir.path()).unwrap();
        let slice = snap.endpoint_slices.values().next().unwrap();
        assert_eq!(slice.endpoints.len(), 1, "the other pod's endpoint stays");
        assert_eq!(
            scale(dir.path(), "b", "pp-v1", 1).unwrap(),
            Scaled {
                before: 0,
                after: 1
            }
        );
        let snap = meshpeer_store::load_cluster_dir(dir.path()).unwrap();
        let slice = snap.endpoint_slices.values().next().unwrap();
        assert_eq!(slice.endpoints.len(), 2);
        assert!(!dir.path().join(".meshpeer/scaled/b.pp-v1.yaml").exists());
    }

    /// The Pods an EndpointSlice names leave and come back with their
    /// endpoints (an endpoint of no known Pod has no identity, G7); other
    /// Pods stay.
    #[test]
    fn scaling_endpoint_slices_moves_their_pods_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let pod = |name: &str, app: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: b, labels: {{app: {app}}}}}\n\
                 spec: {{serviceAccountName: sa-{app}, containers: [{{name: c, image: i}}]}}\n\
                 status: {{phase: Running, podIP: 10.0.0.1}}\n"
            )
        };
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: pp-v1, namespace: b}}\nspec:\n  selector: {{matchLabels: {{app: pp}}}}\n---\n\
            apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: pp-x, namespace: b}}\naddressType: IPv4\n\
            endpoints:\n- addresses: [10.0.0.1]\n  targetRef: {{kind: Pod, name: pp-v1-abc-1}}\n- addresses: [10.0.0.9]\n  targetRef: {{kind: Pod, name: other-1}}\nports: [{{port: 9080}}]\n---\n{}---\n{}",
            pod("pp-v1-abc-1", "pp"),
            pod("other-1", "other")
        );
        fs::write(dir.path().join("b.yaml"), text).unwrap();
        fs::write(dir.path().join("cluster.yaml"), "name: c1\n").unwrap();
        let pods = |dir: &Path| {
            let snap = meshpeer_store::load_cluster_dir(dir).unwrap();
            let slice = snap.endpoint_slices.values().next().unwrap();
            let mut pods: Vec<String> = snap.pods.keys().map(|k| k.name.clone()).collect();
            pods.sort();
            (slice.endpoints.len(), pods)
        };
        let scaled = scale(dir.path(), "b", "pp-v1", 0).unwrap();
        assert_eq!((scaled.before, scaled.after), (1, 0));
        assert_eq!(pods(dir.path()), (1, vec!["other-1".to_owned()]));
        let scaled = scale(dir.path(), "b", "pp-v1", 1).unwrap();
        assert_eq!((scaled.before, scaled.after), (0, 1));
        assert_eq!(
            pods(dir.path()),
            (2, vec!["other-1".to_owned(), "pp-v1-abc-1".to_owned()])
        );
        assert!(!dir.path().join(".meshpeer/scaled/b.pp-v1.yaml").exists());
        // Down again: the Pod leaves the file it came back to, which goes.
        scale(dir.path(), "b", "pp-v1", 0).unwrap();
        assert_eq!(pods(dir.path()), (1, vec!["other-1".to_owned()]));
        assert!(!dir.path().join("scaled-b-pp-v1.yaml").exists());
    }

    #[test]
    fn scaling_takes_pods_out_and_brings_the_same_ones_back() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("shop.yaml"), FOLDER).unwrap();
        assert_eq!(
            scale(dir.path(), "shop", "web", 0).unwrap(),
            Scaled {
                before: 2,
                after: 0
            }
        );
        assert_eq!(pods(dir.path()), ["db-a"]);
        assert_eq!(
            scale(dir.path(), "shop", "web", 1).unwrap(),
            Scaled {
                before: 0,
                after: 1
            }
        );
        assert_eq!(pods(dir.path()), ["db-a", "web-a"]);
        assert_eq!(
            scale(dir.path(), "shop", "web", 2).unwrap(),
            Scaled {
                before: 1,
                after: 2
            }
        );
        assert_eq!(pods(dir.path()), ["db-a", "web-a", "web-b"]);
        assert!(!dir.path().join(".meshpeer/scaled/shop.web.yaml").exists());
        let e = scale(dir.path(), "shop", "web", 3).unwrap_err().to_string();
        assert!(e.contains("none scaled away"), "{e}");
        let e = scale(dir.path(), "shop", "nope", 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no Deployment shop/nope") && e.contains("shop/web"),
            "{e}"
        );
    }
}
