//! `meshpeer check` in Kubernetes mode (SPEC O4) against mocked API servers
//! (tower-test), one per cluster, as `crates/store/tests/kube_source.rs`
//! does for `KubeSource`: every request is checked (method, path, query)
//! and answered with recorded responses from `tests/fixtures/kube/<cluster>/`;
//! the `cacerts` Secret of each cluster is made in the test with the
//! project's own certs code. A request no table expects fails the test,
//! printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::client::Body;
use meshpeer::check::{
    Check, ClusterInput, Item, Options, Origin, Report, Status, evaluate, gather_with_clients,
    names,
};
use meshpeer_identity::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ClusterCa, ROOT_CERT_FILE, RootCa,
};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;
type Responder = SendResponse<Response<Body>>;

/// How long the whole gathering may take; the mock answers at once.
const DEADLINE: Duration = Duration::from_secs(20);
/// `check --timeout`: each network call of the gathering.
const WITHIN: Duration = Duration::from_secs(5);
const DAY: Duration = Duration::from_secs(86_400);

const SECRET_PATH: &str = "/api/v1/namespaces/istio-system/secrets/cacerts";

/// Every kind `KubeSource` lists: its collection path and recorded answer.
const COLLECTIONS: [(&str, &str); 9] = [
    ("/api/v1/namespaces", "namespaces.json"),
    ("/api/v1/nodes", "nodes.json"),
    ("/api/v1/services", "services.json"),
    ("/api/v1/pods", "pods.json"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "endpointslices.json",
    ),
    ("/apis/admin.solo.io/v1alpha1/segments", "segments.json"),
    (
        "/apis/gateway.networking.k8s.io/v1/gateways",
        "gateways.json",
    ),
    (
        "/apis/networking.istio.io/v1/serviceentries",
        "serviceentries.json",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "httproutes.json",
    ),
];

fn fixture(cluster: &str, name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/kube/{cluster}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `GET path?query`, parameters in the order sent. kube-rs writes queries
/// as `?&limit=500`; the empty parameter means nothing and is dropped.
fn request_line(req: &Request<Body>) -> String {
    let query: Vec<&str> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    let mut line = format!("{} {}", req.method(), req.uri().path());
    if !query.is_empty() {
        line.push('?');
        line.push_str(&query.join("&"));
    }
    line
}

fn get(path: &str) -> String {
    format!("GET {path}")
}

fn list(path: &str) -> String {
    format!("GET {path}?limit=500")
}

fn watch(path: &str, resource_version: &str) -> String {
    format!(
        "GET {path}?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={resource_version}"
    )
}

/// The answer to a `GET` of the cacerts Secret.
enum SecretAnswer {
    /// The Secret with these keys (and their PEM files).
    Found(BTreeMap<String, Vec<u8>>),
    /// 404, as the API server says it.
    NotFound,
    /// 403: this user may not read Secrets there.
    Forbidden,
}

/// The PEM files of `ca`, keyed as in the `cacerts` Secret.
fn cacerts_files(ca: &ClusterCa) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cacerts");
    ca.write(&out).unwrap();
    [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE]
        .into_iter()
        .map(|f| (f.to_owned(), std::fs::read(out.join(f)).unwrap()))
        .collect()
}

fn status(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason,
        "details": {"name": "cacerts", "kind": "secrets"}, "code": code
    })
    .to_string()
}

fn secret_response(answer: SecretAnswer) -> (StatusCode, String) {
    match answer {
        SecretAnswer::Found(files) => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some("cacerts".to_owned()),
                    namespace: Some("istio-system".to_owned()),
                    resource_version: Some("2001".to_owned()),
                    ..Default::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(files.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
                ..Default::default()
            };
            (StatusCode::OK, serde_json::to_string(&secret).unwrap())
        }
        SecretAnswer::NotFound => (
            StatusCode::NOT_FOUND,
            status(404, "NotFound", "secrets \"cacerts\" not found"),
        ),
        SecretAnswer::Forbidden => (
            StatusCode::FORBIDDEN,
            status(
                403,
                "Forbidden",
                "secrets \"cacerts\" is forbidden: User \"viewer\" cannot get resource \"secrets\" in API group \"\" in the namespace \"istio-system\"",
            ),
        ),
    }
}

fn respond(responder: Responder, status: StatusCode, body: String) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.into_bytes()))
        .unwrap();
    responder.send_response(response);
}

/// One cluster's mocked API server.
struct ApiServer {
    cluster: &'static str,
    handle: ApiHandle,
    /// Requests that must come, each once, with their answer.
    expected: BTreeMap<String, (StatusCode, String)>,
    /// Requests that may come, held open: the watches `KubeSource` starts
    /// once it has listed, before `check` stops it.
    may: BTreeSet<String>,
    held: Vec<Responder>,
}

