//! The demo's sample backends: one small HTTP app per pod (or EndpointSlice
//! endpoint) a cluster folder declares, listening at the pod's address on
//! its container ports, started and stopped as the folder changes.
//!
//! The app answers like the seeds' workloads: `GET /hostname` ->
//! `{"hostname": "<pod name>"}` (go-httpbin), `GET /productpage` -> 200 and
//! the Bookinfo title, `/` and `/anything` (any method) and `GET /get` ->
//! the pod, cluster, method and request headers as JSON.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{any, get};
use meshpeer_model::ClusterSnapshot;
use meshpeer_store::ClusterSource;
use meshpeer_store::file_source::FileSource;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Who a backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub pod: String,
    pub namespace: String,
    pub cluster: String,
}

/// The addresses a cluster's workloads listen on: every pod with an
/// address, on each container port; every EndpointSlice endpoint on the
/// slice's ports (Bookinfo's example gives endpoints that way).
pub fn workloads(snap: &ClusterSnapshot) -> BTreeMap<SocketAddr, Workload> {
    let cluster = &snap.config.name;
    let mut out = BTreeMap::new();
    for (key, pod) in &snap.pods {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| u16::try_from(p.container_port).ok());
        for port in ports {
            out.insert(
                SocketAddr::new(ip, port),
                Workload {
                    pod: key.name.clone(),
                    namespace: key.namespace.clone(),
                    cluster: cluster.clone(),
                },
            );
        }
    }
    for (key, slice) in &snap.endpoint_slices {
        let ports: Vec<u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .collect();
        for ep in &slice.endpoints {
            let name = ep
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| ep.hostname.clone());
            for addr in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                for port in &ports {
                    out.entry(SocketAddr::new(addr, *port))
                        .or_insert_with(|| Workload {
                            pod: name.clone().unwrap_or_else(|| addr.to_string()),
                            namespace: key.namespace.clone(),
                            cluster: cluster.clone(),
                        });
                }
            }
        }
    }
    out
}

fn router(w: Workload) -> Router {
    Router::new()
        .route("/hostname", get(hostname))
        .route("/productpage", get(productpage))
        .route("/", any(info))
        .route("/get", get(info))
        .route("/anything", any(info))
        .with_state(w)
}

async fn hostname(State(w): State<Workload>) -> Json<serde_json::Value> {
    Json(json!({ "hostname": w.pod }))
}

async fn productpage(State(w): State<Workload>) -> impl IntoResponse {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><title>Simple Bookstore App</title></head>\n<body><h1>The Comedy of Errors</h1><p>Served by {} in {}</p></body></html>\n",
        w.pod, w.cluster
    ))
}

async fn info(
    State(w): State<Workload>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> impl IntoResponse {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({
            "hostname": w.pod,
            "namespace": w.namespace,
            "cluster": w.cluster,
            "method": method.as_str(),
            "headers": headers,
        })),
    )
}

/// The apps running, stopped when dropped (with the folder watcher).
struct Apps {
    apps: BTreeMap<SocketAddr, (Workload, JoinHandle<()>)>,
    watcher: JoinHandle<()>,
}

impl Apps {
    async fn reconcile(&mut self, wanted: BTreeMap<SocketAddr, Workload>) {
        self.apps.retain(|addr, (w, task)| {
            let keep = wanted.get(addr) == Some(w);
            if !keep {
                task.abort();
                debug!(%addr, pod = %w.pod, "backend stopped");
            }
            keep
        });
        for (addr, w) in wanted {
            if self.apps.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let app = router(w.clone());
                    let task = tokio::spawn(async move {
                        let _ = axum::serve(listener, app).await;
                    });
                    debug!(%addr, pod = %w.pod, "backend started");
                    self.apps.insert(addr, (w, task));
                }
                Err(e) => {
                    warn!(%addr, pod = %w.pod, error = %e, "cannot start the pod's sample app")
                }
            }
        }
    }
}

impl Drop for Apps {
    fn drop(&mut self) {
        self.watcher.abort();
        for (_, t) in self.apps.values() {
            t.abort();
        }
    }
}

/// Keeps one app per workload address of a cluster folder.
pub struct Backends {
    running: watch::Receiver<usize>,
    /// True once the folder was read and its workloads started.
    settled: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Backends {
    /// Follows `dir` (as the controller does) and runs its workloads.
    pub fn start(dir: std::path::PathBuf) -> Backends {
        let (count_tx, running) = watch::channel(0);
        let (settled_tx, settled) = watch::channel(false);
        let task = tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel(16);
            let source = Box::new(FileSource::new(dir.clone(), Duration::from_millis(20)));
            let watcher = tokio::spawn(async move {
                if let Err(e) = source.run(tx).await {
                    warn!(folder = %dir.display(), error = %e, "the demo stopped following the folder");
                }
            });
            let mut snap = ClusterSnapshot::default();
            let mut apps = Apps {
                apps: BTreeMap::new(),
                watcher,
            };
            while let Some(update) = rx.recv().await {
                for change in update.changes {
                    snap.apply_change(change);
                }
                apps.reconcile(workloads(&snap)).await;
                count_tx.send_replace(apps.apps.len());
                settled_tx.send_replace(true);
            }
        });
        Backends {
            running,
            settled,
            task,
        }
    }

    /// True once the folder was read and its workloads started (what
    /// could not bind is logged), so the demo is ready for requests.
    pub fn settled(&self) -> watch::Receiver<bool> {
        self.settled.clone()
    }

    /// How many backends run now; `changed()` waits for the next change.
    pub fn running(&self) -> watch::Receiver<usize> {
        self.running.clone()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.task.abort();
    }
}
