//! Restarts (issue 11, sync gating): a restarted controller knows its own
//! cluster at once and its peers only once they sync again. Until then it
//! neither deletes nor rewrites what its output holds for their services
//! (file mode; Kubernetes mode on a mocked API server), and its gateway
//! keeps accepting tunnels from the clusters that linked here before.
//! Real controllers, peering over mutual TLS; a relay cut keeps a peer away
//! for as long as the test needs; every wait is a condition with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use meshpeer_store::kube_sink::KubeSink;
use serde_json::{Value, json};
use support::{Backend, Mesh, WITHIN, ask, contributors, namespace, service};
use tokio::sync::watch;

const LOCAL: &str = "local.shop.mesh.internal";
const REMOTE: &str = "remote.shop.mesh.internal";
const EXTRA: &str = "extra.shop.mesh.internal";

/// cluster1 exports `local`, cluster2 `remote`; cluster1 links to cluster2.
/// A grace period far longer than the test, so only a sync releases.
fn two_clusters() -> Mesh {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.grace = Duration::from_secs(300);
    for (cluster, name) in [("cluster1", "local"), ("cluster2", "remote")] {
        let c = mesh.cluster(cluster);
        c.write(
            "shop.yaml",
            &format!(
                "{}---\n{}",
                namespace("shop", &[]),
                service("shop", name, Some("global"), &c.pod_ip(1))
            ),
        );
    }
    mesh
}

fn from(clusters: &[&str]) -> Option<Vec<String>> {
    Some(clusters.iter().map(|c| (*c).to_owned()).collect())
}