impl ApiServer {
    /// The recorded lists of `cluster` and its cacerts Secret.
    fn new(cluster: &'static str, secret: SecretAnswer) -> (Client, ApiServer) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut expected = BTreeMap::new();
        let mut may = BTreeSet::new();
        for (path, file) in COLLECTIONS {
            let body = fixture(cluster, file);
            let recorded: serde_json::Value = serde_json::from_str(&body).unwrap();
            let rv = recorded["metadata"]["resourceVersion"].as_str().unwrap();
            may.insert(watch(path, rv));
            expected.insert(list(path), (StatusCode::OK, body));
        }
        expected.insert(get(SECRET_PATH), secret_response(secret));
        let server = ApiServer {
            cluster,
            handle,
            expected,
            may,
            held: Vec::new(),
        };
        (Client::new(svc, "default"), server)
    }

    /// Answers requests until one comes that it does not expect: returns
    /// that request, to fail the test with.
    async fn run(&mut self) -> String {
        loop {
            let Some((req, responder)) = self.handle.next_request().await else {
                return format!("{}: the client went away", self.cluster);
            };
            let line = request_line(&req);
            if let Some((status, body)) = self.expected.remove(&line) {
                respond(responder, status, body);
            } else if self.may.remove(&line) {
                self.held.push(responder);
            } else {
                return format!(
                    "{}: unexpected request {line}; still expecting {:?}",
                    self.cluster,
                    self.expected.keys().collect::<Vec<_>>()
                );
            }
        }
    }

    fn assert_all_answered(&self) {
        assert!(
            self.expected.is_empty(),
            "{}: requests never made: {:?}",
            self.cluster,
            self.expected.keys().collect::<Vec<_>>()
        );
    }
}

/// `meshpeer check --context kind-<cluster> --cluster-name <cluster> ...`:
/// `controllers`, once per cluster when given.
fn inputs(clusters: &[&str], controllers: &[Option<String>]) -> Vec<ClusterInput> {
    clusters
        .iter()
        .enumerate()
        .map(|(i, c)| ClusterInput {
            origin: Origin::Context(format!("kind-{c}")),
            cacerts: None,
            controller: controllers.get(i).cloned().flatten(),
            name: Some((*c).to_owned()),
        })
        .collect()
}

/// Gathers over the mocked API servers and judges, as `meshpeer check` does.
async fn check_kube(
    servers: Vec<(Client, ApiServer)>,
    controllers: &[Option<String>],
    precheck: bool,
) -> Report {
    let clusters: Vec<&str> = servers.iter().map(|(_, s)| s.cluster).collect();
    let inputs = inputs(&clusters, controllers);
    let clients: BTreeMap<String, Client> = servers
        .iter()
        .map(|(client, s)| (format!("kind-{}", s.cluster), client.clone()))
        .collect();
    let mut servers: Vec<ApiServer> = servers.into_iter().map(|(_, s)| s).collect();
    let facts = {
        let runs = futures_util::future::select_all(servers.iter_mut().map(|s| Box::pin(s.run())));
        let gathering = gather_with_clients(&inputs, &clients, precheck, WITHIN);
        tokio::time::timeout(DEADLINE, async {
            tokio::select! {
                facts = gathering => facts.expect("gathered"),
                (bad, _, _) = runs => panic!("{bad}"),
            }
        })
        .await
        .expect("check gathers within the deadline")
    };
    for s in &servers {
        s.assert_all_answered();
    }
    evaluate(&facts, Options { precheck })
}

fn root(name: &str) -> RootCa {
    RootCa::generate(name, 3650 * DAY, SystemTime::now()).unwrap()
}

fn intermediate(root: &RootCa, cluster: &str) -> BTreeMap<String, Vec<u8>> {
    cacerts_files(
        &root
            .issue_intermediate(cluster, cluster, 365 * DAY, SystemTime::now())
            .unwrap(),
    )
}

fn pair(secret1: SecretAnswer, secret2: SecretAnswer) -> Vec<(Client, ApiServer)> {
    vec![
        ApiServer::new("cluster1", secret1),
        ApiServer::new("cluster2", secret2),
    ]
}

fn check<'a>(r: &'a Report, cluster: Option<&str>, name: &str) -> &'a Check {
    r.find(cluster, name)
        .unwrap_or_else(|| panic!("no {name} for {cluster:?} in {r:#?}"))
}

fn item<'a>(c: &'a Check, status: Status, text: &str) -> &'a Item {
    c.items
        .iter()
        .find(|i| i.status == status && i.text.contains(text))
        .unwrap_or_else(|| panic!("no {status:?} item with {text:?} in {c:#?}"))
}

