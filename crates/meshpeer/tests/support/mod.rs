//! Clusters in file mode with real controllers, in one test process: folders
//! in a temp dir, certificates under one root, peering over mutual TLS on
//! 127.0.0.1, links through relays that tests can cut.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshpeer::controller::{Controller, ControllerConfig, View};
use meshpeer_identity::{Identity, RootCa, SpiffeId};
use meshpeer_store::file_sink::FileSink;
use meshpeer_store::file_source::FileSource;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub(crate) const WITHIN: Duration = Duration::from_secs(30);

/// A TCP relay in front of a peer's peering port; `cut` drops every open
/// connection (a network failure between two clusters).
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub(crate) async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, u) = (conns.clone(), up.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // down: refuse by closing at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Relay {
            addr,
            conns,
            accept,
            up,
        }
    }

    /// Drops every open connection.
    pub(crate) fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Down: cut, and close new connections at once. Up: relay again.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            self.cut();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

pub(crate) struct Cluster {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) controller: Option<Controller>,
}

impl Cluster {
    pub(crate) fn controller(&self) -> &Controller {
        self.controller.as_ref().expect("controller running")
    }

    pub(crate) fn write(&self, file: &str, text: &str) {
        let path = self.dir.join(file);
        let tmp = self.dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &path).unwrap();
    }

    pub(crate) fn remove(&self, file: &str) {
        let _ = fs::remove_file(self.dir.join(file));
    }

    /// Waits until this cluster's view satisfies `pred` (and its output is written).
    pub(crate) async fn wait(&self, what: &str, pred: impl FnMut(&View) -> bool) -> Arc<View> {
        match self.controller().wait_for(WITHIN, pred).await {
            Ok(v) => v,
            Err(e) => {
                let v = self.controller().current();
                panic!(
                    "{}: {what}: {e}\nhosts: {:?}\npeers: {:#?}",
                    self.name,
                    hosts(&v),
                    v.status.peers
                );
            }
        }
    }

    /// Global hostname -> contributing clusters, in this cluster's output folder.
    pub(crate) fn output(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Ok(entries) = fs::read_dir(&self.out) else {
            return out;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let parsed =
                    meshpeer_model::parse_documents("out", &fs::read_to_string(&p).unwrap());
                for o in parsed.objects {
                    let j = o.to_json();
                    out.insert(
                        j["spec"]["hosts"][0].as_str().unwrap().to_owned(),
                        j["metadata"]["annotations"]["meshpeer.io/clusters"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
            }
        }
        out
    }
}

/// Hostnames of a view.
pub(crate) fn hosts(v: &View) -> Vec<String> {
    v.catalog
        .services
        .iter()
        .map(|s| s.hostname.clone())
        .collect()
}

/// Contributing clusters of a hostname in a view.
pub(crate) fn contributors(v: &View, host: &str) -> Option<Vec<String>> {
    v.catalog
        .service(host)
        .map(|s| s.clusters().map(str::to_owned).collect())
}

pub(crate) struct Mesh {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) root: RootCa,
    pub(crate) clusters: Vec<Cluster>,
    /// (from, to) -> relay in front of `to`'s peering port.
    pub(crate) relays: BTreeMap<(String, String), Relay>,
}