/// cluster1 writes `extra` while cluster2 is away: the output is written,
/// only cluster2's entries are held.
fn add_extra(mesh: &Mesh) {
    let c1 = mesh.cluster("cluster1");
    c1.write(
        "extra.yaml",
        &service("shop", "extra", Some("global"), &c1.pod_ip(2)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_gating_file_mode_a_restart_keeps_a_peers_service_entries_until_it_synced_again() {
    let mut mesh = two_clusters();
    mesh.start().await;
    mesh.link("cluster1", "cluster2").await;
    let c1 = mesh.cluster("cluster1");
    c1.wait("local and remote written", |v| {
        contributors(v, LOCAL) == from(&["cluster1"])
            && contributors(v, REMOTE) == from(&["cluster2"])
    })
    .await;
    let file = c1.out.join("autogen.shop.remote.yaml");
    let before = std::fs::read_to_string(&file).unwrap();
    let inode = std::fs::metadata(&file).unwrap().ino();

    // cluster2 is out of reach while cluster1's controller restarts.
    let relay = ("cluster1".to_owned(), "cluster2".to_owned());
    mesh.relays[&relay].set_up(false);
    mesh.restart_controller("cluster1").await;
    let c1 = mesh.cluster("cluster1");
    let v = c1
        .wait("own cluster written, cluster2's entry held", |v| {
            v.status.output_held == 1 && contributors(v, LOCAL).is_some()
        })
        .await;
    assert_eq!(contributors(&v, REMOTE), None, "cluster2 is not back");
    add_extra(&mesh);
    c1.wait("extra written", |v| contributors(v, EXTRA).is_some())
        .await;
    assert!(c1.output().contains_key(EXTRA), "{:?}", c1.output());
    // Neither deleted nor rewritten: the same file, the same bytes.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);

    // cluster2 is back: its entry follows the catalog again, its VIP kept.
    mesh.relays[&relay].set_up(true);
    c1.wait("cluster2 synced again, nothing held", |v| {
        v.status.output_held == 0 && contributors(v, REMOTE) == from(&["cluster2"])
    })
    .await;
    assert_eq!(c1.output()[REMOTE], "cluster2");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    mesh.shutdown().await;
}

/// A Kubernetes API server holding ServiceEntries in memory, as server-side
/// apply and deletes with preconditions leave them; every delete and apply
/// recorded. Gateways are not found (peer status is not written).
#[derive(Clone, Default)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    changed: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct ApiState {
    entries: BTreeMap<String, Value>,
    workloads: BTreeMap<String, Value>,
    resource_version: u64,
    applied: Vec<String>,
    deleted: Vec<String>,
    unexpected: Vec<String>,
}

impl ApiState {
    fn objects(&mut self, kind: &str) -> &mut BTreeMap<String, Value> {
        if kind == "WorkloadEntry" {
            &mut self.workloads
        } else {
            &mut self.entries
        }
    }
}

const SE_PATH: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/serviceentries";
const WE_PATH: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/workloadentries";

impl FakeApi {
    /// A client whose requests this server answers (one per controller).
    fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, responder)) = handle.next_request().await {
                let (status, body) = api.answer(req).await;
                responder.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        Client::new(svc, "default")
    }

    async fn answer(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let path = parts.uri.path().to_owned();
        let not_found = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{path} not found"), "reason": "NotFound", "code": 404
        });
        let mut st = self.state.lock().unwrap();
        // ServiceEntries and WorkloadEntries (upstream flavor), each kind
        // in its own map.
        let (kind, rest) = match (path.strip_prefix(SE_PATH), path.strip_prefix(WE_PATH)) {
            (Some(rest), _) => ("ServiceEntry", Some(rest)),
            (_, Some(rest)) => ("WorkloadEntry", Some(rest)),
            _ => ("", None),
        };
        let answer = match (&parts.method, rest) {
            (&Method::GET, Some("")) => {
                let items: Vec<Value> = st.objects(kind).values().cloned().collect();
                (
                    StatusCode::OK,
                    json!({
                        "apiVersion": "networking.istio.io/v1", "kind": format!("{kind}List"),
                        "metadata": {"resourceVersion": st.resource_version.to_string()},
                        "items": items,
                    }),
                )
            }
            (&Method::PATCH, Some(name)) => {
                let name = name.trim_start_matches('/').to_owned();
                let mut object: Value = serde_json::from_slice(&bytes).unwrap();
                st.resource_version += 1;
                let rv = st.resource_version;
                let uid = st.objects(kind).get(&name).map_or_else(
                    || format!("uid-{rv}"),
                    |o| o["metadata"]["uid"].as_str().unwrap().to_owned(),
                );
                object["metadata"]["uid"] = json!(uid);
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                st.objects(kind).insert(name.clone(), object.clone());
                st.applied.push(name);
                (StatusCode::OK, object)
            }
            (&Method::DELETE, Some(name)) => {
                let name = name.trim_start_matches('/').to_owned();
                st.resource_version += 1;
                st.deleted.push(name.clone());
                match st.objects(kind).remove(&name) {
                    Some(object) => (StatusCode::OK, object),
                    None => (StatusCode::NOT_FOUND, not_found),
                }
            }
            _ if path.contains("/gateways/") => (StatusCode::NOT_FOUND, not_found),
            _ => {
                st.unexpected
                    .push(format!("{} {}", parts.method, parts.uri));
                (StatusCode::NOT_FOUND, not_found)
            }
        };
        let version = st.resource_version;
        drop(st);
        self.changed.send_replace(version);
        answer
    }

    /// Waits until the server holds the ServiceEntry `name`.
    async fn wait_holds(&self, name: &str) {
        self.wait_until(&format!("held {name}"), |st| st.entries.contains_key(name))
            .await;
    }

    /// Waits until the server holds a WorkloadEntry whose name starts with
    /// `prefix` (upstream flavor: written right after the entries).
    async fn wait_holds_workload(&self, prefix: &str) {
        self.wait_until(&format!("held a WorkloadEntry {prefix}*"), |st| {
            st.workloads.keys().any(|n| n.starts_with(prefix))
        })
        .await;
    }

    /// Waits until `pred` holds of the server's state, within [`WITHIN`].
    async fn wait_until(&self, what: &str, pred: impl Fn(&ApiState) -> bool) {
        let mut changed = self.changed.subscribe();
        tokio::time::timeout(WITHIN, async {
            loop {
                if pred(&self.state.lock().unwrap()) {
                    return;
                }
                changed.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the API server never {what}"));
    }

    fn resource_version_of(&self, name: &str) -> String {
        let st = self.state.lock().unwrap();
        st.entries[name]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// cluster1's controller with its output to the fake API server.
async fn start_kube_mode(mesh: &mut Mesh, api: &FakeApi, peering: std::net::SocketAddr) {
    let mut cfg = mesh.controller_config("cluster1", peering, None);
    cfg.sink = Box::new(KubeSink::new(api.client(), "meshpeer"));
    mesh.start_with("cluster1", cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_gating_kube_mode_no_service_entry_of_a_remote_service_is_deleted_across_a_restart() {
    let mut mesh = two_clusters();
    let api = FakeApi::default();
    mesh.start_controller("cluster2", "127.0.0.1:0".parse().unwrap(), None)
        .await;
    mesh.link("cluster1", "cluster2").await;
    start_kube_mode(&mut mesh, &api, "127.0.0.1:0".parse().unwrap()).await;
    api.wait_holds("autogen.shop.local").await;
    api.wait_holds("autogen.shop.remote").await;
    api.wait_holds_workload("autogen.shop.remote.cluster2.")
        .await;
    let version = api.resource_version_of("autogen.shop.remote");
    let vip = api.state.lock().unwrap().entries["autogen.shop.remote"]["spec"]["addresses"].clone();

    // cluster2 is out of reach while cluster1's controller restarts.
    let relay = ("cluster1".to_owned(), "cluster2".to_owned());
    mesh.relays[&relay].set_up(false);
    let c1 = mesh
        .clusters
        .iter_mut()
        .find(|c| c.name == "cluster1")
        .unwrap();
    let old = c1.controller.take().unwrap();
    let peering = old.peering_addr;
    old.shutdown().await;
    start_kube_mode(&mut mesh, &api, peering).await;
    let c1 = mesh.cluster("cluster1");
    c1.wait("own cluster written, cluster2's entry held", |v| {
        v.status.output_held == 1 && contributors(v, LOCAL).is_some()
    })
    .await;
    add_extra(&mesh);
    api.wait_holds("autogen.shop.extra").await;
    {
        let st = api.state.lock().unwrap();
        assert_eq!(st.deleted, Vec::<String>::new(), "deleted while held");
        assert!(
            st.entries.contains_key("autogen.shop.remote"),
            "{:?}",
            st.entries.keys()
        );
        // Upstream flavor: the entry's WorkloadEntries (cluster2's group)
        // are held with it.
        assert!(
            st.workloads
                .keys()
                .any(|n| n.starts_with("autogen.shop.remote.cluster2.")),
            "{:?}",
            st.workloads.keys()
        );
    }
    // Not rewritten either (no apply since).
    assert_eq!(api.resource_version_of("autogen.shop.remote"), version);

    // cluster2 is back: its entry follows the catalog again, VIP kept.
    mesh.relays[&relay].set_up(true);
    c1.wait("cluster2 synced again, nothing held", |v| {
        v.status.output_held == 0 && contributors(v, REMOTE) == from(&["cluster2"])
    })
    .await;
    {
        let st = api.state.lock().unwrap();
        assert_eq!(
            st.deleted,
            Vec::<String>::new(),
            "deleted across the restart"
        );
        assert_eq!(st.entries["autogen.shop.remote"]["spec"]["addresses"], vip);
        assert_eq!(st.unexpected, Vec::<String>::new());
        assert!(st.applied.contains(&"autogen.shop.extra".to_owned()));
    }
    mesh.shutdown().await;
}

/// cluster1's gateway follows its controller's catalog over the API, as a
/// gateway process does; cluster2's proxy sends to cluster1's service
/// through it. cluster1's controller restarts while cluster2 cannot reach
/// its peering port: the restarted controller does not list cluster2 as a
/// caller yet, and says its callers are pending; the gateway keeps
/// cluster2, so no tunnel is refused. Once cluster2 links here again the
/// callers settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_no_tunnel_from_a_linked_caller_across_a_restart_of_its_controller() {
    let mut mesh = two_clusters();
    mesh.start_controller(
        "cluster1",
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    mesh.start_controller("cluster2", "127.0.0.1:0".parse().unwrap(), None)
        .await;
    mesh.clusters[0].follow_api = true;
    mesh.start_dataplane().await;
    mesh.link_all().await;
    let _backend = Backend::start(
        format!("{}:8080", mesh.cluster("cluster1").pod_ip(1))
            .parse()
            .unwrap(),
        "local-0",
    )
    .await;
    let (c1, c2) = (mesh.cluster("cluster1"), mesh.cluster("cluster2"));
    c1.wait_caller("cluster2").await;
    let vip = c2.wait_route(LOCAL, 8000, &["cluster1"]).await;
    assert_eq!(ask(vip).await.unwrap(), "local-0");
    let mut followed = c1.followed.clone().unwrap();
    tokio::time::timeout(
        WITHIN,
        followed.wait_for(|f| !f.callers_pending && f.caller("cluster2").is_some()),
    )
    .await
    .expect("the gateway knows cluster2 as a caller, callers settled")
    .unwrap();

    // cluster2 cannot reach cluster1's peering port while it restarts.
    let relay = ("cluster2".to_owned(), "cluster1".to_owned());
    mesh.relays[&relay].set_up(false);
    mesh.restart_controller("cluster1").await;
    let c1 = mesh.cluster("cluster1");
    let f = tokio::time::timeout(WITHIN, followed.wait_for(|f| f.callers_pending))
        .await
        .expect("the gateway follows the restarted controller")
        .unwrap()
        .clone();
    assert!(
        c1.controller().feed().borrow().caller("cluster2").is_none(),
        "the restarted controller does not list cluster2 yet"
    );
    let kept = f.caller("cluster2").expect("cluster2 kept by the gateway");
    assert!(!kept.connected);
    for _ in 0..20 {
        assert_eq!(ask(vip).await.unwrap(), "local-0");
    }

    // cluster2 links here again: the callers settle, with it.
    mesh.relays[&relay].set_up(true);
    tokio::time::timeout(
        WITHIN,
        followed
            .wait_for(|f| !f.callers_pending && f.caller("cluster2").is_some_and(|c| c.connected)),
    )
    .await
    .expect("callers settle once cluster2 is back")
    .unwrap();
    assert_eq!(ask(vip).await.unwrap(), "local-0");
    mesh.shutdown().await;
}

/// A `meshpeer controller` process of a cluster of `mesh` (file mode),
/// killed when dropped, with its peering and API addresses from its log.
struct Process {
    child: std::process::Child,
    peering: std::net::SocketAddr,
    api: std::net::SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller_process(mesh: &Mesh, name: &str, cacerts: &std::path::Path) -> Process {
    use std::io::BufRead;
    let c = mesh.cluster(name);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args(["controller", "--cluster-dir"])
        .arg(&c.dir)
        .arg("--cacerts")
        .arg(cacerts)
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--peering-listen",
            "127.0.0.1:0",
        ])
        .args(["--cluster-listen", "127.0.0.1:0", "--grace", "5m"])
        .args(["--heartbeat", "2s", "--allow-endpoints", "127.0.0.0/8"])
        .args([
            "--vip-cidr",
            &c.vip_range().to_string(),
            "--log-format",
            "json",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start meshpeer controller");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let address = v["fields"]["address"].as_str().unwrap_or_default();
                let _ = tx.send((
                    v["fields"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    address.to_owned(),
                ));
            }
        }
    });
    let (mut peering, mut api) = (None, None);
    while peering.is_none() || api.is_none() {
        let (message, address) = rx
            .recv_timeout(WITHIN)
            .expect("the controller logs its addresses");
        if message == "peering server listening" {
            peering = address.parse().ok();
        } else if message == "API listening (status, catalog, metrics)" {
            api = address.parse().ok();
        }
    }
    Process {
        child,
        peering: peering.unwrap(),
        api: api.unwrap(),
    }
}

/// `GET /v1/status` of a controller process.
async fn process_status(api: std::net::SocketAddr) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(api).await else {
        return Value::Null;
    };
    let request = format!("GET /v1/status HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).await.is_err() {
        return Value::Null;
    }
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response).await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Asks the controller's status until `pred` holds (deadline [`WITHIN`]).
async fn until_status(api: std::net::SocketAddr, what: &str, mut pred: impl FnMut(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let status = process_status(api).await;
        if pred(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WITHIN:?}; last status {status}"
        );
        // Asked again at 20 ms intervals: the status is the condition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether cluster1's output folder holds a ServiceEntry for `host`.
fn written(mesh: &Mesh, host: &str) -> bool {
    mesh.cluster("cluster1").output().contains_key(host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_gating_file_mode_real_processes_a_killed_controller_keeps_the_peers_entries() {
    let mesh = two_clusters();
    let certs = mesh.tmp.path().join("certs");
    for name in ["cluster1", "cluster2"] {
        mesh.root
            .issue_intermediate(
                name,
                name,
                Duration::from_secs(86_400),
                std::time::SystemTime::now(),
            )
            .unwrap()
            .write(&certs.join(name))
            .unwrap();
    }
    let _c2 = controller_process(&mesh, "cluster2", &certs.join("cluster2"));
    let relay = support::Relay::start(_c2.peering).await;
    mesh.cluster("cluster1").write(
        "peer-cluster2.yaml",
        &support::peer_gateway("cluster2", 15008, relay.addr.port(), None),
    );
    let c1 = controller_process(&mesh, "cluster1", &certs.join("cluster1"));
    let out = mesh.cluster("cluster1").out.clone();
    let file = out.join("autogen.shop.remote.yaml");
    until_status(c1.api, "cluster2 synced and written", |s| {
        s["importedServices"] == 1 && file.exists()
    })
    .await;
    let before = std::fs::read_to_string(&file).unwrap();
    let inode = std::fs::metadata(&file).unwrap().ino();

    // cluster1's controller is killed; cluster2 is out of its reach while
    // it starts again (cluster2 keeps running and exporting).
    drop(c1);
    relay.set_up(false);
    let c1 = controller_process(&mesh, "cluster1", &certs.join("cluster1"));
    until_status(c1.api, "own cluster loaded, cluster2's entry held", |s| {
        s["outputHeld"] == 1 && s["exportedServices"] == 1
    })
    .await;
    add_extra(&mesh);
    until_status(c1.api, "extra exported", |s| s["exportedServices"] == 2).await;
    until_status(c1.api, "extra written", |_| written(&mesh, EXTRA)).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);

    // cluster2 is reachable again.
    relay.set_up(true);
    until_status(c1.api, "cluster2 synced again, nothing held", |s| {
        s["outputHeld"] == 0 && s["importedServices"] == 1
    })
    .await;
    assert_eq!(mesh.cluster("cluster1").output()[REMOTE], "cluster2");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}