#[tokio::test]
async fn o4_kube_two_clusters_under_one_root_are_green_and_live_checks_need_controller() {
    let shared = root("shared-root");
    let servers = pair(
        SecretAnswer::Found(intermediate(&shared, "cluster1")),
        SecretAnswer::Found(intermediate(&shared, "cluster2")),
    );
    let report = check_kube(servers, &[], false).await;
    let text = report.render(false);

    assert_eq!(report.clusters, ["cluster1", "cluster2"]);
    assert!(text.contains("=== Cluster: cluster1 ==="), "{text}");
    assert!(text.contains("=== Cluster: cluster2 ==="), "{text}");

    // The trust material comes from each cluster's cacerts Secret.
    for (cluster, context) in [("cluster1", "kind-cluster1"), ("cluster2", "kind-cluster2")] {
        let cfg = check(&report, Some(cluster), names::CONFIGURATION);
        assert_eq!(cfg.status, Status::Ok, "{cfg:#?}");
        item(
            cfg,
            Status::Ok,
            &format!(
                "cacerts Secret istio-system/cacerts of context {context}: intermediate valid until"
            ),
        );
        item(
            cfg,
            Status::Ok,
            &format!("cluster {cluster}: network {cluster}, trust domain"),
        );
    }
    let certs = check(&report, None, names::CERTS);
    assert_eq!(certs.status, Status::Ok, "{certs:#?}");
    assert_eq!(
        certs.title,
        "all clusters have compatible intermediate certificates"
    );
    item(
        certs,
        Status::Ok,
        "cluster cluster1 has compatible intermediate certificates with cluster cluster2",
    );
    item(
        certs,
        Status::Ok,
        "cluster cluster2 has compatible intermediate certificates with cluster cluster1",
    );
    let root_sum = item(
        certs,
        Status::Info,
        "cluster cluster1 root certificate SHA256 sum: ",
    );
    let sum = shared.sha256_fingerprint().replace(':', "").to_lowercase();
    assert!(root_sum.text.ends_with(&sum), "{root_sum:?}");

    // Two networks, one per cluster, with their gateways and links.
    assert_eq!(check(&report, None, names::NETWORK).status, Status::Ok);
    for (cluster, peer) in [("cluster1", "cluster2"), ("cluster2", "cluster1")] {
        assert_eq!(
            check(&report, Some(cluster), names::GATEWAY).status,
            Status::Ok
        );
        let peers = check(&report, Some(cluster), names::PEERS);
        assert_eq!(peers.status, Status::Ok, "{peers:#?}");
        item(
            peers,
            Status::Ok,
            &format!("Connected to {peer} via 172.18.255."),
        );
    }

    let shared_services = check(&report, Some("cluster1"), names::SHARED_SERVICES);
    assert_eq!(
        shared_services.title,
        "exports 1 global service; sees 1, 1 with endpoints from other clusters (from the API servers' objects: the controller is not reachable)"
    );

    // Without --controller, the live checks are said not to be checked.
    for cluster in ["cluster1", "cluster2"] {
        for name in [names::CONTROLLER, names::DATA_PLANE] {
            let c = check(&report, Some(cluster), name);
            assert_eq!(c.status, Status::Info, "{c:#?}");
            assert!(
                c.title.contains("not checked (Kubernetes mode")
                    && c.title.contains("give --controller ADDR"),
                "{c:#?}"
            );
        }
    }
    assert!(
        text.contains("Controller Check: not checked (Kubernetes mode"),
        "{text}"
    );
    assert!(!report.failed(), "{text}");
}

#[tokio::test]
async fn o4_kube_clusters_under_different_roots_fail_naming_the_cluster() {
    let shared = root("shared-root");
    let other = root("other-root");
    let servers = pair(
        SecretAnswer::Found(intermediate(&shared, "cluster1")),
        SecretAnswer::Found(intermediate(&other, "cluster2")),
    );
    let report = check_kube(servers, &[], true).await;

    // Each cluster's own Secret is consistent: only the pair fails.
    for cluster in ["cluster1", "cluster2"] {
        assert_eq!(
            check(&report, Some(cluster), names::CONFIGURATION).status,
            Status::Ok
        );
    }
    let certs = check(&report, None, names::CERTS);
    assert_eq!(certs.status, Status::Fail, "{certs:#?}");
    assert_eq!(certs.title, "clusters do not share one root of trust");
    let bad = item(
        certs,
        Status::Fail,
        "cluster cluster2's certificates are not accepted by cluster cluster1",
    );
    assert!(
        bad.fix
            .as_deref()
            .unwrap()
            .contains("meshpeer certs cluster cluster2 --root"),
        "{bad:?}"
    );
    item(
        certs,
        Status::Fail,
        "cluster cluster1's certificates are not accepted by cluster cluster2",
    );
    let other_sum = other.sha256_fingerprint().replace(':', "").to_lowercase();
    item(
        certs,
        Status::Info,
        &format!("cluster cluster2 root certificate SHA256 sum: {other_sum}"),
    );
    assert!(report.failed());
    // Prechecking: no live checks at all.
    assert!(report.find(Some("cluster1"), names::CONTROLLER).is_none());
}