pub(crate) fn namespace(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    if !labels.is_empty() {
        s.push_str("  labels:\n");
        for (k, v) in labels {
            s.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    s
}

/// A Service with one ready Pod, optionally labelled with a scope.
pub(crate) fn service(ns: &str, name: &str, scope: Option<&str>, ip: &str) -> String {
    let labels = scope
        .map(|s| format!("  labels:\n    solo.io/service-scope: {s}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n{labels}spec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: 8000, targetPort: 8080}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-0\n  namespace: {ns}\n  labels: {{app: {name}}}\nspec:\n  containers: [{{name: app, image: x}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

pub(crate) fn segments(join: Option<&str>) -> String {
    let mut labels = vec![];
    if let Some(s) = join {
        labels.push(("admin.solo.io/segment", s));
    }
    format!(
        "{}---\napiVersion: admin.solo.io/v1alpha1\nkind: Segment\nmetadata: {{name: dev, namespace: istio-system}}\nspec: {{domain: cluster.dev}}\n---\n\
         apiVersion: admin.solo.io/v1alpha1\nkind: Segment\nmetadata: {{name: prod, namespace: istio-system}}\nspec: {{domain: cluster.prod}}\n",
        namespace("istio-system", &labels)
    )
}

fn peer_gateway(peer: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: istio-remote-peer-{peer}\n  namespace: istio-eastwest\n\
         \x20 labels: {{topology.istio.io/network: {peer}}}\n  annotations: {{gateway.istio.io/trust-domain: {peer}}}\n\
         spec:\n  gatewayClassName: istio-remote\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n\
         \x20 - {{name: cross-network, port: 15008, protocol: HBONE, tls: {{mode: Passthrough}}}}\n\
         \x20 - {{name: xds-tls, port: {port}, protocol: TLS, tls: {{mode: Passthrough}}}}\n"
    )
}

impl Mesh {
    /// Cluster folders (cluster.yaml + istio-system with the dev/prod Segments).
    pub(crate) fn new(names: &[&str]) -> Mesh {
        let tmp = tempfile::tempdir().unwrap();
        let root = RootCa::generate(
            "test root",
            Duration::from_secs(86_400 * 30),
            SystemTime::now(),
        )
        .unwrap();
        let clusters = names
            .iter()
            .map(|n| {
                let dir = tmp.path().join(n);
                fs::create_dir_all(&dir).unwrap();
                fs::write(
                    dir.join("cluster.yaml"),
                    format!("name: {n}\nregion: r1\nzone: z1\n"),
                )
                .unwrap();
                fs::write(dir.join("istio-system.yaml"), segments(None)).unwrap();
                Cluster {
                    name: (*n).to_owned(),
                    out: dir.join(".meshpeer").join("out"),
                    dir,
                    controller: None,
                }
            })
            .collect();
        Mesh {
            tmp,
            root,
            clusters,
            relays: BTreeMap::new(),
        }
    }

    pub(crate) fn cluster(&self, name: &str) -> &Cluster {
        self.clusters.iter().find(|c| c.name == name).unwrap()
    }

    /// Starts every cluster's controller (peering on 127.0.0.1:0).
    pub(crate) async fn start(&mut self) {
        for c in &mut self.clusters {
            let now = SystemTime::now();
            let ca = self
                .root
                .issue_intermediate(&c.name, Duration::from_secs(86_400), now)
                .unwrap();
            let trust_root = ca.trust_root().clone();
            let id = SpiffeId::new(c.name.as_str(), "istio-system", "meshpeer").unwrap();
            let identity = Arc::new(Identity::new(ca, id, Duration::from_secs(3600), now).unwrap());
            let mut cfg = ControllerConfig::new(
                Box::new(FileSource::new(c.dir.clone(), Duration::from_millis(20))),
                Box::new(FileSink::new(c.out.clone())),
                identity,
                trust_root,
                "127.0.0.1:0".parse().unwrap(),
            );
            cfg.heartbeat = Duration::from_secs(2);
            cfg.grace = Duration::from_secs(5);
            c.controller = Some(Controller::start(cfg).await.unwrap());
        }
    }

    /// `from` links to `to` (a remote-peer Gateway in `from`, through a relay).
    pub(crate) async fn link(&mut self, from: &str, to: &str) {
        let target = self.cluster(to).controller().peering_addr;
        let relay = Relay::start(target).await;
        let port = relay.addr.port();
        self.cluster(from)
            .write(&format!("peer-{to}.yaml"), &peer_gateway(to, port));
        self.relays.insert((from.to_owned(), to.to_owned()), relay);
    }

    pub(crate) fn unlink(&mut self, from: &str, to: &str) {
        self.cluster(from).remove(&format!("peer-{to}.yaml"));
        self.relays.remove(&(from.to_owned(), to.to_owned()));
    }

    pub(crate) async fn link_all(&mut self) {
        let names: Vec<String> = self.clusters.iter().map(|c| c.name.clone()).collect();
        for a in &names {
            for b in &names {
                if a != b {
                    self.link(a, b).await;
                }
            }
        }
    }

    pub(crate) async fn shutdown(mut self) {
        for c in &mut self.clusters {
            if let Some(ctl) = c.controller.take() {
                ctl.shutdown().await;
            }
        }
    }
}

pub(crate) fn path_of(p: &Path) -> String {
    p.display().to_string()
}