#[tokio::test]
async fn o4_kube_missing_cacerts_secret_names_istio_system_cacerts() {
    let shared = root("shared-root");
    let servers = pair(
        SecretAnswer::Found(intermediate(&shared, "cluster1")),
        SecretAnswer::NotFound,
    );
    let report = check_kube(servers, &[], true).await;
    let text = report.render(false);

    let cfg = check(&report, Some("cluster2"), names::CONFIGURATION);
    assert_eq!(cfg.status, Status::Fail, "{cfg:#?}");
    let bad = item(
        cfg,
        Status::Fail,
        "no trust root: no Secret istio-system/cacerts of context kind-cluster2",
    );
    let fix = bad.fix.as_deref().unwrap();
    for part in [
        "meshpeer certs cluster cluster2 --root ROOT_DIR --out NEW_DIR",
        "kubectl --context kind-cluster2 -n istio-system create secret generic cacerts --from-file=NEW_DIR/ca-cert.pem --from-file=NEW_DIR/ca-key.pem --from-file=NEW_DIR/root-cert.pem --from-file=NEW_DIR/cert-chain.pem",
    ] {
        assert!(fix.contains(part), "{part:?} not in {fix:?}");
    }
    assert!(
        text.contains("❌ Configuration Check: no trust root: no Secret istio-system/cacerts"),
        "{text}"
    );
    assert_eq!(
        check(&report, Some("cluster1"), names::CONFIGURATION).status,
        Status::Ok
    );
    let certs = check(&report, None, names::CERTS);
    let skipped = item(certs, Status::Warn, "cluster cluster2 not checked");
    assert!(
        skipped
            .fix
            .as_deref()
            .unwrap()
            .contains("istio-system/cacerts Secret"),
        "{skipped:?}"
    );
    assert!(report.failed());
}

#[tokio::test]
async fn o4_kube_cacerts_secret_without_a_key_or_unreadable_says_which() {
    let shared = root("shared-root");
    let mut no_root = intermediate(&shared, "cluster1");
    no_root.remove(ROOT_CERT_FILE);
    let servers = pair(SecretAnswer::Found(no_root), SecretAnswer::Forbidden);
    let report = check_kube(servers, &[], true).await;

    let cfg = check(&report, Some("cluster1"), names::CONFIGURATION);
    assert_eq!(cfg.status, Status::Fail, "{cfg:#?}");
    let bad = item(
        cfg,
        Status::Fail,
        "cacerts Secret istio-system/cacerts of context kind-cluster1 cannot be used: it has no key root-cert.pem",
    );
    // Something is there already: replace it.
    assert!(
        bad.fix.as_deref().unwrap().contains(
            "kubectl --context kind-cluster1 -n istio-system delete secret cacerts, then"
        ),
        "{bad:?}"
    );

    // Not allowed to read it: not checked, amber, and how to get it.
    let cfg = check(&report, Some("cluster2"), names::CONFIGURATION);
    assert_eq!(cfg.status, Status::Warn, "{cfg:#?}");
    let unread = item(
        cfg,
        Status::Warn,
        "cacerts not checked: cannot read Secret istio-system/cacerts of context kind-cluster2: ",
    );
    assert!(unread.text.contains("forbidden"), "{unread:?}");
    assert!(
        unread.fix.as_deref().unwrap().contains("--cacerts DIR"),
        "{unread:?}"
    );
    assert_eq!(
        check(&report, None, names::CERTS).status,
        Status::Warn,
        "neither cluster can be compared"
    );
}

#[tokio::test]
async fn o4_kube_controller_flag_turns_the_live_checks_on() {
    // An address where no controller listens (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let shared = root("shared-root");
    let servers = pair(
        SecretAnswer::Found(intermediate(&shared, "cluster1")),
        SecretAnswer::Found(intermediate(&shared, "cluster2")),
    );
    let report = check_kube(servers, &[Some(addr.clone()), None], false).await;

    let c1 = check(&report, Some("cluster1"), names::CONTROLLER);
    assert_eq!(c1.status, Status::Fail, "{c1:#?}");
    assert!(
        c1.title.starts_with(&format!(
            "the controller at {addr} (from --controller) does not answer"
        )),
        "{c1:#?}"
    );
    assert!(
        c1.fix
            .as_deref()
            .unwrap()
            .contains("meshpeer controller --kubernetes --context kind-cluster1"),
        "{c1:#?}"
    );
    let c2 = check(&report, Some("cluster2"), names::CONTROLLER);
    assert_eq!(c2.status, Status::Info, "{c2:#?}");
    assert!(c2.title.contains("Kubernetes mode"), "{c2:#?}");
}
